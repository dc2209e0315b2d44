"""Checkpoints of a training run and the record of its configuration.

- Every checkpoint holds the state and, beside it in the same atomically
  renamed step directory, the SHA-256 of that state (`state_digest`).
  `restore_latest` recomputes it and checks that every floating-point leaf
  is finite; a checkpoint that fails either, or cannot be read at all, is
  skipped with a one-line warning, the previous one is tried, and the bad
  ones are moved to `WORKDIR/corrupted_checkpoints/` once a good one loads.
- `WORKDIR/config.json` records the run's configuration; a restart may not
  change it but for bookkeeping fields. The workdir's lock is
  `optg_jax.harness.workdir.Workdir`.
"""

import collections
import contextlib
import errno
import hashlib
import json
import logging as logging_lib
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from optg_jax.harness.errors import CheckpointError
from optg_jax.harness.errors import ConfigChanged
from optg_jax.harness.errors import ConfigError
from optg_jax.harness.errors import OldCheckpoint
from optg_jax.harness.errors import WorkdirError
from optg_jax import topk
from optg_jax.transform import OptGState

STATE_ITEM = "state"
DIGEST_ITEM = "digest"
LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
SET_ASIDE_DIR = "corrupted_checkpoints"
# The format of the saved state, recorded with its digest. 2: the transform
# state holds the masks the last step trained with (`trained_masks`), and
# the run's summary reports them; checkpoints without it (format 1) were
# written by earlier releases, which reported the refresh after the last
# step instead. 3: the transform state also holds where its last top-k
# found the threshold (`topk_hint`, the warm start of the next refresh); a
# checkpoint of format 2 is restored with an empty hint, so its next refresh
# searches from scratch and draws the same masks.
FORMAT = 3
READABLE_FORMATS = (2, 3)

# The transform's state as format 2 saved it (the same field names, so the
# same paths and digest).
_OptGStateFormat2 = collections.namedtuple(
    "OptGState", ["count", "scores", "momentum", "masks", "trained_masks"])

# Fields a restart may change: they decide what is logged, evaluated, kept
# and where data is read from, never the weights a step computes. Every
# other field (model, dataset, method, sparsity, epochs, schedules, batch,
# seed, and any field added later) is part of the run's trajectory.
BOOKKEEPING_FIELDS = frozenset({
    "log_every_steps", "eval_every_epochs", "eval_batch_size",
    "checkpoint_every_steps", "keep_checkpoints", "data_dir", "cache",
    "eval_only", "num_train_steps",
})


# ---------------------------------------------------------------------------
# Digests.


