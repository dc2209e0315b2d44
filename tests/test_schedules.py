"""Tests of the sparsity and mask learning-rate schedules."""

import math
import re

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
  # The masks the last epoch trains with are drawn in epoch 19.
  short = optg.final_sparsity_shortfall(0.9, 20, beta=2.0)
  assert short == pytest.approx(0.9 / (1 + math.exp(18)))
  assert 0.9 - float(s(19 * 5)) == pytest.approx(short, abs=1e-7)
  assert optg.final_sparsity_shortfall(0.9, 100) < 1e-20


def test_sigmoid_schedule_knows_its_run():
  s = optg.sigmoid_sparsity_schedule(0.9, 20, 5, beta=2.0)
  assert isinstance(s, optg.SigmoidSparsity)
  assert (s.target, s.total_epochs, s.steps_per_epoch, s.beta,
          s.total_steps) == (0.9, 20, 5, 2.0, 100)
  assert s == optg.sigmoid_sparsity_schedule(0.9, 20, 5, beta=2.0)
  assert hash(s) == hash(optg.sigmoid_sparsity_schedule(0.9, 20, 5, 2.0))
  assert float(jax.jit(s)(jnp.int32(57))) == pytest.approx(float(s(57)))


@pytest.mark.parametrize("total, every, last", [
    (100, 5, 95), (100, 1, 99), (100, 7, 98), (100, 100, 0), (100, 99, 99),
    (100, 150, 0), (1, 1, 0)])
def test_last_refresh_step(total, every, last):
  assert optg.last_refresh_step(total, every) == last
  # The masks the last step (total - 1) trains with come from that refresh:
  # the last t + 1 < total with (t + 1) % every == 0.
  refreshes = [t + 1 for t in range(total)
               if (t + 1) % every == 0 and t + 1 < total]
  assert last == (refreshes[-1] if refreshes else 0)


def test_shortfall_message_names_what_would_reach_the_target():
  ok = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=4.0)
  assert optg.schedules.shortfall_message(ok, 10) is None
  short = optg.sigmoid_sparsity_schedule(0.9, 10, 10, beta=1.0)
  message = optg.schedules.shortfall_message(short, 10)
  # Drawn after step 90, in epoch 9: 0.9 * sigmoid(4) = 0.8838.
  assert "drawn after step 90 of 100" in message
  assert "sparsity 0.8838" in message and "by 0.0162" in message
  beta = float(message.split("beta >= ")[1].split(" ")[0])
  epochs = int(message.split("total_epochs >= ")[1].split(" ")[0])
  # Each suggested value reaches the target; a little less does not.
  for fixed in (optg.sigmoid_sparsity_schedule(0.9, 10, 10, beta=beta),
                optg.sigmoid_sparsity_schedule(0.9, epochs, 10)):
    assert optg.schedules.shortfall_message(fixed, 10) is None
  assert optg.schedules.shortfall_message(
      optg.sigmoid_sparsity_schedule(0.9, epochs - 1, 10), 10) is not None
  assert optg.schedules.shortfall_message(
      optg.sigmoid_sparsity_schedule(0.9, 10, 10, beta=beta - 0.02),
      10) is not None
  # A period that refreshes last before the last epoch says so.
  late = optg.schedules.shortfall_message(ok, 35)
  assert "drawn after step 35 of 60" in late
  assert "update_every (now 35) that refreshes in the last epoch" in late
  never = optg.schedules.shortfall_message(ok, 60)
  assert "only after the run's 60 steps" in never


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


def _reference_lr(base, epoch, total_epochs, warmup_epochs):
  """The reference's per-epoch learning rate, in float64."""
  if epoch < warmup_epochs:
    return base * (epoch + 1) / warmup_epochs
  return 0.5 * base * (1 + math.cos(math.pi * epoch / total_epochs))


def test_epochwise_cosine_matches_the_reference_formula():
  spe, total = 5005, 100
  schedule = jax.jit(jax.vmap(optg.epochwise_cosine_schedule(0.1, total,
                                                             spe)))
  epochs = np.arange(total)
  # The first, a middle and the last step of every epoch.
  for offset in (0, 2502, spe - 1):
    got = np.asarray(schedule(jnp.asarray(epochs * spe + offset)))
    want = [_reference_lr(0.1, e, total, 5) for e in epochs]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
  assert float(schedule(jnp.array([0]))[0]) == pytest.approx(0.02)
  # Not shifted by the warm-up: epoch 5 is already below the peak.
  assert float(schedule(jnp.array([5 * spe]))[0]) == pytest.approx(
      0.05 * (1 + math.cos(math.pi * 5 / 100)), rel=1e-6)
  # Past the end: 0, not a rising cosine.
  np.testing.assert_array_equal(
      np.asarray(schedule(jnp.array([total * spe, total * spe + 7,
                                     3 * total * spe]))), 0.0)


