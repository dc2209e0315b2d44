"""Schedules of OptG: sparsity, mask learning rate, the reference's lr.

Sparsity rises along a sigmoid centred on the middle of training, in whole
epochs: `s(t) = P * sigmoid(beta * (floor(t / steps_per_epoch) - E / 2))`
(the paper's; opt-in, `granularity="step"` drops the `floor` and the
sparsity rises at every step).
The scores' learning rate follows the weights' one, scaled by how far pruning
has gone: `mask_lr(t) = lr(t) * s(t) / P`. The weights' learning rate of the
paper's recipes is `epochwise_cosine_schedule`: set once per epoch, a linear
warm-up then a cosine over all the epochs.
"""

import dataclasses
from typing import Callable, Dict, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, int, Schedule]


def _check_target(target: float, name: str = "target") -> None:
  if (not isinstance(target, (int, float, np.number)) or
      isinstance(target, bool)):
    raise ValueError(f"{name} must be a number in [0, 1), got {target!r}")
  if np.isnan(target) or not 0.0 <= float(target) < 1.0:
    raise ValueError(f"{name} must be a number in [0, 1), got {target!r}")


def _as_int(value, name: str, condition: str = "a positive integer",
            low: int = 1, high: Optional[int] = None) -> int:
  """`value` as an int in `[low, high)`, else ValueError ("{name} must be
  {condition}, got {value!r}").

  An integral float (Flax configs' `num_epochs = 6.0`) is its int; other
  floats (6.5, nan, inf) and bools are refused.
  """
  integral = (isinstance(value, (int, np.integer)) or (
      isinstance(value, (float, np.floating)) and np.isfinite(value) and
      float(value).is_integer()))
  if (not integral or isinstance(value, (bool, np.bool_)) or value < low or
      (high is not None and value >= high)):
    raise ValueError(f"{name} must be {condition}, got {value!r}")
  return int(value)


# How far below its target the sparsity of the masks a run ends with may
# stay: the harness refuses a run that falls further short, and
# `mask_transform` warns.
TARGET_TOLERANCE = 1e-3


GRANULARITIES = ("epoch", "step")


@dataclasses.dataclass(frozen=True)
class SigmoidSparsity:
  """OptG's sigmoid sparsity schedule, `step -> sparsity` (float32 scalar).

  `target * sigmoid(beta * (floor(step / steps_per_epoch) - total_epochs /
  2))`: constant within an epoch (`granularity="epoch"`, the paper), or
  without the `floor`, rising at every step (`"step"`). Built by
  `sigmoid_sparsity_schedule`; it knows the run it was built for
  (`total_steps`), so `mask_transform` can stop refreshing when the run
  ends and warn when the run's last masks fall short of `target`.
  """
  target: float
  total_epochs: int
  steps_per_epoch: int
  beta: float = 1.0
  granularity: str = "epoch"

  def epochs_at(self, step):
    """Where `step` lies in epochs, as the sigmoid reads it: whole epochs
    (`granularity="epoch"`) or a fraction of them (`"step"`). float32."""
    step = jnp.asarray(step, jnp.int32)
    if self.granularity == "step":
      return step.astype(jnp.float32) / jnp.float32(self.steps_per_epoch)
    return jnp.floor_divide(step, self.steps_per_epoch).astype(jnp.float32)

  @property
  def total_steps(self) -> int:
    """The run's number of optimizer steps, `total_epochs * steps_per_epoch`."""
    return self.total_epochs * self.steps_per_epoch

  def __call__(self, step):
    x = self.beta * (self.epochs_at(step) - self.total_epochs / 2)
    return jnp.float32(self.target) * jax.nn.sigmoid(x).astype(jnp.float32)


