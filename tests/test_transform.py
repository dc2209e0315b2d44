"""Tests of mask_transform, get_masks and apply_masks (optg_jax/transform.py)."""

from fractions import Fraction
import functools
import re

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)),
                                     jnp.float32),
               "bias": jnp.asarray(rng.standard_normal((4,)), jnp.float32)},
      "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 5)),
                                      jnp.float32),
                "bias": jnp.zeros((5,), jnp.float32)},
  }


def make_grads(seed):
  return jax.tree.map(
      lambda p: jnp.asarray(
          np.random.default_rng(seed).standard_normal(p.shape), jnp.float32),
      make_params())


def count_kept(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


NUM_PRUNABLE = 3 * 3 * 2 * 4 + 8 * 5


def test_init_masks_dense_scores_zero_and_biases_unpruned():
  params = make_params()
  state = optg.mask_transform(0.5, 0.1).init(params)
  assert int(state.count) == 0
  assert state.masks["conv"]["bias"] is None
  assert state.scores["dense"]["bias"] is None
  assert bool(jnp.all(state.masks["conv"]["kernel"]))
  assert state.masks["dense"]["kernel"].dtype == jnp.bool_
  assert float(jnp.abs(state.scores["dense"]["kernel"]).max()) == 0.0
  assert state.scores["conv"]["kernel"].dtype == jnp.float32


def test_first_step_scores_and_masked_updates():
  params, grads = make_params(), make_grads(1)
  tx = optg.mask_transform(0.5, 0.3, update_every=1)
  state = tx.init(params)
  out, state = jax.jit(tx.update)(grads, state, params)
  for name in ("conv", "dense"):
    want = -0.3 * grads[name]["kernel"] * params[name]["kernel"]
    np.testing.assert_allclose(state.scores[name]["kernel"], want, rtol=1e-6)
    # The mask in force for step 0 was dense: the gradient passes unmasked,
    # although the refresh has already pruned half of the weights.
    np.testing.assert_array_equal(out[name]["kernel"], grads[name]["kernel"])
    np.testing.assert_array_equal(out[name]["bias"], grads[name]["bias"])
  assert count_kept(state.masks) == NUM_PRUNABLE // 2


def test_second_step_masks_updates_with_mask_in_force():
  params = make_params()
  tx = optg.mask_transform(0.5, 0.3, update_every=1)
  state = tx.init(params)
  _, state = tx.update(make_grads(1), state, params)
  masks_in_force = state.masks
  grads = make_grads(2)
  out, state = tx.update(grads, state, params)
  for name in ("conv", "dense"):
    m = np.asarray(masks_in_force[name]["kernel"])
    np.testing.assert_array_equal(out[name]["kernel"],
                                  np.where(m, grads[name]["kernel"], 0.0))
    np.testing.assert_array_equal(out[name]["bias"], grads[name]["bias"])


def test_momentum_accumulates_with_scheduled_mask_lr():
  params = make_params()
  mask_lr = lambda step: 0.1 * (step + 1.0)  # 0.1, then 0.2
  tx = optg.mask_transform(0.0, mask_lr, momentum=0.8)
  state = tx.init(params)
  g1, g2 = make_grads(1), make_grads(2)
  _, state = tx.update(g1, state, params)
  _, state = tx.update(g2, state, params)
  w = params["dense"]["kernel"]
  d1, d2 = g1["dense"]["kernel"] * w, g2["dense"]["kernel"] * w
  buf2 = 0.8 * d1 + d2
  np.testing.assert_allclose(state.momentum["dense"]["kernel"], buf2,
                             rtol=1e-6)
  np.testing.assert_allclose(state.scores["dense"]["kernel"],
                             -0.1 * d1 - 0.2 * buf2, rtol=1e-5, atol=1e-7)


def test_score_gradient_uses_raw_weights_of_pruned_entries():
  params = make_params()
  tx = optg.mask_transform(0.9, 1.0, momentum=0.0)
  state = tx.init(params)
  _, state = tx.update(make_grads(1), state, params)
  pruned = ~np.asarray(state.masks["dense"]["kernel"])
  assert pruned.sum() > 0
  grads = make_grads(2)
  before = np.asarray(state.scores["dense"]["kernel"])
  _, state = tx.update(grads, state, params)
  delta = np.asarray(state.scores["dense"]["kernel"]) - before
  want = -np.asarray(grads["dense"]["kernel"] * params["dense"]["kernel"])
  np.testing.assert_allclose(delta[pruned], want[pruned], rtol=1e-5,
                             atol=1e-6)


def test_refresh_cadence_and_exact_count_of_scheduled_sparsity():
  params = make_params()
  sparsity = lambda step: jnp.minimum(0.07 * step, 0.95).astype(jnp.float32)
  tx = optg.mask_transform(sparsity, 0.5, update_every=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  previous = state.masks
  for t in range(10):
    _, state = update(make_grads(t), state, params)
    kept = count_kept(state.masks)
    if (t + 1) % 3 == 0:
      s = float(sparsity(t + 1))  # the float32 value the transform used
      assert kept == NUM_PRUNABLE - round(Fraction(s) * NUM_PRUNABLE)
    else:
      for a, b in zip(jax.tree.leaves(previous), jax.tree.leaves(state.masks)):
        np.testing.assert_array_equal(a, b)
    previous = state.masks
  assert int(state.count) == 10


def test_refreshed_masks_are_global_topk_of_scores():
  params = make_params()
  tx = optg.mask_transform(0.6, 0.5, update_every=2)
  state = tx.init(params)
  for t in range(2):
    _, state = tx.update(make_grads(t), state, params)
  want = optg.topk_masks(state.scores, 0.6)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state.masks)):
    np.testing.assert_array_equal(a, b)
  # Layer-wise sparsities are learned: they differ between the two kernels.
  report = optg.sparsity_report(state.masks)
  assert report["kept"] == NUM_PRUNABLE - round(0.6 * NUM_PRUNABLE)


