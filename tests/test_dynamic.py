"""Tests of RigL and SET (optg_jax/dynamic.py): budgets, the drop fraction,
the drop and grow, and the transformations (`dynamic_sparse_masks`,
`regrow_at_zero`, `dynamic_sparse`) op by op, under `jit`, `keep_sparse`
and `pmap`."""

import math

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg
from optg_jax import dynamic
from optg_jax.dynamic import drop_and_grow
from optg_jax.dynamic import drop_fraction
from optg_jax.dynamic import dynamic_sparse
from optg_jax.dynamic import dynamic_sparse_masks
from optg_jax.dynamic import dynamic_update_due
from optg_jax.dynamic import erk_densities
from optg_jax.dynamic import layer_budgets
from optg_jax.dynamic import random_layer_mask

# Independent restatements (NumPy / plain Python).


def erk_reference(shapes, s):
  """RigL release's `get_sparsities_erdos_renyi`, with floored zero counts:
  the kept count of each layer."""
  sizes = [int(np.prod(shape)) for shape in shapes]
  raw = [sum(shape) / n for shape, n in zip(shapes, sizes)]
  dense = []
  while True:
    sparse = [i for i in range(len(sizes)) if i not in dense]
    if not sparse:
      return list(sizes)
    ones = sum(sizes[i] - math.floor(s * sizes[i]) for i in sparse)
    dense_excess = sum(math.floor(s * sizes[i]) for i in dense)
    divisor = 0.0
    for i in sparse:
      divisor += raw[i] * sizes[i]
    eps = (ones - dense_excess) / divisor
    top = max(raw[i] for i in sparse)
    if top * eps > 1:
      dense += [i for i in sparse if raw[i] == top]
      continue
    break
  density = [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
  return [n - math.floor((1 - d) * n) for n, d in zip(sizes, density)]


def reference_survivors(mask, weight, count):
  """The flat indices of the `count` active entries of largest |W|, ties to
  the lowest flat index."""
  mask = np.asarray(mask).reshape(-1)
  magnitude = np.abs(np.asarray(weight, np.float64)).reshape(-1)
  active = np.flatnonzero(mask)
  return active[np.lexsort((active, -magnitude[active]))][:count]


def reference_drop_and_grow(mask, weight, growth, kept, swapped):
  """Survivors: the kept - swapped active entries of largest |W|; grown: the
  `swapped` others of largest growth; ties to the lowest flat index."""
  survivors = reference_survivors(mask, weight, kept - swapped)
  growth = np.asarray(growth, np.float64).reshape(-1)
  others = np.setdiff1d(np.arange(growth.size), survivors)
  grown = others[np.lexsort((others, -growth[others]))][:swapped]
  out = np.zeros(growth.size, bool)
  out[survivors] = True
  out[grown] = True
  return out


def reference_swapped(step, kept, alpha, t_end):
  """floor(f(step) * kept), f the cosine drop fraction in float32 (as RigL's
  release: at t_end / 2, f is just below alpha / 2)."""
  f32_ = np.float32
  fraction = f32_(alpha) / f32_(2) * (f32_(1) + np.cos(
      f32_(np.pi) * f32_(step) / f32_(t_end)))
  return int(np.floor(np.float32(fraction) * f32_(kept)))


# A small 2-layer tanh MLP.

KERNELS = (("l1", "kernel"), ("l2", "kernel"))
SHAPES = [(12, 24), (24, 6)]


def f32(x):
  return jnp.asarray(x, jnp.float32)


def mlp_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "l1": {"kernel": f32(rng.standard_normal(SHAPES[0])),
             "bias": f32(0.1 * rng.standard_normal(24))},
      "l2": {"kernel": f32(rng.standard_normal(SHAPES[1])),
             "bias": jnp.zeros((6,), jnp.float32)},
  }


def loss(params, x, y):
  h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
  return jnp.mean((h @ params["l2"]["kernel"] + params["l2"]["bias"] - y) ** 2)


def batch(t):
  rng = np.random.default_rng(1000 + t)
  return f32(rng.standard_normal((8, 12))), f32(rng.standard_normal((8, 6)))


_grad = jax.jit(jax.grad(loss))


def masked_grads(params, masks, t):
  """dL/d(W * M) at the masked weights: what RigL grows from."""
  return _grad(optg.apply_masks(params, masks), *batch(t))


