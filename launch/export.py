"""Exports the sparse model of a run: one compact file to ship.

  python launch/export.py --workdir=DIR --output=FILE [--structure=auto]

Restores the latest verified checkpoint of the run in `DIR` (the workdir of
`launch/train.py`, whose `config.json` records the run's configuration) and
writes its masked weights with `optg_jax.export_sparse`: the Flax variables
`{"params": ..., "batch_stats": ...}` (batch statistics when the model has
them), masked params holding only their kept values and positions, the rest
dense. `optg.load_sparse(FILE)` gives back `(variables, masks)`, and
`model.apply(variables, images, train=False)` then computes the logits of
the sparse model.

The file's metadata (`optg.sparse_metadata(FILE)`) names the workdir, the
step, the run's number of steps and whether it finished. A run that has not
reached its last step is exported only with `--allow_unfinished`; an
existing output file is replaced only with `--overwrite`.

Prints the file's size, the size of the same variables dense in float32
(4 bytes an entry) and their ratio. Every failure is one `error: ...`
line on stderr and leaves no file: exit code 2 for a workdir without
`config.json` or without a checkpoint, a workdir a run holds, an unfinished
run, a `config.json` edited after the run, a config that cannot be rebuilt
(a dataset whose metadata is not there) and an output that exists or whose
directory is missing or not writable; 3 when no checkpoint can be read; 4
when writing the file fails. The workdir is only read.
"""

import fcntl
import json
import os
import sys

# The repository root, so that `optg_jax` imports from a checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax  # pylint: disable=g-import-not-at-top

import optg_jax as optg  # pylint: disable=g-import-not-at-top
from optg_jax.harness import checkpoints  # pylint: disable=g-import-not-at-top
from optg_jax.harness import console  # pylint: disable=g-import-not-at-top
from optg_jax.harness import errors  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir of a run of "
                    "launch/train.py.")
flags.DEFINE_string("output", None, "The file to write (.npz).")
flags.DEFINE_string("structure", "auto", "How N:M masks are stored: 'auto' "
                    "(1:4, 2:4, 1:8 and 2:8 masks along the kernels' inputs "
                    "as N:M, the rest as bitmaps), 'N:M' (masks of that "
                    "pattern as N:M) or 'none' (a bitmap for every mask).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.")
flags.DEFINE_bool("allow_unfinished", False, "Export the latest checkpoint of "
                  "a run that has not reached its last step (the file's "
                  "metadata says so).")
flags.mark_flags_as_required(["workdir", "output"])


class ExportError(Exception):
  """Why the export cannot be done: one line, and the exit code."""

  def __init__(self, message: str, code: int = errors.EXIT_BAD_INPUT):
    super().__init__(message)
    self.code = code


def _check_paths(workdir: str, output: str, overwrite: bool = False) -> None:
  """Refuses a workdir without a run or an output that cannot be written
  (or that exists, unless `overwrite`)."""
  if not os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE)):
    raise ExportError(f"{workdir} has no {checkpoints.CONFIG_FILE}: not the "
                      "workdir of a run")
  if not checkpoints.checkpoint_steps(workdir):
    raise ExportError(f"{workdir} has no checkpoint (no step directory in "
                      f"{os.path.join(workdir, 'checkpoints')})")
  if os.path.isdir(output):
    raise ExportError(f"--output {output} is a directory; name a file")
  if os.path.exists(output) and not overwrite:
    raise ExportError(f"--output {output} exists; pass --overwrite to "
                      "replace it, or name another file")
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise ExportError(f"--output {output}: directory {parent} does not exist")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ExportError(f"--output {output}: directory {parent} is not "
                      "writable")