def test_magnitude_criterion_keeps_largest_weights():
  params = make_params()
  tx = optg.mask_transform(0.75, 0.5, criterion="magnitude")
  state = tx.init(params)
  assert state.scores["dense"]["kernel"] is None
  _, state = tx.update(make_grads(1), state, params)
  magnitudes = np.concatenate(
      [np.abs(params[n]["kernel"]).reshape(-1) for n in ("conv", "dense")])
  kept = np.concatenate(
      [np.asarray(state.masks[n]["kernel"]).reshape(-1)
       for n in ("conv", "dense")])
  assert kept.sum() == NUM_PRUNABLE - round(0.75 * NUM_PRUNABLE)
  assert magnitudes[kept].min() > magnitudes[~kept].max()


def test_where_selects_prunable_leaves_by_path():
  params = make_params()
  tx = optg.mask_transform(0.5, 0.1,
                           where=lambda path, leaf: path == "dense/kernel")
  state = tx.init(params)
  assert state.masks["conv"]["kernel"] is None
  _, state = tx.update(make_grads(1), state, params)
  assert count_kept(state.masks) == 20


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="criterion.*optg, magnitude"):
    optg.mask_transform(0.5, 0.1, criterion="snip")
  with pytest.raises(ValueError, match="sparsity"):
    optg.mask_transform(1.0, 0.1)
  with pytest.raises(ValueError, match="update_every"):
    optg.mask_transform(0.5, 0.1, update_every=0)
  tx = optg.mask_transform(0.5, 0.1)
  state = tx.init(make_params())
  with pytest.raises(ValueError, match="params"):
    tx.update(make_grads(1), state)


def test_apply_masks_zeroes_pruned_and_passes_none():
  params = make_params()
  tx = optg.mask_transform(0.5, 0.1)
  state = tx.init(params)
  _, state = tx.update(make_grads(1), state, params)
  masked = optg.apply_masks(params, optg.get_masks(state))
  m = np.asarray(state.masks["dense"]["kernel"])
  np.testing.assert_array_equal(masked["dense"]["kernel"],
                                np.where(m, params["dense"]["kernel"], 0))
  np.testing.assert_array_equal(masked["conv"]["bias"], params["conv"]["bias"])


def run_steps(tx, steps=4):
  params = make_params()
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(make_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_chain_and_inject_hyperparams_match_plain_transform():
  plain = optax.chain(optg.mask_transform(0.5, 0.2, update_every=2),
                      optax.add_decayed_weights(1e-4), optax.sgd(0.1, 0.9))
  injected = optax.chain(
      optax.inject_hyperparams(optg.mask_transform,
                               static_args=optg.STATIC_ARGS)(
          sparsity=0.5, mask_learning_rate=0.2, update_every=2),
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9))
  p1, s1 = run_steps(plain)
  p2, s2 = jax.jit(lambda: run_steps(injected))()
  for a, b in zip(jax.tree.leaves(optg.get_masks(s1)),
                  jax.tree.leaves(optg.get_masks(s2))):
    np.testing.assert_array_equal(a, b)
  assert count_kept(optg.get_masks(s2)) == NUM_PRUNABLE // 2
  assert int(optg.get_optg_state(s2).count) == 4


