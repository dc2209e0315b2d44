"""OptG's costs on whatever JAX backend is here: the top-k and ResNet-50 steps.

One command for a GPU or TPU (it runs on the CPU too, with smaller
defaults). It prints, in a few minutes:

1. The selection of the top 10% of ResNet-50's 25.5M kernel entries
   (float32 scores shaped like its kernels): `topk_masks` from scratch
   ("cold"); `warm_topk_masks` starting from the thresholds of the two
   selections before ("warm"), the scores having moved between the three
   like those of a training run (a steady drift plus noise); a sort-based
   threshold; `jax.lax.top_k` and `jax.lax.approx_max_k` of the
   concatenated scores; ours again with `layout="flat"` (the scores
   concatenated first, a fixed number of passes). Medians in ms, the
   passes over the scores each of ours took, and whether all of ours give
   identical masks.
2. Training steps of ResNet-50 (batch 256, 224x224, bfloat16 compute on a
   GPU or TPU) on random images: dense SGD, OptG with a refresh once an
   epoch (no refresh in the timed steps; the step compiled without it, as
   chosen on the host, and the plain `update`'s step, which decides in a
   `lax.cond` on the device), OptG with a refresh every step
   (scores trained for some steps first, constant target), the same with
   `topk_layout="flat"`. Images/s, the
   ratio of each step's time to the dense one, and the device memory of
   each compiled step (arguments plus temporaries); then the process's
   peak device memory where the backend reports it.

The step is the library's documented pattern (no harness, so neither
TensorFlow nor a dataset is needed): the forward pass on
`apply_masks(params, get_masks(opt_state))`, the gradients with respect to
those masked weights, `optax.chain(mask_transform(...),
add_decayed_weights, sgd)`, everything jitted with the params, batch
statistics and optimizer state donated.

  python benchmarks/accelerator.py            # the sizes above
  python benchmarks/accelerator.py --small    # the CPU defaults
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

STEPS_PER_EPOCH = 5005  # ImageNet at batch 256.
SMALL = {"batch_size": 8, "image_size": 64, "num_scores": 2_000_000,
         "repeats": 3, "steps": 2}
LARGE = {"batch_size": 256, "image_size": 224, "num_scores": 0,
         "repeats": 5, "steps": 10}


def median_ms(fn, repeats):
  """Median wall time of `fn()` (blocked until ready) in ms, after a call
  that compiles it."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def kernel_shapes(model_name, num_scores):
  """The kernel shapes of a model, the leading ones up to `num_scores`
  entries (all of them for 0)."""
  model = models.create(model_name, num_classes=1000)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                         train=False))
  shapes = [leaf.shape for leaf in jax.tree.leaves(variables["params"])
            if len(leaf.shape) >= 2]
  if not num_scores:
    return shapes
  kept, total = [], 0
  for shape in shapes:
    if total >= num_scores:
      break
    kept.append(shape)
    total += int(np.prod(shape))
  return kept


