"""Sparsity reports of masks: per layer and global, as a dict or a table.

Besides the counts, a report says where pruning has cut a path through the
network: a layer with no kept weight is *collapsed*, and an output unit (the
last kernel axis: a dense layer's output, a conv's output channel) with no
kept input weight is *dead* (it outputs its bias alone, a constant).

Given the run's context, a report also says whether the masks are those the
run meant to train: the target sparsity, the sparsity the schedule planned
for the steps the loop ran, and the optimizer's own count of updates. A run
stopped early (Flax's `num_train_steps`), a schedule that never reaches its
target, or an optimizer that skipped steps (a dynamic loss scale keeping the
old state on a non-finite step) is then an alert, not a number to spot.
"""

from typing import Any, Dict, List, Optional

import jax
import numpy as np

from optg_jax import masks as masks_lib
from optg_jax import schedules
from optg_jax.transform import OptGState
from optg_jax.tree import path_to_str
from optg_jax.tree import unwrap_nnx

PyTree = Any


def _holds_optg_state(tree: PyTree) -> bool:
  is_state = lambda x: isinstance(x, OptGState)
  return any(is_state(x) for x in jax.tree.leaves(tree, is_leaf=is_state))


def _masks_and_count(masks_or_opt_state: PyTree):
  """The masks to report and the optimizer's count (None: not known)."""
  if not _holds_optg_state(masks_or_opt_state):
    return masks_or_opt_state, None
  count = np.asarray(jax.device_get(
      masks_lib.get_optg_state(masks_or_opt_state).count))
  if count.ndim:
    raise ValueError(
        f"the optimizer state has a leading axis (its count has shape "
        f"{count.shape}: pmap replicas?); report on one replica, e.g. "
        "flax.jax_utils.unreplicate(state).opt_state")
  return masks_lib.trained_masks(masks_or_opt_state), int(count)


def _as_int(value, name: str) -> Optional[int]:
  if value is None:
    return None
  array = np.asarray(jax.device_get(value))
  if array.ndim or array.dtype.kind not in "iu" or array < 0:
    raise ValueError(f"{name} must be an integer >= 0 (one replica's, not "
                     f"a pmap-replicated array), got {value!r}")
  return int(array)


def _layers(masks: PyTree) -> Dict[str, Dict[str, Any]]:
  layers = {}
  for path, mask in jax.tree_util.tree_leaves_with_path(unwrap_nnx(masks)):
    mask = np.asarray(jax.device_get(mask))
    kept, total = int(np.count_nonzero(mask)), int(mask.size)
    if mask.ndim >= 2:
      alive = mask.reshape(-1, mask.shape[-1]).any(axis=0)
    else:
      alive = np.array([kept > 0])
    layers[path_to_str(path)] = {
        "kept": kept,
        "total": total,
        "sparsity": 1.0 - kept / total if total else 0.0,
        "units": int(alive.size),
        "dead_units": int(alive.size - np.count_nonzero(alive)),
        "collapsed": kept == 0,
    }
  return layers


def _scheduled(schedule, steps: Optional[int], update_every: int):
  """The sparsity `schedule` plans for the masks the `steps`-th step trains
  with, and the run's length the schedule knows (or None)."""
  run_steps = getattr(schedule, "total_steps", None)
  if not callable(schedule):
    return float(schedule), run_steps
  if steps is None:
    raise ValueError("a sparsity schedule needs the steps the run made: "
                     "pass step= (or count=, or the optimizer state)")
  # The masks of the last step were drawn by the refresh after step `r - 1`
  # at `schedule(r)`; before the first refresh they are the dense initial
  # ones. No refresh follows the run's last step.
  drawn_at = schedules.last_refresh_step(steps, update_every)
  if run_steps is not None:
    drawn_at = min(drawn_at, schedules.last_refresh_step(run_steps,
                                                         update_every))
  if drawn_at <= 0:
    return 0.0, run_steps
  with jax.ensure_compile_time_eval():
    return float(np.asarray(schedule(drawn_at))), run_steps


def _pct(x: float) -> str:
  return f"{100 * x:.2f}%"


