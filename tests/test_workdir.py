"""Faults of the workdir: verified checkpoints, one writer, the config
record, runs that cannot reach their target, I/O errors, SIGTERM in the
final evaluation. Each test backs a row of the table in
docs/guides/faults.md."""

import collections
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import optg_jax as optg
from optg_jax.harness import checkpoints
from optg_jax import data
from optg_jax.harness import errors
from optg_jax import train
import runs

pytestmark = pytest.mark.slow


def copy_of(reference, tmp_path, name="run", keep_summary=False):
  """A copy of the reference run's workdir (its checkpoints 50, 60, 69)."""
  ref_workdir, _ = reference
  workdir = tmp_path / name
  shutil.copytree(ref_workdir, workdir)
  if not keep_summary:
    os.remove(workdir / "summary.json")
  return workdir


def snapshot(workdir):
  """Every file of a workdir with its size, mtime and SHA-256."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = (
            os.path.getsize(path), os.path.getmtime(path),
            hashlib.sha256(f.read()).hexdigest())
  return files


def error_lines(result):
  return [l for l in result.stderr.splitlines() if l.startswith("error:")]


def assert_same_figures(summary, expected):
  for key in runs.EXACT_FIGURES:
    assert summary[key] == expected[key], key


def flip_bits(directory, seed, count=16):
  """XORs the low bits of `count` bytes in the second half of the largest
  file of a checkpoint (its biggest data chunk)."""
  files = []
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      files.append((os.path.getsize(path), path))
  size, path = max(files)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in random.Random(seed).sample(range(size // 2, size), count):
      data[i] ^= 0x03
    f.seek(0)
    f.write(data)


def rewrite(workdir, step, change, digest_of_new=False):
  """Saves the checkpoint of `step` again with `change(state)` applied,
  beside the digest of the original (or, with `digest_of_new`, of the
  changed state): what altered files that still decode look like."""
  config = runs.tiny_config()
  run = train.Run(config)
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  state = checkpoints.restore(manager, step, run.initial_state())
  record = {"sha256": checkpoints.state_digest(state), "step": step,
            "format": checkpoints.FORMAT}
  state = change(jax.device_get(state))
  if digest_of_new:
    record["sha256"] = checkpoints.state_digest(state)
  shutil.rmtree(os.path.join(str(workdir), "checkpoints", str(step)))
  manager.reload()
  manager.save(step, args=ocp.args.Composite(**{
      checkpoints.STATE_ITEM: ocp.args.StandardSave(state),
      checkpoints.DIGEST_ITEM: ocp.args.JsonSave(record)}), force=True)
  manager.wait_until_finished()


def bump_first_momentum(state, value=None):
  """One entry of the scores' momentum (`opt_state[0].momentum`, the
  OptG state of the chain) changed: to `value`, or by +1e-3."""
  optg_state = state.opt_state[0]
  leaves, treedef = jax.tree.flatten(optg_state.momentum)
  leaf = np.array(leaves[0])
  leaf.flat[0] = leaf.flat[0] + 1e-3 if value is None else value
  leaves[0] = leaf
  momentum = jax.tree.unflatten(treedef, leaves)
  return state.replace(opt_state=(optg_state._replace(momentum=momentum),)
                       + tuple(state.opt_state[1:]))


# ---------------------------------------------------------------------------
# Verified checkpoints.


@pytest.mark.long
def test_flipped_bits_in_the_newest_checkpoint_are_detected_and_the_run_ends_as_uninterrupted(
    reference, tmp_path, caplog):
  """The issue's probe: 16 bytes of the newest step's largest data file with
  their low bits flipped. Detected on the next start (the data no longer
  decodes, or decodes to values that do not match the digest), the previous
  checkpoint is used, the bad one set aside, and the run's summary equals
  the uninterrupted run's."""
  _, expected = reference
  workdir = copy_of(reference, tmp_path)
  flip_bits(workdir / "checkpoints" / "69", seed=1)
  with caplog.at_level("WARNING"):
    summary = train.train_and_evaluate(runs.tiny_config(), str(workdir))
  warnings = [r.getMessage() for r in caplog.records
              if "cannot be used" in r.getMessage()]
  assert len(warnings) == 1 and "checkpoint of step 69" in warnings[0]
  assert "<bound method" not in warnings[0]
  assert runs.checkpoint_steps(workdir) == [50, 60, 69]  # 69 saved again.
  assert [n.split("-")[0] for n in os.listdir(
      workdir / "corrupted_checkpoints")] == ["69"]
  assert_same_figures(summary, expected)


