"""One run's claim on its workdir: the lock, the config record, presence.

`Workdir` is held by process 0 for the whole run (`fcntl.flock` on
`WORKDIR/run.lock`, so a second run or an `eval_only` on the same workdir
stops at once, naming the holder); it records the run's configuration
(`WORKDIR/config.json`, which a restart may not change but for bookkeeping
fields, `checkpoints.check_config_record`) and checks that the directory is
still the one the run started in.
"""

import contextlib
import datetime
import errno
import fcntl
import os
import socket

import jax

from optg_jax.harness import multihost
from optg_jax.harness.checkpoints import LOCK_FILE
from optg_jax.harness.checkpoints import check_config_record
from optg_jax.harness.checkpoints import describe_os_error
from optg_jax.harness.checkpoints import write_config_record
from optg_jax.harness.errors import ConfigError
from optg_jax.harness.errors import WorkdirBusy
from optg_jax.harness.errors import WorkdirError


class Workdir:
  """One run's claim on its workdir: lock, config record, presence.

  Use as `with Workdir(path).claim(config):`. Process 0 holds the lock; the
  other processes learn whether it got it. Nothing is created before the
  checks that can refuse the run have passed.
  """

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    self._fd = None
    self._identity = None

  def check_usable(self) -> None:
    """A path that is not a directory is bad input (exit 2)."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"workdir {self.path} exists and is not a directory")
    parent = os.path.dirname(self.path)
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
      raise ConfigError(f"workdir {self.path}: {parent} is not a directory")

  @contextlib.contextmanager
  def claim(self, config, *, record: bool = True):
    """Checks, locks and (with `record`) records the config; yields self.

    Raises:
      ConfigError: the path is a file.
      ConfigChanged: the workdir holds a run of another configuration.
      WorkdirBusy: another process holds the lock.
      WorkdirError: the workdir cannot be created or written.
    """
    self.check_usable()
    check_config_record(self.path, config)  # Reads only.
    failure = None
    if jax.process_index() == 0:
      try:
        self._lock()
      except (WorkdirBusy, WorkdirError) as e:
        failure = e
    if multihost.any_process(failure is not None):
      if failure is not None:
        raise failure
      raise WorkdirBusy(f"workdir {self.path}: process 0 could not lock it")
    try:
      check_config_record(self.path, config)  # Again, under the lock.
      if record:
        try:
          write_config_record(self.path, config)
        except OSError as e:
          raise WorkdirError(f"cannot write to workdir {self.path}: "
                             f"{describe_os_error(e)}") from None
      stat = os.stat(self.path)
      self._identity = (stat.st_dev, stat.st_ino)
      yield self
    finally:
      self._unlock()

  def _lock(self) -> None:
    path = os.path.join(self.path, LOCK_FILE)
    try:
      os.makedirs(self.path, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write to workdir {self.path}: "
                         f"{describe_os_error(e)}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise WorkdirError(f"cannot lock {path}: {describe_os_error(e)}"
                           ) from None
      holder = os.read(fd, 512).decode(errors="replace").strip()
      os.close(fd)
      raise WorkdirBusy(
          f"workdir {self.path} is in use by another run "
          f"({holder or 'holder unknown'}); wait for it to end or use "
          "another workdir") from None
    since = datetime.datetime.now().isoformat(timespec="seconds")
    holder = f"host {socket.gethostname()}, pid {os.getpid()}, since {since}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, (holder + "\n").encode(), 0)
    self._fd = fd

  def _unlock(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def check_present(self, step: int) -> None:
    """Stops the run (WorkdirError) if the workdir was deleted or moved.

    Every process must call it at the same steps (they agree on the answer).
    """
    try:
      stat = os.stat(self.path)
      moved = (stat.st_dev, stat.st_ino) != self._identity
    except OSError:
      moved = True
    if multihost.any_process(moved):
      raise WorkdirError(
          f"the workdir {self.path} vanished at step {step} (deleted, moved "
          "or replaced); stopping, since nothing more can be saved there")
