"""Schedules of OptG: sparsity, mask learning rate, the reference's lr.

Sparsity rises along a sigmoid centred on the middle of training, in whole
epochs: `s(t) = P * sigmoid(beta * (floor(t / steps_per_epoch) - E / 2))`.
The scores' learning rate follows the weights' one, scaled by how far pruning
has gone: `mask_lr(t) = lr(t) * s(t) / P`. The weights' learning rate of the
paper's recipes is `epochwise_cosine_schedule`: set once per epoch, a linear
warm-up then a cosine over all the epochs.
"""

from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = Union[float, int, Schedule]


def _check_target(target: float, name: str = "target") -> None:
  if not isinstance(target, (int, float, np.number)) or isinstance(target, bool):
    raise ValueError(f"{name} must be a number in [0, 1), got {target!r}")
  if np.isnan(target) or not 0.0 <= float(target) < 1.0:
    raise ValueError(f"{name} must be a number in [0, 1), got {target!r}")


def _check_positive_int(value, name: str) -> None:
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value <= 0):
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def sigmoid_sparsity_schedule(target: float,
                              total_epochs: int,
                              steps_per_epoch: int,
                              beta: float = 1.0) -> Schedule:
  """The sigmoid sparsity schedule of OptG.

  Sparsity is constant within an epoch and follows
  `target * sigmoid(beta * (epoch - total_epochs / 2))`, so the network is
  nearly dense early on, is pruned hardest around the middle of training and
  ends at `target * sigmoid(beta * total_epochs / 2)`, just below `target`.
  Short runs need a larger `beta` to get close to `target`:
  see `final_sparsity_shortfall`.

  Args:
    target: the target sparsity `P`, in [0, 1).
    total_epochs: the number of training epochs `E`.
    steps_per_epoch: optimizer steps per epoch.
    beta: the steepness of the sigmoid (1 in the paper's recipes).

  Returns:
    A jit-traceable schedule `step -> sparsity` (float32 scalar).
  """
  _check_target(target)
  _check_positive_int(total_epochs, "total_epochs")
  _check_positive_int(steps_per_epoch, "steps_per_epoch")
  if not np.isfinite(beta) or beta <= 0:
    raise ValueError(f"beta must be a positive number, got {beta!r}")

  def schedule(step):
    epoch = jnp.floor_divide(jnp.asarray(step, jnp.int32), steps_per_epoch)
    x = beta * (epoch.astype(jnp.float32) - total_epochs / 2)
    return jnp.float32(target) * jax.nn.sigmoid(x).astype(jnp.float32)

  return schedule


def final_sparsity_shortfall(target: float, total_epochs: int,
                             beta: float = 1.0) -> float:
  """How far the last epoch's sparsity falls short of the target.

  The masks of the last refresh are drawn at the sparsity of the epoch after
  the last one, `target * sigmoid(beta * total_epochs / 2)`, which is below
  `target` by `target * sigmoid(-beta * total_epochs / 2)`.

  Args:
    target: the target sparsity.
    total_epochs: the number of training epochs.
    beta: the steepness of the sigmoid.

  Returns:
    The shortfall, a Python float.
  """
  return float(target / (1.0 + np.exp(beta * total_epochs / 2)))


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
    warmup_epochs: the warm-up epochs `W`, in [0, total_epochs).

  Returns:
    A jit-traceable schedule `step -> learning rate` (float32 scalar).
  """
  _check_positive_int(total_epochs, "total_epochs")
  _check_positive_int(steps_per_epoch, "steps_per_epoch")
  if (not isinstance(warmup_epochs, (int, np.integer)) or
      isinstance(warmup_epochs, bool) or
      not 0 <= warmup_epochs < total_epochs):
    raise ValueError(f"warmup_epochs must be an integer in [0, total_epochs="
                     f"{total_epochs}), got {warmup_epochs!r}")
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
