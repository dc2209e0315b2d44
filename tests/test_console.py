"""What `launch/train.py` prints: a few lines a person reads, with an ETA;
the libraries' INFO logs only with `--verbosity=1`."""

import os
import re
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from optg_jax.harness import console
from optg_jax import train
import runs

STAMP = r"\d\d:\d\d:\d\d "
PROGRESS = re.compile(
    STAMP + r"step (\d+)/(\d+) \(epoch (\d+\.\d)\) loss (\S+) acc (\d\.\d{3}) "
    r"sparsity (\d\.\d{3}) \| ([\d,]+) img/s \| ETA (\d+:\d\d)$")
EVALUATION = re.compile(
    STAMP + r"Evaluation at step (\d+) \(epoch (\d+\.\d), the masks it "
    r"trained with\): top-1 (\d\.\d{4}), top-5 (\d\.\d{4}), loss (\d+\.\d{4}) "
    r"\| (?:best top-1 (\d\.\d{4}) at step (\d+)|no evaluation at the "
    r"target sparsity yet)$")
SAVED = re.compile(STAMP + r"Saved the checkpoint of step (\d+) in (\S+) "
                   r"\(\d+\.\d s\)$")
# What the libraries log at INFO: orbax, clu's metric writer and progress
# notes, JAX's backend discovery, TensorFlow's native code.
CHATTER = re.compile(r"orbax|checkpoint_manager\.py|logging_writer\.py|"
                     r"work unit notes|xla_bridge|port\.cc|"
                     r"absl::InitializeLog|^I\d{4} ")


def test_duration_format():
  assert console.duration(0) == "0:00"
  assert console.duration(21.4) == "0:21"
  assert console.duration(59.6) == "1:00"
  assert console.duration(3725) == "1:02:05"


def test_checkpoint_manager_keeps_the_last_keep_checkpoints(tmp_path):
  config = runs.tiny_config(keep_checkpoints=2)
  manager = train.checkpoint_manager(str(tmp_path), config)
  assert manager._options.max_to_keep is None
  for step in (10, 20, 30, 40):
    manager.save(step, args=ocp.args.StandardSave({"w": step}))
    manager.wait_until_finished()
  assert manager.all_steps() == [30, 40]
  assert runs.checkpoint_steps(tmp_path) == [30, 40]
  # A new manager on the same directory (a resumed run) goes on keeping 2.
  manager = train.checkpoint_manager(str(tmp_path), config)
  manager.save(50, args=ocp.args.StandardSave({"w": 50}))
  manager.wait_until_finished()
  assert runs.checkpoint_steps(tmp_path) == [40, 50]


@pytest.mark.long
@pytest.mark.slow
def test_console_is_a_few_lines_with_progress_and_eta(reference_console):
  workdir, console = reference_console
  summary = runs.read_summary(workdir)
  lines = console.splitlines()
  # 14 progress lines, 3 evaluations, 7 saves, a few lines around them.
  assert 26 <= len(lines) <= 40, console
  assert all(re.match(STAMP, line) for line in lines), console
  assert not [line for line in lines if CHATTER.search(line)], console
  assert max(len(line) for line in lines) < 250  # No JSON dump.

  progress = [PROGRESS.match(line) for line in lines]
  progress = [m for m in progress if m]
  steps = [int(m.group(1)) for m in progress]
  assert steps == list(range(5, 69, 5)) + [69]
  assert {int(m.group(2)) for m in progress} == {69}
  assert [m.group(3) for m in progress] == [
      f"{s / 23:.1f}" for s in steps]  # 23 steps an epoch.
  assert all(int(m.group(7).replace(",", "")) > 0 for m in progress)
  assert progress[-1].group(8) == "0:00"
  assert float(progress[-1].group(6)) == pytest.approx(summary["sparsity"],
                                                       abs=5e-4)

  evaluations = [EVALUATION.match(line) for line in lines]
  evaluations = [m for m in evaluations if m]
  trained = [r for r in summary["evaluations"] if r["masks"] == "trained"]
  assert [int(m.group(1)) for m in evaluations] == [r["step"]
                                                    for r in trained]
  for m, record in zip(evaluations, trained):
    assert float(m.group(3)) == pytest.approx(record["eval_accuracy"],
                                              abs=5e-5)
    assert float(m.group(4)) == pytest.approx(record["eval_top5_accuracy"],
                                              abs=5e-5)
    assert float(m.group(5)) == pytest.approx(record["eval_loss"], abs=5e-5)
  # Epochs 0 and 1 are all but dense: no best before the target.
  assert [m.group(7) for m in evaluations] == [None, None, "69"]
  assert summary["best_eval_step"] == 69

  saved = [SAVED.match(line) for line in lines]
  saved = [m for m in saved if m]
  assert [int(m.group(1)) for m in saved] == [10, 20, 30, 40, 50, 60, 69]
  assert saved[0].group(2) == os.path.join(str(workdir), "checkpoints")
  # keep_checkpoints = 3: orbax's preservation policy kept the last 3.
  assert runs.checkpoint_steps(workdir) == [50, 60, 69]

  final = [line for line in lines if "Final evaluation at step 69" in line]
  assert len(final) == 1
  assert f"top-1 {summary['eval_accuracy']:.4f}," in final[0]
  assert f"best top-1 {summary['best_eval_accuracy']:.4f} at step " in (
      final[0])
  assert any(f"Sparsity {summary['sparsity']:.4f} (target 0.8): "
             f"{summary['kept_params']:,} of "
             f"{summary['prunable_params']:,} prunable weights kept" in line
             for line in lines), console
  assert "Done in " in lines[-1] and str(workdir) in lines[-1]


@pytest.mark.long
@pytest.mark.slow
def test_verbosity_1_brings_the_library_logs_back(reference_console,
                                                  tmp_path):
  """An evaluation of the reference's last checkpoint, with --verbosity=1."""
  reference_workdir, _ = reference_console
  workdir = tmp_path / "verbose"
  shutil.copytree(os.path.join(reference_workdir, "checkpoints"),
                  workdir / "checkpoints")
  result = subprocess.run(
      [sys.executable] + runs.launch_args(workdir, eval_only=True) +
      ["--verbosity=1"], cwd=runs.ROOT, env=runs.device_env(4),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (result.stdout + result.stderr).splitlines()
  # absl's INFO lines, orbax's among them, ...
  orbax = [line for line in lines
           if re.match(r"I\d{4} .* checkpoint_manager\.py:\d+\] ", line)]
  assert orbax, result.stderr[-3000:]
  # ... but not their DEBUG logs (thousands of lines a run).
  assert len(lines) < 300, len(lines)
  assert any("Restored the checkpoint of step 69" in line for line in lines)
  assert any("Evaluation (eval_only) at step 69" in line for line in lines)
  assert (workdir / "eval_summary.json").exists()
  assert not (workdir / "summary.json").exists()


@pytest.mark.parametrize("tool", ["train", "study", "export", "diagnose"])
def test_help_exits_0_with_the_tools_usage(tool):
  result = subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "launch", f"{tool}.py"),
       "--help"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert out.startswith(f"  python launch/{tool}.py", out.index("\n\n") + 2)
  assert "\nFlags:\n" in out and f"launch/{tool}.py:\n" in out
  if tool == "train":
    listed = re.findall(r"^  (\w+\.py) ", out, re.M)
    configs = sorted(f for f in os.listdir(os.path.join(runs.ROOT, "configs"))
                     if f.endswith(".py") and not f.startswith("_"))
    assert listed == configs
