"""Runs a study: methods x sparsities x seeds, then tables and plots.

  python launch/study.py --config=configs/fashion_mnist.py \
      --methods=optg,magnitude,dense --sparsities=0.9,0.95,0.98,0.99 \
      --seeds=0,1,2 --workdir=DIR [--config.FIELD=VALUE ...]

Every run is an ordinary resumable workdir under `DIR/runs/`; running the
same command again reads finished runs back and resumes interrupted ones.
Writes `DIR/results.csv`, `DIR/results.md` and PNG plots in `DIR`. With
`--doc=docs/RESULTS.md --section=NAME` the tables also replace the section
`<!-- study:NAME -->` of that document and the plots are copied beside it
as `img/NAME_*.png`. See `optg_jax/study.py` for the method names
(`optg+every1`, `optg+floor1`, ...).
"""

import os
import shlex
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from optg_jax import console  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base training config.",
                                lock_config=True)
flags.DEFINE_list("methods", ["optg", "magnitude", "dense"],
                  "Methods: optg, magnitude, dense, with modifiers such as "
                  "optg+every1, optg+floor1, optg+rms.")
flags.DEFINE_list("sparsities", ["0.9", "0.95", "0.98", "0.99"],
                  "Target sparsities of the sparse methods.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("workdir", None, "The study's directory.")
flags.DEFINE_string("title", None, "Title of the tables and plots (default: "
                    "model on dataset).")
flags.DEFINE_float("layer_sparsity", None, "Sparsity of the per-layer plot "
                   "(default: the highest).")
flags.DEFINE_string("doc", None, "A Markdown document whose section "
                    "--section gets the results.")
flags.DEFINE_string("section", None, "The section's name in --doc.")
flags.mark_flags_as_required(["config", "workdir"])


def _numbers(values, kind, name):
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise SystemExit(f"error: --{name} must be a list of numbers, got "
                     f"{','.join(values)}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # A line per run, and a run's progress at most every 30 s.
  verbose = console.quiet(progress_only=30.0)
  console.import_tensorflow(verbose)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optg_jax import data  # pylint: disable=g-import-not-at-top
  from optg_jax import study  # pylint: disable=g-import-not-at-top
  from optg_jax import train  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  sparsities = _numbers(FLAGS.sparsities, float, "sparsities")
  seeds = _numbers(FLAGS.seeds, int, "seeds")
  if bool(FLAGS.doc) != bool(FLAGS.section):
    print("error: --doc and --section go together", file=sys.stderr)
    sys.exit(2)
  try:
    runs = study.plan(FLAGS.methods, sparsities, seeds)
    # Every run's config is checked before anything is written.
    checked = {run: train._Run(study.run_config(config, run))  # pylint: disable=protected-access
               for run in runs}
  except (study.StudyError, train.ConfigError, data.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  title = FLAGS.title or f"{config.model} on {config.dataset}"

  try:
    rows = study.run_study(config, runs, workdir, train.train_and_evaluate,
                           lambda run: checked[run].total_steps,
                           progress=lambda s: print(s, flush=True),
                           stop_on=(train.Preempted, KeyboardInterrupt))
  except train.Preempted as e:
    print(f"{e}; the study stops here and the same command resumes it",
          file=sys.stderr)
    sys.exit(0)
  study.write_csv(os.path.join(workdir, "results.csv"), rows)

  layer_sparsity = FLAGS.layer_sparsity or (max(sparsities) if sparsities
                                            else None)
  layers = (study.layer_table(workdir, runs, layer_sparsity)
            if layer_sparsity else None)
  schedules = None
  first_sparse = next((r for r in runs if r.method != "dense"), None)
  if first_sparse is not None:
    run = checked[first_sparse]
    steps = np.arange(run.total_steps)
    schedules = {
        "target": first_sparse.sparsity,
        "step": steps,
        "sparsity": np.asarray(jax.vmap(run.schedules.sparsity)(steps)),
        "mask_learning_rate": np.asarray(jax.vmap(
            run.schedules.mask_learning_rate)(steps)),
        "learning_rate": np.asarray(jax.vmap(
            run.schedules.learning_rate)(steps)),
    }
  study.plot(rows, workdir, title, schedules, layers, layer_sparsity)
  command = " ".join(["python", "launch/study.py"] + [
      shlex.quote(a) for a in sys.argv[1:]])
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(study.markdown(rows, title, command))
  print(f"wrote {workdir}/results.csv, results.md and "
        f"{', '.join(study.PLOTS)}")

  if FLAGS.doc:
    doc_dir = os.path.dirname(os.path.abspath(FLAGS.doc))
    image_dir = os.path.join(doc_dir, "img")
    os.makedirs(image_dir, exist_ok=True)
    for name in study.PLOTS:
      source = os.path.join(workdir, name)
      if os.path.exists(source):
        shutil.copyfile(source, os.path.join(image_dir,
                                             f"{FLAGS.section}_{name}"))
    text = study.markdown(rows, title, command,
                          image_prefix=f"img/{FLAGS.section}_")
    document = open(FLAGS.doc).read() if os.path.exists(FLAGS.doc) else ""
    with open(FLAGS.doc + ".tmp", "w") as f:
      f.write(study.replace_section(document, FLAGS.section, text))
    os.replace(FLAGS.doc + ".tmp", FLAGS.doc)
    print(f"updated section {FLAGS.section!r} of {FLAGS.doc}")


if __name__ == "__main__":
  app.run(main)
