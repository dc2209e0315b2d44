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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ten calls of a program with a 64 MB temporary (larger than glibc's largest
# mmap threshold, 32 MB): the minor page faults of each call.
_FAULTS = textwrap.dedent("""
    import resource, sys
    from optg_jax.harness import host_memory
    print("kept", host_memory.set_host_allocator(sys.argv[1]))
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 4096), jnp.float32)
    f = jax.jit(lambda x: jnp.tanh(x * 2.0) @ jnp.ones((4096, 8)))
    for _ in range(10):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
_PAGES_64MB = 64 * 2**20 // 4096


def _faults(choice):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _FAULTS, choice], env=env,
                       capture_output=True, text=True, check=True).stdout
  lines = out.split()
  return lines[1] == "True", [int(x) for x in lines[2:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
  kept, faults = _faults("keep")
  assert kept
  assert len(faults) == 10
  # The first calls map the buffers; the last seven reuse them.
  assert sum(faults[3:]) < _PAGES_64MB // 2, faults
  system_kept, system = _faults("system")
  assert not system_kept
  # glibc's defaults unmap the temporary at every call: each faults it in.
  assert min(system[3:]) > _PAGES_64MB // 2, system


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