def state_digest(tree) -> str:
  """SHA-256 (hex) of every leaf of a host pytree: path, dtype, shape, bytes.

  Two trees have the same digest exactly when they have the same structure
  (paths), dtypes, shapes and bits.
  """
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((leaf.dtype.str, leaf.shape)).encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def _first_non_finite(tree) -> Optional[str]:
  """The path of the first floating-point leaf holding a NaN or Inf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) or leaf.dtype.name == "bfloat16":
      if not np.all(np.isfinite(leaf.astype(np.float32))):
        return jax.tree_util.keystr(path)
  return None


# ---------------------------------------------------------------------------
# Save and restore.


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  """The workdir's manager: synchronous saves, the last `keep_checkpoints`.

  Orbax logs an error for each step whose metadata it cannot read; those
  steps are reported (one warning each) by `restore_latest` instead.
  """
  with _HeldNoise(only="Failed to read Metadata file").installed() as noise:
    noise.drop()
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(
                n=config.keep_checkpoints),
            create=True, enable_async_checkpointing=False,
            # What a save that failed or was killed left behind.
            cleanup_tmp_directories=True))


class _HeldNoise(logging_lib.Filter):
  """Holds the error logs and unraisable exceptions of a save or restore.

  A save that fails on the filesystem (a full disk), or a restore of
  damaged files, makes the storage layers log the same error from each of
  their threads and report hundreds of "Event loop is closed" exceptions;
  the caller says what failed in one line. What was held is passed on
  unless `drop()` was called.
  """

  def __init__(self, only: Optional[str] = None):
    """`only`: hold just the error logs that start with this text."""
    super().__init__()
    self.records, self.unraisable = [], []
    self._dropped = False
    self._only = only

  def filter(self, record):
    if record.levelno >= logging_lib.ERROR and (
        self._only is None or record.getMessage().startswith(self._only)):
      self.records.append(record)
      return False
    return True

  def drop(self):
    """Drops what was held, and the "Event loop is closed" reports the
    storage threads of the failed save still make after it returned."""
    self._dropped = True
    previous = self._previous_hook

    def late(unraisable):
      if not (isinstance(unraisable.exc_value, RuntimeError) and
              "Event loop is closed" in str(unraisable.exc_value)):
        previous(unraisable)

    self._previous_hook = late

  @contextlib.contextmanager
  def installed(self):
    logger = logging_lib.getLogger("absl")
    self._previous_hook = sys.unraisablehook
    sys.unraisablehook = self.unraisable.append
    logger.addFilter(self)
    try:
      yield self
    finally:
      logger.removeFilter(self)
      sys.unraisablehook = self._previous_hook
      if not self._dropped:
        for record in self.records:
          logger.handle(record)
        for unraisable in self.unraisable:
          self._previous_hook(unraisable)


def save(manager: ocp.CheckpointManager, host_state,
         config: Optional[Any] = None) -> str:
  """Saves `host_state` (a host pytree with a `step`) and its digest.

  Both go into the step's directory, which orbax writes under a temporary
  name and renames when complete: a checkpoint is listed with its digest or
  not at all. With `config`, the digest record also holds the run's
  trajectory fields (`trajectory`), so that a checkpoint can tell which
  configuration saved it.

  Returns:
    The digest.

  Raises:
    OSError: the filesystem refused the save (disk full, read-only, gone);
      the storage layers' own reports of it are dropped.
  """
  step = int(host_state.step)
  digest = state_digest(host_state)
  record = {"sha256": digest, "step": step, "format": FORMAT}
  if config is not None:
    record["config"] = trajectory(config_record(config))
  with _HeldNoise().installed() as noise:
    try:
      manager.save(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardSave(host_state),
          DIGEST_ITEM: ocp.args.JsonSave(record),
      }), force=True)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      cause = os_error_in(e)
      if cause is None:
        raise
      noise.drop()
      raise cause from None
  return digest


def os_error_in(error: BaseException) -> Optional[OSError]:
  """The OSError behind `error`, if any.

  The storage layers raise filesystem errors as other types (a ValueError
  "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"):
  an errno named in the message counts as that OSError.
  """
  seen = error
  while seen is not None:
    if isinstance(seen, OSError):
      return seen
    text = str(seen)
    match = re.search(r"os_error_code='?(\d+)", text)
    if match:
      code = int(match.group(1))
      return OSError(code, os.strerror(code))
    for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES,
                 errno.ENOENT):
      if os.strerror(code) in text:
        return OSError(code, os.strerror(code))
    seen = seen.__cause__ or seen.__context__
  return None


def digest_record(manager: ocp.CheckpointManager, step: int
                  ) -> Optional[Dict[str, Any]]:
  """The digest record saved with `step`, or None if it cannot be read."""
  with _HeldNoise().installed() as noise:
    noise.drop()  # A record that cannot be read is reported by `restore`.
    try:
      record = manager.restore(step, args=ocp.args.Composite(**{
          DIGEST_ITEM: ocp.args.JsonRestore()}))[DIGEST_ITEM]
    except Exception:  # pylint: disable=broad-except
      return None
  if not isinstance(record, dict) or "sha256" not in record:
    return None
  return record


def check_saved_by(manager: ocp.CheckpointManager, step: int,
                   config) -> None:
  """Refuses a checkpoint of an earlier release's format, or one saved by a
  run of another configuration (the trajectory fields its record holds).

  A checkpoint whose digest cannot be read is left to `restore`, which
  reports it as unreadable.

  Raises:
    OldCheckpoint: naming the directory and what to do.
    ConfigChanged: naming the changed fields.
  """
  record = digest_record(manager, step)
  if record is None:
    return
  check_format_of(record, manager.directory)
  saved = record.get("config")
  if saved is not None and config is not None:
    changes = config_changes(saved, config_record(config))
    if changes:
      raise ConfigChanged(
          f"the checkpoint of step {step} in {manager.directory} was saved "
          f"by a run of another configuration: changed "
          f"{listed_changes(changes)} (was "
          f"{CONFIG_FILE} edited after the run?); use the recorded values "
          "or a new workdir")


def check_format_of(record: Dict[str, Any], directory) -> None:
  """Raises OldCheckpoint for the digest record of a format not read."""
  found = record.get("format", 1)
  if found not in READABLE_FORMATS:
    readable = " and ".join(map(str, READABLE_FORMATS))
    if isinstance(found, int) and found > FORMAT:
      raise OldCheckpoint(
          f"the checkpoints in {directory} were written by a later release "
          f"of optg_jax (checkpoint format {found}, this release reads "
          f"{readable}); use that release")
    raise OldCheckpoint(
        f"the checkpoints in {directory} were written by an earlier "
        f"release of optg_jax (checkpoint format {found}, this release "
        f"reads {readable}): their runs reported the masks of a refresh "
        "after the last step, which no step trained with; finish or "
        "evaluate them with that release, or start the run again in a new "
        "workdir")


def _is_optg_state(x) -> bool:
  return isinstance(x, (OptGState, _OptGStateFormat2))


def _in_format(state, found: int):
  """`state` (of this release's structure) in the structure of `found`."""
  if found != 2:
    return state
  return jax.tree.map(
      lambda x: _OptGStateFormat2(*x[:5]) if _is_optg_state(x) else x,
      state, is_leaf=_is_optg_state)


def _upgraded(state, found: int):
  """A state restored in the structure of `found`, in this release's."""
  if found != 2:
    return state
  hint = jax.tree.map(np.asarray, topk.empty_hint())
  return jax.tree.map(
      lambda x: OptGState(*x, topk_hint=hint)
      if isinstance(x, _OptGStateFormat2) else x,
      state, is_leaf=_is_optg_state)


def restore(manager: ocp.CheckpointManager, step: int, template):
  """The checkpoint of `step` in `template`'s structure, verified.

  A checkpoint of format 2 is read in its own structure, verified against
  its digest, and given the empty top-k hint of this release's state.

  Raises:
    ValueError: saying what is wrong (digest, non-finite leaf, step); or
      the storage layers' error for files that cannot be read.
  """
  record = digest_record(manager, step)
  found = FORMAT if record is None else record.get("format", 1)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.StandardRestore(_in_format(template, found)),
      DIGEST_ITEM: ocp.args.JsonRestore(),
  }))
  state, record = restored[STATE_ITEM], restored[DIGEST_ITEM]
  if not isinstance(record, dict) or "sha256" not in record:
    raise ValueError("it has no digest")
  if state_digest(state) != record["sha256"]:
    raise ValueError("its data does not match its SHA-256 digest (the "
                     "files were altered after the save)")
  bad = _first_non_finite(state)
  if bad is not None:
    raise ValueError(f"non-finite values in {bad}")
  if int(state.step) != step:
    raise ValueError(f"it holds step {int(state.step)}")
  return _upgraded(state, found)


