"""Sparsity reports of masks: per layer and global, as a dict or a table.

Besides the counts, a report says where pruning has cut a path through the
network: a layer with no kept weight is *collapsed*, and an output unit (the
last kernel axis: a dense layer's output, a conv's output channel) with no
kept input weight is *dead* (it outputs its bias alone, a constant).
"""

from typing import Any, Dict

import jax
import numpy as np

from optg_jax.tree import path_to_str
from optg_jax.tree import unwrap_nnx

PyTree = Any


def sparsity_report(masks: PyTree) -> Dict[str, Any]:
  """Counts kept and total entries of every mask and of all of them.

  Args:
    masks: a pytree of bool masks (`None` leaves, the unpruned ones, are
      skipped), e.g. `get_masks(opt_state)`. Device or host arrays, or Flax
      NNX variables holding them (named by the variable: 'conv1/kernel').

  Returns:
    A dict: `"layers"` maps each mask's '/'-joined path to
    `{"kept", "total", "sparsity", "units", "dead_units", "collapsed"}`
    (`units` is the size of the last axis, 1 for a mask of fewer than two
    dimensions; `collapsed` is `kept == 0`); `"kept"`, `"total"` and
    `"sparsity"` give the global figures over all masks (sparsity 0 when
    there are none); `"collapsed_layers"` lists the collapsed layers and
    `"dead_units"` maps each layer with dead units to their number.
  """
  layers = {}
  kept_all = total_all = 0
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
    kept_all += kept
    total_all += total
  return {
      "layers": layers,
      "kept": kept_all,
      "total": total_all,
      "sparsity": 1.0 - kept_all / total_all if total_all else 0.0,
      "collapsed_layers": [n for n, r in layers.items() if r["collapsed"]],
      "dead_units": {n: r["dead_units"] for n, r in layers.items()
                     if r["dead_units"]},
  }


def sparsity_table(report_or_masks: Any) -> str:
  """A fixed-width text table of a sparsity report, one row per layer.

  Args:
    report_or_masks: the dict of `sparsity_report`, or masks to report on.

  Returns:
    The table, ending with a global row, as a string. The "dead units"
    column counts output units with no kept input weight; a collapsed layer
    is marked "COLLAPSED".
  """
  report = report_or_masks
  if not (isinstance(report, dict) and "layers" in report):
    report = sparsity_report(report_or_masks)
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
  return "\n".join([line(header), rule] + [line(r) for r in rows] +
                   [rule, line(total)]) + "\n"