def _shared_lock(workdir: str):
  """A shared lock on the run's lock file, or ExportError if a run holds it.

  While it is held no run can start in the workdir (and clean up or add
  checkpoints under the restore). Returns the file descriptor, or None when
  the workdir has no lock file (no run was ever started through it).
  """
  path = os.path.join(workdir, checkpoints.LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError:
    holder = os.read(fd, 512).decode(errors="replace").strip()
    os.close(fd)
    raise ExportError(f"workdir {workdir} is in use by a run "
                      f"({holder or 'holder unknown'}); export it when the "
                      "run has ended") from None
  return fd


def _restored_run(workdir: str, verbose: bool = False):
  """The latest verified checkpoint of the run, its masks (host arrays;
  None for a dense run) and the run's number of steps.

  The checkpoint must have been saved by the configuration `config.json`
  records now (an edited record is named as such, not blamed on the
  checkpoint).
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  # TensorFlow (imported by the input pipeline) stays off the accelerators.
  console.import_tensorflow(verbose)
  from optg_jax import data  # pylint: disable=g-import-not-at-top
  from optg_jax import train  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, checkpoints.CONFIG_FILE)
  try:
    with open(path) as f:
      recorded = json.load(f)
    # A field added since the run was recorded takes its default.
    from configs import default  # pylint: disable=g-import-not-at-top
    for key, value in default.get_config().to_dict().items():
      recorded.setdefault(key, value)
    config = ml_collections.ConfigDict(recorded)
  except (OSError, ValueError) as e:
    raise ExportError(f"cannot read {path}: {e}") from None
  try:
    manager = train.checkpoint_manager(workdir, config)
    newest = max(manager.all_steps(), default=None)
    if newest is not None:
      checkpoints.check_saved_by(manager, newest, config)
    run = train.Run(config)
    state = train.restore_latest(manager, run.initial_state(), config=config)
  except (errors.ConfigError, data.DatasetError,
          errors.CheckpointError) as e:
    raise ExportError(str(e), errors.exit_code(e)) from None
  state = jax.device_get(state)
  # The model the run trained: the masks its last step trained with.
  masks = jax.device_get(run.trained_masks(state))
  return state, masks, run.total_steps


def export_run(workdir: str, output: str, structure: str = "auto",
               verbose: bool = False, overwrite: bool = False,
               allow_unfinished: bool = False) -> dict:
  """Writes the sparse model of the run in `workdir` to `output`.

  Args:
    workdir: the run's workdir.
    output: the file to write.
    structure: "auto", "none" or an "N:M" pattern (see
      `optg_jax.export_sparse`).
    verbose: let TensorFlow's native lines through.
    overwrite: replace an existing `output`.
    allow_unfinished: export a run whose latest checkpoint is not its last
      step (the file's metadata says `"finished": false`).

  Returns:
    `{"step", "file_bytes", "dense_bytes", "ratio", "entries"}`.

  Raises:
    ExportError: the export cannot be done (nothing written).
  """
  _check_paths(workdir, output, overwrite)
  if structure.lower() == "none":
    structure = None
  elif structure != "auto":
    try:
      structure = optg.NM.parse(structure)
    except ValueError as e:
      raise ExportError(f"--structure: {e}") from None
  fd = _shared_lock(workdir)
  try:
    state, masks, total_steps = _restored_run(workdir, verbose)
  finally:
    if fd is not None:
      os.close(fd)
  step = int(state.step)
  finished = step >= total_steps
  if not finished and not allow_unfinished:
    raise ExportError(
        f"the run in {workdir} is unfinished: its latest checkpoint is step "
        f"{step} of {total_steps}; finish it (run its training command "
        f"again), or pass --allow_unfinished to export step {step}, "
        "labelled unfinished in the file")
  variables = {"params": state.params}
  variable_masks = {"params": masks}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    variable_masks["batch_stats"] = None
  try:
    file_bytes = optg.export_sparse(
        variables, None if masks is None else variable_masks, output,
        structure=structure, metadata={
            "workdir": os.path.abspath(workdir), "step": step,
            "total_steps": total_steps, "finished": finished,
            "masks": "trained"})
  except OSError as e:
    raise ExportError(f"cannot write {output}: "
                      f"{checkpoints.describe_os_error(e)}",
                      errors.EXIT_IO) from None
  entries = sum(int(x.size) for x in jax.tree.leaves(variables))
  return {"step": step, "total_steps": total_steps, "finished": finished,
          "file_bytes": file_bytes, "dense_bytes": 4 * entries,
          "ratio": file_bytes / (4 * entries), "entries": entries}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # The report is on stdout. INFO lines (orbax's restore, the checkpoint's
  # verification), the libraries' warnings and TensorFlow's native lines:
  # with --verbosity=1.
  verbose = console.set_up(warnings_only=True)
  try:
    figures = export_run(FLAGS.workdir, FLAGS.output, FLAGS.structure,
                         verbose, overwrite=FLAGS.overwrite,
                         allow_unfinished=FLAGS.allow_unfinished)
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.code)
  print(f"Exported step {figures['step']} of {FLAGS.workdir} to "
        f"{FLAGS.output}" + ("" if figures["finished"] else
                             f" (unfinished: the run has "
                             f"{figures['total_steps']} steps)"))
  print(f"  file:          {figures['file_bytes']:,} bytes")
  print(f"  dense float32: {figures['dense_bytes']:,} bytes "
        f"({figures['entries']:,} entries x 4)")
  print(f"  ratio:         {figures['ratio']:.4f} "
        f"({100 * figures['ratio']:.1f}% of dense)")


if __name__ == "__main__":
  console.run_main(main, __doc__)
