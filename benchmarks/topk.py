"""Times `topk_masks` against a sort-based global threshold.

The scores are a ResNet-50-sized tree: one random float32 score per entry of
every conv and dense kernel of `optg_jax.models.resnet50` (25.5M scores over
its real kernel shapes, taken with `jax.eval_shape`, so nothing is
initialised). The scores are distinct (25.5M random normal float32 values
would hold ties, some of them at the threshold, where a threshold keeps every
tied score and an exact top-k does not): a random permutation of 25.5M
consecutive positive float32 numbers, split over the kernels. Both functions
are jitted and timed in this process, alternating runs; the script prints the
median of each, their ratio, and whether the masks are identical.

  python benchmarks/topk.py [--repeats 5] [--sparsity 0.9]
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


def timed(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args()

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
  sort = jax.jit(lambda s: sort_threshold_masks(s, args.sparsity))
  got, want = radix(scores), sort(scores)  # Also compiles both.
  identical = all(bool(jnp.array_equal(a, b)) for a, b in zip(got, want))
  kept = sum(int(m.sum()) for m in got)

  radix_times, sort_times = [], []
  for _ in range(args.repeats):
    radix_times.append(timed(radix, scores))
    sort_times.append(timed(sort, scores))
  radix_median = statistics.median(radix_times)
  sort_median = statistics.median(sort_times)

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"scores: {total:,} float32 over {len(shapes)} ResNet-50 kernels; "
        f"sparsity {args.sparsity}: kept {kept:,}")
  print(f"topk_masks (radix select): {radix_median * 1e3:9.1f} ms (median "
        f"of {args.repeats})")
  print(f"sort-based threshold:      {sort_median * 1e3:9.1f} ms (median "
        f"of {args.repeats})")
  print(f"speed-up: {sort_median / radix_median:.1f}x; identical masks: "
        f"{identical}")


if __name__ == "__main__":
  main()