def _alerts(report: Dict[str, Any]) -> List[str]:
  """One line for each thing the report finds wrong."""
  alerts = []
  # A sparsity short by more than the tolerance, or than the rounding of
  # an exact top-k count (half a weight).
  slack = schedules.TARGET_TOLERANCE + (0.5 / report["total"]
                                        if report["total"] else 0.0)
  actual = _pct(report["sparsity"])
  steps = report.get("step", report.get("count"))
  run_steps = report.get("schedule_steps")
  if "target" in report and report["short_of_target"] > slack:
    why = ""
    if steps is not None and run_steps is not None and steps < run_steps:
      why = (f": the run is at step {steps} of the schedule's {run_steps} "
             "(a run stopped early ends here: give the schedule the steps "
             "the run really runs)")
    alerts.append(f"SHORT OF TARGET: the masks are at {actual}, "
                  f"{100 * report['short_of_target']:.2f} points below the "
                  f"target {_pct(report['target'])}{why}")
  if "scheduled" in report and report["behind_schedule"] > slack:
    at = f" for step {steps}" if steps is not None else ""
    alerts.append(f"BEHIND SCHEDULE: the masks are at {actual}, "
                  f"{100 * report['behind_schedule']:.2f} points below the "
                  f"{_pct(report['scheduled'])} scheduled{at}")
  if report.get("lag"):
    lag, count, step = report["lag"], report["count"], report["step"]
    if lag > 0:
      steps_word = "step" if lag == 1 else "steps"
      alerts.append(
          f"COUNT LAGS: the optimizer counted {count} updates in {step} "
          f"steps ({lag} kept the old state: a dynamic loss scale skipping "
          f"a non-finite step?), so its schedule and refreshes run {lag} "
          f"{steps_word} behind the loop")
    else:
      alerts.append(f"COUNT AHEAD: the optimizer counted {count} updates in "
                    f"{step} steps; pass step= the loop's number of updates")
  if report.get("collapsed_layers"):
    alerts.append("COLLAPSED (no kept weight): " +
                  ", ".join(report["collapsed_layers"]))
  return alerts


def sparsity_report(masks: PyTree,
                    *,
                    target: Optional[float] = None,
                    schedule: Optional[schedules.ScalarOrSchedule] = None,
                    step: Optional[int] = None,
                    count: Optional[int] = None,
                    update_every: int = 1) -> Dict[str, Any]:
  """Counts kept and total entries of every mask and of all of them.

  With the run's context (`target`, `schedule`, `step`, or an optimizer
  state, whose count it reads), the report also compares the actual
  sparsity with the target and with the schedule's plan, and the
  optimizer's count with the loop's steps; `"alerts"` says, one line each,
  what is wrong. The actual sparsity is that of the masks given (for an
  optimizer state, those its last step trained with); with `structure`
  (N:M) the transform's sparsity is that of the N:M-able weights, so layers
  left dense make the actual sparsity lower.

  Args:
    masks: a pytree of bool masks (`None` leaves, the unpruned ones, are
      skipped), e.g. `trained_masks(opt_state)`. Device or host arrays, or
      Flax NNX variables holding them (named by the variable:
      'conv1/kernel'). Or an optimizer state (one replica's: not a pmap
      replicated one): its `trained_masks`, and its count as `count`.
    target: the run's target sparsity (default: the schedule's `target`,
      if it has one, as `sigmoid_sparsity_schedule`'s).
    schedule: the sparsity given to `mask_transform`: a number, or the
      schedule `step -> sparsity`, read where the refresh that drew the
      masks of the `step`-th step (or `count`-th update) would read it.
    step: the steps the training loop has made (Flax's `TrainState.step`;
      with gradient accumulation, the optimizer updates it meant to make).
    count: the optimizer's count of updates, when `masks` are masks.
    update_every: the refresh period given to `mask_transform`, to place
      the refreshes on the schedule (only the first period depends on it
      when the period divides an epoch of `sigmoid_sparsity_schedule`).

  Returns:
    A dict: `"layers"` maps each mask's '/'-joined path to
    `{"kept", "total", "sparsity", "units", "dead_units", "collapsed"}`
    (`units` is the size of the last axis, 1 for a mask of fewer than two
    dimensions; `collapsed` is `kept == 0`); `"kept"`, `"total"` and
    `"sparsity"` give the global figures over all masks (sparsity 0 when
    there are none); `"collapsed_layers"` lists the collapsed layers and
    `"dead_units"` maps each layer with dead units to their number. With a
    target: `"target"` and `"short_of_target"` (target - sparsity); with a
    schedule: `"scheduled"`, `"behind_schedule"` (scheduled - sparsity)
    and `"schedule_steps"` (its run's steps, or None); `"step"`, `"count"`
    when known, and `"lag"` (step - count) with both. `"alerts"`: one
    line for each of: the sparsity short of the target or behind the
    schedule by more than `TARGET_TOLERANCE` (plus half a weight's share,
    the rounding of the top-k's count), the count behind or ahead of the
    step, collapsed layers. Empty when none.

  Raises:
    ValueError: a schedule with no step or count to read it at; a step
      or count that is not an integer (a pmap-replicated one); a
      replicated optimizer state; a target outside [0, 1); an
      `update_every` that is not a positive integer.
  """
  if (not isinstance(update_every, (int, np.integer)) or
      isinstance(update_every, bool) or update_every < 1):
    raise ValueError(f"update_every must be a positive integer, got "
                     f"{update_every!r}")
  masks, state_count = _masks_and_count(masks)
  count = state_count if count is None else _as_int(count, "count")
  step = _as_int(step, "step")
  layers = _layers(masks)
  kept_all = sum(r["kept"] for r in layers.values())
  total_all = sum(r["total"] for r in layers.values())
  report = {
      "layers": layers,
      "kept": kept_all,
      "total": total_all,
      "sparsity": 1.0 - kept_all / total_all if total_all else 0.0,
      "collapsed_layers": [n for n, r in layers.items() if r["collapsed"]],
      "dead_units": {n: r["dead_units"] for n, r in layers.items()
                     if r["dead_units"]},
  }
  if target is None:
    target = getattr(schedule, "target", None)
  if target is not None:
    target = float(target)
    if not 0.0 <= target < 1.0:
      raise ValueError(f"target must be a number in [0, 1), got {target!r}")
    report["target"] = target
    report["short_of_target"] = target - report["sparsity"]
  if schedule is not None:
    steps = step if step is not None else count
    scheduled, run_steps = _scheduled(schedule, steps, update_every)
    report["scheduled"] = scheduled
    report["behind_schedule"] = scheduled - report["sparsity"]
    report["schedule_steps"] = run_steps
  if step is not None:
    report["step"] = step
  if count is not None:
    report["count"] = count
  if step is not None and count is not None:
    report["lag"] = step - count
  report["alerts"] = _alerts(report)
  return report