def sigmoid_sparsity_schedule(target: float,
                              total_epochs: int,
                              steps_per_epoch: int,
                              beta: float = 1.0,
                              granularity: str = "epoch"
                              ) -> SigmoidSparsity:
  """The sigmoid sparsity schedule of OptG.

  Sparsity is constant within an epoch and follows
  `target * sigmoid(beta * (epoch - total_epochs / 2))`, so the network is
  nearly dense early on and is pruned hardest around the middle of training.
  The masks the last epoch trains with, the model a run ends with, are
  drawn at `target * sigmoid(beta * (total_epochs / 2 - 1))`, just below
  `target`; short runs need a larger `beta` to get close to it (see
  `final_sparsity_shortfall`; `mask_transform` warns when the shortfall is
  over `TARGET_TOLERANCE`).

  With `granularity="step"` (opt-in, not in the paper) the epoch is not
  rounded down: `target * sigmoid(beta * (step / steps_per_epoch -
  total_epochs / 2))` rises a little at every step, so that a refresh
  more often than once an epoch prunes a little each time instead of all
  of an epoch's rise at its first refresh. It agrees with the paper's at
  every epoch boundary: refreshed once an epoch, both draw the same masks.

  Args:
    target: the target sparsity `P`, in [0, 1).
    total_epochs: the number of training epochs `E`, an int or an integral
      float (Flax configs' `num_epochs = 6.0`); 6.5 is a ValueError.
    steps_per_epoch: optimizer steps per epoch (an int or integral float).
    beta: the steepness of the sigmoid (1 in the paper's recipes).
    granularity: "epoch" (the paper) or "step".

  Returns:
    A jit-traceable schedule `step -> sparsity` (float32 scalar) that also
    carries its arguments and `total_steps`.
  """
  _check_target(target)
  total_epochs = _as_int(total_epochs, "total_epochs")
  steps_per_epoch = _as_int(steps_per_epoch, "steps_per_epoch")
  if (not isinstance(beta, (int, float, np.number)) or isinstance(beta, bool)
      or not np.isfinite(beta) or beta <= 0):
    raise ValueError(f"beta must be a positive number, got {beta!r}")
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                     f"{granularity!r}")
  return SigmoidSparsity(float(target), int(total_epochs),
                         int(steps_per_epoch), float(beta), granularity)


def final_sparsity_shortfall(target: float, total_epochs: int,
                             beta: float = 1.0) -> float:
  """How far the sparsity of the masks the last epoch trains with falls
  short of the target.

  With a refresh at least once an epoch, the last step trains with masks
  drawn in the last epoch, at `target * sigmoid(beta * (total_epochs / 2 -
  1))`, below `target` by `target * sigmoid(-beta * (total_epochs / 2 -
  1))`. (A refresh after the last step would draw masks at the next epoch's
  sparsity, but no step trains with them: they are not the run's model.)

  Args:
    target: the target sparsity.
    total_epochs: the number of training epochs.
    beta: the steepness of the sigmoid.

  Returns:
    The shortfall, a Python float.
  """
  return float(target / (1.0 + np.exp(beta * (total_epochs / 2 - 1))))


def last_refresh_step(total_steps: int, update_every: int) -> int:
  """The step whose refresh draws the masks the run's last step trains with.

  A refresh happens after step `t` when `(t + 1) % update_every == 0` and
  `t + 1 < total_steps` (a refresh after the last step would draw masks no
  step trains with). This is the largest such `t + 1`, or 0 when there is
  none: the run then trains with its initial, dense masks throughout.

  Args:
    total_steps: the run's number of optimizer steps.
    update_every: the refresh period in steps.
  """
  return (total_steps - 1) // update_every * update_every


def refresh_due(step: int, update_every: int,
                total_steps: Optional[int] = None) -> bool:
  """Whether the update of step `step` (0-based) refreshes the masks.

  `mask_transform` refreshes after step `t` when `(t + 1) % update_every
  == 0` and, with the run's `total_steps` known, `t + 1 < total_steps` (no
  refresh after the last step). A loop that knows its step on the host
  passes `refresh=refresh_due(step, ...)` to the chain's `update`, so that
  the compiled step holds the refresh only when it is due (see
  `mask_transform`'s `refresh`).

  Args:
    step: the step about to run (the number of updates so far).
    update_every: the refresh period in steps, as given to `mask_transform`.
    total_steps: the run's number of updates, as `mask_transform` knows it
      (its argument, or the sparsity schedule's own), or None: unbounded.
  """
  done = int(step) + 1
  if done % int(update_every):
    return False
  return total_steps is None or done < int(total_steps)