def at(tree, layer):
  return np.asarray(tree[layer[0]][layer[1]])


def optimizer():
  return optax.chain(optax.add_decayed_weights(1e-4),
                     optax.sgd(0.1, momentum=0.9))


def trace_of(state):
  traces = [x for x in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optax.TraceState))
            if isinstance(x, optax.TraceState)]
  assert len(traces) == 1
  return traces[0].trace


# Budgets.

LENET5_KERNELS = [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]


def kernel_shapes(name, num_classes, input_shape):
  from optg_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create(name, num_classes)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(input_shape), train=False))
  return [tuple(x.shape) for x in jax.tree.leaves(variables["params"])
          if len(x.shape) >= 2]


def test_erk_matches_the_reference_on_lenet5_and_resnet50():
  lenet = kernel_shapes("lenet5", 10, (1, 28, 28, 1))
  assert lenet == LENET5_KERNELS
  resnet = kernel_shapes("resnet50", 1000, (1, 224, 224, 3))
  assert len(resnet) == 54
  assert resnet[0] == (7, 7, 3, 64)
  for shapes in (lenet, resnet):
    sizes = [int(np.prod(s)) for s in shapes]
    for s in (0.8, 0.9, 0.95, 0.99):
      got = layer_budgets(shapes, s, "erk")
      assert got == erk_reference(shapes, s), (len(shapes), s)
      uniform = layer_budgets(shapes, s, "uniform")
      assert got != uniform
      assert abs(sum(got) - sum(uniform)) <= len(shapes), (len(shapes), s)
      assert all(1 <= k <= n for k, n in zip(got, sizes))


def test_erk_makes_the_layers_of_largest_raw_dense():
  # LeNet-5: the first conv and the head go dense at 0.8 and 0.9, only the
  # head at 0.95, none at 0.99.
  dense = lambda shapes, s: [i for i, d in enumerate(erk_densities(shapes, s))
                             if d == 1.0]
  assert dense(LENET5_KERNELS, 0.8) == [0, 3]
  assert dense(LENET5_KERNELS, 0.9) == [0, 3]
  assert dense(LENET5_KERNELS, 0.95) == [3]
  assert dense(LENET5_KERNELS, 0.99) == []
  assert layer_budgets(LENET5_KERNELS, 0.9)[0] == 500
  assert layer_budgets(LENET5_KERNELS, 0.9)[3] == 5000
  # A hand case: raw = 0.5, 0.02, 0.11; eps = 1102 / 319, 0.5 eps > 1, so
  # the small conv goes dense and eps = (1100 - 16) / 310.
  shapes = [(3, 3, 1, 2), (100, 100), (100, 10)]
  densities = erk_densities(shapes, 0.9)
  assert densities[0] == 1.0
  assert densities[1] == pytest.approx(1084 / 310 * 0.02, rel=1e-12)
  assert densities[2] == pytest.approx(1084 / 310 * 0.11, rel=1e-12)
  assert layer_budgets(shapes, 0.9) == [18, 700, 385]
  assert erk_reference(shapes, 0.9) == [18, 700, 385]
  # Two layers tied at the largest raw go dense together.
  tied = [(3, 3, 1, 2), (100, 100), (2, 1, 3, 3)]
  assert [d == 1.0 for d in erk_densities(tied, 0.9)] == [True, False, True]
  assert layer_budgets(tied, 0.9) == erk_reference(tied, 0.9)
  assert layer_budgets(tied, 0.9)[0] == 18


def test_uniform_budget_is_n_minus_floor_of_s_n():
  assert layer_budgets([(10, 100)], 0.9, "uniform") == [100]
  assert layer_budgets([(1000,), (3, 3, 4, 8), (7, 11)], 0.9,
                       "uniform") == [100, 29, 8]
  assert layer_budgets([(10, 100)], 0.0, "uniform") == [1000]
  assert layer_budgets([(10, 100)], 0.5, "uniform") == [500]
  assert layer_budgets([(10, 100)], 0.75, "uniform") == [250]
  assert layer_budgets([(10, 100)], 0.8, "uniform") == [200]
  assert layer_budgets([(4, 5)], 0.8, "erk") == [4]  # One layer: uniform.


