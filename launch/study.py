r"""Runs a study: methods x sparsities x seeds, then tables and plots.

  python launch/study.py --config=configs/fashion_mnist.py \
      --methods=optg,magnitude,dense --sparsities=0.9,0.95,0.98,0.99 \
      --seeds=0,1,2 --workdir=DIR [--config.FIELD=VALUE ...]

Every run is an ordinary resumable workdir under `DIR/runs/`; running the
same command again reads finished runs back and resumes interrupted ones.
Writes `DIR/results.csv`, `DIR/results.md` and PNG plots in `DIR`. With
`--doc=docs/RESULTS.md --section=NAME` the tables also replace the section
`<!-- study:NAME -->` of that document and the plots are copied beside it
as `img/NAME_*.png`. See `optg_jax/studies/study.py` for the method names
(`optg+every1`, `optg+floor1`, ...) and the rules of a study workdir (one
base config, one study at a time, a canonical grid).

Every failure is one `error: ...` line on stderr. Exit codes: 2 for bad
input (flags, a config that cannot run, a workdir that is a file, in use by
another study or holding a study of another base config); 4 when the
workdir or the document cannot be written (nothing half-written is left);
1 when a run of the study failed: the runs that finished are kept, and the
results files are not rewritten until every run succeeds; 130 on Ctrl-C
(the interrupted run resumes from its last checkpoint next time); 0 on
preemption (the same command resumes).
"""

import os
import shlex
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from optg_jax.harness import console  # pylint: disable=g-import-not-at-top
from optg_jax.studies import study  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base training config.",
                                lock_config=True)
flags.DEFINE_list("methods", ["optg", "magnitude", "dense"],
                  "Methods: optg, magnitude, taylor, rigl, set, dense, with "
                  "modifiers such as optg+every1, optg+epoch+stepwise, "
                  "optg+floor1, optg+rms, optg+2:4, rigl+dt50+drop0.5, "
                  "rigl+2x.")
