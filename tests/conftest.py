"""Test setup: 4 simulated CPU devices, so that pmap code paths run."""

import os

import pytest

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def reference_console(tmp_path_factory):
  """An uninterrupted tiny run (tests/runs.py) through launch/train.py, on
  one process with 4 devices: `(workdir, console)`, the console being its
  stdout and stderr."""
  import runs  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("reference")
  result = runs.launch(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout + result.stderr


@pytest.fixture(scope="session")
def reference(reference_console):
  """The run of `reference_console`: `(workdir, summary)`."""
  import runs  # pylint: disable=g-import-not-at-top
  workdir, _ = reference_console
  return workdir, runs.read_summary(workdir)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
  """The README's quick start, uninterrupted: `(workdir, summary)`."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import runs  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("quickstart")
  result = subprocess.run(runs.quickstart_command(workdir), cwd=runs.ROOT,
                          env=runs.quickstart_env(), capture_output=True,
                          text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, runs.read_summary(workdir)