@pytest.mark.long
def test_altered_data_that_still_decodes_fails_its_digest(reference,
                                                          tmp_path, caplog):
  workdir = copy_of(reference, tmp_path)
  rewrite(workdir, 69, bump_first_momentum)
  with caplog.at_level("WARNING"):
    state = runs_load(workdir)
  assert int(state.step) == 60
  assert any("step 69" in r.getMessage() and "does not match its SHA-256"
             in r.getMessage() for r in caplog.records)


@pytest.mark.long
def test_non_finite_momentum_is_refused_even_with_a_matching_digest(
    reference, tmp_path, caplog):
  workdir = copy_of(reference, tmp_path)
  rewrite(workdir, 69, lambda s: bump_first_momentum(s, np.nan),
          digest_of_new=True)
  with caplog.at_level("WARNING"):
    state = runs_load(workdir)
  assert int(state.step) == 60
  assert any("step 69" in r.getMessage() and "non-finite values in "
             ".opt_state[0].momentum['conv_init']['kernel']" in r.getMessage()
             for r in caplog.records)


def runs_load(workdir):
  config = runs.tiny_config()
  run = train.Run(config)
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  return checkpoints.restore_latest(manager, run.initial_state(),
                                    str(workdir))


def test_unreadable_reason_is_a_readable_line():
  class Opaque(Exception):

    def __str__(self):
      return "<bound method pybind11_object.__repr__ of <x object at 0x1>>"

  try:
    try:
      raise ValueError("DATA_LOSS: Error reading chunk 3: checksum mismatch")
    except ValueError as cause:
      raise Opaque() from cause
  except Opaque as e:
    assert checkpoints._reason(e) == (  # pylint: disable=protected-access
        "DATA_LOSS: Error reading chunk 3: checksum mismatch")
  assert checkpoints._reason(Opaque()) == (  # pylint: disable=protected-access
      "Opaque while reading it")


# ---------------------------------------------------------------------------
# One writer per workdir.