def shortfall_message(schedule: SigmoidSparsity, update_every: int,
                      names: Optional[Dict[str, str]] = None
                      ) -> Optional[str]:
  """Why a run's last masks fall short of its target, and what would do.

  The masks the last step trains with (`last_refresh_step`) are drawn at
  `schedule(last)`; a run whose `schedule.target - schedule(last)` exceeds
  `TARGET_TOLERANCE` cannot reach its target. The message names the values
  that would: a `beta`, a number of epochs, a refresh period that refreshes
  in the last epoch.

  Args:
    schedule: the run's sparsity schedule.
    update_every: the refresh period in steps.
    names: how the message calls `beta`, `total_epochs` and
      `update_every` (the harness passes its config fields).

  Returns:
    One line, or None when the run reaches its target within the tolerance.
  """
  names = {"beta": "beta", "total_epochs": "total_epochs",
           "update_every": "update_every", **(names or {})}
  target, epochs = schedule.target, schedule.total_epochs
  run_steps, per_epoch = schedule.total_steps, schedule.steps_per_epoch
  last = last_refresh_step(run_steps, update_every)
  if last == 0:
    return (f"{names['update_every']}={update_every} refreshes the masks "
            f"only after the run's {run_steps} steps ({names['total_epochs']}"
            f"={epochs} x {per_epoch} steps per epoch): no step would train "
            "with pruned masks; refresh at least once before the end")
  with jax.ensure_compile_time_eval():  # Also while a step is traced.
    reached = float(schedule(last))
  if target - reached <= TARGET_TOLERANCE:
    return None
  fixes = []
  last_epoch = last // per_epoch
  with jax.ensure_compile_time_eval():
    centre_offset = float(schedule.epochs_at(last)) - epochs / 2
  if centre_offset > 0:
    # target * sigmoid(-beta * offset) <= tolerance.
    beta = np.log(target / TARGET_TOLERANCE - 1.0) / centre_offset
    fixes.append(f"{names['beta']} >= {np.ceil(beta * 100) / 100:g} (now "
                 f"{schedule.beta:g})")
  if last_epoch < epochs - 1:
    # The last refresh falls before the last epoch.
    fixes.append(f"an {names['update_every']} (now {update_every}) that "
                 f"refreshes in the last epoch (at most {per_epoch}, the "
                 "steps of an epoch)")
    fixes.append(f"more {names['total_epochs']} (now {epochs})")
  else:
    # target * sigmoid(-beta * (epochs / 2 - 1)) <= tolerance.
    needed = int(np.ceil(2 * (np.log(target / TARGET_TOLERANCE - 1.0) /
                              schedule.beta + 1)))
    fixes.append(f"{names['total_epochs']} >= {needed} (now {epochs})")
  return (f"the masks the last step trains with (drawn after step {last} of "
          f"{run_steps}) are at sparsity {reached:.4f}, short of the target "
          f"{target:g} by {target - reached:.4f} (more than "
          f"{TARGET_TOLERANCE:g}); set " + " or ".join(fixes))


def epochwise_cosine_schedule(base_lr: float,
                              total_epochs: int,
                              steps_per_epoch: int,
                              warmup_epochs: int = 5) -> Schedule:
  """The reference's learning rate: set once per epoch, warm-up then cosine.

  With `e = floor(step / steps_per_epoch)`:

    lr(e) = base_lr * (e + 1) / warmup_epochs          if e < warmup_epochs
    lr(e) = 0.5 * base_lr * (1 + cos(pi * e / E))      otherwise

  so epoch 0 already runs at `base_lr / warmup_epochs`, and the cosine runs
  over all `E = total_epochs` epochs (it is not shifted by the warm-up: the
  first epoch after the warm-up starts below `base_lr`). The value is
  constant within an epoch. Steps past the last epoch give 0 (the epoch is
  clipped to `E`, where the cosine reaches 0). Compared with optax's per-step
  `warmup_cosine_decay_schedule` over the same epochs, it integrates to a few
  percent less (about 3% over the 100 epochs of ResNet-50).

  Args:
    base_lr: the peak learning rate.
    total_epochs: the number of training epochs `E`.
    steps_per_epoch: optimizer steps per epoch.
    warmup_epochs: the warm-up epochs `W`, in [0, total_epochs). Each
      count is an int or an integral float (6.0; not 6.5).

  Returns:
    A jit-traceable schedule `step -> learning rate` (float32 scalar).
  """
  total_epochs = _as_int(total_epochs, "total_epochs")
  steps_per_epoch = _as_int(steps_per_epoch, "steps_per_epoch")
  warmup_epochs = _as_int(
      warmup_epochs, "warmup_epochs",
      f"an integer in [0, total_epochs={total_epochs})", 0, total_epochs)
  if (not isinstance(base_lr, (int, float, np.number)) or
      isinstance(base_lr, bool) or not np.isfinite(base_lr) or base_lr < 0):
    raise ValueError(f"base_lr must be a non-negative number, got "
                     f"{base_lr!r}")

  def schedule(step):
    epoch = jnp.minimum(
        jnp.floor_divide(jnp.asarray(step, jnp.int32), steps_per_epoch),
        total_epochs)
    e = epoch.astype(jnp.float32)
    cosine = 0.5 * base_lr * (1.0 + jnp.cos(jnp.pi * e / total_epochs))
    if warmup_epochs:
      warmup = base_lr * (e + 1.0) / warmup_epochs
      cosine = jnp.where(epoch < warmup_epochs, warmup, cosine)
    return cosine.astype(jnp.float32)

  return schedule