def _summary(report: Dict[str, Any]) -> List[str]:
  """The lines under a table: the run's context, dead units, alerts."""
  lines = []
  figures = []
  if "target" in report:
    figures.append(f"target {_pct(report['target'])}")
  if "scheduled" in report:
    steps = report.get("step", report.get("count"))
    of = (f" of {report['schedule_steps']}"
          if report.get("schedule_steps") is not None else "")
    at = f" (step {steps}{of})" if steps is not None else ""
    figures.append(f"scheduled {_pct(report['scheduled'])}{at}")
  if figures:
    lines.append("sparsity: " + ", ".join(
        figures + [f"actual {_pct(report['sparsity'])}"]))
  if "count" in report:
    lines.append(f"optimizer updates: {report['count']}" + (
        f" in {report['step']} steps" if "step" in report else ""))
  if report.get("dead_units"):
    lines.append("dead units (no kept input weight): " + ", ".join(
        f"{name} {n}" for name, n in report["dead_units"].items()))
  alerts = report.get("alerts")
  if alerts is None:  # A report of an older version.
    alerts = _alerts(report)
  return lines + alerts


def sparsity_table(report_or_masks: Any,
                   *,
                   target: Optional[float] = None,
                   schedule: Optional[schedules.ScalarOrSchedule] = None,
                   step: Optional[int] = None,
                   count: Optional[int] = None,
                   update_every: int = 1) -> str:
  """A fixed-width text table of a sparsity report, one row per layer.

  Args:
    report_or_masks: the dict of `sparsity_report`, or what it takes
      (masks, or an optimizer state) to report on.
    target: see `sparsity_report` (with masks or a state only).
    schedule: see `sparsity_report`.
    step: see `sparsity_report`.
    count: see `sparsity_report`.
    update_every: see `sparsity_report`.

  Returns:
    The table, ending with a global row ("all prunable"), as a string. The
    "dead units" column counts output units with no kept input weight; a
    collapsed layer is marked "COLLAPSED". Under the global row, after an
    empty line, when there is anything to say: the target, scheduled and
    actual sparsity; the optimizer's updates and the loop's steps; the
    layers with dead units; then the report's alerts, one a line, each
    starting with a word in capitals (SHORT OF TARGET, BEHIND SCHEDULE,
    COUNT LAGS, COLLAPSED, ...).

  Raises:
    ValueError: context arguments with a report (give them to
      `sparsity_report`), or as `sparsity_report` does.
  """
  context = dict(target=target, schedule=schedule, step=step, count=count)
  report = report_or_masks
  if isinstance(report, dict) and "layers" in report:
    if any(v is not None for v in context.values()) or update_every != 1:
      raise ValueError("sparsity_table got a report and the run's context: "
                       "pass target=, schedule=, step=, count= to "
                       "sparsity_report")
  else:
    report = sparsity_report(report_or_masks, update_every=update_every,
                             **context)

  def dead(r):
    if "units" not in r:
      return "-"
    return f"{r['dead_units']}/{r['units']}" + (
        " COLLAPSED" if r.get("collapsed") else "")

  rows = [(name, f"{r['kept']:,}", f"{r['total']:,}",
           f"{100 * r['sparsity']:.2f}%", dead(r))
          for name, r in report["layers"].items()]
  total = ("all prunable", f"{report['kept']:,}", f"{report['total']:,}",
           f"{100 * report['sparsity']:.2f}%", "")
  header = ("layer", "kept", "total", "sparsity", "dead units")
  widths = [max(len(row[i]) for row in [header, total] + rows)
            for i in range(len(header))]

  def line(row):
    return "  ".join([row[0].ljust(widths[0])] +
                     [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
                     ).rstrip()

  rule = "  ".join("-" * w for w in widths)
  summary = _summary(report)
  return "\n".join([line(header), rule] + [line(r) for r in rows] +
                   [rule, line(total)] + ([""] + summary if summary else [])
                   ) + "\n"