def test_epochwise_cosine_without_warmup_and_integral_vs_per_step():
  schedule = optg.epochwise_cosine_schedule(0.4, 10, 3, warmup_epochs=0)
  got = [float(schedule(t)) for t in range(30)]
  want = [_reference_lr(0.4, t // 3, 10, 0) for t in range(30)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Over a ResNet-50 run the per-step form integrates to about 3% more
  # weight learning rate and 6% more mask learning rate.
  spe, total = 5005, 100
  steps = jnp.arange(total * spe)
  epochwise = np.asarray(jax.jit(jax.vmap(
      optg.epochwise_cosine_schedule(0.1, total, spe)))(steps), np.float64)
  per_step = np.asarray(jax.jit(jax.vmap(optax.warmup_cosine_decay_schedule(
      0.0, 0.1, 5 * spe, total * spe, 0.0)))(steps), np.float64)
  coupling = np.asarray(jax.jit(jax.vmap(optg.sigmoid_sparsity_schedule(
      0.9, total, spe)))(steps), np.float64) / 0.9
  assert per_step.sum() / epochwise.sum() == pytest.approx(1.031, abs=0.002)
  assert ((per_step * coupling).sum() / (epochwise * coupling).sum()
          == pytest.approx(1.064, abs=0.002))


@pytest.mark.parametrize("kwargs, match", [
    (dict(warmup_epochs=10), "warmup_epochs"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
    (dict(warmup_epochs=1.5), "warmup_epochs"),
    (dict(total_epochs=0), "total_epochs"),
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(base_lr=-0.1), "base_lr"),
    (dict(base_lr=float("nan")), "base_lr"),
])
def test_bad_epochwise_cosine_arguments(kwargs, match):
  args = dict(base_lr=0.1, total_epochs=10, steps_per_epoch=5)
  with pytest.raises(ValueError, match=match):
    optg.epochwise_cosine_schedule(**{**args, **kwargs})


def test_stepwise_granularity_rises_every_step_and_meets_the_epochs():
  epochwise = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=4.0)
  stepwise = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=4.0,
                                            granularity="step")
  steps = np.arange(60)
  values = np.asarray(jax.vmap(stepwise)(steps))
  assert (np.diff(values) > 0).all()
  # Equal at every epoch boundary, above the epochwise one within an epoch.
  np.testing.assert_array_equal(values[::10],
                                np.asarray(jax.vmap(epochwise)(steps[::10])))
  within = steps % 10 != 0
  assert (values[within] > np.asarray(jax.vmap(epochwise)(steps))[within]
          ).all()
  expected = 0.9 / (1 + np.exp(-4.0 * (steps / 10 - 3)))
  np.testing.assert_allclose(values, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="granularity"):
    optg.sigmoid_sparsity_schedule(0.9, 6, 10, granularity="batch")


def test_stepwise_shortfall_is_judged_at_the_last_refresh_step():
  # 6 epochs of 10 steps, a refresh every 7 steps: the last is after step
  # 56 (epoch 5.6 stepwise, epoch 5 epochwise).
  stepwise = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=2.0,
                                            granularity="step")
  epochwise = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=2.0)
  message = optg.schedules.shortfall_message(stepwise, 7)
  reached = 0.9 / (1 + np.exp(-2.0 * 2.6))
  assert f"at sparsity {reached:.4f}" in message
  assert "after step 56 of 60" in message
  # The beta it names reaches the target within the tolerance.
  beta = float(re.search(r"beta >= ([\d.]+)", message).group(1))
  fixed = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=beta,
                                         granularity="step")
  assert optg.schedules.shortfall_message(fixed, 7) is None
  assert optg.schedules.shortfall_message(epochwise, 7) != message


