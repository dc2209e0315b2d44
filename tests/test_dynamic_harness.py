"""RigL and SET in the harness and the studies, and every run's training MACs.

The runs are the tiny digits run of tests/runs.py with LeNet-300-100 (a
small MLP: 64 -> 300 -> 100 -> 10), 3 epochs of 23 steps at batch 64 on 4
simulated devices.
"""

import os

import jax
import numpy as np
import pytest

import optg_jax as optg
from optg_jax import data
from optg_jax import models
from optg_jax import train
from optg_jax.harness.cost import StepCost
from optg_jax.harness.errors import ConfigError
from optg_jax.studies import study
import runs

# LeNet-300-100's kernels on digits' 8x8 inputs, in the params' leaf order.
SHAPES = [(64, 300), (300, 100), (100, 10)]
DENSE_FORWARD = 64 * 300 + 300 * 100 + 100 * 10  # MACs per example.


def config_of(method, **overrides):
  # The quick start's unit floor is OptG's option, refused with RigL.
  fields = dict(model="lenet_300_100", method=method, sparsity=0.9,
                delta_t=5, end_fraction=0.75, min_kept_per_unit=0)
  fields.update(overrides)
  return runs.tiny_config(**fields)


def kept_per_layer(masks):
  return [int(np.sum(m)) for m in jax.tree.leaves(masks)]


@pytest.mark.parametrize("method", [
    "rigl", pytest.param("set", marks=pytest.mark.long)])
def test_the_budget_holds_at_every_step_and_the_masks_move_when_due(method):
  config = config_of(method)
  run = train.Run(config)
  budgets = optg.layer_budgets(SHAPES, 0.9, "erk")
  t_end = int(0.75 * run.schedule_steps)  # 51 of 69 steps.
  assert run.t_end == t_end
  assert [t for t in range(run.schedule_steps) if run.refresh_of(t)] == [
      4, 9, 14, 19, 24, 29, 34, 39, 44, 49]
  p_train, _ = run.compiled_steps()
  state = run.parallel.place(run.initial_state())
  masks = run.parallel.host(optg.get_masks(state.opt_state))
  assert kept_per_layer(masks) == budgets  # From the first step.
  batches = run.parallel.train_batches(data.train_iterator(
      config, local_device_count=run.local_device_count))
  moved = []
  for step in range(12):
    state, metrics = p_train(state, next(batches), step)
    new = run.parallel.host(optg.get_masks(state.opt_state))
    assert kept_per_layer(new) == budgets, step
    grown = [n & ~o for n, o in zip(jax.tree.leaves(new),
                                    jax.tree.leaves(masks))]
    if any(g.any() for g in grown):
      moved.append(step)
      # Grown weights start at zero, their momentum too.
      params = jax.tree.leaves(run.parallel.host(state.params))
      kernels = [p for p in params if p.ndim == 2]
      trace = [t for t in jax.tree.leaves(run.parallel.host(
          state.opt_state)) if np.ndim(t) == 2 and t.dtype == np.float32]
      assert sum(int(g.sum()) for g in grown) > 10
      for g, p in zip(grown, kernels):
        assert np.all(p[g] == 0)
      assert len(trace) == 3  # SGD's momentum of the three kernels.
      for g, t in zip(grown, trace):
        assert np.all(t[g] == 0) and np.any(t[~g] != 0)
    masks = new
    np.testing.assert_allclose(
        np.asarray(metrics["scheduled_sparsity"]), 0.9, rtol=1e-7)
  assert moved == [4, 9]


def macs_of(budgets):
  """The sparse forward pass's MACs per example of LeNet-300-100's masks."""
  return sum(budgets)  # Dense layers: one MAC a kept weight and example.


@pytest.mark.parametrize("method", [
    "rigl", pytest.param("set", marks=pytest.mark.long),
    pytest.param("dense", marks=pytest.mark.long),
    pytest.param("magnitude", marks=pytest.mark.long)])
def test_training_macs_are_each_methods_accounting(tmp_path, method):
  config = config_of(method, num_epochs=3, eval_every_epochs=0)
  summary = train.train_and_evaluate(config, str(tmp_path))
  steps, batch = summary["steps"], config.batch_size
  assert steps == 69
  dense_step = 3 * DENSE_FORWARD
  assert summary["dense_training_macs"] == dense_step * steps * batch
  if method == "dense":
    expected = dense_step * steps * batch
  elif method == "magnitude":
    # Not counted by hand: its masks change each epoch; at least its last
    # epoch's figure is at the shipped masks.
    assert summary["training_macs"] < summary["dense_training_macs"]
    return
  else:
    sparse = macs_of(optg.layer_budgets(SHAPES, 0.9, "erk"))
    assert summary["sparse_macs"] == sparse
    expected = 3 * sparse * steps * batch
    if method == "rigl":  # The dense gradient of its 10 mask updates.
      expected += 10 * (DENSE_FORWARD - sparse) * batch
  assert summary["training_macs"] == pytest.approx(expected, rel=1e-12)
  assert summary["training_macs_vs_dense"] == pytest.approx(
      expected / summary["dense_training_macs"], rel=1e-12)


