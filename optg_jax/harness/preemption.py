"""Preemption: SIGTERM saves the current step and stops the run cleanly.

`SigtermFlag` notes the signal instead of dying on it; the training loop
looks at the flag after every step (and after the final evaluation), saves
a checkpoint of the step it reached and raises `Preempted`, which
`launch/train.py` turns into one line and exit 0: the same command resumes.
"""

import signal
import threading

from absl import logging
import jax

from optg_jax.harness import multihost


class Preempted(Exception):
  """SIGTERM arrived: a checkpoint of the current step was saved."""

  def __init__(self, step: int, saved: bool = True):
    if saved:
      message = (f"preempted: saved a checkpoint at step {step}; run the "
                 "same command to continue")
    else:  # eval_only: nothing to save.
      message = (f"preempted: stopped evaluating the checkpoint of step "
                 f"{step}, nothing written; run the same command again")
    super().__init__(message)
    self.step = step


class SigtermFlag:
  """Notes SIGTERM; all processes agree on when to stop.

  One process reads its own flag after every step. Several processes must
  stop at the same step, so they compare flags (a small all-gather) at each
  logging step only, which keeps the hosts from syncing every step.
  Installed only from the main thread (Python's rule for signal handlers);
  elsewhere SIGTERM keeps its default action.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.received = True

  def agreed(self, at_sync_point: bool) -> bool:
    """Whether to stop now; with several processes, only at sync points."""
    if jax.process_count() == 1:
      return self.received
    if not at_sync_point:
      return False
    return multihost.any_process(self.received)