def _reason(error: BaseException) -> str:
  """One readable line on why a checkpoint could not be read.

  Some errors of the storage layers render as the repr of a bound method,
  or not at all: the chain of causes is searched for a readable message.
  """
  seen = error
  while seen is not None:
    text = str(seen).strip()
    line = text.splitlines()[0].strip() if text else ""
    if line and "<bound method" not in line and " object at 0x" not in line:
      return line[:200]
    seen = seen.__cause__ or seen.__context__
  return f"{type(error).__name__} while reading it"


def restore_latest(manager: ocp.CheckpointManager, state,
                   workdir: Optional[str] = None, config=None):
  """The newest readable checkpoint restored into `state`'s structure.

  Orbax writes a checkpoint into a temporary directory and renames it when
  complete, so a checkpoint half-written when the process died is never
  listed. A listed checkpoint that cannot be read, whose data does not
  match its digest, or that holds a non-finite value anywhere (weights,
  batch statistics, scores, momentum, masks) is skipped with a one-line
  warning and the previous one is tried; once one is restored, the bad
  newer ones are moved to `WORKDIR/corrupted_checkpoints/`. When none can be
  read they stay where they are and CheckpointError is raised.

  Args:
    manager: the run's checkpoint manager.
    state: a host state with the run's structure (the initialised one).
    workdir: the run's workdir, where unreadable checkpoints are moved; if
      None they stay in place.
    config: the run's config: a checkpoint saved by a run of another
      configuration (its record's trajectory fields) is refused.

  Returns:
    The restored state, or `state` itself when there is no checkpoint.

  Raises:
    CheckpointError: if there are checkpoints but none can be read.
    OldCheckpoint: a checkpoint of an earlier release's format (nothing is
      moved).
    ConfigChanged: a checkpoint saved by a run of another configuration.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors, unreadable = [], []
  for step in steps:
    # Raises OldCheckpoint or ConfigChanged: nothing is moved.
    check_saved_by(manager, step, config)
    try:
      with _HeldNoise().installed() as noise:
        try:
          restored = restore(manager, step, state)
        except Exception:  # pylint: disable=broad-except
          noise.drop()  # The warning below says it in one line.
          raise
    except Exception as e:  # pylint: disable=broad-except
      reason = _reason(e)
      errors.append(f"step {step}: {reason}")
      logging.warning("The checkpoint of step %d in %s cannot be used: %s; "
                      "trying the previous one", step, manager.directory,
                      reason)
      unreadable.append(step)
      continue
    logging.info("Restored the checkpoint of step %d from %s (SHA-256 "
                 "verified)", step, manager.directory)
    if unreadable and workdir is not None:
      # Out of the way of the steps the run will save again.
      if jax.process_index() == 0:
        for bad in unreadable:
          set_aside(manager, bad, workdir)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("optg_set_aside_checkpoints")
      manager.reload()
    return restored
  if steps:
    # Left in place: a later run must not silently start from scratch.
    raise CheckpointError(f"no readable checkpoint in {manager.directory} "
                          f"({'; '.join(errors)})")
  return state


def set_aside(manager: ocp.CheckpointManager, step: int, workdir: str):
  """Moves a bad checkpoint to `WORKDIR/corrupted_checkpoints/STEP-TIME`."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(workdir, SET_ASIDE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{step}-{int(time.time())}")
  if os.path.isdir(source):
    os.replace(source, target)
    logging.warning("Moved the bad checkpoint of step %d to %s", step,
                    target)


