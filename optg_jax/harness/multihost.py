"""What the processes of a job agree on: one question, asked everywhere.

Used by the workdir's lock (did process 0 get it? is the workdir still
there?) and by preemption (did any process receive SIGTERM?).
"""

import jax
from jax.experimental import multihost_utils
import numpy as np


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (every process calls
  it; one process answers at once)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.int32(flag))
  return bool(np.any(flags))