def topk_section(args):
  shapes = kernel_shapes(args.model, args.num_scores)
  total = sum(int(np.prod(s)) for s in shapes)
  keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
  # Three selections of a run: drift d per step and noise e, scores S - d,
  # S, S + d + e.
  base = [jax.random.normal(k, s) for k, s in zip(keys[::2], shapes)]
  drift = [1e-3 * jnp.abs(b) + 1e-3 * jax.random.normal(k, s)
           for b, k, s in zip(base, keys[1::2], shapes)]
  earlier = [b - d for b, d in zip(base, drift)]
  now = [b + d + 1e-4 * jnp.flip(d) for b, d in zip(base, drift)]
  s = args.sparsity
  warm = jax.jit(lambda x, h: topk.warm_topk_masks(x, s, h))
  _, hint = warm(earlier, topk.empty_hint())
  _, hint = warm(base, hint)
  cold = jax.jit(lambda x: topk.topk_masks(x, s))
  warm_flat = jax.jit(lambda x, h: topk.warm_topk_masks(x, s, h,
                                                        layout="flat"))
  cold_flat = jax.jit(lambda x: topk.topk_masks(x, s, layout="flat"))
  want = cold(now)
  identical = all(
      all(bool(jnp.array_equal(a, b)) for a, b in zip(want, got))
      for got in (warm(now, hint)[0], cold_flat(now),
                  warm_flat(now, hint)[0]))
  k = topk.num_to_keep(s, total)

  def sort_threshold(x):
    flat = jnp.concatenate([v.reshape(-1) for v in x])
    threshold = jnp.sort(flat)[total - k]
    return [v >= threshold for v in x]

  def flat_top_k(x):
    return jax.lax.top_k(jnp.concatenate([v.reshape(-1) for v in x]), k)[1]

  def flat_approx_max_k(x):
    flat = jnp.concatenate([v.reshape(-1) for v in x])
    return jax.lax.approx_max_k(flat, k)[1]

  print(f"top-k: keep {k:,} of {total:,} float32 scores over {len(shapes)} "
        f"{args.model} kernels (sparsity {s}); medians of {args.repeats}")
  rows = [("topk_masks, cold", lambda: cold(now)),
          ("warm_topk_masks, warm", lambda: warm(now, hint)[0]),
          ("layout='flat' (fixed passes)", lambda: cold_flat(now)),
          ("the same, given a hint", lambda: warm_flat(now, hint)[0]),
          ("sort-based threshold", lambda: jax.jit(sort_threshold)(now)),
          ("jax.lax.top_k", lambda: jax.jit(flat_top_k)(now)),
          ("jax.lax.approx_max_k", lambda: jax.jit(flat_approx_max_k)(now))]
  cold_ms = None
  for name, fn in rows:
    try:
      ms = median_ms(fn, args.repeats)
    except Exception as e:  # pylint: disable=broad-except
      print(f"  {name + ':':30s} not available here ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:80]})")
      continue
    cold_ms = ms if cold_ms is None else cold_ms
    print(f"  {name + ':':30s} {ms:9.2f} ms  ({cold_ms / ms:5.2f}x cold)")
  cold_passes = int(topk.selection_passes(now, s))
  warm_passes = int(topk.selection_passes(now, s, hint))
  flat_passes = int(topk.selection_passes(now, s, layout="flat"))
  print(f"  passes over the scores: cold {cold_passes}, warm {warm_passes}, "
        f"flat {flat_passes} (fixed); identical masks (cold, warm, both "
        f"flat): {identical}")


