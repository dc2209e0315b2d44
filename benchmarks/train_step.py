"""Cost of OptG in the train step: OptG step against the same dense step.

Builds the harness's own pmapped train step (`optg_jax.train.train_step`)
twice, for `method="optg"` and `method="dense"`, on the same model, batch and
devices, and times them in alternation after compiling both; prints the
median of each and their ratio. No mask refresh happens in the timed OptG
steps (the refresh period is set beyond the run); the cost of one refresh (the
global top-k of all scores) is timed on its own and amortised over an ImageNet
epoch of 5,005 steps (batch 256).

  python benchmarks/train_step.py [--model resnet50] [--batch_size 16] \
      [--image_size 128] [--repeats 7]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # pylint: disable=g-import-not-at-top
from flax import jax_utils  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import optg_jax as optg  # pylint: disable=g-import-not-at-top
from configs import fake_data_benchmark  # pylint: disable=g-import-not-at-top
from optg_jax import train  # pylint: disable=g-import-not-at-top


def build(method, args):
  config = fake_data_benchmark.get_config()
  config.model = args.model
  config.method = method
  config.batch_size = args.batch_size
  config.fake_image_size = args.image_size
  config.fake_num_classes = 1000
  config.fake_num_train = args.batch_size * 1000
  config.half_precision = args.half_precision
  # The one refresh, after step 9,999 of the run's 10,000 (10 epochs of
  # 1,000 steps), draws the last step's masks; the timed steps never reach
  # it.
  config.update_every_steps = config.num_epochs * 1000 - 1
  run = train.Run(config)
  state = train.replicate(run.initial_state())
  p_train, _ = run.compiled_steps()
  return run, state, p_train


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--half_precision", action="store_true")
  args = parser.parse_args()

  devices = jax.local_device_count()
  per_device = args.batch_size // devices
  rng = np.random.default_rng(0)
  batch = {
      "image": rng.standard_normal(
          (devices, per_device, args.image_size, args.image_size, 3),
          np.float32),
      "label": rng.integers(0, 1000, (devices, per_device)).astype(np.int32),
  }
  batch = next(jax_utils.prefetch_to_device(iter([batch]), 1))

  runs = {m: build(m, args) for m in ("dense", "optg")}
  states = {m: r[1] for m, r in runs.items()}
  times = {m: [] for m in runs}
  for method, (_, _, step) in runs.items():  # Compile and warm up.
    for _ in range(2):
      states[method], metrics = step(states[method], batch)
    jax.block_until_ready(metrics)
  for _ in range(args.repeats):
    for method, (_, _, step) in runs.items():
      start = time.perf_counter()
      states[method], metrics = step(states[method], batch)
      jax.block_until_ready((states[method], metrics))
      times[method].append(time.perf_counter() - start)

  dense = statistics.median(times["dense"])
  sparse = statistics.median(times["optg"])

  scores = jax.tree.map(lambda x: x[0],
                        optg.get_optg_state(states["optg"].opt_state).scores)
  refresh = jax.jit(lambda s: optg.topk_masks(s, 0.9))
  jax.block_until_ready(refresh(scores))
  refresh_times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(refresh(scores))
    refresh_times.append(time.perf_counter() - start)
  refresh_s = statistics.median(refresh_times)
  prunable = sum(int(np.size(x)) for x in jax.tree.leaves(scores))

  print(f"device: {jax.devices()[0].device_kind} x{devices}; model "
        f"{args.model}, batch {args.batch_size}, {args.image_size}x"
        f"{args.image_size}, {'bf16' if args.half_precision else 'fp32'}")
  print(f"dense step: {dense * 1e3:9.1f} ms (median of {args.repeats})")
  print(f"OptG step:  {sparse * 1e3:9.1f} ms (median of {args.repeats})")
  print(f"OptG / dense: {sparse / dense:.3f}x")
  print(f"one mask refresh (top-k of {prunable:,} scores): "
        f"{refresh_s * 1e3:.1f} ms = {refresh_s / dense:.2f} dense steps; "
        f"once per 5,005-step epoch: +{100 * refresh_s / dense / 5005:.3f}%")


if __name__ == "__main__":
  main()
