"""What a run reports: collapse findings, the sparse model's figures and
per-layer table, and the output files (`summary.json`, `sparsity.txt`)."""

import json
import os
from typing import Any, Dict, Optional

from absl import logging
import jax
import numpy as np

import optg_jax as optg
from optg_jax import flops
from optg_jax import nm


def collapse_findings(report, input_layer: Optional[str],
                      output_layer: Optional[str]) -> Dict[str, Any]:
  """What a sparsity report says about layers cut off by pruning.

  A collapsed layer (no kept weight) or a dead unit (an output unit or
  channel with no kept input weight) is harmless only where another path
  carries the signal past it, e.g. a residual branch beside its shortcut.
  The model's input layer collapsed, its classifier collapsed, or a class
  with no kept weight (a dead unit of the classifier) never are: those are
  `fatal`. Collapsed layers elsewhere are fatal in a plain chain (LeNet, VGG,
  MobileNet V1) and may be harmless in a residual network; they are listed
  as `collapsed_layers` for the reader to judge.

  Args:
    report: `optg.sparsity_report(masks)`.
    input_layer: the kernel path of the model's first layer (call order).
    output_layer: the kernel path of the model's classifier (last layer).

  Returns:
    `{"collapsed_layers": [...], "dead_units": {path: count},
    "fatal": [one-line reasons]}`.
  """
  fatal = []
  for name in report["collapsed_layers"]:
    if name == input_layer:
      fatal.append(f"the input layer {name} has no kept weight")
    elif name == output_layer:
      fatal.append(f"the classifier {name} has no kept weight")
  if output_layer in report["dead_units"] and (
      output_layer not in report["collapsed_layers"]):
    fatal.append(f"{report['dead_units'][output_layer]} classes have no kept "
                 f"weight in the classifier {output_layer}")
  return {"collapsed_layers": list(report["collapsed_layers"]),
          "dead_units": dict(report["dead_units"]), "fatal": fatal}


class CollapseWatch:
  """Warns once per change when a refresh cuts a layer or a unit off."""

  def __init__(self, input_layer, output_layer, update_every: int,
               t_end: Optional[int] = None):
    self.input_layer, self.output_layer = input_layer, output_layer
    self.update_every = update_every
    self.t_end = t_end  # RigL's and SET's last mask update, or None.
    self.last = None

  def check(self, report, step: int):
    findings = collapse_findings(report, self.input_layer, self.output_layer)
    # A new warning when the set of layers cut off changes, not the counts.
    key = (tuple(findings["collapsed_layers"]),
           tuple(sorted(findings["dead_units"])), tuple(findings["fatal"]))
    if key == self.last:
      return
    if self.last is not None or any(key):
      refresh = optg.last_refresh_step(step, self.update_every)
      if self.t_end is not None:
        refresh = min(refresh, self.t_end // self.update_every *
                      self.update_every)
      if not any(key):
        logging.warning("Mask refresh at step %d: no layer or unit is cut "
                        "off any more", refresh)
      else:
        dead = sorted(findings["dead_units"].items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{n} {c}" for n, c in dead[:4]) + (
            f", and {len(dead) - 4} more layers" if len(dead) > 4 else "")
        logging.warning(
            "Mask refresh at step %d (sparsity %.4f): collapsed layers: %s; "
            "%d dead units (no kept input weight): %s%s", refresh,
            report["sparsity"],
            ", ".join(findings["collapsed_layers"]) or "none",
            sum(findings["dead_units"].values()), listed or "none",
            ("; FATAL: " + "; ".join(findings["fatal"]))
            if findings["fatal"] else "")
    self.last = key


def model_layers(model, variables, image_shape):
  """The kernel paths of the conv and dense layers in call order."""
  macs = flops.count_macs(model, variables, (1,) + tuple(image_shape))
  return [layer.path for layer in macs.per_layer]


