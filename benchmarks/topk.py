"""Times `topk_masks` against a sort-based global threshold.

The scores are a ResNet-50-sized tree: one random float32 score per entry of
every conv and dense kernel of `optg_jax.models.resnet50` (25.5M scores over
its real kernel shapes, taken with `jax.eval_shape`, so nothing is
initialised). The scores are distinct (25.5M random normal float32 values
would hold ties, some of them at the threshold, where a threshold keeps every
tied score and an exact top-k does not): a random permutation of 25.5M
consecutive positive float32 numbers, split over the kernels. Both functions
are jitted and timed in this process, alternating runs, with the fixed-pass
selection of `layout="flat"` beside them; the script prints the median of
each, the ratio of the first two, and whether the masks are identical.

Then the warm start: ResNet-50 trains for a few steps on random images
(batch 8, 64x64: dense for the first half, then a refresh every step at
sparsity 0.9, `mask_transform` first in the chain), and the last refresh
is timed both ways on the scores after that step: `topk_masks` from
scratch, and `warm_topk_masks` from the hint the step before left (what
the transform does). It prints both medians, their ratio, the passes over
the scores each took, and whether the masks are identical (to each other
and to those the step drew).

  python benchmarks/topk.py [--repeats 5] [--sparsity 0.9] [--train_steps 12]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

import optg_jax as optg  # pylint: disable=g-import-not-at-top
from optg_jax import models  # pylint: disable=g-import-not-at-top
from optg_jax import topk  # pylint: disable=g-import-not-at-top


def resnet50_kernel_shapes():
  model = models.create("resnet50", num_classes=1000)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))
  return [leaf.shape for leaf in jax.tree.leaves(variables["params"])
          if len(leaf.shape) >= 2]


def sort_threshold_masks(scores, sparsity):
  """Baseline: sort all scores, keep those >= the k-th largest."""
  flat = jnp.concatenate([s.reshape(-1) for s in scores])
  k = flat.size - topk.num_to_keep(sparsity, flat.size)  # number pruned
  threshold = jnp.sort(flat)[k]
  return [s >= threshold for s in scores]


def trained_optg_states(steps, batch_size=8, image_size=64, sparsity=0.9):
  """The OptG states after the last two of `steps` training steps of
  ResNet-50 on random images (dense for the first half, then a refresh
  every step at `sparsity`)."""
  model = models.create("resnet50", num_classes=1000)
  rng = np.random.default_rng(0)
  shape = (batch_size, image_size, image_size, 3)
  labels = jnp.asarray(rng.integers(0, 1000, batch_size))
  variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
  dense_steps = steps // 2
  tx = optax.chain(
      optg.mask_transform(lambda t: jnp.where(t < dense_steps, 0.0,
                                              sparsity), 0.1, update_every=1),
      optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, images):
    def loss_fn(in_force):
      logits, new = model.apply({"params": in_force,
                                 "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), new["batch_stats"]
    in_force = optg.apply_masks(params, optg.get_masks(opt_state))
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(in_force)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  states = []
  for _ in range(steps):
    images = jnp.asarray(rng.standard_normal(shape, np.float32))
    params, batch_stats, opt_state = step(params, batch_stats, opt_state,
                                          images)
    states.append(optg.get_optg_state(opt_state))
  return states[-2], states[-1]


def warm_start_section(args):
  """Cold and warm selection of the scores after one more training step."""
  before, after = trained_optg_states(args.train_steps,
                                      sparsity=args.sparsity)
  scores = [s for s in jax.tree.leaves(after.scores)]
  drawn = jax.tree.leaves(after.masks)
  hint = before.topk_hint
  # The step drew its masks at the schedule's sparsity, a float32 (whose
  # count can differ by one from that of the Python float).
  sparsity = jnp.float32(args.sparsity)
  cold = jax.jit(lambda s: optg.topk_masks(s, sparsity))
  warm = jax.jit(lambda s, h: topk.warm_topk_masks(s, sparsity, h)[0])
  cold_masks, warm_masks = cold(scores), warm(scores, hint)
  identical = all(bool(jnp.array_equal(a, b)) and bool(jnp.array_equal(a, c))
                  for a, b, c in zip(cold_masks, warm_masks, drawn))
  cold_times, warm_times = [], []
  for _ in range(args.repeats):
    cold_times.append(timed(cold, scores))
    warm_times.append(timed(warm, scores, hint))
  cold_median = statistics.median(cold_times)
  warm_median = statistics.median(warm_times)
  cold_passes = int(topk.selection_passes(scores, sparsity))
  warm_passes = int(topk.selection_passes(scores, sparsity, hint))
  print(f"warm start: ResNet-50's {sum(int(s.size) for s in scores):,} "
        f"scores after training step {args.train_steps} (a refresh every "
        f"step from step {args.train_steps // 2 + 1}), sparsity "
        f"{args.sparsity}")
  print(f"  topk_masks (from scratch):       {cold_median * 1e3:9.1f} ms, "
        f"{cold_passes} passes over the scores")
  print(f"  warm_topk_masks (from the hint): {warm_median * 1e3:9.1f} ms, "
        f"{warm_passes} passes")
  print(f"  warm speed-up: {cold_median / warm_median:.2f}x; identical "
        f"masks (cold, warm, the step's own): {identical}")


def timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--train_steps", type=int, default=12,
                      help="training steps before the timed warm start "
                      "(0: skip it)")
  args = parser.parse_args()
  if args.train_steps == 1 or args.train_steps < 0:
    parser.error("--train_steps must be 0 (skip) or at least 2")

  shapes = resnet50_kernel_shapes()
  total = sum(int(np.prod(s)) for s in shapes)
  # Consecutive float32 bit patterns from 1.0 up: distinct finite scores.
  bits = np.uint32(0x3F800000) + np.random.default_rng(0).permutation(
      total).astype(np.uint32)
  flat = bits.view(np.float32)
  assert np.all(np.isfinite(flat))
  offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
  scores = [jnp.asarray(flat[a:b].reshape(s))
            for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]

  radix = jax.jit(lambda s: optg.topk_masks(s, args.sparsity))
  fixed = jax.jit(lambda s: optg.topk_masks(s, args.sparsity, layout="flat"))
  sort = jax.jit(lambda s: sort_threshold_masks(s, args.sparsity))
  got, want = radix(scores), sort(scores)  # Also compiles both.
  identical = all(bool(jnp.array_equal(a, b)) for a, b in zip(got, want))
  fixed_identical = all(bool(jnp.array_equal(a, b))
                        for a, b in zip(got, fixed(scores)))
  kept = sum(int(m.sum()) for m in got)

  radix_times, fixed_times, sort_times = [], [], []
  for _ in range(args.repeats):
    radix_times.append(timed(radix, scores))
    fixed_times.append(timed(fixed, scores))
    sort_times.append(timed(sort, scores))
  radix_median = statistics.median(radix_times)
  fixed_median = statistics.median(fixed_times)
  sort_median = statistics.median(sort_times)

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"scores: {total:,} float32 over {len(shapes)} ResNet-50 kernels; "
        f"sparsity {args.sparsity}: kept {kept:,}")
  print(f"topk_masks (counting passes): {radix_median * 1e3:9.1f} ms (median "
        f"of {args.repeats})")
  print(f"layout='flat' (fixed passes): {fixed_median * 1e3:9.1f} ms (median "
        f"of {args.repeats}; {topk.fixed_passes(total)} passes, "
        f"{int(topk.selection_passes(scores, args.sparsity))} for the "
        "search above)")
  print(f"sort-based threshold:         {sort_median * 1e3:9.1f} ms (median "
        f"of {args.repeats})")
  print(f"speed-up: {sort_median / radix_median:.1f}x; identical masks: "
        f"{identical}; fixed passes identical to the search: "
        f"{fixed_identical}")
  if args.train_steps:
    warm_start_section(args)


if __name__ == "__main__":
  main()
