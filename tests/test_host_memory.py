"""The host allocator (`config.host_allocator`): freed memory kept for reuse
stops XLA's CPU runtime from faulting its buffers in at every call."""

import os
import subprocess
import sys
import textwrap

import pytest

from optg_jax.harness import config as config_lib
from optg_jax.harness import errors
from optg_jax.harness import host_memory
from configs import default
import runs

# Five rounds of allocating, filling and freeing 64 MB with the C library's
# malloc (larger than glibc's largest mmap threshold, 32 MB), as XLA's CPU
# runtime does with a step's temporaries: the minor page faults of each.
_FAULTS = textwrap.dedent("""
    import ctypes, resource, sys
    from optg_jax.harness import host_memory
    print("kept", host_memory.set_host_allocator(sys.argv[1]))
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 * 2**20
    for _ in range(5):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      block = libc.malloc(size)
      ctypes.memset(block, 1, size)
      libc.free(block)
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
_PAGES_64MB = 64 * 2**20 // 4096


def _faults(choice):
  env = dict(os.environ, PYTHONPATH=runs.ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _FAULTS, choice], env=env,
                       capture_output=True, text=True, check=True).stdout
  lines = out.split()
  return lines[1] == "True", [int(x) for x in lines[2:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
  kept, faults = _faults("keep")
  assert kept
  assert len(faults) == 5
  # The first round maps the block; the next four reuse it.
  assert faults[0] > _PAGES_64MB // 2, faults
  assert sum(faults[1:]) < _PAGES_64MB // 8, faults
  system_kept, system = _faults("system")
  assert not system_kept
  # glibc's defaults unmap the block when it is freed: every round faults
  # it in again (page by page; a kernel that backs it with huge pages
  # faults fewer times, still at every round).
  assert min(system[1:]) > 0, system
  assert sum(system[1:]) > 4 * sum(faults[1:]) + 4, (system, faults)


def test_system_changes_nothing(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "keep_freed_memory",
                      lambda: calls.append(1) or True)
  assert not host_memory.set_host_allocator("system")
  assert calls == []
  assert host_memory.set_host_allocator("keep")
  assert calls == [1]


def test_unknown_allocator_is_refused():
  with pytest.raises(ValueError, match="host_allocator must be one of"):
    host_memory.set_host_allocator("tcmalloc")
  config = default.get_config()
  config.host_allocator = "tcmalloc"
  with pytest.raises(errors.ConfigError,
                     match="unknown host_allocator 'tcmalloc'"):
    config_lib.validate_config(config, global_device_count=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's mallopt")
def test_the_launcher_logs_it_and_refuses_an_unknown_one(tmp_path):
  # A run refused by the config check after the launcher has set up JAX:
  # its INFO log says what the allocator is.
  kept = runs.launch(tmp_path / "keep", devices=1, host_allocator="keep",
                     learning_rate=-1.0, extra_args=["--verbosity=1"])
  assert kept.returncode != 0
  assert "host allocator keep (freed memory kept: True)" in kept.stderr, (
      kept.stderr[-3000:])
  assert "learning_rate must be positive" in kept.stderr
  unknown = runs.launch(tmp_path / "unknown", devices=1,
                        host_allocator="tcmalloc")
  assert unknown.returncode != 0
  assert ("error: unknown host_allocator 'tcmalloc'; valid: system, keep"
          in unknown.stderr), unknown.stderr[-3000:]
  assert not (tmp_path / "unknown").exists() or not any(
      (tmp_path / "unknown").iterdir())
