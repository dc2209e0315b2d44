"""The harness's errors and the exit codes of `launch/train.py`.

Every error here has a one-line message, printed as `error: MESSAGE`:

  exit 2  bad input: a configuration that cannot run or cannot reach its
          target, a dataset that is not there, a workdir that is a file, in
          use by another run, holding a run of another configuration or
          checkpoints of an earlier release (`ConfigError` and its
          subclasses, `data.DatasetError`).
  exit 3  the run stopped for a fault of the run itself: non-finite loss or
          gradients, no readable checkpoint (`NonFiniteError`,
          `CheckpointError`).
  exit 4  an I/O error of the workdir: disk full, read-only, vanished
          (`WorkdirError`).

Nothing is lost on any of them: a checkpoint is complete or never listed,
and the last complete one stays.
"""

EXIT_BAD_INPUT = 2
EXIT_FAULT = 3
EXIT_IO = 4


class ConfigError(ValueError):
  """A configuration that cannot run; the message is one line."""


class WorkdirBusy(ConfigError):
  """Another process holds the workdir's lock."""


class ConfigChanged(ConfigError):
  """A restart whose config changes the trajectory of the recorded run."""


class OldCheckpoint(ConfigError):
  """Checkpoints written by an earlier release, in another format."""


class NonFiniteError(RuntimeError):
  """The loss or the gradients stopped being finite."""


class CheckpointError(RuntimeError):
  """No checkpoint of the workdir can be read."""


class WorkdirError(OSError):
  """The workdir cannot be written, is full, or vanished during the run."""


def exit_code(error: BaseException) -> int:
  """The exit code of `launch/train.py` for one of the errors above.

  `data.DatasetError` is bad input too; anything else gets 1 (a bug).
  """
  # Imported here: the data package imports TensorFlow, this module not.
  from optg_jax import data  # pylint: disable=g-import-not-at-top
  if isinstance(error, (ConfigError, data.DatasetError)):
    return EXIT_BAD_INPUT
  if isinstance(error, (NonFiniteError, CheckpointError)):
    return EXIT_FAULT
  if isinstance(error, WorkdirError):
    return EXIT_IO
  return 1