def test_uniform_budget_of_a_decimal_sparsity_is_not_off_by_one():
  assert layer_budgets([(1000,)], 0.999, "uniform") == [1]
  assert layer_budgets([(10, 100)], 0.95, "uniform") == [50]
  assert layer_budgets([(10, 100)], 0.99, "uniform") == [10]
  assert layer_budgets([(10,)], 0.7, "uniform") == [3]


def test_unknown_budget_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown budget 'dense'.*erk, uniform"):
    layer_budgets([(4, 4)], 0.5, "dense")


# The schedule.


def test_drop_fraction_is_the_cosine_in_float32():
  alpha, t_end = np.float32(0.3), 30
  for t, want in ((0, 0.3), (15, 0.15), (30, 0.0)):
    got = drop_fraction(t, 0.3, t_end)
    assert got.dtype == jnp.float32
    assert abs(float(got) - want) <= 1e-7, t
  assert float(drop_fraction(30, 0.3, 30)) == 0.0
  for t in (1, 5, 7, 10, 20, 29):
    want = alpha / 2 * (1 + np.cos(np.float32(np.pi) * np.float32(t) / t_end))
    assert abs(float(drop_fraction(t, 0.3, t_end)) - float(want)) <= 1e-7, t
  assert abs(float(drop_fraction(jnp.int32(10), 0.5, 20)) - 0.25) <= 1e-7
  traced = jax.jit(lambda t: drop_fraction(t, 0.3, 30))(jnp.int32(5))
  assert abs(float(traced) - 0.15 * (1 + math.cos(math.pi / 6))) <= 1e-7


def test_dynamic_update_due_steps():
  due = [t for t in range(40) if dynamic_update_due(t, 5, 30, 40)]
  assert due == [4, 9, 14, 19, 24, 29]
  assert dynamic_update_due(29, 5, 30, 30) is False
  assert [t for t in range(30) if dynamic_update_due(t, 5, 30, 30)] == [
      4, 9, 14, 19, 24]
  assert [t for t in range(12) if dynamic_update_due(t, 3, 12)] == [
      2, 5, 8, 11]


# One layer's drop and grow.

TIE_WEIGHT = np.array([[0.5, -0.5, 0.1, 2.0, 0.0],
                       [-0.1, 0.3, 0.5, -3.0, 0.7],
                       [0.1, -0.5, 9.0, 0.0, 0.2],
                       [0.3, 0.4, -0.1, 1.0, 0.5]], np.float32)
TIE_MASK = np.zeros((4, 5), bool)
TIE_MASK.flat[[0, 1, 2, 5, 6, 11, 15, 16]] = True  # |W| .5 .5 .1 .1 .3 .5 .3 .4
TIE_GROWTH = np.array([[0.0, 0.0, 0.9, 0.2, 0.9],
                       [0.9, 0.0, 0.2, 0.2, 0.9],
                       [0.0, 0.0, 0.1, 0.2, 0.0],
                       [0.1, 0.0, 0.5, 0.9, 0.0]], np.float32)


def test_drop_and_grow_with_ties_matches_the_reference():
  got = np.asarray(drop_and_grow(jnp.asarray(TIE_MASK), f32(TIE_WEIGHT),
                                 f32(TIE_GROWTH), 8, 3))
  want = reference_drop_and_grow(TIE_MASK, TIE_WEIGHT, TIE_GROWTH, 8, 3)
  # Survivors: 0, 1, 11 (|W| 0.5), 16 (0.4), 6 (0.3, lower index than 15).
  # Dropped: 15 (0.3), 2 and 5 (0.1). Grown: |G| 0.9 at 2, 4, 5, 9, 18
  # -> 2, 4, 5 (2 and 5 just dropped, regrown).
  expected = np.zeros(20, bool)
  expected[[0, 1, 11, 16, 6, 2, 4, 5]] = True
  np.testing.assert_array_equal(want, expected)
  np.testing.assert_array_equal(got.reshape(-1), expected)
  assert got.shape == (4, 5) and int(got.sum()) == 8


def test_drop_and_grow_ties_among_survivors_and_grown_go_to_lowest_index():
  for swapped in range(0, 9):
    for seed in range(3):
      rng = np.random.default_rng(seed)
      growth = rng.integers(0, 3, (4, 5)).astype(np.float32)
      weight = rng.integers(-2, 3, (4, 5)).astype(np.float32)
      got = np.asarray(drop_and_grow(jnp.asarray(TIE_MASK), f32(weight),
                                     f32(growth), 8, swapped))
      np.testing.assert_array_equal(
          got.reshape(-1),
          reference_drop_and_grow(TIE_MASK, weight, growth, 8, swapped))
      assert int(got.sum()) == 8


