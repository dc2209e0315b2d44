"""`config.parallelism="jit"`: the same steps under `jax.jit` over a mesh of
the 4 simulated devices, against the pmap run, and resumed bitwise."""

import jax
import numpy as np
import pytest

from optg_jax.harness import checkpoints
from optg_jax import train
import runs

pytestmark = pytest.mark.slow


def _params(workdir, config):
  manager = train.checkpoint_manager(str(workdir), config)
  state = train.restore_latest(manager, train.Run(config).initial_state())
  return jax.device_get(state.params)


@pytest.mark.long
def test_jit_matches_pmap_and_resumes_bitwise(reference, tmp_path):
  _, expected = reference
  config = runs.tiny_config(parallelism="jit")
  run = train.Run(config)
  assert isinstance(run.parallel, train.Jit)
  assert run.parallel.mesh.shape == {"data": 4}
  workdir = tmp_path / "jit"
  summary = train.train_and_evaluate(config, str(workdir))
  assert summary["parallelism"] == "jit"
  assert expected["parallelism"] == "pmap"
  # The same masks' count and the same evaluations; the accuracy within
  # float noise (BatchNorm sees the global batch, not a device's quarter).
  for key in ("steps", "kept_params", "prunable_params", "eval_examples",
              "target_sparsity", "scheduled_sparsity"):
    assert summary[key] == expected[key], key
  assert abs(summary["eval_accuracy"] - expected["eval_accuracy"]) <= 0.02
  assert [r["step"] for r in summary["evaluations"]] == [
      r["step"] for r in expected["evaluations"]]
  # Every device holds the same copy of the state.
  assert summary["replicas_identical"] is True
  assert len(summary["replica_fingerprints"]) == 4

  # Stopped at step 40 (a checkpoint), then resumed to the end: the same
  # bits as the uninterrupted run.
  resumed = tmp_path / "resumed"
  first = runs.tiny_config(parallelism="jit", num_train_steps=40)
  train.train_and_evaluate(first, str(resumed))
  assert runs.checkpoint_steps(resumed)[-1] == 40
  again = train.train_and_evaluate(config, str(resumed))
  assert again["kept_params"] == summary["kept_params"]
  assert again["eval_accuracy"] == summary["eval_accuracy"]
  a, b = _params(resumed, config), _params(workdir, config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The checkpoints hold host arrays, as pmap's: a jit run's resume under
  # pmap reads them (the state's digest is checked on restore).
  manager = train.checkpoint_manager(str(workdir), config)
  assert checkpoints.digest_record(manager, 69) is not None


def test_unknown_parallelism_is_a_config_error(tmp_path):
  with pytest.raises(train.ConfigError, match="unknown parallelism 'shard'; "
                     "valid: pmap, jit"):
    train.train_and_evaluate(runs.tiny_config(parallelism="shard"),
                             str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