SLOW_RUN_SCRIPT = """
import runpy, sys, time
sys.path.insert(0, {root!r})
from optg_jax import data
original = data.train_iterator
def train_iterator(config, start_step=0, **kwargs):
  for i, batch in enumerate(original(config, start_step=start_step, **kwargs)):
    if start_step + i >= 10:
      time.sleep(0.8)  # Slower, not different: the same batches.
    yield batch
data.train_iterator = train_iterator
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.long
def test_second_run_and_eval_only_on_a_workdir_in_use_exit_2(reference,
                                                             tmp_path):
  """While a run trains (slowed down to leave time), the same command and
  an `eval_only` on its workdir each exit 2 with one line naming the
  holder; the run's result is that of the undisturbed reference."""
  _, expected = reference
  workdir = tmp_path / "busy"
  first = subprocess.Popen(
      [sys.executable, "-c", SLOW_RUN_SCRIPT.format(
          root=runs.ROOT, argv=runs.launch_args(workdir))],
      cwd=runs.ROOT, env=runs.device_env(4), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  runs.wait_for_checkpoint(first, workdir)
  start = time.time()
  others = [runs.start(workdir, **extra) for extra in ({}, {"eval_only": True})]
  for other in others:
    out, err = other.communicate(timeout=600)
    assert other.returncode == errors.EXIT_BAD_INPUT, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert f"workdir {workdir} is in use by another run" in lines[0]
    assert f"pid {first.pid}," in lines[0]
  assert time.time() - start < 60
  assert first.poll() is None  # Still training when both were refused.
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  assert_same_figures(runs.read_summary(workdir), expected)
  assert not (workdir / "eval_summary.json").exists()


def test_eval_only_writes_its_own_summary(reference, tmp_path):
  _, expected = reference
  workdir = copy_of(reference, tmp_path, keep_summary=True)
  before = snapshot(workdir)
  summary = train.train_and_evaluate(runs.tiny_config(eval_only=True),
                                     str(workdir))
  after = snapshot(workdir)
  changed = {k for k in before if before[k] != after.get(k)}
  # The lock file records its holder; nothing else of the run changes.
  assert changed <= {checkpoints.LOCK_FILE}
  assert set(after) - set(before) == {"eval_summary.json"}
  with open(workdir / "eval_summary.json") as f:
    assert json.load(f) == summary
  assert summary["eval_only"] is True
  assert summary["eval_accuracy"] == expected["eval_accuracy"]
  assert "replica_fingerprints" not in summary


# ---------------------------------------------------------------------------
# The config record.


def test_changed_sparsity_exits_2_naming_it_and_leaves_the_workdir(
    reference, tmp_path):
  workdir = copy_of(reference, tmp_path, keep_summary=True)
  before = snapshot(workdir)
  result = runs.launch(workdir, sparsity=0.5)
  assert result.returncode == errors.EXIT_BAD_INPUT, result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1 and "changed sparsity (0.8 -> 0.5)" in lines[0]
  assert snapshot(workdir) == before


def test_changed_model_is_reported_as_such(reference, tmp_path):
  workdir = copy_of(reference, tmp_path)
  before = snapshot(workdir)
  with pytest.raises(train.ConfigChanged, match=(
      r"changed model \('resnet20_cifar' -> 'resnet32_cifar'\)")):
    train.train_and_evaluate(runs.tiny_config(model="resnet32_cifar"),
                             str(workdir))
  assert snapshot(workdir) == before


def test_config_changes_ignore_bookkeeping_fields():
  old = checkpoints.config_record(runs.tiny_config())
  new = checkpoints.config_record(runs.tiny_config(
      log_every_steps=1, eval_every_epochs=0, checkpoint_every_steps=3,
      keep_checkpoints=9, data_dir="/elsewhere", num_train_steps=7,
      eval_batch_size=20, eval_only=True))
  assert checkpoints.config_changes(old, new) == []
  new = checkpoints.config_record(runs.tiny_config(
      seed=1, batch_size=32, beta=2.0,
      model_kwargs={"kernel_init": "torch_default"}))
  assert checkpoints.config_changes(old, new) == [
      ("batch_size", 64, 32), ("beta", 14.0, 2.0),
      ("model_kwargs", {}, {"kernel_init": "torch_default"}), ("seed", 0, 1)]


def test_config_record_without_checkpoints_is_not_compared(tmp_path):
  """A run that stopped before its first checkpoint leaves nothing to
  continue: a changed config may start over (and rewrite the record)."""
  checkpoints.write_config_record(str(tmp_path), runs.tiny_config())
  checkpoints.check_config_record(str(tmp_path), runs.tiny_config(seed=5))
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  with pytest.raises(train.ConfigChanged, match=r"changed seed \(0 -> 5\)"):
    checkpoints.check_config_record(str(tmp_path), runs.tiny_config(seed=5))


# ---------------------------------------------------------------------------
# Runs that cannot reach their target.


@pytest.mark.parametrize("override, message", [
    ("--config.update_every_steps=690",
     "update_every_steps=690 refreshes the masks only after the run's 690 "
     "steps (num_epochs=30 x 23 steps per epoch)"),
    ("--config.sparsity=0.9999999",
     "sparsity 0.9999999 keeps no weight of resnet20_cifar's 270,608"),
])
def test_quickstart_that_cannot_reach_its_target_exits_2(tmp_path, override,
                                                         message):
  workdir = tmp_path / "w"
  result = subprocess.run(
      runs.quickstart_command(workdir) + [override], cwd=runs.ROOT,
      env=runs.quickstart_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == errors.EXIT_BAD_INPUT, result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
  assert not workdir.exists()


@pytest.mark.parametrize("overrides, message", [
    # 1 epoch, beta 1: the masks of the last step are drawn after step 22,
    # in epoch 0, at 0.9 * sigmoid(-0.5) = 0.3398.
    (dict(num_epochs=1, warmup_epochs=0, update_every_steps=1, beta=1.0,
          sparsity=0.9),
     r"the masks the last step trains with \(drawn after step 22 of 23\) "
     r"are at sparsity 0.3398, short of the target 0.9 by 0.5602 \(more "
     r"than 0.001\); set num_epochs >= 16 \(now 1\)"),
    # A refresh every 40 of 69 steps: the last after step 40, in epoch 1.
    (dict(update_every_steps=40),
     r"\(drawn after step 40 of 69\) are at sparsity 0.0007, .*; set an "
     r"update_every_steps \(now 40\) that refreshes in the last epoch \(at "
     r"most 23, the steps of an epoch\) or more num_epochs \(now 3\)"),
    # 6 epochs at beta 1: the last epoch trains at 0.8 * sigmoid(2).
    (dict(num_epochs=6, beta=1.0),
     r"are at sparsity 0.7046, .*; set beta >= 3.35 \(now 1\) or num_epochs "
     r">= 16 \(now 6\)"),
])
def test_target_shortfall_is_refused_naming_the_fields(tmp_path, overrides,
                                                       message):
  workdir = tmp_path / "w"
  with pytest.raises(train.ConfigError, match=message):
    train.train_and_evaluate(runs.tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# The workdir itself.


def test_workdir_that_is_a_file_is_bad_input(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(train.ConfigError,
                     match=f"workdir {path} exists and is not a directory"):
    train.train_and_evaluate(runs.tiny_config(), str(path))
  assert path.read_text() == "x"


@pytest.mark.long
def test_workdir_deleted_mid_run_stops_it_with_exit_4(tmp_path):
  workdir = tmp_path / "vanishing"
  process = runs.start(workdir)
  runs.wait_for_checkpoint(process, workdir)
  shutil.rmtree(workdir)
  out, err = process.communicate(timeout=600)
  assert process.returncode == errors.EXIT_IO, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and f"the workdir {workdir} vanished at step" in (
      lines[0])
  assert not (workdir / "summary.json").exists()


@contextlib.contextmanager
def tmpfs(path, options):
  """A tmpfs mounted at `path` for the block (root only: skips elsewhere)."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                            str(path)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=False)


FULL_DISK_SCRIPT = """
import errno, os, runpy, sys
sys.path.insert(0, {root!r})
from optg_jax.harness import checkpoints
saves = []
original = checkpoints.save
def save(manager, state, *args):
  saves.append(int(state.step))
  if len(saves) == 2:  # The second save finds the disk full.
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return original(manager, state, *args)
checkpoints.save = save
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.long
def test_full_disk_while_saving_exits_4_and_keeps_the_checkpoints(
    reference, tmp_path):
  _, expected = reference
  workdir = tmp_path / "full"
  script = FULL_DISK_SCRIPT.format(root=runs.ROOT,
                                   argv=runs.launch_args(workdir))
  result = subprocess.run([sys.executable, "-c", script], cwd=runs.ROOT,
                          env=runs.device_env(4), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == errors.EXIT_IO, result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1 and lines[0] == (
      f"error: cannot save the checkpoint of step 20 in {workdir}/checkpoints"
      ": No space left on device; the checkpoints saved before are intact")
  assert runs.checkpoint_steps(workdir) == [10]
  # With space again, the same command goes on from step 10.
  result = runs.launch(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Restored the checkpoint of step 10" in result.stderr
  assert_same_figures(runs.read_summary(workdir), expected)


@pytest.mark.long
def test_full_disk_on_a_real_filesystem(tmp_path):
  """A 3 MB tmpfs: the first checkpoint (about 3.4 MB) does not fit. The
  storage layers' hundreds of error reports become one line; no temporary
  directory stays. Needs the right to mount (root)."""
  with tmpfs(tmp_path / "small", "size=3m") as mount:
    workdir = mount / "run"
    result = runs.launch(workdir)
    assert result.returncode == errors.EXIT_IO, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: cannot save the checkpoint of step 10 in {workdir}/"
        "checkpoints: No space left on device; the checkpoints saved before "
        "are intact"]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert os.listdir(workdir / "checkpoints") == []


def test_read_only_workdir_exits_4_and_writes_nothing(tmp_path):
  with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
    workdir = mount / "run"
    result = runs.launch(workdir)
    assert result.returncode == errors.EXIT_IO, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: cannot write to workdir {workdir}: Read-only file system: "
        f"{workdir}"], result.stderr[-3000:]
    assert os.listdir(mount) == []


def test_os_errors_inside_storage_messages_are_recognised():
  text = ("RESOURCE_EXHAUSTED: Error writing \"x\": Failed to write 705910 "
          "bytes to file 16: No space left on device [os_error_code='28']")
  found = checkpoints.os_error_in(ValueError(text))
  assert found.errno == errno.ENOSPC
  assert checkpoints.os_error_in(ValueError("shape mismatch")) is None


# ---------------------------------------------------------------------------
# SIGTERM during the final evaluation.


@pytest.mark.long
def test_sigterm_during_the_final_evaluation_stops_like_elsewhere(
    reference, tmp_path, monkeypatch):
  _, expected = reference
  workdir = copy_of(reference, tmp_path)  # Finished: only the final eval.
  batches = sigterm_at_first_eval_batch(monkeypatch)
  with pytest.raises(train.Preempted, match=(
      "preempted: saved a checkpoint at step 69; run the same command")):
    train.train_and_evaluate(runs.tiny_config(), str(workdir))
  assert batches == [1]  # Stopped after the first of 3 batches.
  assert not (workdir / "summary.json").exists()
  monkeypatch.undo()
  summary = train.train_and_evaluate(runs.tiny_config(), str(workdir))
  assert_same_figures(summary, expected)


def sigterm_at_first_eval_batch(monkeypatch):
  """SIGTERM arrives with the first evaluation batch; returns a list that
  holds the number of batches the evaluation drew."""
  original = data.eval_iterator
  drawn = []

  def eval_iterator(*args, **kwargs):
    drawn.append(0)
    for batch in original(*args, **kwargs):
      drawn[-1] += 1
      if drawn[-1] == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, "eval_iterator", eval_iterator)
  return drawn


def test_sigterm_during_eval_only_stops_and_writes_nothing(
    reference, tmp_path, monkeypatch):
  workdir = copy_of(reference, tmp_path, keep_summary=True)
  before = snapshot(workdir)
  batches = sigterm_at_first_eval_batch(monkeypatch)
  with pytest.raises(train.Preempted, match=(
      "preempted: stopped evaluating the checkpoint of step 69, nothing "
      "written; run the same command again")):
    train.train_and_evaluate(runs.tiny_config(eval_only=True), str(workdir))
  assert batches == [1]
  after = snapshot(workdir)
  assert {k for k in before if before[k] != after.get(k)} <= {
      checkpoints.LOCK_FILE}
  assert set(after) == set(before)


# ---------------------------------------------------------------------------
# Workdirs of earlier releases.


@pytest.mark.long
def test_a_checkpoint_of_format_2_resumes_as_uninterrupted(reference,
                                                          tmp_path):
  """Format 2 lacks the transform's top-k hint: the checkpoint of step 50
  saved that way (its own digest, record format 2), the later ones
  removed, the run resumes from it with an empty hint (a refresh would
  search from scratch and draw the same masks) and ends as the
  uninterrupted run."""
  _, expected = reference
  workdir = copy_of(reference, tmp_path)
  config = runs.tiny_config()
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  state = jax.device_get(checkpoints.restore(
      manager, 50, train.Run(config).initial_state()))
  is_state = lambda x: isinstance(x, optg.OptGState)
  old_type = collections.namedtuple(
      "OptGState", ["count", "scores", "momentum", "masks", "trained_masks"])
  old = state.replace(opt_state=jax.tree.map(
      lambda x: old_type(*x[:5]) if is_state(x) else x, state.opt_state,
      is_leaf=is_state))
  record = checkpoints.digest_record(manager, 50)
  record.update(sha256=checkpoints.state_digest(old), format=2)
  for step in (50, 60, 69):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  manager.reload()
  manager.save(50, args=ocp.args.Composite(**{
      checkpoints.STATE_ITEM: ocp.args.StandardSave(old),
      checkpoints.DIGEST_ITEM: ocp.args.JsonSave(record)}), force=True)
  manager.wait_until_finished()

  restored = checkpoints.restore(manager, 50, train.Run(config).initial_state())
  assert int(optg.get_optg_state(restored.opt_state).topk_hint.selections) == 0
  summary = train.train_and_evaluate(config, str(workdir))
  # No refresh follows step 50, so the hint stays empty: the state's
  # fingerprint differs from the uninterrupted run's by that alone.
  for key in runs.EXACT_FIGURES:
    if key != "replica_fingerprints":
      assert summary[key] == expected[key], key
  template = train.Run(config).initial_state()
  final = jax.device_get(checkpoints.restore(
      checkpoints.checkpoint_manager(str(workdir), config), 69, template))
  want = jax.device_get(checkpoints.restore(
      checkpoints.checkpoint_manager(str(reference[0]), config), 69,
      template))
  hint = lambda s: optg.get_optg_state(s.opt_state).topk_hint
  assert int(hint(final).selections) == 0 and int(hint(want).selections) == 2
  without_hint = lambda s: s.replace(opt_state=jax.tree.map(
      lambda x: x._replace(topk_hint=None) if is_state(x) else x,
      s.opt_state, is_leaf=is_state))
  assert (checkpoints.state_digest(without_hint(final)) ==
          checkpoints.state_digest(without_hint(want)))


@pytest.mark.long
def test_checkpoints_of_an_earlier_release_are_refused(tmp_path):
  """A checkpoint of format 1 (an `OptGState` without `trained_masks`, a
  digest without `format`): its run reported the masks of a refresh after
  the last step. Training, `eval_only` and export refuse it in one line,
  exit 2, and move nothing."""
  config = runs.tiny_config()
  workdir = tmp_path / "old"
  state = train.Run(config).initial_state()
  old_state_type = collections.namedtuple(
      "OptGState", ["count", "scores", "momentum", "masks"])
  is_state = lambda x: isinstance(x, optg.OptGState)
  old = state.replace(step=np.int32(10), opt_state=jax.tree.map(
      lambda x: old_state_type(*x[:4]) if is_state(x) else x,
      state.opt_state, is_leaf=is_state))
  workdir.mkdir()
  checkpoints.write_config_record(str(workdir), config)
  manager = train.checkpoint_manager(str(workdir), config)
  manager.save(10, args=ocp.args.Composite(**{
      checkpoints.STATE_ITEM: ocp.args.StandardSave(old),
      checkpoints.DIGEST_ITEM: ocp.args.JsonSave(
          {"sha256": checkpoints.state_digest(old), "step": 10})}))
  manager.wait_until_finished()
  before = snapshot(workdir)
  message = (f"the checkpoints in {workdir / 'checkpoints'} were written by "
             "an earlier release of optg_jax (checkpoint format 1, this "
             "release reads 2 and 3)")
  for overrides in ({}, {"eval_only": True}):
    with pytest.raises(errors.OldCheckpoint) as raised:
      train.train_and_evaluate(runs.tiny_config(**overrides), str(workdir))
    assert str(raised.value).startswith(message)
    assert errors.exit_code(raised.value) == errors.EXIT_BAD_INPUT
  result = subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "launch", "export.py"),
       f"--workdir={workdir}", f"--output={tmp_path / 'model.npz'}"],
      capture_output=True, text=True, timeout=600, env=runs.device_env(1))
  assert result.returncode == errors.EXIT_BAD_INPUT, result.stderr[-2000:]
  lines = error_lines(result)
  assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), (
      result.stderr[-2000:])
  assert not (tmp_path / "model.npz").exists()
  contents = lambda files: {k: (size, sha) for k, (size, _, sha) in
                            files.items() if k != checkpoints.LOCK_FILE}
  assert contents(snapshot(workdir)) == contents(before)
  assert not (workdir / checkpoints.SET_ASIDE_DIR).exists()


def test_formats_read_and_refused():
  """Formats 2 and 3 are read; 1 is refused as an earlier release's, a
  later one as a later release's, each naming the directory."""
  for readable in (2, 3):
    checkpoints.check_format_of({"format": readable}, "/runs/a")
  with pytest.raises(errors.OldCheckpoint, match="earlier release .*format 1"):
    checkpoints.check_format_of({}, "/runs/a")
  with pytest.raises(errors.OldCheckpoint,
                     match=r"/runs/a were written by a later release of "
                     r"optg_jax \(checkpoint format 4, this release reads 2 "
                     r"and 3\); use that release"):
    checkpoints.check_format_of({"format": 4}, "/runs/a")