def train_section(args):
  on_accelerator = jax.default_backend() != "cpu"
  dtype = jnp.bfloat16 if on_accelerator and not args.float32 else (
      jnp.float32)
  model = models.create(args.model, num_classes=1000, dtype=dtype)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal(
      (args.batch_size, args.image_size, args.image_size, 3)), dtype)
  labels = jnp.asarray(rng.integers(0, 1000, args.batch_size))
  variables = jax.jit(lambda: model.init(
      jax.random.key(0), images[:1], train=False))()
  weights = lambda: [optax.add_decayed_weights(1e-4),
                     optax.sgd(0.1, momentum=0.9)]
  once = lambda: optax.chain(optg.mask_transform(
      args.sparsity, 0.1, update_every=STEPS_PER_EPOCH), *weights())
  # (chain, sparse, refresh): `refresh` as the host chooses it (the timed
  # once-an-epoch steps are not due), or None: decided on the device.
  chains = {
      "dense": (optax.chain(*weights()), False, None),
      "OptG, once an epoch": (once(), True, False),
      "OptG, once an epoch, lax.cond": (once(), True, None),
      "OptG, refresh every step": (optax.chain(optg.mask_transform(
          args.sparsity, 0.1, update_every=1), *weights()), True, True),
      "OptG, every step, flat top-k": (optax.chain(optg.mask_transform(
          args.sparsity, 0.1, update_every=1, topk_layout="flat"),
                                                  *weights()), True, True),
  }

  def make_step(tx, sparse, refresh):
    def loss_fn(weights_in_force, batch_stats):
      logits, new = model.apply(
          {"params": weights_in_force, "batch_stats": batch_stats}, images,
          train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), labels).mean()
      return loss, new["batch_stats"]

    def step(params, batch_stats, opt_state):
      in_force = (optg.apply_masks(params, optg.get_masks(opt_state))
                  if sparse else params)
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          in_force, batch_stats)
      updates, opt_state = tx.update(grads, opt_state, params,
                                     refresh=refresh)
      return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))

  runs = {}
  for name, (tx, sparse, refresh) in chains.items():
    params = jax.tree.map(jnp.copy, variables["params"])
    batch_stats = jax.tree.map(jnp.copy, variables["batch_stats"])
    opt_state = tx.init(params)
    step = make_step(tx, sparse, refresh)
    memory = step.lower(params, batch_stats, opt_state).compile(
        ).memory_analysis()
    state = (params, batch_stats, opt_state)
    for _ in range(args.warmup_steps):  # Compiles; trains the scores.
      state = step(*state)[:3]
    jax.block_until_ready(state)
    runs[name] = [step, state, [], memory]

  for _ in range(args.repeats):
    for run in runs.values():
      step, state, times, _ = run
      start = time.perf_counter()
      for _ in range(args.steps):
        *state, loss = step(*state)
      jax.block_until_ready((state, loss))
      times.append((time.perf_counter() - start) / args.steps)
      run[1] = tuple(state)

  print(f"training steps: {args.model}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size}, "
        f"{'bf16' if dtype == jnp.bfloat16 else 'fp32'} compute, sparsity "
        f"{args.sparsity}; medians of {args.repeats} runs of {args.steps} "
        "steps")
  dense = statistics.median(runs["dense"][2])
  for name, (_, _, times, memory) in runs.items():
    seconds = statistics.median(times)
    if memory is not None:
      used = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / (
          2**30)
      memory_text = f"{used:6.2f} GiB arguments + temporaries"
    else:
      memory_text = "memory not reported"
    print(f"  {name + ':':30s} {args.batch_size / seconds:9.1f} images/s  "
          f"{seconds / dense:5.3f}x dense  {memory_text}")
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"peak device memory of the process: "
          f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
  else:
    print("peak device memory of the process: not reported by this backend")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="the CPU defaults (the default on the CPU)")
  parser.add_argument("--model", default="resnet50",
                      help="a name of optg_jax.models.names()")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--image_size", type=int)
  parser.add_argument("--num_scores", type=int,
                      help="scores of the top-k (the leading kernels); 0: "
                      "all of the model's kernels")
  parser.add_argument("--repeats", type=int, help="timed runs (median)")
  parser.add_argument("--steps", type=int, help="training steps per run")
  parser.add_argument("--warmup_steps", type=int, default=5,
                      help="steps before timing (the scores train)")
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--float32", action="store_true",
                      help="float32 compute on an accelerator too")
  parser.add_argument("--skip_training", action="store_true")
  args = parser.parse_args()
  try:
    models.create(args.model, num_classes=1000)  # Builds no weights.
  except ValueError as e:
    parser.error(f"--model: {e}")
  if args.warmup_steps < 1:
    parser.error("--warmup_steps must be at least 1 (it compiles the step)")
  if not 0.0 <= args.sparsity < 1.0:
    parser.error("--sparsity must be in [0, 1)")
  defaults = SMALL if (args.small or jax.default_backend() == "cpu") else (
      LARGE)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  for key in ("batch_size", "image_size", "repeats", "steps"):
    if getattr(args, key) < 1:
      parser.error(f"--{key} must be positive")
  if args.num_scores < 0:
    parser.error("--num_scores must be 0 (all kernels) or positive")

  device = jax.devices()[0]
  print(f"backend: {jax.default_backend()}; device: {device.device_kind} "
        f"x{jax.device_count()}; jax {jax.__version__}")
  topk_section(args)
  if not args.skip_training:
    train_section(args)


if __name__ == "__main__":
  main()