def test_drop_and_grow_swapping_none_keeps_the_mask():
  got = drop_and_grow(jnp.asarray(TIE_MASK), f32(TIE_WEIGHT), f32(TIE_GROWTH),
                      8, 0)
  np.testing.assert_array_equal(got, TIE_MASK)
  traced = jax.jit(drop_and_grow, static_argnums=3)(
      jnp.asarray(TIE_MASK), f32(TIE_WEIGHT), f32(TIE_GROWTH), 8,
      jnp.int32(0))
  np.testing.assert_array_equal(traced, TIE_MASK)


def test_drop_and_grow_regrows_a_just_dropped_weight_of_largest_growth():
  mask = np.zeros((2, 3), bool)
  mask.flat[[0, 1, 2]] = True
  weight = np.array([[0.5, 0.1, 2.0], [9.0, 9.0, 9.0]], np.float32)
  growth = np.array([[0.0, 5.0, 0.0], [1.0, 2.0, 1.0]], np.float32)
  # Drop 1 (|W| 0.1), the only dropped; grown: 1 (5.0), then 4 (2.0).
  got = np.asarray(drop_and_grow(jnp.asarray(mask), f32(weight), f32(growth),
                                 3, 2))
  np.testing.assert_array_equal(got, [[False, True, True], [False, True,
                                                            False]])
  # Swapping one: 1 dropped and regrown, the mask unchanged.
  got = np.asarray(drop_and_grow(jnp.asarray(mask), f32(weight), f32(growth),
                                 3, 1))
  np.testing.assert_array_equal(got, mask)


def test_random_layer_mask_keeps_exactly_kept():
  for kept in (0, 1, 7, 20):
    m = random_layer_mask(jax.random.key(3), (4, 5), kept)
    assert m.shape == (4, 5) and m.dtype == jnp.bool_
    assert int(m.sum()) == kept
  a = random_layer_mask(jax.random.key(3), (4, 5), 7)
  np.testing.assert_array_equal(a, random_layer_mask(jax.random.key(3),
                                                     (4, 5), 7))
  assert not np.array_equal(a, random_layer_mask(jax.random.key(4), (4, 5),
                                                 7))


# The transformations.


def test_rigl_counts_due_steps_growth_and_zeroed_momentum():
  total, delta_t, t_end, alpha = 40, 5, 30, 0.5
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=total,
                      delta_t=delta_t, alpha=alpha)
  budgets = layer_budgets(SHAPES, 0.8, "erk")
  assert budgets == erk_reference(SHAPES, 0.8)
  params = mlp_params()
  state = tx.init(params)
  masks = optg.get_masks(state)
  assert masks["l1"]["bias"] is None
  for layer, k in zip(KERNELS, budgets):
    assert int(at(masks, layer).sum()) == k
  changed_at = []
  for t in range(total):
    old = optg.get_masks(state)
    grads = masked_grads(params, old, t)
    updates, state = tx.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    new = optg.get_masks(state)
    trace = trace_of(state)
    due = dynamic_update_due(t, delta_t, t_end, total)
    assert int(state[0].count) == t + 1
    for layer, k in zip(KERNELS, budgets):
      m_old, m_new = at(old, layer), at(new, layer)
      np.testing.assert_array_equal(at(optg.trained_masks(state), layer),
                                    m_old)
      assert int(m_new.sum()) == k, (t, layer)
      if not due:
        np.testing.assert_array_equal(m_new, m_old)
        assert np.all(at(trace, layer) != 0), (t, layer)
        continue
      swapped = reference_swapped(t + 1, k, alpha, t_end)
      want = reference_drop_and_grow(m_old, at(params, layer),
                                     np.abs(at(grads, layer)), k, swapped)
      np.testing.assert_array_equal(m_new.reshape(-1), want, err_msg=str(t))
      grown = m_new & ~m_old
      if swapped:
        assert grown.any(), (t, layer)
        changed_at.append(t)
      else:
        assert not grown.any()
      assert np.all(at(new_params, layer)[grown] == 0.0), (t, layer)
      assert np.all(at(trace, layer)[grown] == 0.0), (t, layer)
      assert np.all(at(trace, layer)[~grown] != 0), (t, layer)
    params = new_params
  # Due at 29 too, where floor(f(30) * kept) = 0.
  assert sorted(set(changed_at)) == [4, 9, 14, 19, 24]


