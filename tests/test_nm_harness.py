"""N:M through the harness: `--config.structure`, the summary's N:M
layers, the study's `+N:M` methods."""

import subprocess

import pytest

from optg_jax.studies import study
from optg_jax import train
import runs


def test_study_method_with_an_nm_pattern():
  assert study.parse_method("optg+2:4") == {
      "method": "optg", "structure": "2:4", "min_kept_per_unit": 0}
  assert study.parse_method("magnitude+every1+1:4") == {
      "method": "magnitude", "update_every_steps": 1, "structure": "1:4",
      "min_kept_per_unit": 0}


@pytest.mark.parametrize("overrides, match", [
    (dict(structure="2-4"), "structure: N:M pattern must be a string like "
     "'2:4', got '2-4'"),
    (dict(structure="4:2"), r"structure: N:M needs 0 < n < m, got 4:2"),
    (dict(structure="2:4", method="dense"), "structure '2:4' needs method "
     "'optg' or 'magnitude', not 'dense'"),
])
def test_bad_structure_is_one_line_and_writes_nothing(tmp_path, overrides,
                                                      match):
  workdir = tmp_path / "w"
  with pytest.raises(train.ConfigError, match=match):
    train.train_and_evaluate(runs.tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_target_of_an_nm_run_is_that_of_the_pattern():
  config = runs.tiny_config(structure="1:4", sparsity=0.9)
  assert train.target_sparsity(config, train.structure_of(config)) == 0.75
  config = runs.tiny_config()
  assert train.target_sparsity(config, train.structure_of(config)) == 0.8


@pytest.mark.long
def test_quickstart_with_2_4_structure(tmp_path):
  """The README's quick start with `--config.structure=2:4` (and no
  per-unit floor, which N:M refuses): at least 0.90 eval accuracy,
  exactly half of every N:M layer kept, the 3-channel stem dense and said
  so."""
  workdir = tmp_path / "nm"
  result = subprocess.run(
      runs.quickstart_command(workdir) + ["--config.structure=2:4",
                                          "--config.min_kept_per_unit=0"],
      cwd=runs.ROOT, env=runs.quickstart_env(), capture_output=True,
      text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = runs.read_summary(workdir)
  assert summary["eval_accuracy"] >= 0.90
  assert summary["structure"] == "2:4"
  assert summary["target_sparsity"] == 0.5
  assert summary["dense_layers"] == ["conv_init/kernel"]
  assert len(summary["nm_layers"]) == len(summary["layers"]) - 1
  for name in summary["nm_layers"]:
    layer = summary["layers"][name]
    assert 2 * layer["kept"] == layer["total"], name
  assert summary["layers"]["conv_init/kernel"]["kept"] == 144
  assert "N:M 2:4 on 21 layers; not N:M: conv_init/kernel" in result.stderr
  assert "N:M 2:4 on 21 layers" in (workdir / "sparsity.txt").read_text()


@pytest.mark.parametrize("overrides, match", [
    # A floor beside N:M was silently ignored; mask_transform refuses it.
    (dict(structure="2:4", min_kept_per_unit=3), "config.min_kept_per_unit: "
     "min_kept_per_unit is not supported with an N:M structure"),
    # ResNet-20's kernels have 3, 16, 32 or 64 inputs: no group of 3.
    (dict(structure="2:3"), "structure 2:3: no prunable kernel of "
     "resnet20_cifar has a reduction axis"),
])
def test_nm_configs_that_cannot_run_are_refused(tmp_path, overrides, match):
  workdir = tmp_path / "w"
  with pytest.raises(train.ConfigError, match=match):
    train.train_and_evaluate(runs.tiny_config(**overrides), str(workdir))
  assert not workdir.exists()
