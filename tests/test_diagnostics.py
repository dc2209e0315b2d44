"""Refresh statistics (optg_jax/studies/diagnostics.py), launch/diagnose.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from optg_jax.studies import diagnostics
import runs


def test_refresh_stats_counts_and_values():
  old = {"a": np.array([[1, 1], [0, 0]], bool), "b": None}
  new = {"a": np.array([[1, 0], [1, 0]], bool), "b": None}
  params = {"a": np.array([[2.0, -3.0], [-4.0, 5.0]]), "b": np.ones(2)}
  scores = {"a": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": None}
  # Weight (0, 0): +1 on each of 4 steps (a signal); (0, 1): +1, -1, +1, -1.
  sums = {"a": np.array([[4.0, 0.0], [1.0, 1.0]]), "b": None}
  sumsq = {"a": np.array([[4.0, 4.0], [1.0, 1.0]]), "b": None}
  stats = diagnostics.refresh_stats(old, new, params, scores, sums, sumsq)
  assert list(stats) == ["a"]
  a = stats["a"]
  assert (a["kept"], a["total"], a["pruned"], a["regrown"]) == (2, 4, 1, 1)
  assert a["dead_units"] == 1  # Output unit 1 keeps no input.
  assert a["regrown_abs_w"] == 4.0 and a["kept_abs_w"] == 2.0
  assert a["score"]["p50"] == pytest.approx(2.5)
  # SNR per weight: 4/2 = 2, 0/2 = 0, 1, 1: median 1.
  assert a["snr_p50"] == pytest.approx(1.0)


def test_snr_of_noise_is_near_the_noise_level():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((100, 5000))  # 100 steps of pure noise.
  mask = {"w": np.ones((1, 5000), bool)}
  stats = diagnostics.refresh_stats(
      mask, mask, {"w": np.ones((1, 5000))},
      criterion_sum={"w": x.sum(0)[None]},
      criterion_sumsq={"w": (x * x).sum(0)[None]})
  assert abs(stats["w"]["snr_p50"] - diagnostics.NOISE_ONLY_SNR) < 0.03


@pytest.mark.long
def test_diagnose_writes_a_record_per_refresh(tmp_path):
  out = tmp_path / "diag"
  result = subprocess.run(
      [sys.executable, "launch/diagnose.py", "--config=configs/quickstart.py",
       f"--output={out}", "--config.num_epochs=3",
       "--config.warmup_epochs=0", "--config.update_every_steps=2",
       "--config.sparsity=0.8", "--config.beta=14", "--record_every=5"],
      cwd=runs.ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  records = json.load(open(out / "refreshes.json"))["refreshes"]
  # 69 steps: refreshes after steps 2, 4, ..., 68 (none after the last
  # step); every fifth recorded, then the end of the run (the model it
  # ships: no new masks). At beta 14 the last epoch trains at
  # 0.8 * sigmoid(7), within the tolerance of the target.
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60, 69]
  assert [r["final"] for r in records] == [False] * 6 + [True]
  assert records[-1]["eval_accuracy_new"] is None
  assert records[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
  for r in records:
    assert set(r["layers"]) >= {"conv_init/kernel", "head/kernel"}
    kept = sum(l["kept"] for l in r["layers"].values())
    total = sum(l["total"] for l in r["layers"].values())
    assert r["sparsity"] == pytest.approx(1 - kept / total)
  assert "## Refreshes at a glance" in (out / "refreshes.md").read_text()


@pytest.mark.parametrize("args, message, code", [
    (["--record_every=0"], "--record_every must be >= 1, got 0", 2),
    (["--output=FILE"], "--output FILE is a file; name a directory", 2),
    (["--output=FILE/sub"], "--output FILE/sub: FILE is a file", 2),
])
def test_diagnose_bad_flags_are_one_line_before_training(tmp_path, args,
                                                         message, code):
  existing = tmp_path / "existing"
  existing.write_text("kept\n")
  args = [a.replace("FILE", str(existing)) for a in args]
  if not any(a.startswith("--output") for a in args):
    args.append(f"--output={tmp_path / 'out'}")
  result = subprocess.run(
      [sys.executable, "launch/diagnose.py", "--config=configs/quickstart.py",
       *args], cwd=runs.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == code, result.stderr
  assert result.stderr.splitlines() == [
      "error: " + message.replace("FILE", str(existing))]
  assert sorted(os.listdir(tmp_path)) == ["existing"]
  assert existing.read_text() == "kept\n"