def as_schedule(value: ScalarOrSchedule) -> Schedule:
  """Wraps a number as a constant schedule; passes a callable through."""
  if callable(value):
    return value
  return lambda step: jnp.asarray(value, jnp.float32)


# The steps `values_on_host` evaluates at once: one shape for every run, so
# that the operations are compiled once.
_CHUNK = 2 ** 16
# The most steps it calls a schedule that cannot be vectorised on, one call
# each (milliseconds a call: a longer run's is trusted, not checked).
PER_STEP_LIMIT = 20_000


def values_on_host(schedule: Schedule, start: int,
                   stop: int) -> Optional[np.ndarray]:
  """`schedule(t)` for the steps `t` in `[start, stop)`, on the host.

  Vectorised (`jax.vmap`, op by op, also while a step is traced) over
  chunks of one fixed size, so that runs of any length reuse the same
  compiled operations: 0.1 s for the 450,000 steps of an ImageNet run
  (and about 1 s once per process, to compile them). A schedule that
  branches in Python on its step is called once per step, on at most
  `PER_STEP_LIMIT` steps.

  Returns:
    float32 values, one row per step (a scalar schedule: one column), or
    None when the schedule cannot be evaluated on the host (it reads
    traced values, or raises on a concrete step), or cannot be vectorised
    and the range is longer than `PER_STEP_LIMIT`.
  """
  steps = np.arange(start, max(start, stop), dtype=np.int32)
  if not len(steps):
    return np.zeros((0, 1), np.float32)
  padded = np.pad(steps, (0, -len(steps) % _CHUNK), mode="edge")
  try:  # On the CPU, whose operations compile fastest.
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS without "cpu".
    cpu = None
  with jax.ensure_compile_time_eval(), jax.default_device(cpu):
    try:
      values = np.concatenate(
          [np.asarray(jax.vmap(schedule)(part), np.float32)
           for part in padded.reshape(-1, _CHUNK)])
    except Exception:  # pylint: disable=broad-except
      if len(steps) > PER_STEP_LIMIT:
        return None
      try:  # Python branches on the step: one call each.
        values = np.asarray([np.asarray(schedule(t), np.float32)
                             for t in steps])
      except Exception:  # pylint: disable=broad-except
        return None
  return values[:len(steps)].reshape(len(steps), -1)


def supermask_learning_rate(learning_rate: ScalarOrSchedule,
                            sparsity_schedule: Schedule,
                            target: float) -> Schedule:
  """The scores' learning rate, coupled to the sparsity schedule.

  `mask_lr(t) = lr(t) * s(t) / target`: scores move little while the network
  is dense and most while it is pruned hard.

  Args:
    learning_rate: the weights' learning rate, a number or schedule.
    sparsity_schedule: the sparsity schedule `s`.
    target: the target sparsity, in (0, 1).

  Returns:
    A jit-traceable schedule `step -> mask learning rate`.
  """
  _check_target(target)
  if target == 0:
    raise ValueError("target must be positive to scale the mask learning "
                     "rate by sparsity / target, got 0")
  lr = as_schedule(learning_rate)

  def schedule(step):
    return (jnp.asarray(lr(step), jnp.float32) * sparsity_schedule(step) /
            jnp.float32(target))

  return schedule
