"""The checks of `mask_transform`'s arguments, and of what `update` is given.

Each refuses an invalid value with a ValueError whose one-line message names
the fix (with `optax.inject_hyperparams`: which `static_args` to pass).
"""

import functools
import warnings

import jax
import numpy as np

from optg_jax import nm
from optg_jax import schedules
from optg_jax import topk

CRITERIA = ("optg", "magnitude", "taylor")
SCORE_NORMALIZATIONS = (None, "layer_rms")


def is_traced(x) -> bool:
  """Whether `x` is traced (`jit`, `shard_map`...) rather than a value.

  The one place that tells a traced `update` from one run op by op: only
  the latter may read values on the host and branch in Python.
  """
  return isinstance(x, jax.core.Tracer)


def is_array(x) -> bool:
  """Whether `x` is an array, traced (a `jax.Array`) or not."""
  return isinstance(x, (jax.Array, np.ndarray))


def check_refresh(refresh) -> None:
  """Refuses a `refresh` that is not None or a Python bool."""
  if refresh is None or isinstance(refresh, bool):
    return
  if isinstance(refresh, np.bool_) or is_array(refresh):
    raise ValueError(
        f"mask_transform: refresh must be None or a Python bool chosen on "
        f"the host (a static argument of the compiled step), got "
        f"{type(refresh).__name__}; pass refresh=optg.refresh_due(step, "
        "update_every, total_steps) with jax.jit(..., static_argnames="
        "'refresh'), or leave it None to decide on the device")
  raise ValueError(f"mask_transform: refresh must be None, True or False, "
                   f"got {refresh!r}")


def checked_options(sparsity, momentum, criterion, score_normalization,
                    min_kept_per_unit, axis_name, structure, indivisible):
  """Refuses `mask_transform`'s invalid options (ValueError); returns the
  unit floor as an int and the structure as an `nm.NM` (or None)."""
  if criterion not in CRITERIA:
    raise ValueError(f"unknown criterion {criterion!r}; valid criteria: "
                     f"{', '.join(CRITERIA)}")
  if not is_traced(momentum) and not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
  if not callable(sparsity):  # Arrays: refused by `checked_period`.
    topk.num_to_keep(sparsity, 1)  # Validates a constant sparsity early.
  if score_normalization not in SCORE_NORMALIZATIONS:
    raise ValueError(f"unknown score_normalization {score_normalization!r}; "
                     f"valid: {', '.join(map(repr, SCORE_NORMALIZATIONS))}")
  if isinstance(min_kept_per_unit, jax.Array):
    # optax.inject_hyperparams turns numeric arguments into arrays.
    raise ValueError("min_kept_per_unit must be a static Python int; with "
                     "optax.inject_hyperparams add 'min_kept_per_unit' to "
                     "static_args")
  min_kept_per_unit = min_kept_per_unit or 0
  if (not isinstance(min_kept_per_unit, int) or
      isinstance(min_kept_per_unit, bool) or min_kept_per_unit < 0):
    raise ValueError(f"min_kept_per_unit must be a non-negative integer, got "
                     f"{min_kept_per_unit!r}")
  if axis_name is not None and score_normalization:
    raise ValueError(f"score_normalization={score_normalization!r} is not "
                     "supported with axis_name (it would normalise each "
                     "shard on its own)")
  if isinstance(structure, str):
    structure = nm.NM.parse(structure)
  if structure is not None:
    if not isinstance(structure, nm.NM):
      raise ValueError(f"structure must be None, an optg.NM or an 'N:M' "
                       f"string, got {structure!r}")
    if min_kept_per_unit:
      raise ValueError("min_kept_per_unit is not supported with an N:M "
                       "structure (every unit keeps n of every m inputs)")
    if axis_name is not None:
      raise ValueError("axis_name (shard_map) is not supported with an N:M "
                       "structure yet; use jax.jit with sharded arrays")
    if indivisible not in nm.INDIVISIBLE:
      raise ValueError(f"indivisible must be one of {nm.INDIVISIBLE}, got "
                       f"{indivisible!r}")
  return min_kept_per_unit, structure


