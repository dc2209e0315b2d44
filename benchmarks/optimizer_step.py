"""Times the optimizer-only step: plain SGD, OptG + SGD, magnitude + SGD.

On ResNet-50's parameters (25.6M float32 values over its real shapes, from
`jax.eval_shape`, filled with random numbers), each optimizer's `update` and
`apply_updates` are jitted together, with the params and optimizer state
donated, as in a training step. The chains are

  plain:     add_decayed_weights -> sgd(momentum 0.9)
  OptG:      mask_transform(criterion="optg") -> the same
  magnitude: mask_transform(criterion="magnitude") -> the same

with the masks refreshed once per 5,005 steps (an ImageNet epoch at batch
256), so the timed steps are the steps between refreshes, which is almost
every step. Each is timed twice: with the params and optimizer state donated
to the step (as the training harness does) and without. A refresh (the
global top-k) is timed on its own. The runs alternate between the
optimizers in this one process; the script prints the median of each and the
ratios to plain SGD.

  python benchmarks/optimizer_step.py [--repeats 7] [--steps 5]
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

STEPS_PER_EPOCH = 5005


def resnet50_params():
  """ResNet-50's parameters, random normal, float32."""
  model = models.create("resnet50", num_classes=1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
      shapes)


def make_optimizers():
  weights = lambda: [optax.add_decayed_weights(1e-4),
                     optax.sgd(0.1, momentum=0.9)]
  sparse = lambda criterion: optax.chain(
      optg.mask_transform(0.9, 0.1, update_every=STEPS_PER_EPOCH,
                          criterion=criterion), *weights())
  return {"plain SGD": optax.chain(*weights()),
          "OptG + SGD": sparse("optg"),
          "magnitude + SGD": sparse("magnitude")}


def make_step(tx, donate):
  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7,
                      help="timed runs of each optimizer (median reported)")
  parser.add_argument("--steps", type=int, default=5,
                      help="steps per timed run")
  args = parser.parse_args()

  params = resnet50_params()
  grads = jax.tree.map(lambda p: 1e-3 * p, params)
  num = sum(int(p.size) for p in jax.tree.leaves(params))
  runs = {}
  for donate in (True, False):
    for name, tx in make_optimizers().items():
      p = jax.tree.map(jnp.copy, params)
      state = tx.init(p)
      step = make_step(tx, donate)
      p, state = step(p, state, grads)  # Compiles.
      jax.block_until_ready(p)
      runs[(donate, name)] = [step, p, state, []]

  for _ in range(args.repeats):
    for run in runs.values():
      step, p, state, times = run
      start = time.perf_counter()
      for _ in range(args.steps):
        p, state = step(p, state, grads)
      jax.block_until_ready(p)
      times.append((time.perf_counter() - start) / args.steps)
      run[1], run[2] = p, state
  # Still no refresh: every timed step is a step between refreshes.
  for (_, name), (_, _, state, _) in runs.items():
    if name != "plain SGD":
      count = int(optg.get_optg_state(state).count)
      assert count < STEPS_PER_EPOCH, count

  # One refresh on its own: the global top-k of ResNet-50's kernels.
  kernels = [p for p in jax.tree.leaves(params) if p.ndim >= 2]
  refresh = jax.jit(lambda s: optg.topk_masks(s, 0.9))
  jax.block_until_ready(refresh(kernels))
  refresh_times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(refresh(kernels))
    refresh_times.append(time.perf_counter() - start)

  device = jax.devices()[0]
  print(f"device: {device.platform} x{jax.device_count()}; ResNet-50 "
        f"parameters: {num:,} float32, "
        f"{sum(int(k.size) for k in kernels):,} prunable; medians of "
        f"{args.repeats} runs of {args.steps} steps")
  for donate in (True, False):
    print("params and optimizer state donated (as a training step):"
          if donate else "not donated:")
    base = statistics.median(runs[(donate, "plain SGD")][3])
    for (d, name), (_, _, _, times) in runs.items():
      if d == donate:
        median = statistics.median(times)
        print(f"  {name + ':':17s} {1e3 * median:7.1f} ms per step; "
              f"{median / base:.2f}x plain SGD")
  base = statistics.median(runs[(True, "plain SGD")][3])
  refresh_median = statistics.median(refresh_times)
  print(f"one refresh (top-k): {1e3 * refresh_median:.1f} ms; once per "
        f"{STEPS_PER_EPOCH:,} steps: "
        f"+{100 * refresh_median / STEPS_PER_EPOCH / base:.3f}% of a donated "
        f"plain SGD step")

if __name__ == "__main__":
  main()
