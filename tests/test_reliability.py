"""Faults: preemption (SIGTERM, SIGKILL), non-finite steps, damaged
checkpoints. Each test backs a row of the table in docs/guides/faults.md."""

import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from optg_jax import data
from optg_jax import train
import runs

pytestmark = pytest.mark.slow


def load_latest(workdir, config=None):
  config = config or runs.tiny_config()
  run = train.Run(config)
  manager = train.checkpoint_manager(str(workdir), config)
  return train.restore_latest(manager, run.initial_state(), str(workdir))


def assert_same_figures(summary, expected):
  for key in runs.EXACT_FIGURES:
    assert summary[key] == expected[key], key


def assert_same_final_state(workdir, reference_workdir):
  a, b = load_latest(workdir), load_latest(reference_workdir)
  assert int(a.step) == int(b.step)
  runs.assert_trees_equal(a.params, b.params)
  runs.assert_trees_equal(a.batch_stats, b.batch_stats)
  runs.assert_trees_equal(a.opt_state, b.opt_state)


@pytest.mark.long
def test_replicas_are_identical(reference):
  _, summary = reference
  assert summary["replicas_identical"] is True
  assert len(summary["replica_fingerprints"]) == 4


@pytest.mark.long
def test_sigterm_saves_the_current_step_and_resume_is_bitwise_identical(
    reference, tmp_path):
  ref_workdir, ref_summary = reference
  workdir = tmp_path / "preempted"
  process = runs.start(workdir)
  runs.wait_for_checkpoint(process, workdir)
  code, _, err = runs.stop(process, signal.SIGTERM)
  assert code == 0, err[-3000:]
  assert "preempted: saved a checkpoint at step" in err, err[-3000:]
  step = int(err.split("saved a checkpoint at step ")[1].split(";")[0])
  assert 10 <= step < ref_summary["steps"]
  assert runs.checkpoint_steps(workdir)[-1] == step
  assert not (workdir / "summary.json").exists()

  result = runs.launch(workdir)  # The same command again.
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Restored the checkpoint of step {step}" in result.stderr
  assert_same_figures(runs.read_summary(workdir), ref_summary)
  assert_same_final_state(workdir, ref_workdir)


