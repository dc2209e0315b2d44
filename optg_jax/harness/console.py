"""The console of a training run: what a person reads (process 0).

One line per logging step (`Progress`: step, epoch, train metrics,
throughput, time left), the evaluations, the checkpoint saves and a short
summary at the end (`log_summary`). Metrics go to TensorBoard, all figures
to the workdir's JSON files; the console only tells the story.

The command-line tools share one console rule (`set_up`): by default
the INFO lines of this repository's code, and the warnings and errors of all,
reach the console; the libraries' INFO lines (orbax, clu, JAX, TensorFlow),
their Python warnings and what TensorFlow's native code prints on import
only with `--verbosity=1` (their DEBUG lines with 2).
"""

import contextlib
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
import time
from typing import Any, Dict, Optional
import warnings

from absl import logging
import jax

# The INFO lines of these directories (optg_jax, launch, benchmarks) reach
# the console by default; those of the libraries only with --verbosity=1.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = tuple(os.path.realpath(d) + os.sep for d in (
    os.path.dirname(importlib.util.find_spec("optg_jax").origin),
    os.path.join(_ROOT, "launch"), os.path.join(_ROOT, "benchmarks")))
# What TensorFlow's native code prints on import whatever the log level.
_NATIVE_CHATTER = re.compile(
    r"I\d{4} [\d:.]+ +\d+ \S+:\d+\] |"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called")
# Set on the records of `Progress` (`extra`), which a study's console keeps.
PROGRESS = "optg_progress"


@logging.skip_log_prefix
def info(message: str, *args, progress=False):
  """An INFO line of process 0 (its log prefix names the caller).

  `progress`: True for a run's progress lines, "start" for the first one
  (what a study's console keeps).
  """
  if jax.process_index() == 0:
    logging.info(message, *args, extra={PROGRESS: progress})


def _own(record) -> bool:
  return os.path.realpath(record.pathname).startswith(_OWN_DIRS)


class _QuietConsole(std_logging.Filter):
  """Passes warnings and errors, and INFO from this repository's code."""

  def __init__(self):
    super().__init__()
    self._own = {}

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    own = self._own.get(record.pathname)
    if own is None:
      own = self._own[record.pathname] = _own(record)
    return own


class _ProgressOnly(std_logging.Filter):
  """Passes warnings and errors, a run's first progress line, and its
  next ones at most every `interval` seconds (the first of them always)."""

  def __init__(self, interval: float):
    super().__init__()
    self.interval = interval
    self._last = None

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    kind = getattr(record, PROGRESS, False)
    if not kind:
      return False
    if kind == "start":
      self._last = None
      return True
    now = time.time()
    if self._last is not None and now - self._last < self.interval:
      return False
    self._last = now
    return True


class _ConsoleFormatter(std_logging.Formatter):
  """`HH:MM:SS message`; warnings and errors name their level (and source
  when it is a library's)."""

  def format(self, record):
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    text = super().format(record)
    if record.levelno < std_logging.WARNING:
      return f"{stamp} {text}"
    source = "" if _own(record) else f" [{record.filename}:{record.lineno}]"
    return f"{stamp} {record.levelname}{source}: {text}"


def set_up(progress_only: Optional[float] = None,
           warnings_only: bool = False) -> bool:
  """Applies the console rule of the command-line tools (module doc).

  Call it in `main`, after absl parsed the flags and before TensorFlow or
  JAX are imported.

  Args:
    progress_only: None (a training run's console), or a number of seconds:
      of the INFO lines, only the progress of a run, at most that often
      (a study's console, which prints its own line per run).
    warnings_only: only warnings and errors (a tool whose report is its
      standard output, such as the export).

  Returns:
    Whether the console is verbose (`--verbosity` >= 1): the caller then
    leaves everything on.
  """
  verbosity = logging.get_verbosity()
  if verbosity >= 1:
    if verbosity == 1:
      # absl's DEBUG: thousands of lines a run (orbax, JAX's compile cache).
      std_logging.root.setLevel(std_logging.INFO)
    return True
  handler = logging.get_absl_handler()
  if warnings_only:
    logging.set_verbosity(logging.WARNING)
  handler.addFilter(_QuietConsole() if progress_only is None
                    else _ProgressOnly(progress_only))
  handler.setFormatter(_ConsoleFormatter())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  # The libraries' Python warnings (deprecations, orbax's and JAX's notes):
  # with --verbosity=1. This repository's warnings stay on.
  warnings.filterwarnings("ignore")
  warnings.filterwarnings("default", module=r"optg_jax(\.|$)")
  return False


@contextlib.contextmanager
def native_chatter_dropped(verbose: bool = False):
  """Drops the INFO lines native code writes to stderr meanwhile; passes the
  rest (warnings, errors) on. Nothing is dropped when `verbose`."""
  if verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(True):
        if not _NATIVE_CHATTER.match(line):
          sys.stderr.write(line)
      sys.stderr.flush()


def import_tensorflow(verbose: bool = False):
  """Imports TensorFlow quietly and hides the accelerators from it (it only
  feeds the input pipeline; JAX has them). Returns the module."""
  with native_chatter_dropped(verbose):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf


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
         duration(now - self._created), progress="start")

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
    info("%s", line, progress=True)


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


_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
_HELP_FULL = ("--helpfull", "-helpfull")


def run_main(main, doc: str, more: str = "") -> None:
  """`absl.app.run(main)`, but a request for help exits 0.

  absl ends `--help` with exit code 1, which the tools' exit codes define as
  a failure. Here `--help` (or `-h`, `--helpshort`) prints the tool's
  docstring, `more` (e.g. the configs it can run) and its own flags;
  `--helpfull` every flag, absl's and the libraries' too. Then exit 0.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  args = sys.argv[1:]
  if any(a in _HELP + _HELP_FULL for a in args):
    full = any(a in _HELP_FULL for a in args)
    text = [doc.strip(), more.strip(), "Flags:",
            flags.FLAGS.get_help() if full else
            flags.FLAGS.main_module_help().strip()]
    if not full:
      text.append("Try --helpfull to list the flags of the libraries too.")
    print("\n\n".join(t for t in text if t))
    sys.exit(0)
  app.run(main)
