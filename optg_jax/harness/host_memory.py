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
price is a resident size that stays at its peak.

It only takes effect for threads that have not allocated yet, so it must
run before the JAX backend starts (before the first `jax.devices()` or
computation); `launch/train.py` calls it first thing, when the run is on the
CPU (`config.host_allocator`). On accelerators the host does little more
than feed the input pipeline, whose many threads one arena would serialise:
"auto" leaves glibc alone there.
"""

import ctypes
import ctypes.util
import importlib.metadata
import os
import sys

HOST_ALLOCATORS = ("auto", "keep", "system")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap kept.
# Distributions that give JAX a GPU or TPU backend.
_ACCELERATOR_PREFIXES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm",
                         "libtpu", "jax-tpu")


def accelerator_backend_installed() -> bool:
  """Whether JAX may start on an accelerator, decided without starting it:
  `JAX_PLATFORMS` when set, else whether a GPU or TPU plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return any(p not in ("cpu", "") for p in platforms.split(","))
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_ACCELERATOR_PREFIXES):
      return True
  return False


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
  leaves glibc's defaults, "auto" keeps it when JAX will run on the CPU.
  Returns whether freed memory is now kept."""
  if choice not in HOST_ALLOCATORS:
    raise ValueError(f"host_allocator must be one of {HOST_ALLOCATORS}, "
                     f"got {choice!r}")
  if choice == "system" or (choice == "auto" and
                            accelerator_backend_installed()):
    return False
  return keep_freed_memory()