@pytest.mark.parametrize("granularity", ["epoch", "step"])
def test_a_period_that_does_not_divide_the_run_ships_its_last_refresh(
    granularity):
  # 6 epochs of 429 steps (LeNet-300-100 with 5,000 images held out).
  schedule = optg.sigmoid_sparsity_schedule(0.95, 6, 429, beta=4.0,
                                            granularity=granularity)
  assert schedule.total_steps == 2574
  # 64 does not divide 2,574: the last refresh, after step 2,560, is in
  # the last epoch and draws masks within the tolerance of the target.
  assert optg.last_refresh_step(2574, 64) == 2560
  assert optg.schedules.shortfall_message(schedule, 64) is None
  reached = float(schedule(2560))
  assert 0.95 - optg.TARGET_TOLERANCE < reached < 0.95
  # 1,000 steps: the last refresh, after step 2,000, is in epoch 4; refused
  # with a period that refreshes in the last epoch among the fixes.
  assert optg.last_refresh_step(2574, 1000) == 2000
  message = optg.schedules.shortfall_message(schedule, 1000)
  assert "drawn after step 2000 of 2574" in message
  assert "refreshes in the last epoch (at most 429" in message


def test_integral_float_counts_are_their_ints():
  # Flax configs give `num_epochs = 6.0`: the same schedule as 6.
  want = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=2.0)
  for epochs, per_epoch in ((6.0, 10.0), (np.float64(6), np.float32(10))):
    got = optg.sigmoid_sparsity_schedule(0.9, epochs, per_epoch, beta=2.0)
    assert got == want and type(got.total_epochs) is int
    assert got.total_steps == 60 and type(got.total_steps) is int
    np.testing.assert_array_equal(jax.vmap(got)(jnp.arange(70)),
                                  jax.vmap(want)(jnp.arange(70)))
  lr = optg.epochwise_cosine_schedule(0.1, 6, 10, warmup_epochs=2)
  lr_float = optg.epochwise_cosine_schedule(0.1, 6.0, 10.0, warmup_epochs=2.0)
  np.testing.assert_array_equal(jax.vmap(lr_float)(jnp.arange(70)),
                                jax.vmap(lr)(jnp.arange(70)))
  # Other floats, bools and strings stay refused, with the same message.
  for bad in (6.5, float("nan"), float("inf"), -6.0, 0.0, True, "6"):
    with pytest.raises(ValueError, match=re.escape(
        f"total_epochs must be a positive integer, got {bad!r}")):
      optg.sigmoid_sparsity_schedule(0.9, bad, 10)
    with pytest.raises(ValueError, match="total_epochs must be a positive"):
      optg.epochwise_cosine_schedule(0.1, bad, 10)
  with pytest.raises(ValueError, match=re.escape(
      "steps_per_epoch must be a positive integer, got 10.5")):
    optg.sigmoid_sparsity_schedule(0.9, 6.0, 10.5)
  with pytest.raises(ValueError, match=re.escape(
      "warmup_epochs must be an integer in [0, total_epochs=6), got 6.0")):
    optg.epochwise_cosine_schedule(0.1, 6.0, 10, warmup_epochs=6.0)


def test_values_on_host_are_the_values_of_each_step():
  sparsity = optg.sigmoid_sparsity_schedule(0.9, 90, 5005)
  mask_lr = optg.supermask_learning_rate(
      optg.epochwise_cosine_schedule(0.1, 90, 5005), sparsity, 0.9)
  steps = np.array([0, 1, 5004, 5005, 225224, 225225, 450449])
  for schedule in (sparsity, mask_lr):
    values = optg.schedules.values_on_host(schedule, 0, 450450)
    assert values.shape == (450450, 1) and values.dtype == np.float32
    # Vectorised, float32 operations may round the last bit otherwise.
    np.testing.assert_allclose(
        values[steps, 0], [schedule(jnp.int32(t)) for t in steps],
        rtol=1e-6)
  # A constant, a schedule that branches in Python (one call per step), a
  # range that starts later, an empty one.
  np.testing.assert_array_equal(
      optg.schedules.values_on_host(lambda t: 0.5, 2, 5), [[0.5]] * 3)
  np.testing.assert_array_equal(optg.schedules.values_on_host(
      lambda t: 0.5 if t < 3 else 0.75, 1, 5)[:, 0], [0.5, 0.5, 0.75, 0.75])
  assert optg.schedules.values_on_host(lambda t: 0.5, 3, 3).shape == (0, 1)

  def fails(step):
    raise RuntimeError("not on the host")

  assert optg.schedules.values_on_host(fails, 0, 4) is None
  # One call a step on at most PER_STEP_LIMIT steps; a longer run of such a
  # schedule is not evaluated (trusted) rather than called 450,000 times.
  calls = []

  def branches(step):
    calls.append(step)
    return 0.5 if step < 3 else 0.75

  limit = optg.schedules.PER_STEP_LIMIT
  assert optg.schedules.values_on_host(branches, 0, limit + 1) is None
  assert len(calls) == 1  # The vmapped try only.
  assert optg.schedules.values_on_host(branches, 0, limit).shape == (limit,
                                                                    1)