def test_get_masks_through_multi_transform_and_multisteps():
  labels = {"conv": {"kernel": "sparse", "bias": "dense"},
            "dense": {"kernel": "sparse", "bias": "dense"}}
  tx = optax.multi_transform(
      {"sparse": optax.chain(optg.mask_transform(0.5, 0.2), optax.sgd(0.1)),
       "dense": optax.sgd(0.1)}, labels)
  _, state = run_steps(tx, steps=1)
  masks = optg.get_masks(state)
  assert masks["conv"]["bias"] is None
  assert masks["dense"]["kernel"].shape == (8, 5)
  assert count_kept(masks) == NUM_PRUNABLE // 2

  multi = optax.MultiSteps(optax.chain(optg.mask_transform(0.5, 0.2),
                                       optax.sgd(0.1)), every_k_schedule=2)
  _, state = run_steps(multi, steps=4)
  assert int(optg.get_optg_state(state).count) == 2
  assert count_kept(optg.get_masks(state)) == NUM_PRUNABLE // 2


def test_get_masks_errors_without_or_with_two_states():
  with pytest.raises(ValueError, match="no mask_transform"):
    optg.get_masks(optax.sgd(0.1).init(make_params()))
  two = optax.chain(optg.mask_transform(0.5, 0.1),
                    optg.mask_transform(0.5, 0.1))
  with pytest.raises(ValueError, match="2 mask_transform"):
    optg.get_masks(two.init(make_params()))