def checked_period(sparsity, update_every, total_steps):
  """`(update_every, total_steps)` checked, defaulted and made consistent.

  `update_every` None is 1; `total_steps` None is the schedule's own when
  it has one. A known run length is checked against the refresh period
  (the masks must be refreshed before the end), and a sigmoid schedule
  against its target (a warning when its last trained masks fall short).
  """
  if update_every is None:
    update_every = 1
  if is_array(update_every):
    # optax.inject_hyperparams turns numeric arguments into arrays.
    raise ValueError("update_every must be a static Python int, got an "
                     "array; with optax.inject_hyperparams pass "
                     "static_args=optg.STATIC_ARGS")
  if is_array(sparsity):
    raise ValueError(
        "sparsity must be a Python number or a schedule, got an array: "
        "optax.inject_hyperparams evaluates a sparsity schedule at the step "
        "before each refresh, so the masks would come one refresh late; "
        "pass static_args=optg.STATIC_ARGS so that the transform evaluates "
        "it at the step after")
  if (not isinstance(update_every, int) or isinstance(update_every, bool) or
      update_every < 1):
    raise ValueError(
        f"update_every must be a positive integer, got {update_every!r}")
  if is_array(total_steps):
    raise ValueError("total_steps must be a static Python int, got an "
                     "array; with optax.inject_hyperparams pass "
                     "static_args=optg.STATIC_ARGS")
  if total_steps is None:
    total_steps = getattr(sparsity, "total_steps", None)
  if total_steps is None:
    return update_every, None
  if (not isinstance(total_steps, (int, np.integer)) or
      isinstance(total_steps, bool) or total_steps < 1):
    raise ValueError(
        f"total_steps must be a positive integer, got {total_steps!r}")
  total_steps = int(total_steps)
  if schedules.last_refresh_step(total_steps, update_every) == 0:
    raise ValueError(
        f"update_every={update_every} never refreshes the masks within the "
        f"run's total_steps={total_steps}: every step would train the "
        "dense network; refresh at least once before the end")
  if (isinstance(sparsity, schedules.SigmoidSparsity) and
      total_steps == sparsity.total_steps):
    message = schedules.shortfall_message(sparsity, update_every)
    if message:
      warnings.warn(f"mask_transform: {message}", stacklevel=3)
  return update_every, total_steps


# What `check_schedules` allows: the words of its messages, and the test of
# an array of values.
_ALLOWED = {
    "sparsity": ("a number in [0, 1)", lambda v: (v >= 0) & (v < 1)),
    "mask_learning_rate": ("a finite number >= 0",
                           lambda v: np.isfinite(v) & (v >= 0)),
}


def check_schedules(sparsity, mask_learning_rate, total_steps,
                    criterion) -> None:
  """Refuses a sparsity or scores' learning rate out of range at a step.

  A number (or a concrete array, as `optax.inject_hyperparams` passes) is
  checked as it is: the sparsity by `topk.num_to_keep` in
  `checked_options`, the learning rate here (finite and >= 0; "optg" only,
  the other criteria do not read it). A schedule is evaluated on the host
  (`schedules.values_on_host`) at every step the run can ask it for, when
  `total_steps` is known: the sparsity at the refreshes' steps 1 to
  `total_steps - 1`, the learning rate at the updates' 0 to `total_steps -
  1`. Trusted: a traced value, a schedule of a run of unknown length, one
  that cannot be evaluated on the host (`values_on_host` returns None).
  """
  if criterion == "optg" and not callable(mask_learning_rate):
    value = mask_learning_rate
    if not is_traced(value):
      array = np.asarray(value)
      if (array.dtype.kind not in "fiu" or
          not _ALLOWED["mask_learning_rate"][1](array).all()):
        shown = array.item() if array.dtype.kind in "fiu" else value
        raise ValueError(f"mask_learning_rate must be a finite number >= 0 "
                         f"or a schedule, got {shown!r}")
  if total_steps is None:
    return  # The run's steps are unknown: nothing to evaluate.
  for name, schedule, start in (("sparsity", sparsity, 1),
                                ("mask_learning_rate", mask_learning_rate,
                                 0)):
    if not callable(schedule) or (name != "sparsity" and
                                  criterion != "optg"):
      continue
    try:
      bad = _first_bad_step(schedule, name, start, total_steps)
    except TypeError:  # An unhashable schedule: not cached.
      bad = _first_bad_step.__wrapped__(schedule, name, start, total_steps)
    if bad is not None:
      step, value = bad
      raise ValueError(
          f"mask_transform: the {name} schedule gives {value!s} at step "
          f"{step}, the first of the run's {total_steps} steps where it is "
          f"not {_ALLOWED[name][0]}")


@functools.lru_cache(maxsize=16)  # `inject_hyperparams` rebuilds per step.
def _first_bad_step(schedule, name, start, stop):
  """The first step of `[start, stop)` where `schedule` leaves its range,
  and the value there; None if there is none or it cannot be evaluated."""
  values = schedules.values_on_host(schedule, start, stop)
  if values is None:
    return None
  valid = _ALLOWED[name][1](values)
  steps = np.flatnonzero(~valid.all(axis=1))
  if not len(steps):
    return None
  row = steps[0]
  return start + int(row), values[row][~valid[row]][0]
