"""Evaluations of a run: `evaluate` on the eval split, and `EvalHistory`,
every evaluation of the run in `WORKDIR/evaluations.json` with the best at
the target sparsity."""

import json
import os
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from optg_jax import data
from optg_jax.harness.config import TARGET_TOLERANCE


def evaluate(eval_step, state, masks, config, parallel,
             interrupt: Optional[Callable[[], bool]] = None):
  """Loss, top-1 and top-5 over the whole eval split (every process).

  Args:
    eval_step: the compiled `eval_step` (`parallel.compile`).
    state: the placed state (weights and batch statistics).
    masks: the placed masks to evaluate with; None for a dense run.
    config: the run's config (the eval split and its batches).
    parallel: `parallel.Pmap()` or `parallel.Jit()`.
    interrupt: polled after each batch; when it returns True the evaluation
      stops early and its figures are incomplete (the caller discards them).

  Returns:
    `eval_loss`, `eval_accuracy`, `eval_top5_accuracy`, `eval_examples` and,
    with masks, `eval_sparsity` (the sparsity of `masks`).
  """
  totals = None
  for batch in data.eval_iterator(
      config, process_index=jax.process_index(),
      process_count=jax.process_count(),
      local_device_count=parallel.local_device_count):
    sums = eval_step(state, masks, parallel.eval_batch(batch))
    sums = jax.tree.map(float, parallel.host(sums))
    totals = sums if totals is None else jax.tree.map(
        lambda a, b: a + b, totals, sums)
    if interrupt is not None and interrupt():
      break
  count = totals["count"]
  metrics = {"eval_loss": totals["loss"] / count,
             "eval_accuracy": totals["top1"] / count,
             "eval_top5_accuracy": totals["top5"] / count,
             "eval_examples": int(count)}
  if masks is not None:
    leaves = jax.tree.leaves(parallel.host(masks))
    total = sum(x.size for x in leaves)
    metrics["eval_sparsity"] = 1.0 - sum(
        int(np.count_nonzero(x)) for x in leaves) / max(total, 1)
  return metrics


EVAL_FIGURES = ("eval_accuracy", "eval_top5_accuracy", "eval_loss",
                "eval_sparsity")


class EvalHistory:
  """Every evaluation of a run, kept in `WORKDIR/evaluations.json`.

  Every evaluation uses the masks the steps before it trained with
  (`masks: "trained"`), as the reference's per-epoch validation does:
  between epochs, the masks the epoch just trained with, not those the
  refresh after its last step drew for the next epoch; at the end of the
  run, the model it ships. The best evaluation (highest top-1, the earliest
  on ties) is the reference's `best_acc1`, counted only among evaluations
  of masks drawn at the target sparsity (their scheduled sparsity within
  `TARGET_TOLERANCE` of it): on a schedule still rising, an early epoch of
  an almost dense network would win it. Before the target is reached there
  is no best.

  The file survives preemption; a resumed run drops the evaluations after
  its checkpoint (it computes them again), and the final evaluation of a
  run stopped early by `num_train_steps` (`final: true`), so that a run
  resumed further keeps the evaluations of one never stopped.
  """

  def __init__(self, workdir: str, start_step: int, target: float,
               read_only: bool = False):
    self.path = os.path.join(workdir, "evaluations.json")
    self.target = target
    self.read_only = read_only
    self.records = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.records = [r for r in json.load(f)
                        if r["step"] <= start_step and not r.get("final")]

  def add(self, step: int, epoch: float, scheduled: float, metrics,
          final: bool = False) -> Dict:
    """Records the evaluation after `step` of masks drawn at `scheduled`."""
    record = {"step": int(step), "epoch": float(epoch), "masks": "trained",
              "scheduled_sparsity": float(scheduled),
              **{k: float(metrics[k]) for k in EVAL_FIGURES if k in metrics},
              "eval_examples": int(metrics["eval_examples"])}
    if final:
      record["final"] = True
    self.records = [r for r in self.records if r["step"] != step] + [record]
    if jax.process_index() == 0 and not self.read_only:
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.records, f, indent=1)
      os.replace(self.path + ".tmp", self.path)
    return record

  def at(self, step: int) -> Optional[Dict]:
    """The evaluation after `step`, if there is one."""
    return next((r for r in self.records if r["step"] == step), None)

  def at_target(self, record: Dict) -> bool:
    """Whether an evaluation's masks were drawn at the target sparsity."""
    return (abs(record.get("scheduled_sparsity", 0.0) - self.target)
            <= TARGET_TOLERANCE)

  def best(self) -> Optional[Dict]:
    eligible = [r for r in self.records if self.at_target(r)]
    if not eligible:
      return None
    return max(eligible, key=lambda r: (r["eval_accuracy"], -r["step"]))

  def summary(self) -> Dict[str, Any]:
    best = self.best()
    return {"best_eval_accuracy": best and best["eval_accuracy"],
            "best_eval_step": best and best["step"],
            "evaluations": self.records}
