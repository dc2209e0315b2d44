"""Cost of OptG in the train step: OptG steps against the same dense step.

Builds the harness's own pmapped train step (`optg_jax.train.train_step`)
three times on the same model, batch and devices: `method="dense"`;
`method="optg"` with the refresh once an epoch (no refresh happens in the
timed steps: the refresh period is set beyond them); and `method="optg"`
with a refresh every step (`update_every_steps=1`), started at step 9,000 of
the run's 10,000 so that the target is constant (epoch 9 of the reference's
schedule), its scores trained for a few steps before timing, each timed
step drawing new masks with the warm-started top-k. The loop chooses each
step's refresh on the host, as the harness does (`Run.refresh_of`): the
once-an-epoch steps timed are compiled without the top-k; the script counts
the conditionals and loops left in each timed step's program. They are timed in
alternation after compiling; it prints the median of each and the ratios to
the dense step. The cost of one cold refresh (the global top-k of all
scores) is also timed on its own and amortised over an ImageNet epoch of
5,005 steps (batch 256).

The host allocator keeps freed memory (`--host_allocator keep`, as
`config.host_allocator`, `optg_jax/harness/host_memory.py`), so that no step
faults its temporary buffers in afresh: with glibc's defaults ("system")
the kernel time of those faults, printed per step, varies from run to run
and dominates the differences between the steps.

  python benchmarks/train_step.py [--model resnet50] [--batch_size 16] \
      [--image_size 128] [--repeats 7] [--host_allocator keep]
"""

import argparse
import functools
import os
import re
import resource
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
from optg_jax.harness import host_memory  # pylint: disable=g-import-not-at-top


EVERY_STEP_START = 9000  # Of the 10 epochs of 1,000 steps.


def build(method, args, every_step=False):
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
  if every_step:
    config.update_every_steps = 1
  run = train.Run(config)
  state = run.initial_state()
  if every_step:
    is_optg = lambda x: isinstance(x, optg.OptGState)
    state = state.replace(
        step=np.int32(EVERY_STEP_START),
        opt_state=jax.tree.map(
            lambda x: x._replace(count=np.int32(EVERY_STEP_START))
            if is_optg(x) else x, state.opt_state, is_leaf=is_optg))
  p_train, _ = run.compiled_steps()
  return run, train.replicate(state), p_train


def device_branches(run, state, batch, step: int) -> int:
  """Conditionals and loops in the compiled program of the train step at
  `step` (StableHLO `case`, `if` and `while` ops): branches decided on the
  device, which an accelerator's host waits for."""
  p_train, _ = run.parallel.compile(
      functools.partial(train.train_step, model=run.model, tx=run.tx,
                        schedules=run.schedules,
                        label_smoothing=run.config.label_smoothing,
                        sparse=run.sparse),
      functools.partial(train.eval_step, model=run.model))
  text = p_train(run.refresh_of(step)).lower(state, batch).as_text()
  return len(re.findall(r"stablehlo\.(?:case|if|while)\b", text))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--half_precision", action="store_true")
  parser.add_argument("--host_allocator", default="keep",
                      choices=host_memory.HOST_ALLOCATORS,
                      help="config.host_allocator, as launch/train.py sets "
                      "it before JAX starts")
  parser.add_argument("--warmup_steps", type=int, default=4,
                      help="steps before timing (compiles; the every-step "
                      "run's scores train and its top-k hint is set)")
  args = parser.parse_args()
  kept = host_memory.set_host_allocator(args.host_allocator)

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

  runs = {"dense": build("dense", args),
          "optg": build("optg", args),
          "optg every step": build("optg", args, every_step=True)}
  states = {m: r[1] for m, r in runs.items()}
  # The step each run is at, on the host, which chooses its refresh.
  steps = {m: int(np.asarray(s.step)[0]) for m, s in states.items()}
  branches = {m: device_branches(r[0], states[m], batch, steps[m])
              for m, r in runs.items()}
  times = {m: [] for m in runs}
  # Per timed step: minor page faults and the kernel's time, which on a CPU
  # host is mostly faulting in the step's temporary buffers afresh.
  faults = {m: [] for m in runs}
  system = {m: [] for m in runs}

  def one_step(method, step):
    states[method], metrics = step(states[method], batch, steps[method])
    steps[method] += 1
    return metrics

  for method, (_, _, step) in runs.items():  # Compile and warm up.
    for _ in range(args.warmup_steps):
      metrics = one_step(method, step)
    jax.block_until_ready(metrics)
  for _ in range(args.repeats):
    for method, (_, _, step) in runs.items():
      before = resource.getrusage(resource.RUSAGE_SELF)
      start = time.perf_counter()
      metrics = one_step(method, step)
      jax.block_until_ready((states[method], metrics))
      times[method].append(time.perf_counter() - start)
      after = resource.getrusage(resource.RUSAGE_SELF)
      faults[method].append(after.ru_minflt - before.ru_minflt)
      system[method].append(after.ru_stime - before.ru_stime)

  dense = statistics.median(times["dense"])
  sparse = statistics.median(times["optg"])
  every = statistics.median(times["optg every step"])
  every_state = optg.get_optg_state(states["optg every step"].opt_state)
  refreshed = int(np.asarray(every_state.count)[0]) - EVERY_STEP_START
  hint_set = int(np.asarray(every_state.topk_hint.selections)[0]) == 2

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
        f"{args.image_size}, {'bf16' if args.half_precision else 'fp32'}; host "
        f"allocator {args.host_allocator} (freed memory kept: {kept})")
  print(f"dense step: {dense * 1e3:9.1f} ms (median of {args.repeats})")
  print(f"OptG step, refresh once an epoch: {sparse * 1e3:9.1f} ms (median of "
        f"{args.repeats}; no refresh among the timed steps)")
  print(f"OptG step, refresh every step: {every * 1e3:9.1f} ms (median of "
        f"{args.repeats}; {refreshed} steps from step {EVERY_STEP_START:,}, "
        f"each refreshing, warm start in use: {hint_set})")
  print("per step, median (minor page faults, kernel time): " + ", ".join(
      f"{m} {statistics.median(faults[m]):,.0f} / "
      f"{statistics.median(system[m]) * 1e3:.0f} ms" for m in runs))
  print("each step's times (ms): " + "; ".join(
      f"{m} " + " ".join(f"{t * 1e3:.0f}" for t in times[m]) for m in runs))
  print("device-side branches and loops in each timed step (StableHLO case, "
        "if, while): " + ", ".join(f"{m} {n}" for m, n in branches.items()))
  print(f"OptG once an epoch / dense: {sparse / dense:.3f}x")
  print(f"OptG every step / dense:    {every / dense:.3f}x")
  print(f"one mask refresh (top-k of {prunable:,} scores): "
        f"{refresh_s * 1e3:.1f} ms = {refresh_s / dense:.2f} dense steps; "
        f"once per 5,005-step epoch: +{100 * refresh_s / dense / 5005:.3f}%")


if __name__ == "__main__":
  main()
