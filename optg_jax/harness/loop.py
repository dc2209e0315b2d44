"""The training loop: `train_and_evaluate(config, workdir)`.

Read top to bottom: the run is resolved and the workdir claimed
(`train_and_evaluate`), the latest verified checkpoint restored, then the
steps with their periodic work (logging, evaluations between epochs,
checkpoints: `itstime`), and at the end the model the run ships (the masks
its last step trained with) is evaluated, summarised and written. SIGTERM
saves the step reached and stops (`Preempted`); `config.eval_only`
evaluates the latest checkpoint instead.
"""

import os
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import ml_collections
import numpy as np

import optg_jax as optg
from optg_jax.harness import checkpoints
from optg_jax.harness import console
from optg_jax import data
from optg_jax.harness.checkpoints import checkpoint_manager
from optg_jax.harness.checkpoints import restore_latest
from optg_jax.harness.cost import CostLedger
from optg_jax.harness.errors import ConfigError
from optg_jax.harness.errors import NonFiniteError
from optg_jax.harness.errors import WorkdirError
from optg_jax.harness.evaluation import EvalHistory
from optg_jax.harness.evaluation import evaluate
from optg_jax.harness.run import Run
from optg_jax.harness.summary import CollapseWatch
from optg_jax.harness.summary import EVAL_SUMMARY
from optg_jax.harness.summary import model_layers
from optg_jax.harness.summary import run_summary
from optg_jax.harness.summary import write_outputs
from optg_jax.harness.preemption import Preempted
from optg_jax.harness.preemption import SigtermFlag
from optg_jax.harness.workdir import Workdir


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains (or resumes, or with `config.eval_only` evaluates) and summarises.

  Nothing is written to `workdir` before the configuration, the dataset
  and the workdir are known to be usable: a config that cannot run or
  cannot reach its target, a workdir that is a file, in use by another run
  (`WORKDIR/run.lock`), or holding checkpoints of another configuration
  (`WORKDIR/config.json`) is refused first. A workdir holding checkpoints
  resumes from the latest verified one: params, batch statistics, optimizer
  state (scores and masks), step and, through the step, the position in the
  data.

  Args:
    config: the run's `ml_collections.ConfigDict` (see `configs/`).
    workdir: where checkpoints, metrics, `summary.json` and `sparsity.txt` go.

  Returns:
    The summary written to `WORKDIR/summary.json` (with `eval_only`:
    `WORKDIR/eval_summary.json`).

  Raises:
    ConfigError (and its subclasses WorkdirBusy, ConfigChanged),
    data.DatasetError: bad input, nothing written.
    NonFiniteError, CheckpointError: the run cannot go on.
    WorkdirError: the workdir cannot be written or vanished.
    Preempted: SIGTERM; a checkpoint of the step reached is saved.
  """
  start_time = time.time()
  run = Run(config)
  place = Workdir(workdir)
  place.check_usable()
  if config.eval_only and not checkpoints.checkpoint_steps(place.path):
    raise ConfigError(f"eval_only: no checkpoint to evaluate in "
                      f"{os.path.join(place.path, 'checkpoints')}")
  with SigtermFlag() as sigterm, place.claim(
      config, record=not config.eval_only):
    try:
      if config.eval_only:
        return _evaluate_only(run, place, sigterm, start_time)
      return _train(run, place, sigterm, start_time)
    except OSError as e:
      if isinstance(e, WorkdirError):
        raise
      raise WorkdirError(f"I/O error in workdir {place.path}: "
                         f"{checkpoints.describe_os_error(e)}") from None


def _restored(run: Run, workdir: str):
  """The checkpoint manager and the host state to start from."""
  manager = checkpoint_manager(workdir, run.config)
  state = restore_latest(manager, run.initial_state(), workdir,
                         config=run.config)
  return manager, state


def _interruptible(sigterm: SigtermFlag):
  """Polled between evaluation batches: SIGTERM stops an evaluation that
  can be done again (one process; several agree at the end only)."""
  if jax.process_count() > 1:
    return None
  return lambda: sigterm.received


def _evaluate_only(run: Run, place, sigterm: SigtermFlag,
                   start_time: float) -> Dict[str, Any]:
  """`eval_only`: evaluates the latest checkpoint into eval_summary.json.

  The training's own outputs (summary.json, sparsity.txt,
  evaluations.json) are left as they are.
  """
  _, state = _restored(run, place.path)
  step = int(state.step)
  _, p_eval = run.compiled_steps()
  state = run.parallel.place(jax.device_get(state))
  history = EvalHistory(place.path, step, run.target, read_only=True)
  eval_metrics = evaluate(p_eval, state, run.trained_masks(state),
                          run.config, run.parallel,
                          interrupt=_interruptible(sigterm))
  if sigterm.agreed(True):
    raise Preempted(step, saved=False)
  summary, _ = run_summary(run, run.parallel.host(state), eval_metrics,
                           time.time() - start_time)
  summary.update(history.summary())
  summary["eval_only"] = True
  place.check_present(step)
  write_outputs(place.path, summary, None, summary_name=EVAL_SUMMARY)
  console.log_summary(summary, place.path, summary_name=EVAL_SUMMARY)
  return summary


def _train(run: Run, place, sigterm: SigtermFlag,
           start_time: float) -> Dict[str, Any]:
  """Trains from the latest checkpoint to the end, then evaluates."""
  config, workdir = run.config, place.path
  manager, state = _restored(run, workdir)
  start_step = int(state.step)
  layers = model_layers(run.model, {"params": state.params,
                                    "batch_stats": state.batch_stats},
                        run.info.image_shape)
  watch = CollapseWatch(layers[0] if layers else None,
                         layers[-1] if layers else None, run.update_every,
                         run.t_end)
  p_train, p_eval = run.compiled_steps()
  state = run.parallel.place(jax.device_get(state))
  history = EvalHistory(workdir, start_step, run.target)
  ledger = CostLedger(workdir, start_step, run.cost)
  forward, masks_moved = None, True  # `f_S` of the masks in force.

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  logging.info("Training %s (%s, target sparsity %s) on %s: steps %d..%d, "
               "%d steps/epoch, %d devices (%s)", config.model, config.method,
               run.target, config.dataset, start_step, run.total_steps,
               run.steps_per_epoch, jax.device_count(), run.parallel.name)

  train_iter = data.train_iterator(
      config, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(),
      local_device_count=run.local_device_count)
  train_iter = run.parallel.train_batches(train_iter)
  hooks = []
  # steps_per_sec and uptime in TensorBoard; the console has `progress`.
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=run.total_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  if jax.process_index() == 0:
    hooks.append(report_progress)

  train_metrics = []
  last_saved = start_step
  last_evaluation = None  # (step, metrics) of this process's latest one.
  progress = console.Progress(run.total_steps, run.steps_per_epoch,
                             config.batch_size, start_step)
  for step in range(start_step, run.total_steps):
    batch = next(train_iter)
    done = step + 1
    if run.sparse and masks_moved:  # After a refresh: once, not per step.
      forward = run.cost.forward_of(run.parallel.one(
          optg.get_masks(state.opt_state)))
    refresh = run.refresh_of(step)
    state, metrics = p_train(state, batch, step)
    ledger.step(forward, refresh)
    masks_moved = refresh is not False
    if step == start_step:
      progress.start(metrics)  # Once compiled and run.
    train_metrics.append(metrics)
    for hook in hooks:
      hook(done)
    at_log = itstime(done, config.log_every_steps, run.total_steps)
    if at_log:
      place.check_present(done)
      progress.report(done, check_finite_and_log(
          run, writer, train_metrics, done, state, watch=watch,
          ledger=ledger))
      train_metrics = []
    if run.eval_due(done):
      # Before a SIGTERM stops the run: the masks it needs are in no
      # checkpoint.
      with progress.paused(state):
        last_evaluation = (done, _epoch_evaluation(run, state, p_eval,
                                                   writer, history, done))
    if sigterm.agreed(at_log):
      check_finite(run, train_metrics, done)
      if last_saved != done:
        place.check_present(done)
        _save(run, manager, state, ledger, done)
      writer.flush()
      raise Preempted(done)
    last_saved = _save_if_due(run, place, state, manager, done, last_saved,
                              train_metrics, progress, ledger)

  if train_metrics:
    check_finite_and_log(run, writer, train_metrics, run.total_steps, state,
                         watch=watch, ledger=ledger)
  final_step = int(run.parallel.host(state.step))
  if last_saved != final_step:
    place.check_present(final_step)
    _save(run, manager, state, ledger, final_step)
  # The model the run ships: the masks its last step trained with. The
  # evaluation after the last epoch, if this process just made it, is it.
  if last_evaluation is not None and last_evaluation[0] == final_step:
    eval_metrics = last_evaluation[1]
  else:
    eval_metrics = evaluate(p_eval, state, run.trained_masks(state), config,
                            run.parallel, interrupt=_interruptible(sigterm))
  if sigterm.agreed(True):
    # Saved above: the same command evaluates it again.
    writer.flush()
    raise Preempted(final_step)
  writer.write_scalars(run.total_steps, {
      "final_" + k: v for k, v in eval_metrics.items()})
  fingerprints = run.parallel.fingerprints(state)
  if len(set(fingerprints)) > 1:
    logging.error("The replicas of the model differ at the end of the run: "
                  "%s", fingerprints)
  summary, table = run_summary(run, run.parallel.host(state), eval_metrics,
                               time.time() - start_time)
  if history.at(final_step) is None or not run.eval_due(final_step):
    history.add(final_step, final_step / run.steps_per_epoch,
                run.scheduled_sparsity(final_step), eval_metrics,
                final=not run.eval_due(final_step))
  summary.update(history.summary())
  summary.update(training_cost(run, ledger))
  summary["replicas_identical"] = len(set(fingerprints)) == 1
  summary["replica_fingerprints"] = fingerprints
  writer.write_scalars(run.total_steps, {
      "actual_sparsity": summary["sparsity"],
      **({"best_eval_accuracy": summary["best_eval_accuracy"]}
         if summary["best_eval_accuracy"] is not None else {})})
  writer.flush()
  place.check_present(final_step)
  write_outputs(workdir, summary, table)
  console.log_summary(summary, workdir)
  return summary


def _epoch_evaluation(run, state, p_eval, writer, history, done):
  """Evaluates with the masks the finished epoch trained with; records it."""
  metrics = evaluate(p_eval, state, run.trained_masks(state), run.config,
                     run.parallel)
  history.add(done, done / run.steps_per_epoch,
              run.scheduled_sparsity(done), metrics)
  best = history.best()
  writer.write_scalars(done, {
      **{k: v for k, v in metrics.items() if k != "eval_examples"},
      **({"best_eval_accuracy": best["eval_accuracy"]} if best else {})})
  console.info("Evaluation at step %d (epoch %.1f, the masks it trained "
               "with): %s | %s", done, done / run.steps_per_epoch,
               console.eval_figures(metrics), console.best_figure(best))
  return metrics


def _save_if_due(run, place, state, manager, done, last_saved,
                 train_metrics, progress: console.Progress,
                 ledger: Optional[CostLedger] = None) -> int:
  """Saves a checkpoint inside the loop when one is due; returns the last
  saved step."""
  if done >= run.total_steps:
    return last_saved  # The end of the run saves.
  if itstime(done, run.config.checkpoint_every_steps):
    check_finite(run, train_metrics, done)
    place.check_present(done)
    with progress.paused(state):
      _save(run, manager, state, ledger, done)
    return done
  return last_saved


def check_finite(run: Run, train_metrics, step: int):
  """Stops the run (NonFiniteError) if a step since the last check had a
  non-finite loss or gradients. Returns the steps' metrics on the host."""
  if not train_metrics:
    return []
  host = jax.device_get([run.parallel.one(m) for m in train_metrics])
  first_step = step - len(host)  # 0-based index of host[0]'s step.
  for i, m in enumerate(host):
    if m["finite"] < 1:
      what = (f"non-finite gradients (the loss, {float(m['loss']):.6g}, "
              "is finite)" if np.isfinite(m["loss"]) else
              f"a non-finite loss ({float(m['loss'])})")
      raise NonFiniteError(
          f"{what} at step {first_step + i}; stopping without saving a "
          "checkpoint")
  return host


