"""Tests of the sparsity and mask learning-rate schedules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg


def test_sigmoid_sparsity_is_epochwise_and_centred():
  s = optg.sigmoid_sparsity_schedule(0.9, total_epochs=100, steps_per_epoch=10)
  # Constant within an epoch, 0.45 at the middle epoch.
  assert float(s(500)) == float(s(509)) == pytest.approx(0.45, rel=1e-6)
  for step in (0, 123, 999, 1000):
    epoch = step // 10
    want = 0.9 / (1 + math.exp(-(epoch - 50)))
    assert float(s(step)) == pytest.approx(want, rel=1e-6, abs=1e-12)
  steps = jnp.arange(0, 1001, 7)
  values = np.asarray(jax.vmap(s)(steps))
  assert np.all(np.diff(values) >= 0) and values.dtype == np.float32


def test_beta_steepens_and_shortfall_matches():
  s = optg.sigmoid_sparsity_schedule(0.9, 20, 5, beta=2.0)
  assert float(s(20 * 5)) == pytest.approx(0.9 / (1 + math.exp(-20)),
                                           rel=1e-6)
  short = optg.final_sparsity_shortfall(0.9, 20, beta=2.0)
  assert short == pytest.approx(0.9 / (1 + math.exp(20)))
  assert 0.9 - float(s(100)) == pytest.approx(short, abs=1e-7)
  assert optg.final_sparsity_shortfall(0.9, 100) < 1e-21


def test_supermask_learning_rate_couples_to_sparsity():
  s = optg.sigmoid_sparsity_schedule(0.8, 10, 4)
  lr = optax.cosine_decay_schedule(0.1, 40)
  mask_lr = optg.supermask_learning_rate(lr, s, 0.8)
  for step in (0, 7, 20, 39):
    assert float(mask_lr(step)) == pytest.approx(
        float(lr(step)) * float(s(step)) / 0.8, rel=1e-6)
  constant = optg.supermask_learning_rate(0.05, s, 0.8)
  assert float(constant(20)) == pytest.approx(0.05 * float(s(20)) / 0.8)
  assert float(jax.jit(mask_lr)(jnp.int32(20))) == pytest.approx(
      float(mask_lr(20)), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=1.0, total_epochs=10, steps_per_epoch=2), "target"),
    (dict(target=-0.1, total_epochs=10, steps_per_epoch=2), "target"),
    (dict(target=0.5, total_epochs=0, steps_per_epoch=2), "total_epochs"),
    (dict(target=0.5, total_epochs=10, steps_per_epoch=2.5),
     "steps_per_epoch"),
    (dict(target=0.5, total_epochs=10, steps_per_epoch=2, beta=0.0), "beta"),
])
def test_bad_schedule_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optg.sigmoid_sparsity_schedule(**kwargs)


def test_zero_target_mask_lr_is_an_error():
  s = optg.sigmoid_sparsity_schedule(0.0, 10, 2)
  with pytest.raises(ValueError, match="target must be positive"):
    optg.supermask_learning_rate(0.1, s, 0.0)