@pytest.mark.long
def test_training_macs_survive_a_restart_and_are_none_without_a_ledger(
    tmp_path):
  config = config_of("rigl", eval_every_epochs=0)
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  # Stopped after 30 steps (checkpoints every 10), then resumed.
  cut = str(tmp_path / "cut")
  config.num_train_steps = 30
  train.train_and_evaluate(config, cut)
  config.num_train_steps = -1
  resumed = train.train_and_evaluate(config, cut)
  assert resumed["training_macs"] == whole["training_macs"]
  assert resumed["eval_accuracy"] == whole["eval_accuracy"]
  # A checkpoint without its entry in the ledger: the total is unknown.
  lost = str(tmp_path / "lost")
  config.num_train_steps = 30
  train.train_and_evaluate(config, lost)
  os.remove(os.path.join(lost, "training_macs.json"))
  config.num_train_steps = -1
  assert train.train_and_evaluate(config, lost)["training_macs"] is None


@pytest.mark.parametrize("override, message", [
    ({"structure": "2:4"}, "structure '2:4' needs method 'optg' or "
                           "'magnitude', not 'rigl'"),
    ({"end_fraction": 0.0}, "end_fraction must be in (0, 1], got 0.0"),
    ({"min_kept_per_unit": 2}, "min_kept_per_unit is an option of OptG's "
                               "ranking; method 'rigl' does not take it "
                               "(pass --config.min_kept_per_unit=0)"),
    ({"score_normalization": "layer_rms"},
     "score_normalization is an option of OptG's ranking; method 'rigl' "
     "does not take it (pass --config.score_normalization='')"),
    ({"budget": "random"}, "config.budget: unknown budget 'random'; valid "
                           "budgets: erk, uniform"),
    ({"delta_t": 0}, "config.delta_t: rigl: delta_t must be an int >= 1, "
                     "got 0"),
])
def test_bad_rigl_configs_are_one_line(override, message):
  with pytest.raises(ConfigError) as error:
    train.Run(config_of("rigl", **override))
  assert str(error.value) == message


def test_study_methods_of_rigl_and_set():
  optg_only = {"min_kept_per_unit": 0, "score_normalization": ""}
  assert study.parse_method("rigl") == {"method": "rigl", **optg_only}
  assert study.parse_method("set+dt50+drop0.5") == {
      "method": "set", "delta_t": 50, "drop_fraction": 0.5, **optg_only}
  assert study.parse_method("rigl+2x") == {"method": "rigl",
                                           "epochs_factor": 2, **optg_only}
  base = runs.tiny_config(num_epochs=3)
  config = study.run_config(base, study.StudyRun("rigl+2x", 0.9, 1))
  assert (config.num_epochs, config.method, config.sparsity, config.seed) == (
      6, "rigl", 0.9, 1)
  assert study.run_config(base, study.StudyRun("optg", 0.9, 1)).num_epochs == 3
  for spec, message in [
      ("optg+dt50", "dt50 is RigL's and SET's, not optg's"),
      ("rigl+every1", "every1 is OptG's and magnitude pruning's, not "
                      "rigl's"),
      ("rigl+2:4", "2:4 is OptG's and magnitude pruning's, not rigl's"),
      ("set+drop1.5", "the drop fraction must be in [0, 1]"),
      ("rigl+0x", "epochs_factor must be at least 1"),
  ]:
    with pytest.raises(study.StudyError) as error:
      study.parse_method(spec)
    assert message in str(error.value), (spec, str(error.value))
  # rigl and rigl+2x are two configs, so both may run in one study.
  runs_ = study.plan(["rigl", "rigl+2x", "set"], [0.9], [0], base_config=base)
  assert [r.method for r in runs_] == ["rigl", "rigl+2x", "set"]


@pytest.mark.parametrize("method, refresh, expected", [
    # f_D = 50,200; the masks below keep 1,000 + 500 + the head's 1,000.
    ("dense", None, 3 * 50_200),
    ("magnitude", True, 3 * 2_500),
    ("set", True, 3 * 2_500),
    ("optg", False, 2 * 2_500 + 50_200),
    ("taylor", True, 2 * 2_500 + 50_200),
    ("rigl", False, 3 * 2_500),
    ("rigl", True, 2 * 2_500 + 50_200),
])
def test_step_cost_is_each_methods_accounting(method, refresh, expected):
  cost = StepCost(models.create("lenet_300_100", 10), (8, 8, 1), method)
  fc1 = np.zeros(SHAPES[0], bool)
  fc1.flat[:1000] = True
  fc2 = np.zeros(SHAPES[1], bool)
  fc2.flat[::60] = True
  masks = {"fc1": {"kernel": fc1, "bias": None},
           "fc2": {"kernel": fc2, "bias": None},
           "head": {"kernel": None, "bias": None}}
  assert int(fc2.sum()) == 500
  assert cost.dense == DENSE_FORWARD == 50_200
  assert float(cost(None if method == "dense" else masks, refresh)) == expected
  if method == "rigl":
    with pytest.raises(ValueError, match="needs the step's refresh"):
      cost(masks, None)


def test_collapse_warnings_name_the_last_mask_update_before_t_end(caplog):
  """After RigL's t_end the masks stay: a change of dead units seen then
  is dated at the last update, not at a later multiple of delta_t."""
  from optg_jax.harness.summary import CollapseWatch  # pylint: disable=g-import-not-at-top
  masks = {"fc1": {"kernel": np.ones((4, 3), bool)},
           "fc2": {"kernel": np.ones((3, 2), bool)}}
  masks["fc1"]["kernel"][:, 1] = False  # A dead unit of fc1.
  report = optg.sparsity_report(masks)
  for t_end, expected in ((250, 200), (None, 900)):
    caplog.clear()
    watch = CollapseWatch("fc1/kernel", "fc2/kernel", 100, t_end)
    with caplog.at_level("WARNING"):
      watch.check(report, 1000)
    assert f"Mask refresh at step {expected} " in caplog.text, caplog.text
