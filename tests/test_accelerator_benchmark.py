"""`benchmarks/accelerator.py` runs on the CPU with small sizes (the sizes of
a GPU run are too large for CI)."""

import os
import re
import subprocess
import sys

import pytest

from optg_jax import models
from optg_jax import topk
import runs

pytestmark = pytest.mark.slow


@pytest.mark.long
def test_accelerator_benchmark_runs_on_the_cpu_and_prints_its_figures():
  result = subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "benchmarks", "accelerator.py"),
       "--model=resnet20_cifar", "--batch_size=4", "--image_size=32",
       "--num_scores=50000", "--repeats=1", "--steps=1", "--warmup_steps=2"],
      capture_output=True, text=True, timeout=900, env=runs.device_env(1))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert out.startswith("backend: cpu; device: "), out
  timings = dict(re.findall(r"^  ([^:]+): +([0-9.]+) ms", out, re.M))
  for name in ("topk_masks, cold", "warm_topk_masks, warm",
               "layout='flat' (fixed passes)", "the same, given a hint",
               "sort-based threshold", "jax.lax.top_k"):
    assert float(timings[name]) > 0, (name, out)
  passes = re.search(r"passes over the scores: cold (\d+), warm (\d+), "
                     r"flat (\d+) \(fixed\); identical masks \(cold, warm, "
                     r"both flat\): (\w+)", out)
  assert passes and passes.group(4) == "True", out
  assert 0 < int(passes.group(2)) < int(passes.group(1)), out
  total = int(re.search(r"of ([0-9,]+) float32 scores", out).group(1)
              .replace(",", ""))
  assert int(passes.group(3)) == topk.fixed_passes(total), out
  steps = re.findall(r"^  ([^:]+): +([0-9.]+) images/s +([0-9.]+)x dense", out,
                     re.M)
  assert [name for name, _, _ in steps] == [
      "dense", "OptG, once an epoch", "OptG, once an epoch, lax.cond",
      "OptG, refresh every step", "OptG, every step, flat top-k"], out
  assert steps[0][2] == "1.000" and all(float(i) > 0 for _, i, _ in steps)
  assert "peak device memory of the process: not reported" in out


@pytest.mark.parametrize("flag", ["--warmup_steps=0", "--sparsity=1.0",
                                  "--batch_size=0", "--num_scores=-1"])
def test_accelerator_benchmark_refuses_bad_flags(flag):
  result = subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "benchmarks", "accelerator.py"),
       flag, "--skip_training"],
      capture_output=True, text=True, timeout=300, env=runs.device_env(1))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      "accelerator.py: error: "), result.stderr[-2000:]


@pytest.mark.parametrize("skip_training", [["--skip_training"], []],
                         ids=["skip_training", "with_training"])
def test_accelerator_benchmark_refuses_an_unknown_model_before_any_work(
    skip_training):
  result = subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "benchmarks", "accelerator.py"),
       "--model=resnet9000"] + skip_training,
      capture_output=True, text=True, timeout=120, env=runs.device_env(1))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "accelerator.py: error: --model: unknown model 'resnet9000'; valid "
      f"models: {', '.join(models.names())}"), result.stderr[-2000:]
  assert result.stdout == ""  # Refused before the backend line and top-k.