def test_set_counts_due_steps_seeds_and_growth_at_zero():
  total, delta_t, t_end, alpha = 20, 5, 20, 0.3
  make = lambda seed: dynamic_sparse("set", 0.8, optimizer(),
                                     total_steps=total, delta_t=delta_t,
                                     t_end=t_end, seed=seed)
  budgets = layer_budgets(SHAPES, 0.8, "erk")
  tx, twin = make(0), make(0)
  params = mlp_params()
  state, twin_state = tx.init(params), twin.init(params)
  other = optg.get_masks(make(1).init(params))
  for layer, k in zip(KERNELS, budgets):
    assert int(at(optg.get_masks(state), layer).sum()) == k
    np.testing.assert_array_equal(at(optg.get_masks(state), layer),
                                  at(optg.get_masks(twin_state), layer))
    assert int(at(other, layer).sum()) == k
    assert not np.array_equal(at(other, layer),
                              at(optg.get_masks(state), layer))
  changed_at = []
  for t in range(total):
    old = optg.get_masks(state)
    grads = masked_grads(params, old, t)
    updates, state = tx.update(grads, state, params)
    _, twin_state = twin.update(grads, twin_state, params)
    new_params = optax.apply_updates(params, updates)
    new = optg.get_masks(state)
    for layer, k in zip(KERNELS, budgets):
      m_old, m_new = at(old, layer), at(new, layer)
      np.testing.assert_array_equal(m_new,
                                    at(optg.get_masks(twin_state), layer))
      assert int(m_new.sum()) == k, (t, layer)
      if not dynamic_update_due(t, delta_t, t_end, total):
        np.testing.assert_array_equal(m_new, m_old)
        continue
      swapped = reference_swapped(t + 1, k, alpha, t_end)
      assert swapped > 0
      # The survivors are the drop's (the growth never displaces them).
      survivors = reference_survivors(m_old, at(params, layer), k - swapped)
      assert np.all(m_new.reshape(-1)[survivors]), (t, layer)
      dropped = np.setdiff1d(np.flatnonzero(m_old), survivors)
      assert len(dropped) == swapped
      grown = m_new & ~m_old
      assert 0 < int(grown.sum()) <= swapped
      changed_at.append(t)
      assert np.all(at(new_params, layer)[grown] == 0.0)
      assert np.all(at(trace_of(state), layer)[grown] == 0.0)
    params = new_params
  assert sorted(set(changed_at)) == [4, 9, 14]


def test_set_growth_is_drawn_from_the_seed_and_the_step():
  params = mlp_params()
  make = lambda seed: dynamic_sparse_masks(0.8, method="set", total_steps=40,
                                           delta_t=5, seed=seed)
  start = make(0).init(params)
  grads = masked_grads(params, start.masks, 0)

  def grown(seed, count):
    state = start._replace(count=jnp.int32(count))
    _, state = make(seed).update(grads, state, params)
    assert int(state.count) == count + 1
    return [at(state.masks, layer) & ~at(start.masks, layer)
            for layer in KERNELS]

  same = grown(0, 4)
  assert all(g.any() for g in same)
  for a, b in zip(same, grown(0, 4)):
    np.testing.assert_array_equal(a, b)
  for other in (grown(1, 4), grown(0, 9)):
    assert not all(np.array_equal(a, b) for a, b in zip(same, other))
  assert not any(g.any() for g in grown(0, 5))  # Step 5 is not due.