def model_summary(model, state, image_shape, masks,
                  structure: Optional[nm.NM]):
  """Actual sparsity, MACs and the per-layer table of the model the host
  state ships.

  Args:
    model: the Flax model.
    state: the host state (weights and batch statistics).
    image_shape: the shape of one input image.
    masks: the host masks the run ships (`Run.trained_masks`: those its
      last step trained with), or None for a dense run.
    structure: the run's N:M pattern, or None.
  """
  params = state.params
  variables = {"params": params, "batch_stats": state.batch_stats}
  macs = flops.count_macs(model, variables, (1,) + tuple(image_shape),
                          masks=masks)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  if masks is None:
    report = optg.sparsity_report(jax.tree.map(
        lambda p: np.ones(np.shape(p), bool) if np.ndim(p) >= 2 else None,
        params))
  else:
    report = optg.sparsity_report(masks)
  order = [layer.path for layer in macs.per_layer]
  findings = collapse_findings(report, order[0] if order else None,
                               order[-1] if order else None)
  nm_figures, nm_note = {}, ""
  if structure is not None and masks is not None:
    nm_kernels, dense_layers = nm_layers(masks, structure)
    nm_figures = {"structure": str(structure), "nm_layers": nm_kernels,
                  "dense_layers": dense_layers}
    nm_note = (f"\nN:M {structure} on {len(nm_kernels)} layers; not N:M: "
               f"{', '.join(dense_layers) or 'none'}\n")
  return {
      **nm_figures,
      "sparsity": report["sparsity"],
      "prunable_params": report["total"],
      "kept_params": report["kept"],
      "num_params": num_params,
      "dense_macs": int(macs.dense),
      "sparse_macs": int(macs.sparse),
      "collapsed_layers": findings["collapsed_layers"],
      "dead_units": findings["dead_units"],
      "fatal_collapse": findings["fatal"],
      # In call order (the layers MAC counting saw first, then any other).
      "layers": {name: {"kept": r["kept"], "total": r["total"],
                        "dead_units": r["dead_units"]}
                 for name, r in sorted(
                     report["layers"].items(),
                     key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                     else len(order)))},
  }, optg.sparsity_table(report) + collapse_note(findings) + nm_note


def nm_layers(masks, structure: nm.NM):
  """The kernels whose masks are N:M, and the others (dense: indivisible,
  or not yet pruned to N:M everywhere)."""
  nm_layers, other = [], []
  flat = jax.tree_util.tree_flatten_with_path(
      masks, is_leaf=lambda x: x is None)[0]
  for path, mask in flat:
    if mask is None:
      continue
    name = optg.path_to_str(path)
    (nm_layers if nm.is_nm(np.asarray(mask), structure.n, structure.m)
     else other).append(name)
  return nm_layers, other


def collapse_note(findings) -> str:
  """The lines under the sparsity table about layers cut off (the table
  itself names the collapsed layers and those with dead units)."""
  if not findings["collapsed_layers"] and not findings["dead_units"]:
    return "\nNo layer collapsed; every output unit keeps an input weight.\n"
  lines = [""]
  if findings["fatal"]:
    lines.append("FATAL: " + "; ".join(findings["fatal"]))
  lines.append("A collapsed layer or dead unit is harmless only where "
               "another path (a residual shortcut) carries the signal.")
  return "\n".join(lines) + "\n"


SUMMARY = "summary.json"
EVAL_SUMMARY = "eval_summary.json"  # Of `eval_only`.


def write_outputs(workdir, summary, table, summary_name: str = SUMMARY):
  """The summary and (if given) sparsity.txt, atomic, by process 0."""
  if jax.process_index() != 0:
    return
  outputs = [(summary_name, json.dumps(summary, indent=2) + "\n")]
  if table is not None:
    outputs.append(("sparsity.txt", table))
  for name, text in outputs:
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)


def run_summary(run, state_host, eval_metrics, wall_time):
  """`summary.json`'s figures of the model the host state ships, and its
  per-layer table (`sparsity.txt`)."""
  config = run.config
  model_figures, table = model_summary(
      run.model, state_host, run.info.image_shape,
      run.trained_masks(state_host), run.structure)
  final_step = int(state_host.step)
  summary = {
      **{k: float(v) for k, v in eval_metrics.items()
         if k != "eval_examples"},
      "eval_examples": eval_metrics["eval_examples"],
      "sparsity": model_figures["sparsity"],
      "target_sparsity": run.target,
      "scheduled_sparsity": run.scheduled_sparsity(final_step),
      # Every figure is of the masks the last step trained with (earlier
      # releases reported the refresh after it, which no step trained).
      "masks": "trained",
      **{k: v for k, v in model_figures.items() if k != "sparsity"},
      "steps": final_step,
      "epochs": final_step / run.steps_per_epoch,
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "parallelism": run.parallel.name,
      "model": config.model,
      "method": config.method,
      "dataset": config.dataset,
      "wall_time_s": wall_time,
  }
  return summary, table
