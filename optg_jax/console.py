"""The console of a training run: what a person reads (process 0).

One line per logging step (`Progress`: step, epoch, train metrics,
throughput, time left), the evaluations, the checkpoint saves and a short
summary at the end (`log_summary`). Metrics go to TensorBoard, all figures
to the workdir's JSON files; the console only tells the story.
"""

import contextlib
import time
from typing import Any, Dict, Optional

from absl import logging
import jax


@logging.skip_log_prefix
def info(message: str, *args):
  """An INFO line of process 0 (its log prefix names the caller)."""
  if jax.process_index() == 0:
    logging.info(message, *args)


def duration(seconds: float) -> str:
  """`m:ss`, or `h:mm:ss` from an hour on."""
  minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}"


def eval_figures(metrics) -> str:
  return (f"top-1 {metrics['eval_accuracy']:.4f}, top-5 "
          f"{metrics['eval_top5_accuracy']:.4f}, loss "
          f"{metrics['eval_loss']:.4f}")


def best_figure(best: Optional[Dict[str, Any]]) -> str:
  """`best top-1 0.9798 at step 460`, or why there is none yet."""
  if best is None:
    return "no evaluation at the target sparsity yet"
  return f"best top-1 {best['eval_accuracy']:.4f} at step {best['step']}"


def count(n: float) -> str:
  """4,096 -> 4.1k; 2,532,992 -> 2.53M."""
  for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if n >= factor:
      return f"{n / factor:.3g}{suffix}"
  return f"{n:g}"


class Progress:
  """One console line per logging step: step, epoch, train metrics, the
  throughput and the time left.

  The clock starts once the first step has run (compilation excluded). The
  throughput is that of the steps since the previous line, without the
  evaluations and checkpoint saves between them; the time left extrapolates
  the wall time per step since the clock started, those included.
  """

  def __init__(self, total_steps: int, steps_per_epoch: int, batch_size: int,
               start_step: int):
    self.total = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self._created = time.time()
    self._start = None  # (step, time) when the clock started.
    self._last = None  # (step, time, paused seconds) of the previous line.
    self._paused = 0.0
    self._start_step = start_step

  def start(self, metrics):
    """Starts the clock when `metrics`, of the run's first step, are ready."""
    jax.block_until_ready(metrics)
    now = time.time()
    self._start = (self._start_step + 1, now)
    self._last = (self._start_step + 1, now, 0.0)
    info("Compiled and ran the first step in %s",
         duration(now - self._created))

  @contextlib.contextmanager
  def paused(self, state):
    """Time spent inside is left out of the throughput.

    Args:
      state: the replicated state, waited for first: the steps dispatched
        before count as training time.
    """
    jax.block_until_ready(state)
    start = time.time()
    try:
      yield
    finally:
      self._paused += time.time() - start

  def report(self, step: int, scalars: Optional[Dict[str, float]]):
    """Logs the line of `step`; `scalars`: what `_check_finite_and_log`
    wrote."""
    if scalars is None or self._start is None:
      return
    now = time.time()
    line = (f"step {step}/{self.total} (epoch "
            f"{step / self.steps_per_epoch:.1f}) loss "
            f"{scalars['train_loss']:.4g} acc {scalars['train_accuracy']:.3f}")
    if "actual_sparsity" in scalars:
      line += f" sparsity {scalars['actual_sparsity']:.3f}"
    last_step, last_time, last_paused = self._last
    busy = now - last_time - (self._paused - last_paused)
    if step > last_step and busy > 0:
      line += (f" | {(step - last_step) * self.batch_size / busy:,.0f} "
               "img/s")
    if step > self._start[0]:
      per_step = (now - self._start[1]) / (step - self._start[0])
      line += f" | ETA {duration(per_step * (self.total - step))}"
    self._last = (step, now, self._paused)
    info("%s", line)


def log_summary(summary: Dict[str, Any], workdir: str,
                summary_name: Optional[str] = None):
  """The end of a run in a few lines; the summary file has all of it.

  `summary_name`: the file of an `eval_only` evaluation (None: a training
  run's summary.json).
  """
  evaluation = {k: summary[k] for k in ("eval_accuracy", "eval_top5_accuracy",
                                        "eval_loss")}
  best = ""
  if "best_eval_accuracy" in summary:
    best = " | " + best_figure(
        None if summary["best_eval_accuracy"] is None else
        {"eval_accuracy": summary["best_eval_accuracy"],
         "step": summary["best_eval_step"]})
  info("%s at step %d (the masks its last step trained with: the model "
       "this run ships): %s%s", "Evaluation (eval_only)" if summary_name
       else "Final evaluation", summary["steps"], eval_figures(evaluation),
       best)
  info("Sparsity %.4f (target %g): %s of %s prunable weights kept; "
       "%s of %s MACs (%.0f%%)", summary["sparsity"],
       summary["target_sparsity"], f"{summary['kept_params']:,}",
       f"{summary['prunable_params']:,}", count(summary["sparse_macs"]),
       count(summary["dense_macs"]),
       100 * summary["sparse_macs"] / max(summary["dense_macs"], 1))
  if "structure" in summary:
    info("N:M %s on %d layers; not N:M: %s", summary["structure"],
         len(summary["nm_layers"]), ", ".join(summary["dense_layers"]) or
         "none")
  if jax.process_index() == 0:
    if summary["collapsed_layers"]:
      logging.warning("Layers left with no kept weight at the end of the "
                      "run: %s", ", ".join(summary["collapsed_layers"]))
    if summary["fatal_collapse"]:
      logging.warning("The model is cut off: %s",
                      "; ".join(summary["fatal_collapse"]))
  if summary_name is None:
    info("Done in %s. summary.json, sparsity.txt and evaluations.json "
         "are in %s", duration(summary["wall_time_s"]), workdir)
  else:
    info("Done in %s. %s is in %s (the training's summary.json is "
         "unchanged)", duration(summary["wall_time_s"]), summary_name,
         workdir)