def _jit_step(tx):
  def step(params, state, x, y, refresh=None):
    grads = jax.grad(loss)(optg.apply_masks(params, optg.get_masks(state)),
                           x, y)
    updates, state = tx.update(grads, state, params, refresh=refresh)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, static_argnames="refresh")


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_static_refresh_gives_the_masks_decided_on_the_device():
  total, delta_t, t_end = 40, 5, 30
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=total,
                      delta_t=delta_t)
  step = _jit_step(tx)
  params = mlp_params()
  host = device = (params, tx.init(params))
  moved = []
  for t in range(total):
    x, y = batch(t)
    refresh = dynamic_update_due(t, delta_t, t_end, total)
    before = optg.get_masks(host[1])
    host = step(*host, x, y, refresh=refresh)
    device = step(*device, x, y)
    assert _leaves_equal(optg.get_masks(host[1]),
                         optg.get_masks(device[1])), t
    assert _leaves_equal(optg.trained_masks(host[1]),
                         optg.trained_masks(device[1])), t
    for a, b in zip(jax.tree.leaves(host[0]), jax.tree.leaves(device[0])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(t))
    if not _leaves_equal(before, optg.get_masks(host[1])):
      moved.append(t)
  assert moved == [4, 9, 14, 19]  # floor(f(25) * kept) = 0 at 24 and 29.
  for layer, k in zip(KERNELS, layer_budgets(SHAPES, 0.8)):
    assert int(at(optg.get_masks(host[1]), layer).sum()) == k


def test_static_refresh_false_step_is_the_device_run_to_rounding():
  """The masks bit for bit; the weights to rounding only, as the
  docstring of `regrow_at_zero` says: a step compiled with refresh=False
  has no select between the params and their update, so XLA may fuse the
  two into one multiply-add."""
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=40, delta_t=5)
  step = _jit_step(tx)
  params = mlp_params()
  host = device = (params, tx.init(params))
  for t in range(3):  # Not due: refresh=False.
    host = step(*host, *batch(t), refresh=False)
    device = step(*device, *batch(t))
    assert _leaves_equal(optg.get_masks(host[1]), optg.get_masks(device[1]))
    for a, b in zip(jax.tree.leaves(host[0]), jax.tree.leaves(device[0])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                 atol=1e-7)


def test_refresh_false_at_a_due_step_names_dynamic_update_due():
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=40, delta_t=5)
  params = mlp_params()
  state = tx.init(params)
  first = optg.get_masks(state)
  for t in range(4):  # Not due: refresh=False is accepted.
    grads = masked_grads(params, optg.get_masks(state), t)
    updates, state = tx.update(grads, state, params, refresh=False)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(first),
                  jax.tree.leaves(optg.get_masks(state))):
    np.testing.assert_array_equal(a, b)
  grads = masked_grads(params, optg.get_masks(state), 4)
  with pytest.raises(ValueError, match=r"refresh=False at step 4.*"
                     r"dynamic_update_due\(step, delta_t, t_end"):
    tx.update(grads, state, params, refresh=False)


def test_keep_sparse_holds_w_times_m_with_the_plain_runs_masks():
  total, delta_t, t_end = 40, 5, 30
  make = lambda: dynamic_sparse("rigl", 0.8, optimizer(), total_steps=total,
                                delta_t=delta_t)
  plain, sparse = make(), optg.keep_sparse(make())
  budgets = layer_budgets(SHAPES, 0.8)
  params = mlp_params()
  plain_state = plain.init(params)
  sparse_state = sparse.init(params)
  masks = optg.get_masks(sparse_state)
  sparse_params = optg.apply_masks(params, masks)  # The params it starts on.
  for t in range(20):
    old = optg.get_masks(plain_state)
    grads = masked_grads(params, old, t)
    updates, plain_state = plain.update(grads, plain_state, params)
    params = optax.apply_updates(params, updates)
    updates, sparse_state = sparse.update(grads, sparse_state, sparse_params)
    sparse_params = optax.apply_updates(sparse_params, updates)
    new = optg.get_masks(plain_state)
    for layer, k in zip(KERNELS, budgets):
      m = at(new, layer)
      np.testing.assert_array_equal(at(optg.get_masks(sparse_state), layer),
                                    m, err_msg=str(t))
      assert int(m.sum()) == k
      p = at(sparse_params, layer)
      assert np.all(p[~m] == 0.0), (t, layer)
      assert np.all(p[m & ~at(old, layer)] == 0.0), (t, layer)  # Grown.
      np.testing.assert_array_equal(p, np.where(m, at(params, layer), 0.0),
                                    err_msg=str(t))
    np.testing.assert_array_equal(sparse_params["l1"]["bias"],
                                  params["l1"]["bias"])