def check_finite_and_log(run: Run, writer, train_metrics, step, state,
                         watch: Optional[CollapseWatch] = None,
                         ledger: Optional[CostLedger] = None):
  """`check_finite`, then writes the averaged train metrics.

  With a `ledger`, the steps' MACs noted in it are added up.

  With a `watch`, the masks in force are checked for collapsed layers and
  dead units, and a change since the last check is logged as a warning.

  Returns:
    The scalars written (None when there was nothing to write).
  """
  host = check_finite(run, train_metrics, step)
  if not host:
    return None
  if ledger is not None:
    ledger.flush()
  summary = {f"train_{k}": float(np.mean([m[k] for m in host]))
             for k in ("loss", "accuracy")}
  last = host[-1]
  for k in ("learning_rate", "mask_learning_rate", "scheduled_sparsity"):
    summary[k] = float(last[k])
  if run.sparse:
    # The masks the steps just logged trained with.
    report = optg.sparsity_report(run.parallel.host(
        run.trained_masks(state)))
    summary["actual_sparsity"] = report["sparsity"]
    summary["collapsed_layers"] = len(report["collapsed_layers"])
    summary["dead_units"] = sum(report["dead_units"].values())
    if watch is not None:
      watch.check(report, step)
  writer.write_scalars(step, summary)
  return summary


def itstime(step: int, every: int, total: Optional[int] = None) -> bool:
  """Whether periodic work (every `every` steps, and at the last step
  `total` when given) is due after `step` steps."""
  return (every > 0 and step % every == 0) or (total is not None and
                                               step == total)


def _save(run: Run, manager, state, ledger: Optional[CostLedger] = None,
          step: Optional[int] = None):
  """Saves the placed state's host copy in the workdir's checkpoints.

  With a `ledger`, first records its MACs up to `step`.
  """
  if ledger is not None:
    ledger.record(step)
  checkpoints.save_in_workdir(manager, run.parallel.host(state), run.config)


def training_cost(run: Run, ledger: CostLedger) -> Dict[str, Any]:
  """The run's training MACs for `summary.json` (None: unknown, a run
  resumed from a checkpoint older than its ledger)."""
  batch = run.config.batch_size
  total = None if ledger.total is None else ledger.total * batch
  dense = float(run.cost.dense_step()) * batch * run.total_steps
  return {"training_macs": total, "dense_training_macs": dense,
          "training_macs_vs_dense": (None if total is None else
                                     total / dense)}