def checkpoint_steps(workdir: str) -> List[int]:
  """The steps of the complete checkpoints in a workdir (read only)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


# ---------------------------------------------------------------------------
# The configuration record.


def config_record(config) -> Dict[str, Any]:
  """The config as `config.json` holds it (JSON types)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def trajectory(record: Dict[str, Any]) -> Dict[str, Any]:
  """The fields of a config record that decide a run's weights."""
  return {k: v for k, v in record.items() if k not in BOOKKEEPING_FIELDS}


def config_changes(recorded: Dict[str, Any],
                   current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  """`(field, old, new)` for each trajectory field that differs.

  A nested field (`model_kwargs`) is compared as a whole. A field only one
  side has (one the package added or dropped since) is not compared.
  """
  return [(key, recorded[key], current[key])
          for key in sorted(recorded.keys() & current.keys())
          if key not in BOOKKEEPING_FIELDS and recorded[key] != current[key]]


def listed_changes(changes: List[Tuple[str, Any, Any]]) -> str:
  """`field (old -> new), ...` of `config_changes`."""
  return ", ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in changes)


def check_config_record(workdir: str, config) -> None:
  """Refuses a restart whose config changes the recorded run's trajectory.

  Only a workdir with checkpoints is compared: without one there is no run
  to continue, and the record is rewritten.

  Raises:
    ConfigChanged: listing each changed field with its old and new value.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path) or not checkpoint_steps(workdir):
    return
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path} ({e}); it records the config of "
                      "the run in this workdir") from None
  changes = config_changes(recorded, config_record(config))
  if changes:
    raise ConfigChanged(
        f"workdir {workdir} holds a run of another configuration: changed "
        f"{listed_changes(changes)}; use a new workdir, or the recorded values "
        f"(in {path}) to continue it")


def write_config_record(workdir: str, config) -> None:
  """Writes `WORKDIR/config.json` atomically (process 0)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(config_record(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)


def describe_os_error(error: OSError) -> str:
  """`No space left on device: /path` from an OSError."""
  what = error.strerror or str(error) or type(error).__name__
  return f"{what}: {error.filename}" if error.filename else what


def save_in_workdir(manager: ocp.CheckpointManager, host_state,
                    config) -> None:
  """Saves a run's host state with its digest (`save`), or raises
  WorkdirError.

  A save that fails on the filesystem (a full disk, a read-only or vanished
  directory) removes its temporary directory and raises WorkdirError: the
  checkpoints saved before stay complete and listed.
  """
  start = time.time()
  step = int(host_state.step)
  try:
    save(manager, host_state, config)
  except OSError as e:
    if jax.process_index() == 0:
      _remove_temporary(str(manager.directory), step)
    raise WorkdirError(
        f"cannot save the checkpoint of step {step} in {manager.directory}: "
        f"{describe_os_error(e)}; the checkpoints saved before are intact"
    ) from None
  if jax.process_index() == 0:
    logging.info("Saved the checkpoint of step %d in %s (%.1f s)", step,
                 manager.directory, time.time() - start)


def _remove_temporary(directory: str, step: int):
  """Deletes what a failed save of `step` left (never a listed checkpoint)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith(f"{step}.") and "tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