def test_pmap_replicas_have_the_single_device_masks():
  assert jax.local_device_count() == 4
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=10, delta_t=2)
  params = mlp_params()
  state = tx.init(params)

  def step(params, state, grads, axis=True):
    if axis:
      grads = jax.lax.pmean(grads, axis_name="batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  p_step = jax.pmap(step, axis_name="batch")
  single = jax.jit(lambda p, s, g: step(p, s, g, axis=False))
  rp, rs = flax.jax_utils.replicate(params), flax.jax_utils.replicate(state)
  expected = (params, state)
  for t in range(6):  # Due after steps 1, 3 and 5.
    # Dyadic gradients with few bits: their mean is exact in any order.
    per_device = [jax.tree.map(lambda p, d=d: f32(np.round(
        np.random.default_rng(10 * t + d).standard_normal(p.shape) * 8) / 8),
                               params) for d in range(4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *per_device)
    mean = jax.tree.map(lambda *x: sum(np.asarray(v) for v in x) / 4,
                        *per_device)
    rp, rs = p_step(rp, rs, stacked)
    expected = single(*expected, mean)
  masks = optg.get_masks(rs)
  for layer in KERNELS:
    want = at(optg.get_masks(expected[1]), layer)
    assert not np.array_equal(want, at(optg.get_masks(state), layer))
    for d in range(4):
      np.testing.assert_array_equal(at(masks, layer)[d], want)
  for a, b in zip(jax.tree.leaves(rp), jax.tree.leaves(expected[0])):
    for d in range(4):
      np.testing.assert_allclose(a[d], b, rtol=1e-5, atol=1e-6)


def test_tuple_params_are_accepted_as_by_mask_transform():
  params = (f32(np.ones((6, 5))), jnp.zeros((5,)), f32(np.ones((5, 3))))
  tx = dynamic_sparse_masks(0.5, method="rigl", total_steps=10,
                            budget="uniform")
  masks = optg.get_masks(tx.init(params))
  assert masks[1] is None
  assert [int(masks[0].sum()), int(masks[2].sum())] == [15, 8]


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="prune"), "unknown method 'prune'; valid methods: rigl, set"),
    (dict(budget="dense"), "unknown budget 'dense'; valid budgets: erk, "
     "uniform"),
    (dict(sparsity=lambda step: 0.8), "sparsity must be a Python number"),
    (dict(sparsity=jnp.float32(0.8)), "sparsity must be a Python number"),
    (dict(sparsity=1.0), "sparsity must be a number in [0, 1), got 1.0"),
    (dict(delta_t=0), "delta_t must be an int >= 1, got 0"),
    (dict(total_steps=0), "total_steps must be an int >= 1, got 0"),
    (dict(alpha=1.5), "alpha must be a number in [0, 1], got 1.5"),
    (dict(power=0.0), "power must be a number > 0"),
    (dict(t_end=41), "t_end must be an int in [1, total_steps=40], got 41"),
])
def test_invalid_arguments_name_the_problem(kwargs, message):
  args = dict(method="rigl", sparsity=0.8, total_steps=40)
  args.update(kwargs)
  method = args.pop("method")
  sparsity = args.pop("sparsity")
  with pytest.raises(ValueError) as info:
    dynamic_sparse(method, sparsity, optimizer(), **args)
  assert message in str(info.value)


def test_budgets_refuse_a_sparsity_of_one():
  for budget in ("erk", "uniform"):
    with pytest.raises(ValueError, match=r"sparsity must be a number in "
                       r"\[0, 1\), got 1.0"):
      layer_budgets([(4, 4)], 1.0, budget)


def test_a_where_selecting_nothing_names_the_method_and_the_leaves():
  tx = dynamic_sparse_masks(0.5, method="set", total_steps=10,
                            where=lambda path, leaf: False)
  with pytest.raises(ValueError, match=r"set: `where` selected no leaf to "
                     r"prune.*l1/kernel \[12, 24\]"):
    tx.init(mlp_params())


def test_update_without_params_is_refused():
  tx = dynamic_sparse("rigl", 0.8, optimizer(), total_steps=10)
  params = mlp_params()
  state = tx.init(params)
  with pytest.raises(ValueError, match="regrow_at_zero needs the params"):
    tx.update(params, state)
  masks_only = dynamic_sparse_masks(0.8, method="rigl", total_steps=10)
  with pytest.raises(ValueError, match="rigl needs the params"):
    masks_only.update(params, masks_only.init(params))
  assert dynamic.DYNAMIC_METHODS == ("rigl", "set")
