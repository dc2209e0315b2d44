"""The host allocator of a run on the CPU: freed memory kept for reuse.

XLA's CPU runtime allocates each step's temporary buffers afresh (for
ResNet-50 at batch 16, about 800 MB a step). With glibc's defaults, blocks
that large are returned to the kernel when freed, so every step faults its
temporaries in again, page by page: on a 2-core host about 200,000 minor
faults a step, whose kernel time varied from 0.35 s to 1.8 s of a 1.9 s
step with what else the process held (`benchmarks/train_step.py` prints
both). `keep_freed_memory` tells glibc to serve every block from one arena's
heap and never to give it back, so that after the first step the
temporaries reuse memory already mapped: no faults, no kernel time. The
price is a resident size that stays at its peak, and one arena's lock for
every thread: the quick start's small model ran 15-25% slower with it (72-78
s against 58-66 s on 2 cores), so it is opt-in (`config.host_allocator=
"keep"`), for large models trained on the CPU and for the train-step
benchmark.

It only takes effect for threads that have not allocated yet, so it must
run before the JAX backend starts (before the first `jax.devices()` or
computation); `launch/train.py` calls it first thing.
"""

import ctypes
import ctypes.util
import sys

HOST_ALLOCATORS = ("system", "keep")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap kept.


def keep_freed_memory() -> bool:
  """One malloc arena, no `mmap`-ed blocks, no trimming of the heap.

  Returns whether glibc accepted the three settings (False on a C library
  without `mallopt`, e.g. macOS: nothing changes there).
  """
  if not sys.platform.startswith("linux"):
    return False
  name = ctypes.util.find_library("c") or "libc.so.6"
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  return all(mallopt(option, value) == 1 for option, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)))


def set_host_allocator(choice: str) -> bool:
  """Applies `config.host_allocator`: "keep" keeps freed memory, "system"
  leaves glibc's defaults. Returns whether freed memory is now kept."""
  if choice not in HOST_ALLOCATORS:
    raise ValueError(f"host_allocator must be one of {HOST_ALLOCATORS}, "
                     f"got {choice!r}")
  return choice == "keep" and keep_freed_memory()