@pytest.mark.long
def test_quickstart_killed_after_first_checkpoint_then_same_command(
    quickstart_run, tmp_path):
  """The README's quick start, SIGKILLed after its first checkpoint and
  started again with the same command, writes the same figures."""
  _, expected = quickstart_run
  workdir = tmp_path / "quickstart"
  process = subprocess.Popen(runs.quickstart_command(workdir), cwd=runs.ROOT,
                             env=runs.quickstart_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  first = runs.wait_for_checkpoint(process, workdir)
  code, _, _ = runs.stop(process, signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert not (workdir / "summary.json").exists()
  assert first[-1] < expected["steps"]

  result = subprocess.run(runs.quickstart_command(workdir), cwd=runs.ROOT,
                          env=runs.quickstart_env(), capture_output=True,
                          text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Restored the checkpoint of step" in result.stderr
  summary = runs.read_summary(workdir)
  for key in runs.EXACT_FIGURES:
    assert summary[key] == expected[key], key


@pytest.mark.long
def test_resume_from_a_mid_epoch_checkpoint_in_process(reference, tmp_path):
  """Stopping at step 13 (inside epoch 0) and resuming changes nothing."""
  ref_workdir, ref_summary = reference
  workdir = str(tmp_path / "mid_epoch")
  train.train_and_evaluate(runs.tiny_config(num_train_steps=13,
                                            checkpoint_every_steps=13),
                           workdir)
  assert runs.checkpoint_steps(workdir) == [13]
  summary = train.train_and_evaluate(runs.tiny_config(), workdir)
  assert_same_figures(summary, ref_summary)
  assert_same_final_state(workdir, ref_workdir)


# ---------------------------------------------------------------------------
# Non-finite steps.


def nan_at(step):
  """A train_iterator whose batch of step `step` holds a NaN pixel."""
  original = data.train_iterator

  def train_iterator(config, start_step=0, **kwargs):
    for i, batch in enumerate(original(config, start_step=start_step,
                                       **kwargs)):
      if start_step + i == step:
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0, 0] = np.nan
      yield batch

  return train_iterator


@pytest.mark.long
def test_nan_stops_the_run_naming_the_step_and_keeps_last_checkpoint(
    monkeypatch, tmp_path):
  monkeypatch.setattr(data, "train_iterator", nan_at(13))
  workdir = str(tmp_path / "nan")
  # A NaN pixel: here the loss stays finite, the gradients do not.
  with pytest.raises(train.NonFiniteError, match=(
      r"^non-finite gradients \(the loss, [0-9.]+, is finite\) at step 13; ")):
    train.train_and_evaluate(runs.tiny_config(), workdir)
  assert runs.checkpoint_steps(workdir) == [10]
  state = load_latest(workdir)
  assert int(state.step) == 10
  for leaf in jax.tree.leaves((state.params, state.batch_stats,
                               state.opt_state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


@pytest.mark.long
def test_nan_step_leaves_the_state_unchanged():
  config = runs.tiny_config()
  run = train.Run(config)
  p_train, _ = run.compiled_steps()
  state = train.replicate(run.initial_state())
  batch = next(data.train_iterator(config, local_device_count=4))
  batch = dict(batch, image=batch["image"].copy())
  batch["image"][1, 2, 3, 4, 0] = np.inf
  before = jax.device_get(state)
  after, metrics = p_train(state, batch, 0)
  assert float(metrics["finite"][0]) == 0.0
  after = jax.device_get(after)
  runs.assert_trees_equal(after.params, before.params)
  runs.assert_trees_equal(after.batch_stats, before.batch_stats)
  runs.assert_trees_equal(after.opt_state, before.opt_state)


@pytest.mark.long
def test_nan_through_launch_exits_nonzero_with_one_line(tmp_path):
  workdir = tmp_path / "nan_launch"
  script = (
      "import sys, runpy\n"
      f"sys.path.insert(0, {runs.ROOT!r})\n"
      f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
      "from optg_jax import data\n"
      "import test_reliability\n"
      "data.train_iterator = test_reliability.nan_at(7)\n"
      f"sys.argv = {runs.launch_args(workdir)!r}\n"
      "runpy.run_path(sys.argv[0], run_name='__main__')\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=runs.ROOT,
                          env=runs.device_env(4), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 3, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "at step 7;" in errors[0]
  assert runs.checkpoint_steps(workdir) == []
  assert not (workdir / "summary.json").exists()


# ---------------------------------------------------------------------------
# Damaged checkpoints.


@pytest.fixture(scope="module")
def _run_of_20_steps(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stopped"))
  train.train_and_evaluate(runs.tiny_config(num_train_steps=20), workdir)
  assert runs.checkpoint_steps(workdir) == [10, 20]
  os.remove(os.path.join(workdir, "summary.json"))
  return workdir


@pytest.fixture
def stopped_at_20(_run_of_20_steps, tmp_path):
  """A workdir whose run stopped after its checkpoints of steps 10 and 20."""
  workdir = str(tmp_path / "stopped")
  shutil.copytree(_run_of_20_steps, workdir)
  return workdir


def damage(directory):
  """Overwrites every file of a checkpoint with garbage of the same size."""
  count = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      size = max(os.path.getsize(path), 16)
      with open(path, "wb") as f:
        f.write(b"\xde\xad\xbe\xef" * (size // 4))
      count += 1
  assert count > 0


@pytest.mark.long
def test_half_written_checkpoint_is_never_loaded(stopped_at_20):
  workdir = stopped_at_20
  # What a process killed while saving step 30 leaves: orbax's temporary
  # directory, never renamed to "30".
  complete = os.path.join(workdir, "checkpoints", "20")
  partial = os.path.join(workdir, "checkpoints",
                         "30.orbax-checkpoint-tmp-1234567")
  shutil.copytree(complete, partial)
  damage(partial)
  state = load_latest(workdir)
  assert int(state.step) == 20
  # Orbax's cleanup of temporary directories removed it on the way.
  assert not os.path.exists(partial)


@pytest.mark.long
def test_corrupted_latest_checkpoint_falls_back_with_a_warning(
    stopped_at_20, caplog):
  workdir = stopped_at_20
  good = load_latest(workdir, runs.tiny_config())
  damage(os.path.join(workdir, "checkpoints", "20"))
  with caplog.at_level("WARNING"):
    state = load_latest(workdir)
  assert int(state.step) == 10
  assert any("step 20" in r.getMessage() and "cannot be used" in
             r.getMessage() for r in caplog.records)
  # One warning line per bad checkpoint; the storage layers' errors held.
  assert not [r for r in caplog.records if r.levelname == "ERROR"]
  assert int(good.step) == 20
  # The damaged checkpoint is set aside; the run goes on from step 10.
  assert runs.checkpoint_steps(workdir) == [10]
  assert os.listdir(os.path.join(workdir, "corrupted_checkpoints"))


@pytest.mark.long
def test_no_readable_checkpoint_is_a_clear_error(stopped_at_20):
  workdir = stopped_at_20
  for step in (10, 20):
    damage(os.path.join(workdir, "checkpoints", str(step)))
  result = runs.launch(workdir)
  assert result.returncode == 3, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "no readable checkpoint" in errors[0]
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  # Left in place, so that running again does not silently start over.
  assert runs.checkpoint_steps(workdir) == [10, 20]


def test_non_finite_message_says_whether_the_loss_was_finite():
  run = types.SimpleNamespace(parallel=train.Pmap())  # Metrics of 1 replica.
  finite_loss = [{"finite": np.array([0.0]), "loss": np.array([363.39])}]
  with pytest.raises(train.NonFiniteError, match=(
      r"^non-finite gradients \(the loss, 363\.39, is finite\) at step 10; "
      r"stopping without saving a checkpoint$")):
    train.check_finite(run, finite_loss, 11)
  inf_loss = [{"finite": np.array([1.0]), "loss": np.array([1.0])},
              {"finite": np.array([0.0]), "loss": np.array([np.inf])}]
  with pytest.raises(train.NonFiniteError,
                     match=r"^a non-finite loss \(inf\) at step 6; "):
    train.check_finite(run, inf_loss, 7)