def test_pmap_over_four_devices_keeps_identical_replicas():
  assert jax.local_device_count() == 4
  params = make_params()
  tx = optax.chain(optg.mask_transform(0.5, 0.3, update_every=2),
                   optax.sgd(0.1))
  state = tx.init(params)

  def step(params, state, grads):
    grads = jax.lax.pmean(grads, axis_name="batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  p_step = jax.pmap(step, axis_name="batch")
  rp, rs = flax.jax_utils.replicate(params), flax.jax_utils.replicate(state)
  expected_p, expected_s = params, state
  for t in range(3):
    per_device = [make_grads(10 * t + d) for d in range(4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *per_device)
    rp, rs = p_step(rp, rs, stacked)
    mean = jax.tree.map(lambda *x: sum(x) / 4, *per_device)
    expected_p, expected_s = _single(tx, expected_p, expected_s, mean)
  for leaf in jax.tree.leaves((rp, optg.get_masks(rs),
                               optg.get_optg_state(rs).scores)):
    for d in range(1, 4):
      np.testing.assert_array_equal(leaf[d], leaf[0])
  for a, b in zip(jax.tree.leaves(optg.get_masks(rs)),
                  jax.tree.leaves(optg.get_masks(expected_s))):
    np.testing.assert_array_equal(a[0], b)
  for a, b in zip(jax.tree.leaves(rp), jax.tree.leaves(expected_p)):
    np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)


def _single(tx, params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


# Opt-in variants of the ranking (not in the paper).


def _refreshed(tx, steps=2):
  params = make_params()
  state = tx.init(params)
  for t in range(steps):
    _, state = tx.update(make_grads(t), state, params)
  return state


# Of 112 weights, 0.9 keeps 11 and 0.8 keeps 22; conv 4 units, dense 5.
@pytest.mark.parametrize("floor, sparsity", [(1, 0.9), (2, 0.8)])
def test_min_kept_per_unit_keeps_floor_and_exact_count(floor, sparsity):
  state = _refreshed(optg.mask_transform(sparsity, 0.5, update_every=2,
                                         min_kept_per_unit=floor))
  masks = state.masks
  assert count_kept(masks) == NUM_PRUNABLE - round(sparsity * NUM_PRUNABLE)
  for kernel in (masks["conv"]["kernel"], masks["dense"]["kernel"]):
    kept_per_unit = np.asarray(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    assert kept_per_unit.min() >= floor
  # Each unit's floor is its best-scored inputs.
  scores = np.asarray(state.scores["dense"]["kernel"])
  dense = np.asarray(masks["dense"]["kernel"])
  for unit in range(5):
    best = np.argsort(-scores[:, unit], kind="stable")[:floor]
    assert dense[best, unit].all()
  # The rest are the global top-k of the remaining scores.
  plain = _refreshed(optg.mask_transform(sparsity, 0.5, update_every=2))
  assert jax.tree.leaves(plain.scores)[0].shape == (3, 3, 2, 4)
  np.testing.assert_array_equal(plain.scores["dense"]["kernel"], scores)


def test_min_kept_per_unit_matches_numpy_statement():
  sparsity = 0.75
  state = _refreshed(optg.mask_transform(sparsity, 0.5, update_every=2,
                                         min_kept_per_unit=1))
  flat, forced = [], []
  for name in ("conv", "dense"):  # Leaf order.
    s = np.asarray(state.scores[name]["kernel"])
    f = np.zeros(s.shape, bool).reshape(-1, s.shape[-1])
    f[np.argmax(s.reshape(-1, s.shape[-1]), axis=0), np.arange(s.shape[-1])] = True
    flat.append(s.ravel())
    forced.append(f.reshape(s.shape).ravel())
  flat, forced = np.concatenate(flat), np.concatenate(forced)
  k = NUM_PRUNABLE - round(sparsity * NUM_PRUNABLE)
  rank = np.where(forced, np.inf, flat)
  order = np.lexsort((np.arange(flat.size), -rank))  # Ties by position.
  want = np.zeros(flat.size, bool)
  want[order[:k]] = True
  got = np.concatenate([np.asarray(state.masks[n]["kernel"]).ravel()
                        for n in ("conv", "dense")])
  np.testing.assert_array_equal(got, want)


def test_layer_rms_normalisation_ranks_scaled_scores():
  sparsity = 0.5
  state = _refreshed(optg.mask_transform(sparsity, 0.5, update_every=2,
                                         score_normalization="layer_rms"))
  scaled = jax.tree.map(lambda s: s / jnp.sqrt(jnp.mean(s * s)),
                        state.scores)
  want = optg.topk_masks(scaled, sparsity)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(state.masks)):
    np.testing.assert_array_equal(a, b)
  # The scores themselves are those of the plain transform.
  plain = _refreshed(optg.mask_transform(sparsity, 0.5, update_every=2))
  for a, b in zip(jax.tree.leaves(plain.scores), jax.tree.leaves(
      state.scores)):
    np.testing.assert_array_equal(a, b)


def test_variants_reach_magnitude_criterion_too():
  params = make_params()
  tx = optg.mask_transform(0.9, 0.0, criterion="magnitude",
                           min_kept_per_unit=1)
  _, state = tx.update(make_grads(0), tx.init(params), params)
  for kernel in jax.tree.leaves(state.masks):
    assert np.asarray(kernel).reshape(-1, kernel.shape[-1]).any(0).all()


def test_variant_arguments_are_checked():
  with pytest.raises(ValueError, match="score_normalization"):
    optg.mask_transform(0.5, 0.1, score_normalization="layer")
  with pytest.raises(ValueError, match="min_kept_per_unit"):
    optg.mask_transform(0.5, 0.1, min_kept_per_unit=-1)
  # 9 units x 2 > 11 kept at sparsity 0.9.
  tx = optg.mask_transform(0.9, 0.1, min_kept_per_unit=2)
  with pytest.raises(ValueError, match="keeps 18 weights, more than the 11"):
    tx.init(make_params())
  assert optg.forced_count(make_params(), 2) == 4 * 2 + 5 * 2 + 4 + 5


def test_floor_through_inject_hyperparams_is_static():
  make = lambda **kw: optax.inject_hyperparams(
      optg.mask_transform, static_args=("sparsity", "update_every")
      + tuple(kw))(
          sparsity=0.9, mask_learning_rate=0.5, update_every=2,
          min_kept_per_unit=1)
  plain = optg.mask_transform(0.9, 0.5, update_every=2, min_kept_per_unit=1)
  _, s1 = run_steps(plain)
  _, s2 = run_steps(make(min_kept_per_unit=1))
  for a, b in zip(jax.tree.leaves(optg.get_masks(s1)),
                  jax.tree.leaves(optg.get_masks(s2))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="add 'min_kept_per_unit' to "
                     "static_args"):
    make().init(make_params())


def _refresh_sparsities(tx, steps, params=None):
  """The sparsity of the masks after each step of `tx` (jitted)."""
  params = make_params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for t in range(steps):
    _, state = update(make_grads(t), state, params)
    out.append(1 - count_kept(optg.get_masks(state)) / NUM_PRUNABLE)
  return out


def test_inject_hyperparams_refreshes_at_the_plain_sparsities():
  # One refresh "an epoch" of 3 steps over 6 epochs, the sigmoid schedule.
  schedule = optg.sigmoid_sparsity_schedule(0.9, 6, 3, beta=2.0)
  plain = optg.mask_transform(schedule, 0.1, update_every=3)
  injected = optax.inject_hyperparams(
      optg.mask_transform, static_args=optg.STATIC_ARGS)(
          sparsity=schedule, mask_learning_rate=0.1, update_every=3)
  want = _refresh_sparsities(plain, 18)
  assert _refresh_sparsities(injected, 18) == want
  # Each refresh is at s(t + 1): the sparsity of the epoch it starts.
  kept = lambda s: NUM_PRUNABLE - round(Fraction(float(np.float32(s)))
                                        * NUM_PRUNABLE)
  for t in (2, 5, 8, 11, 14):
    assert want[t] == pytest.approx(1 - kept(schedule(t + 1)) / NUM_PRUNABLE)
  # None after the schedule's last step (18): its masks would train nothing.
  assert want[17] == want[14]
  # The mask learning rate may be injected: read back from the state.
  state = injected.init(make_params())
  assert float(state.hyperparams["mask_learning_rate"]) == pytest.approx(0.1)


def test_inject_hyperparams_without_static_sparsity_is_refused():
  schedule = optg.sigmoid_sparsity_schedule(0.9, 6, 3)
  for kwargs in (dict(sparsity=schedule), dict(sparsity=0.5)):
    tx = optax.inject_hyperparams(optg.mask_transform)(
        mask_learning_rate=0.1, **kwargs)
    with pytest.raises(ValueError, match=(
        r"sparsity must be a Python number or a schedule, got an array: "
        r"optax.inject_hyperparams .* one refresh late; pass "
        r"static_args=optg.STATIC_ARGS")):
      tx.init(make_params())
  # update_every given as a number: the message names static_args.
  tx = optax.inject_hyperparams(optg.mask_transform, static_args="sparsity")(
      sparsity=0.5, mask_learning_rate=0.1, update_every=2)
  with pytest.raises(ValueError, match="update_every must be a static "
                     "Python int, got an array; with "
                     "optax.inject_hyperparams pass "
                     "static_args=optg.STATIC_ARGS"):
    tx.init(make_params())
  # update_every left out: its default is not an injected number.
  tx = optax.inject_hyperparams(optg.mask_transform, static_args="sparsity")(
      sparsity=0.5, mask_learning_rate=0.1)
  assert _refresh_sparsities(tx, 1) == _refresh_sparsities(
      optg.mask_transform(0.5, 0.1), 1)


def test_where_that_selects_nothing_is_an_error():
  tx = optg.mask_transform(0.5, 0.1,
                           where=lambda path, leaf: path.endswith("kernal"))
  with pytest.raises(ValueError, match=(
      r"`where` selected no leaf to prune, so nothing would be pruned; it "
      r"saw 4 leaves: conv/bias \[4\], conv/kernel \[3, 3, 2, 4\], "
      r"dense/bias \[5\], dense/kernel \[8, 5\]\.$")):
    tx.init(make_params())
  with pytest.raises(ValueError, match="selected no leaf"):
    optg.mask_transform(0.5, 0.1).init({"bias": jnp.zeros(3)})


def test_optax_flatten_around_the_transform_is_a_clear_error():
  tx = optax.flatten(optg.mask_transform(0.5, 0.1))
  with pytest.raises(ValueError, match=(
      r"saw 1 leaf: \(root\) \[121\]\. Every leaf is a vector: inside "
      r"optax.flatten .* put mask_transform outside optax.flatten")):
    tx.init(make_params())
  # Outside flatten, with the weights' optimizer flattened: it works.
  chained = optax.chain(optg.mask_transform(0.5, 0.1),
                        optax.flatten(optax.sgd(0.1, 0.9)))
  params = make_params()
  state = chained.init(params)
  updates, state = chained.update(make_grads(0), state, params)
  assert count_kept(optg.get_masks(state)) == NUM_PRUNABLE // 2
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def _primitives_outside_control_flow(jaxpr):
  return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}


def test_magnitude_ranks_only_inside_the_refresh():
  params, grads = make_params(), make_grads(0)
  tx = optg.mask_transform(0.5, 0.1, update_every=3, criterion="magnitude")
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(grads, state, params)
  outside = _primitives_outside_control_flow(jaxpr)
  assert "cond" in outside
  assert "abs" not in outside  # |W| is computed in the refresh branch only.
  branches = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"][0]
  inside = {eqn.primitive.name for b in branches.params["branches"]
            for eqn in b.jaxpr.eqns}
  assert "abs" in inside
  # Same masks as ranking |W| at every step: refresh at steps 3 and 6.
  assert _refresh_sparsities(tx, 6) == [0, 0, 0.5, 0.5, 0.5, 0.5]


def test_taylor_criterion_ranks_the_last_period_of_minus_g_times_w():
  params = make_params()
  tx = optg.mask_transform(0.6, 0.5, update_every=3, criterion="taylor")
  state = tx.init(params)
  assert state.momentum["dense"]["kernel"] is None
  assert state.momentum["conv"]["bias"] is None
  prunable = ("conv", "dense")
  period_sum = {n: np.zeros(params[n]["kernel"].shape, np.float32)
                for n in prunable}
  for step in range(7):
    grads = make_grads(step)
    _, state = tx.update(grads, state, params)
    for n in prunable:
      period_sum[n] -= (np.asarray(grads[n]["kernel"]) *
                        np.asarray(params[n]["kernel"]))
    if (step + 1) % 3 == 0:
      # The refresh ranks the period's sum alone, then starts a new sum.
      expected = optg.topk_masks(
          {n: {"kernel": jnp.asarray(period_sum[n])} for n in prunable}, 0.6)
      for n in prunable:
        np.testing.assert_array_equal(state.masks[n]["kernel"],
                                      expected[n]["kernel"])
        assert not np.asarray(state.scores[n]["kernel"]).any()
        period_sum[n][:] = 0
    else:
      for n in prunable:
        np.testing.assert_allclose(state.scores[n]["kernel"], period_sum[n],
                                   rtol=1e-6, atol=1e-6)
  assert count_kept(state.masks) == NUM_PRUNABLE - round(0.6 * NUM_PRUNABLE)


@pytest.mark.parametrize("criterion", optg.CRITERIA)
def test_update_outside_jit_is_the_jitted_update(criterion):
  params = make_params()
  schedule = optg.sigmoid_sparsity_schedule(0.8, 4, 2, beta=7.0)
  tx = optg.mask_transform(schedule, 0.5, update_every=2, criterion=criterion)
  eager = jitted = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(8):
    _, eager = tx.update(make_grads(step), eager, params)
    _, jitted = update(make_grads(step), jitted, params)
  # The same masks and counts; the scores' float arithmetic may fuse
  # differently under jit (an ulp, and so the hint's threshold key).
  for field in ("count", "masks", "trained_masks"):
    for a, b in zip(jax.tree.leaves(getattr(eager, field)),
                    jax.tree.leaves(getattr(jitted, field))):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves((eager.scores, eager.momentum)),
                  jax.tree.leaves((jitted.scores, jitted.momentum))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(eager.topk_hint.selections) == int(jitted.topk_hint.selections)
  assert count_kept(eager.trained_masks) == NUM_PRUNABLE - round(
      float(np.float32(schedule(6))) * NUM_PRUNABLE)


# ---------------------------------------------------------------------------
# The refresh chosen on the host (`update(..., refresh=)`).


def _host_chosen_run(tx, steps, update_every, total_steps, wrap=None,
                     choose=None):
  """`steps` jitted updates with `refresh` static, chosen by `choose(t)`
  (default `optg.refresh_due`), against the same updates with `refresh`
  left to the device; returns both final `(params, state)` pairs."""
  choose = choose or (lambda t: optg.refresh_due(t, update_every,
                                                 total_steps))

  @functools.partial(jax.jit, static_argnames="refresh")
  def step(params, state, grads, refresh=None):
    updates, state = tx.update(grads, state, params, refresh=refresh)
    return optax.apply_updates(params, updates), state

  host = device = (make_params(), tx.init(make_params()))
  for t in range(steps):
    host = step(*host, make_grads(t), refresh=choose(t))
    device = step(*device, make_grads(t))
  return host, device


def _assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("criterion", optg.CRITERIA)
@pytest.mark.parametrize("update_every", [1, 3])
def test_refresh_chosen_on_the_host_trains_the_same_run(criterion,
                                                        update_every):
  """`refresh=optg.refresh_due(...)` (two compiled steps) and the device's
  own choice give the same params and states, bit for bit, over a run
  whose refreshes change the masks; with a refresh every step, `True` at
  every step (the last one included, which is no refresh) too."""
  schedule = optg.sigmoid_sparsity_schedule(0.8, 4, 3, beta=7.0)
  total = schedule.total_steps  # 12: no refresh after the last step.
  tx = optax.chain(
      optg.mask_transform(schedule, 0.5, update_every=update_every,
                          criterion=criterion),
      optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
  host, device = _host_chosen_run(tx, total, update_every, total)
  _assert_bitwise(host, device)
  state = optg.get_optg_state(host[1])
  assert count_kept(state.masks) == NUM_PRUNABLE - round(
      Fraction(float(np.float32(schedule(optg.last_refresh_step(
          total, update_every))))) * NUM_PRUNABLE)
  if update_every == 1:
    always, device = _host_chosen_run(tx, total, 1, total,
                                      choose=lambda t: True)
    _assert_bitwise(always, device)


def test_refresh_passes_through_inject_hyperparams_keep_sparse_and_nm():
  schedule = optg.sigmoid_sparsity_schedule(0.5, 4, 2, beta=7.0)
  inner = optax.chain(
      optax.inject_hyperparams(optg.mask_transform,
                               static_args=optg.STATIC_ARGS)(
                                   sparsity=schedule, mask_learning_rate=0.3,
                                   update_every=2, structure="2:4"),
      optax.sgd(0.1))
  for tx in (inner, optg.keep_sparse(inner)):
    host, device = _host_chosen_run(tx, 8, 2, schedule.total_steps)
    _assert_bitwise(host, device)
    assert count_kept(optg.get_masks(host[1])) < NUM_PRUNABLE


def _branches(fn, *args):
  """Conditionals and loops (StableHLO case, if, while) in `fn`'s program."""
  text = jax.jit(fn).lower(*args).as_text()
  return len(re.findall(r"stablehlo\.(?:case|if|while)\b", text))


@pytest.mark.parametrize("topk_layout", ["leaves", "flat"])
def test_a_step_compiled_without_the_refresh_holds_no_branch(topk_layout):
  params, grads = make_params(), make_grads(0)
  tx = optax.chain(optg.mask_transform(0.5, 0.1, update_every=100,
                                       topk_layout=topk_layout),
                   optax.sgd(0.1))
  state = tx.init(params)
  update = lambda refresh: (lambda g, s, p: tx.update(g, s, p,
                                                      refresh=refresh))
  assert _branches(update(False), grads, state, params) == 0
  assert _branches(update(None), grads, state, params) > 0  # lax.cond.
  # A step that may refresh selects its masks; only the per-leaf search
  # loops.
  with_refresh = _branches(update(True), grads, state, params)
  assert (with_refresh == 0) == (topk_layout == "flat")


def test_refresh_true_where_none_is_due_keeps_the_masks():
  params = make_params()
  tx = optg.mask_transform(0.5, 0.1, update_every=3)
  state = tx.init(params)
  for t in range(4):
    refresh = optg.refresh_due(t, 3)
    _, state = jax.jit(functools.partial(tx.update, refresh=True))(
        make_grads(t), state, params)
    assert count_kept(state.masks) == (
        NUM_PRUNABLE // 2 if t >= 2 else NUM_PRUNABLE), (t, refresh)
  assert [optg.refresh_due(t, 3) for t in range(6)] == [
      False, False, True, False, False, True]
  assert [optg.refresh_due(t, 3, total_steps=6) for t in range(6)] == [
      False, False, True, False, False, False]


def test_bad_refresh_is_refused():
  params = make_params()
  tx = optg.mask_transform(0.5, 0.1, update_every=2)
  state = tx.init(params)
  _, state = tx.update(make_grads(0), state, params, refresh=False)
  # Op by op, the step is known: a due refresh cannot be skipped.
  with pytest.raises(ValueError, match=r"refresh=False at step 1, whose "
                     r"update refreshes the masks"):
    tx.update(make_grads(1), state, params, refresh=False)
  for bad in (np.bool_(True), jnp.bool_(False), 1, "yes"):
    with pytest.raises(ValueError, match="refresh must be"):
      tx.update(make_grads(1), state, params, refresh=bad)
  with pytest.raises(ValueError, match="a Python bool chosen on the host"):
    jax.jit(tx.update)(make_grads(1), state, params, refresh=True)


def _bad_from(step, value, good=0.5):
  """A jit-traceable schedule: `good` before `step`, `value` from it on."""
  return lambda t: jnp.where(t >= step, value, good).astype(jnp.float32)


@pytest.mark.parametrize("value, shown", [
    (float("nan"), "nan"), (1.0, "1.0"), (1.1, "1.1"), (-0.5, "-0.5")])
@pytest.mark.parametrize("kwargs", [
    dict(), dict(update_every=2), dict(structure="2:4")])
def test_a_sparsity_schedule_out_of_range_is_refused_when_built(
    value, shown, kwargs):
  message = re.escape(
      f"mask_transform: the sparsity schedule gives {shown} at step 3, the "
      "first of the run's 6 steps where it is not a number in [0, 1)")
  with pytest.raises(ValueError, match=message):
    optg.mask_transform(_bad_from(3, value), 0.1, total_steps=6, **kwargs)
  # The same values from a schedule that branches in Python on the step.
  stepwise = lambda t: float(value) if t >= 3 else 0.5
  with pytest.raises(ValueError, match=message):
    optg.mask_transform(stepwise, 0.1, total_steps=6, **kwargs)
  # Step 0 (masks start dense) and step 6 (after the run) are never asked:
  # the run is that of the constant 0.5.
  want = run_steps(optg.mask_transform(0.5, 0.1, total_steps=6, **kwargs),
                   6)[1].masks
  for step in (0, 6):
    tx = optg.mask_transform(
        lambda t, s=step: jnp.where(t == s, value, 0.5), 0.1,
        total_steps=6, **kwargs)
    for a, b in zip(jax.tree.leaves(run_steps(tx, 6)[1].masks),
                    jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)


def test_a_bad_schedule_is_refused_before_a_jitted_step():
  bad = _bad_from(4, float("nan"))
  # Built inside the traced step: checked on the host all the same.
  step = jax.jit(lambda params: optg.mask_transform(
      bad, 0.1, total_steps=6).init(params).count)
  with pytest.raises(ValueError, match="sparsity schedule gives nan at step "
                     "4, the first of the run's 6 steps"):
    step(make_params())
  # And through optax.inject_hyperparams, which builds it in `init`.
  tx = optax.inject_hyperparams(
      optg.mask_transform, static_args=optg.STATIC_ARGS)(
          sparsity=bad, mask_learning_rate=0.1, total_steps=6)
  with pytest.raises(ValueError, match="sparsity schedule gives nan at step "
                     "4"):
    tx.init(make_params())


def test_a_schedule_that_stays_in_range_is_accepted_and_unchanged():
  # A sparsity of 0 or 0.99, a learning rate of 0: in range, accepted.
  sparsity = lambda t: jnp.where(t < 3, 0.0, 0.5).astype(jnp.float32)
  mask_lr = lambda t: jnp.where(t < 2, 0.0, 0.2).astype(jnp.float32)
  tx = optg.mask_transform(sparsity, mask_lr, update_every=3, total_steps=6)
  _, state = run_steps(tx, 6)
  assert count_kept(state.masks) == NUM_PRUNABLE // 2
  # No score moved while the rate was 0 (steps 0 and 1).
  _, state = run_steps(tx, 2)
  assert not any(np.any(s) for s in jax.tree.leaves(state.scores))
  optg.mask_transform(lambda t: jnp.float32(0.99), 0.0, total_steps=6)


@pytest.mark.parametrize("rate, shown", [
    (float("nan"), "nan"), (-0.1, "-0.1"), (np.float32("nan"), "nan"),
    (jnp.float32(-1.0), "-1.0"), (None, "None")])
def test_a_bad_constant_mask_learning_rate_is_refused(rate, shown):
  message = re.escape("mask_learning_rate must be a finite number >= 0 or "
                      f"a schedule, got {shown}")
  with pytest.raises(ValueError, match=message):
    optg.mask_transform(0.5, rate)
  # optax.inject_hyperparams passes it as an array: refused by `init`.
  if rate is not None:
    tx = optax.inject_hyperparams(
        optg.mask_transform, static_args=optg.STATIC_ARGS)(
            sparsity=0.5, mask_learning_rate=rate)
    with pytest.raises(ValueError, match="mask_learning_rate must be a "
                       "finite number >= 0"):
      tx.init(make_params())


@pytest.mark.parametrize("value, shown", [
    (float("nan"), "nan"), (float("inf"), "inf"), (-0.5, "-0.5")])
def test_a_mask_learning_rate_schedule_out_of_range_is_refused(value, shown):
  message = re.escape(
      f"mask_transform: the mask_learning_rate schedule gives {shown} at "
      "step 5, the first of the run's 12 steps where it is not a finite "
      "number >= 0")
  with pytest.raises(ValueError, match=message):
    optg.mask_transform(0.5, _bad_from(5, value, 0.1), total_steps=12)
  # Through the coupling to the sparsity (the run's length from its
  # schedule), as the harness builds it.
  sparsity = optg.sigmoid_sparsity_schedule(0.5, 6, 2, beta=4.0)
  mask_lr = optg.supermask_learning_rate(_bad_from(5, value, 0.1), sparsity,
                                         0.5)
  with pytest.raises(ValueError, match=(
      r"the mask_learning_rate schedule gives (nan|inf|-0\.008993\d*) at "
      r"step 5, the first of the run's 12 steps")):  # -0.5 * s(5) / 0.5
    optg.mask_transform(sparsity, mask_lr, update_every=2)
  # The last update's rate (step 11) is checked too.
  with pytest.raises(ValueError, match="gives .* at step 11, the first"):
    optg.mask_transform(0.5, _bad_from(11, value, 0.1), total_steps=12)