flags.DEFINE_list("sparsities", ["0.9", "0.95", "0.98", "0.99"],
                  "Target sparsities of the unstructured sparse methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("workdir", None, "The study's directory.")
flags.DEFINE_string("title", None, "Title of the tables and plots (default: "
                    "model on dataset).")
flags.DEFINE_float("layer_sparsity", None, "Sparsity of the per-layer plot "
                   "(default: the highest).")
flags.DEFINE_string("doc", None, "A Markdown document whose section "
                    "--section gets the results.")
flags.DEFINE_string("section", None, "The section's name in --doc: letters, "
                    "digits, '_' and '-'.")
flags.mark_flags_as_required(["config", "workdir"])


def _numbers(values, kind, name):
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise study.StudyError(f"--{name} must be a list of numbers, got "
                           f"{','.join(values)}") from None


def _check_doc(doc, section):
  """Refuses a --doc/--section pair that cannot be written, before any run."""
  if bool(doc) != bool(section):
    raise study.StudyError("--doc and --section go together")
  if not doc:
    return
  study.check_section(section)
  if os.path.isdir(doc):
    raise study.StudyError(f"--doc {doc} is a directory; name a Markdown "
                           "file")
  directory = os.path.dirname(os.path.abspath(doc))
  if not os.path.isdir(directory):
    raise study.StudyError(f"--doc {doc}: directory {directory} does not "
                           "exist")
  if not os.access(directory, os.W_OK | os.X_OK) or (
      os.path.exists(doc) and not os.access(doc, os.W_OK)):
    raise study.StudyError(f"--doc {doc} is not writable", study.EXIT_IO)


def _schedules(run, target):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  steps = np.arange(run.total_steps)
  return {
      "target": target,
      "step": steps,
      "sparsity": np.asarray(jax.vmap(run.schedules.sparsity)(steps)),
      "mask_learning_rate": np.asarray(jax.vmap(
          run.schedules.mask_learning_rate)(steps)),
      "learning_rate": np.asarray(jax.vmap(
          run.schedules.learning_rate)(steps)),
  }


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _write_results(rows, runs, checked, workdir, title, command):
  """results.csv, results.md, the plots (stale ones removed) and the doc's
  section. Returns the plots written."""
  layer_sparsity = FLAGS.layer_sparsity or max(
      (r.sparsity for r in runs if r.method != "dense"), default=None)
  layers = (study.layer_table(workdir, runs, layer_sparsity)
            if layer_sparsity else None)
  first_sparse = next((r for r in runs if r.method != "dense"), None)
  schedules = (_schedules(checked[first_sparse], first_sparse.sparsity)
               if first_sparse is not None else None)
  study.write_csv(os.path.join(workdir, "results.csv"), rows)
  try:
    written = [os.path.basename(p) for p in study.plot(
        rows, workdir, title, schedules, layers, layer_sparsity)]
  except OSError as e:
    raise study.StudyError(f"cannot write the plots in {workdir}: "
                           f"{e.strerror or e}", study.EXIT_IO) from None
  for name in study.PLOTS:
    if name not in written:  # Of an earlier invocation: not this study's.
      _remove(os.path.join(workdir, name))
  study.write_atomically(os.path.join(workdir, "results.md"),
                         study.markdown(rows, title, command, plots=written))
  print(f"wrote {workdir}/results.csv, results.md and {', '.join(written)}")
  if not FLAGS.doc:
    return
  image_dir = os.path.join(os.path.dirname(os.path.abspath(FLAGS.doc)), "img")
  try:
    os.makedirs(image_dir, exist_ok=True)
    for name in study.PLOTS:
      target = os.path.join(image_dir, f"{FLAGS.section}_{name}")
      if name in written:
        shutil.copyfile(os.path.join(workdir, name), target)
      else:
        _remove(target)
    document = open(FLAGS.doc).read() if os.path.exists(FLAGS.doc) else ""
  except OSError as e:
    raise study.StudyError(f"cannot write beside {FLAGS.doc}: "
                           f"{e.strerror or e}", study.EXIT_IO) from None
  text = study.markdown(rows, title, command, plots=written,
                        image_prefix=f"img/{FLAGS.section}_")
  study.write_atomically(FLAGS.doc, study.replace_section(
      document, FLAGS.section, text))
  print(f"updated section {FLAGS.section!r} of {FLAGS.doc}")


class _InterruptFlag:
  """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: a
  library that catches it inside a run (a checkpoint's wait) cannot make
  the study go on; `check` raises it again between runs."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc):
    signal.signal(signal.SIGINT, self._previous)
    return False

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True
    raise KeyboardInterrupt

  def check(self):
    if self.received:
      raise KeyboardInterrupt


def _study(verbose):
  config = FLAGS.config
  # The flags first (quick: before TensorFlow is imported).
  sparsities = _numbers(FLAGS.sparsities, float, "sparsities")
  seeds = _numbers(FLAGS.seeds, int, "seeds")
  _check_doc(FLAGS.doc, FLAGS.section)
  workdir = os.path.abspath(FLAGS.workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise study.StudyError(f"--workdir {FLAGS.workdir} is a file, not a "
                           "directory")
  notes = []
  runs = study.plan(FLAGS.methods, sparsities, seeds, config, notes)

  console.import_tensorflow(verbose)
  from optg_jax import data  # pylint: disable=g-import-not-at-top
  from optg_jax import train  # pylint: disable=g-import-not-at-top
  try:
    # Every run's config is checked before anything is written.
    checked = {run: train.Run(study.run_config(config, run))
               for run in runs}
  except (train.ConfigError, data.DatasetError) as e:
    raise study.StudyError(str(e)) from None
  for note in notes:
    print(f"note: {note}", flush=True)

  title = FLAGS.title or f"{config.model} on {config.dataset}"
  command = " ".join(["python", "launch/study.py"] + [
      shlex.quote(a) for a in sys.argv[1:]])
  grid = {"methods": list(dict.fromkeys(r.method for r in runs)),
          "sparsities": sorted({r.sparsity for r in runs
                                if r.method != "dense"}),
          "seeds": sorted({r.seed for r in runs})}
  interrupted = _InterruptFlag()
  with study.StudyWorkdir(workdir, config, grid), interrupted:

    def progress(line):
      interrupted.check()  # Between runs: a Ctrl-C a library swallowed.
      print(line, flush=True)

    try:
      rows = study.run_study(config, runs, workdir, train.train_and_evaluate,
                             lambda run: checked[run].total_steps,
                             progress=progress,
                             stop_on=(train.Preempted, KeyboardInterrupt),
                             refresh_period=lambda run: (
                                 checked[run].update_every))
    except train.Preempted as e:
      print(f"{e}; the study stops here and the same command resumes it",
            file=sys.stderr)
      return 0
    interrupted.check()
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
      first = failed[0]
      print(f"error: {len(failed)} of {len(rows)} runs failed (first: "
            f"{first['method']} sparsity {first['sparsity']:g} seed "
            f"{first['seed']}: {first['status'][len('failed: '):]}); the "
            "results files are left as they were", file=sys.stderr)
      return 1
    _write_results(rows, runs, checked, workdir, title, command)
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # A line per run, and a run's progress at most every 30 s.
  verbose = console.set_up(progress_only=30.0)
  try:
    code = _study(verbose)
  except study.StudyError as e:
    print(f"error: {e}", file=sys.stderr)
    code = e.code
  except KeyboardInterrupt:
    print("interrupted: the runs that finished are kept; the same command "
          "resumes the study", file=sys.stderr)
    code = 130
  sys.exit(code)


if __name__ == "__main__":
  console.run_main(main, __doc__)
