"""Tests of the exact global top-k (optg_jax/topk/)."""

from fractions import Fraction
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optg_jax import topk
from optg_jax.topk import topk_masks


def reference_masks(leaves, sparsity):
  """Sort-based reference: stable order by (-score, flat position)."""
  flat = np.concatenate([np.asarray(x, np.float32).reshape(-1)
                         for x in leaves])
  flat = np.where(flat == 0, np.float32(0), flat)  # -0.0 ties with +0.0
  total = flat.size
  k = total - round(Fraction(float(np.float32(sparsity))) * total)
  order = np.lexsort((np.arange(total), -flat.astype(np.float64)))
  keep = np.zeros(total, bool)
  keep[order[:k]] = True
  out, start = [], 0
  for x in leaves:
    out.append(keep[start:start + x.size].reshape(x.shape))
    start += x.size
  return out


def count(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


def random_tree(rng, tie_levels=None):
  shapes = [(5, 7), (3, 3, 4, 8), (1,), (129,), (2, 2, 2, 2)]
  leaves = []
  for shape in shapes:
    if tie_levels:
      x = rng.integers(0, tie_levels, shape).astype(np.float32) - 1
    else:
      x = rng.standard_normal(shape).astype(np.float32)
    leaves.append(x)
  return leaves


@pytest.mark.parametrize("tie_levels", [None, 2, 3, 5])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.9, 0.999])
@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_matches_sort_reference_and_exact_count(tie_levels, sparsity, layout):
  rng = np.random.default_rng(int(1000 * sparsity) + (tie_levels or 0))
  leaves = random_tree(rng, tie_levels)
  masks = topk_masks([jnp.asarray(x) for x in leaves], sparsity,
                     layout=layout)
  expected = reference_masks(leaves, sparsity)
  total = sum(x.size for x in leaves)
  assert count(masks) == total - round(Fraction(sparsity) * total)
  for got, want in zip(masks, expected):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_kept_scores_dominate_pruned_scores():
  rng = np.random.default_rng(0)
  leaves = random_tree(rng, tie_levels=4)
  masks = topk_masks(leaves, 0.6)
  scores = np.concatenate([x.reshape(-1) for x in leaves])
  kept = np.concatenate([np.asarray(m).reshape(-1) for m in masks])
  assert scores[kept].min() >= scores[~kept].max()


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_all_equal_leaves_break_ties_by_position(layout):
  tree = {"a": jnp.ones((4, 5)), "b": jnp.ones((10,)), "c": None}
  # 0.25 * 30 = 7.5 rounds to 8 (half to even): keep 22, that is all 20
  # entries of "a" (first in leaf order) and the first 2 of "b".
  masks = topk_masks(tree, 0.25, layout=layout)
  assert masks["c"] is None
  assert count(masks) == 22
  assert bool(jnp.all(masks["a"]))
  np.testing.assert_array_equal(np.asarray(masks["b"]),
                                [True] * 2 + [False] * 8)


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_negative_zero_and_infinities_order(layout):
  scores = [jnp.array([-0.0, 0.0, -jnp.inf, jnp.inf, -1.0, 1.0, -0.0])]
  # Keep 4: inf, 1, then zeros by position.
  masks = topk_masks(scores, 3 / 7, layout=layout)
  np.testing.assert_array_equal(np.asarray(masks[0]),
                                [True, True, False, True, False, True, False])


def test_order_preserving_keys_are_monotone():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 1e3,
                      np.float32([0, -0.0, 1e-45, -1e-45, np.inf, -np.inf,
                                  3.4e38, -3.4e38])])
  keys = np.asarray(topk.order_preserving_keys(jnp.asarray(x)))
  order = np.argsort(x, kind="stable")
  assert np.all(np.diff(keys[order].astype(np.int64)) >= 0)
  assert keys[x.tolist().index(0.0)] == keys[x.tolist().index(-0.0) + 1]


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_traced_sparsity_under_jit_gives_exact_count(layout):
  rng = np.random.default_rng(2)
  leaves = [jnp.asarray(x) for x in random_tree(rng, tie_levels=3)]
  total = sum(x.size for x in leaves)
  fn = jax.jit(lambda x, s: topk_masks(x, s, layout=layout))
  for s in rng.random(20).astype(np.float32):
    masks = fn(leaves, jnp.float32(s))
    assert count(masks) == total - round(Fraction(float(s)) * total)
    for got, want in zip(masks, reference_masks(leaves, s)):
      np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("total", [1, 3, 1000, 65535, 65536, 25_557_032,
                                   2**31 - 1])
def test_traced_count_is_exact_rational_rounding(total):
  rng = np.random.default_rng(total % 1000)
  values = np.concatenate([
      rng.random(200).astype(np.float32),
      np.float32([0.0, 0.5, 0.25, 0.9, 0.95, 0.99999994, 1e-30, 1e-40]),
      # Exact halves, where rounding to even matters.
      np.float32([(r + 0.5) / total for r in range(min(total, 40))]),
  ])
  fn = jax.jit(lambda s: topk._traced_num_to_keep(s, total))
  for s in values:
    want = total - round(Fraction(float(s)) * total)
    assert int(fn(jnp.float32(s))) == want, (s, total)


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_bfloat16_and_float16_scores(layout):
  rng = np.random.default_rng(3)
  for dtype in (jnp.bfloat16, jnp.float16):
    leaves = [jnp.asarray(x, dtype) for x in random_tree(rng)]
    masks = topk_masks(leaves, 0.8, layout=layout)
    as_f32 = [np.asarray(x.astype(jnp.float32)) for x in leaves]
    for got, want in zip(masks, reference_masks(as_f32, 0.8)):
      np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity_raises(bad):
  with pytest.raises(ValueError, match="sparsity"):
    topk_masks([jnp.ones(4)], bad)


def test_masks_have_tree_structure_and_dtype():
  tree = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": None},
          "dense": [jnp.arange(6.0).reshape(2, 3)]}
  masks = topk_masks(tree, 0.25)
  assert jax.tree.structure(masks) == jax.tree.structure(tree)
  assert masks["conv"]["kernel"].dtype == jnp.bool_
  assert masks["conv"]["kernel"].shape == (3, 3, 2, 4)
  assert count(masks) == 78 - 20  # round(19.5) = 20, half to even


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_no_leaves_and_sparsity_near_one(layout):
  assert topk_masks({"a": None}, 0.5, layout=layout) == {"a": None}
  # round(9.6) = 10: keep none.
  masks = topk_masks([jnp.arange(10.0)], 0.96, layout=layout)
  assert count(masks) == 0


# ---------------------------------------------------------------------------
# The warm start (`warm_topk_masks`): the masks of the cold search whatever
# the hint holds.


def assert_same_masks(got, want):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def hint_of(threshold, previous, selections):
  return topk.TopKHint(threshold=jnp.uint32(threshold),
                       previous=jnp.uint32(previous),
                       selections=jnp.int32(selections))


def digits_score_trajectory(steps, update_every=1, sparsity=0.9,
                            topk_layout="leaves"):
  """The OptG states of a real training run: a 64-128-10 MLP on
  scikit-learn's digits, `mask_transform` first in the chain, batches of
  128, one state per step."""
  import optax  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  import optg_jax as optg  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  x = jnp.asarray(digits.data / 16.0, jnp.float32)
  y = jnp.asarray(digits.target)
  keys = jax.random.split(jax.random.key(0), 2)
  params = {"w1": jax.random.normal(keys[0], (64, 128)) * 0.125,
            "w2": jax.random.normal(keys[1], (128, 10)) * 0.09}
  tx = optax.chain(optg.mask_transform(sparsity, 0.5,
                                       update_every=update_every,
                                       topk_layout=topk_layout),
                   optax.sgd(0.1, momentum=0.9))
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    def loss(p):
      logits = jax.nn.relu(xb @ p["w1"]) @ p["w2"]
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             yb).mean()
    grads = jax.grad(loss)(optg.apply_masks(params,
                                            optg.get_masks(state)))
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  states = []
  for t in range(steps):
    rows = (np.arange(128) + 128 * t) % x.shape[0]
    params, state = step(params, state, x[rows], y[rows])
    states.append(optg.get_optg_state(state))
  return states


def test_refreshes_of_a_training_run_equal_the_cold_selection():
  """Every step of a run refreshes with the warm start (the transform's
  own): each step's masks equal the cold top-k of its scores and the sort
  reference, and from the third refresh on the warm search takes fewer
  passes over the scores than the cold one."""
  states = digits_score_trajectory(40)
  cold = jax.jit(lambda s: topk_masks(s, 0.9))
  passes = jax.jit(lambda s, h: (topk.selection_passes(s, 0.9, h),
                                 topk.selection_passes(s, 0.9)))
  warm_passes = cold_passes = 0
  for t, state in enumerate(states):
    scores = [state.scores["w1"], state.scores["w2"]]
    masks = [state.masks["w1"], state.masks["w2"]]
    assert_same_masks(masks, cold(scores))
    assert_same_masks(masks, reference_masks(scores, 0.9))
    assert count(masks) == topk.num_to_keep(0.9, 64 * 128 + 128 * 10)
    if t >= 3:
      previous = states[t - 1]
      assert int(previous.topk_hint.selections) == 2
      warm, from_scratch = passes(scores, previous.topk_hint)
      warm_passes += int(warm)
      cold_passes += int(from_scratch)
  assert warm_passes < cold_passes, (warm_passes, cold_passes)


@pytest.mark.long
@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_any_hint_gives_the_cold_masks(layout):
  """Hints that are wrong in every way (far off, reversed, at the extreme
  keys, never set) on scores with and without ties, NaN and infinities."""
  rng = np.random.default_rng(7)
  extreme = np.uint32(0xFFFFFFFF)
  hints = [hint_of(0, 0, 0), hint_of(0, 0, 2), hint_of(extreme, extreme, 2),
           hint_of(extreme, 0, 2), hint_of(0, extreme, 2),
           hint_of(0x80000000, 0x80000000, 1)]
  hints += [hint_of(*rng.integers(0, 2**32, 2, dtype=np.uint64), 2)
            for _ in range(6)]
  for tie_levels in (None, 2, 3):
    leaves = random_tree(rng, tie_levels)
    leaves[1].flat[:5] = [np.nan, np.inf, -np.inf, np.nan, -0.0]
    scores = [jnp.asarray(x) for x in leaves]
    for sparsity in (0.0, 0.5, 0.9, 0.99):
      # NaN ranks highest here, lowest in the sort reference.
      want = topk_masks(scores, sparsity)
      assert count(want) == topk.num_to_keep(sparsity, sum(
          x.size for x in leaves))
      select = jax.jit(lambda x, h, p=sparsity: topk.warm_topk_masks(
          x, p, h, layout=layout))
      for hint in hints:
        masks, new = select(scores, hint)
        assert_same_masks(masks, want)
        assert int(new.selections) == min(int(hint.selections) + 1, 2)
        assert int(new.previous) == int(hint.threshold)


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_hint_follows_the_threshold_and_a_sparsity_jump(layout):
  """The hint holds the key of the k-th largest score; a jump of the
  sparsity (an epoch boundary of the reference's schedule) between two
  selections still gives the cold masks, with the same hint either way."""
  rng = np.random.default_rng(8)
  leaves = random_tree(rng)
  scores = [jnp.asarray(x) for x in leaves]
  flat = np.sort(np.concatenate([x.reshape(-1) for x in leaves]))[::-1]
  _, hint = topk.warm_topk_masks(scores, 0.2, topk.empty_hint(),
                                 layout=layout)
  k = topk.num_to_keep(0.2, flat.size)
  assert int(hint.threshold) == int(topk.order_preserving_keys(flat[k - 1]))
  assert int(hint.selections) == 1
  moved = [x * 1.01 + 0.001 for x in scores]
  for sparsity in (0.2, 0.5, 0.9, 0.99):
    masks, next_hint = jax.jit(functools.partial(
        topk.warm_topk_masks, layout=layout))(moved, sparsity, hint)
    cold, cold_hint = topk.warm_topk_masks(moved, sparsity,
                                           topk.empty_hint())
    assert_same_masks(masks, cold)
    assert_same_masks(masks, reference_masks([np.asarray(x) for x in moved],
                                             sparsity))
    assert int(next_hint.threshold) == int(cold_hint.threshold)


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_traced_sparsity_and_bfloat16_scores_warm(layout):
  rng = np.random.default_rng(9)
  scores = [jnp.asarray(x, jnp.bfloat16) for x in random_tree(rng)]
  select = jax.jit(functools.partial(topk.warm_topk_masks, layout=layout))
  _, hint = select(scores, jnp.float32(0.6), topk.empty_hint())
  for sparsity in (0.6, 0.61, 0.7):
    masks, hint = select(scores, jnp.float32(sparsity), hint)
    assert_same_masks(masks, topk_masks(scores, jnp.float32(sparsity)))


@pytest.mark.parametrize("layout", topk.LAYOUTS)
def test_nothing_kept_leaves_the_hint_as_it_was(layout):
  """k == 0 (a sparsity that rounds every entry away) keeps nothing and
  has no threshold to remember."""
  scores = [jnp.arange(3, dtype=jnp.float32)]
  hint = hint_of(0x90000000, 0x8F000000, 2)
  masks, new = topk.warm_topk_masks(scores, 0.9, hint, layout=layout)
  assert count(masks) == topk.num_to_keep(0.9, 3) == 0
  assert (int(new.threshold), int(new.previous), int(new.selections)) == (
      0x90000000, 0x8F000000, 2)


@pytest.mark.long
@pytest.mark.parametrize("tie_levels", [2])
def test_flat_layout_gives_the_same_masks_and_hint(tie_levels):
  rng = np.random.default_rng(10 + (tie_levels or 0))
  leaves = random_tree(rng, tie_levels)
  scores = [jnp.asarray(x) for x in leaves]
  _, hint = jax.jit(lambda s: topk.warm_topk_masks(
      s, 0.5, topk.empty_hint()))(scores)
  for sparsity in (0.0, 0.3, 0.9, 0.99):
    want, want_hint = jax.jit(lambda s, h, p=sparsity: topk.warm_topk_masks(
        s, p, h))(scores, hint)
    assert_same_masks(jax.jit(lambda s, p=sparsity: topk_masks(
        s, p, layout="flat"))(scores), want)
    got, got_hint = jax.jit(lambda s, h, p=sparsity: topk.warm_topk_masks(
        s, p, h, layout="flat"))(scores, hint)
    assert_same_masks(got, want)
    assert int(got_hint.threshold) == int(want_hint.threshold)
    for mask, leaf in zip(got, leaves):
      assert mask.shape == leaf.shape


def test_bad_layout_is_refused():
  with pytest.raises(ValueError, match="layout must be one of"):
    topk_masks([jnp.zeros(3)], 0.5, layout="concatenated")
  with pytest.raises(ValueError, match="not supported with axis_name"):
    topk_masks([jnp.zeros(3)], 0.5, axis_name="data", layout="flat")


def test_transform_with_the_flat_layout_trains_the_same_run():
  """`mask_transform(topk_layout="flat")`: the same masks at every step, so
  the same run, bit for bit."""
  leaves_run = digits_score_trajectory(12, update_every=3)
  flat_run = digits_score_trajectory(12, update_every=3, topk_layout="flat")
  for a, b in zip(leaves_run, flat_run):
    assert_same_masks(a.masks, b.masks)
    assert_same_masks(a.scores, b.scores)
  assert int(flat_run[-1].topk_hint.selections) == 2
  with pytest.raises(ValueError, match="layout must be one of"):
    import optg_jax as optg  # pylint: disable=g-import-not-at-top
    optg.mask_transform(0.5, 0.1, topk_layout="sorted")


def device_branches(fn, *args) -> int:
  """Conditionals and loops (StableHLO case, if, while) in `fn`'s program."""
  text = jax.jit(fn).lower(*args).as_text()
  return len(re.findall(r"stablehlo\.(?:case|if|while)\b", text))


@pytest.mark.parametrize("tie_levels", [None, 2])
def test_flat_layout_has_fixed_passes_and_no_device_loop(tie_levels):
  """The flat selection's program holds no loop and no branch, and the
  passes it takes depend on the number of scores only: the same for ties,
  NaN, k == 0 and k == N. The per-leaf search does loop."""
  rng = np.random.default_rng(20)
  leaves = random_tree(rng, tie_levels)
  leaves[0].flat[:3] = [np.nan, np.inf, -0.0]
  scores = [jnp.asarray(x) for x in leaves]
  total = sum(x.size for x in leaves)
  hint = topk.empty_hint()
  assert device_branches(lambda s, p: topk.warm_topk_masks(
      s, p, hint, layout="flat"), scores, 0.5) == 0
  assert device_branches(lambda s: topk_masks(s, 0.9, layout="flat"),
                         scores) == 0
  assert device_branches(lambda s: topk_masks(s, 0.9), scores) > 0
  # 32 key bits and bit_length(total) position bits, 4 a pass.
  assert topk.fixed_passes(total) == 8 + -(-total.bit_length() // 4)
  for sparsity in (0.0, 0.5, 0.99, 0.9999):
    assert int(topk.selection_passes(scores, sparsity, layout="flat")) == (
        topk.fixed_passes(total))
    assert_same_masks(topk_masks(scores, sparsity, layout="flat"),
                      topk_masks(scores, sparsity))


@pytest.mark.long
def test_flat_layout_on_resnet50_sized_scores():
  """ResNet-50's 25.5M kernel entries in their shapes (random scores, then
  a block of ties at the threshold): the fixed-pass selection keeps
  exactly the entries of the per-leaf search."""
  from optg_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create("resnet50", num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))["params"]
  kernels = [x.shape for x in jax.tree.leaves(shapes) if len(x.shape) >= 2]
  keys = jax.random.split(jax.random.key(1), len(kernels))
  scores = [jax.random.normal(k, s) for k, s in zip(keys, kernels)]
  total = sum(x.size for x in scores)
  assert total == 25_502_912
  flat = jax.jit(lambda s: topk_masks(s, 0.9, layout="flat"))(scores)
  assert count(flat) == topk.num_to_keep(0.9, total)
  assert_same_masks(flat, jax.jit(lambda s: topk_masks(s, 0.9))(scores))
  # A whole kernel of zeros across the 50% threshold: the tie cut decides.
  scores[10] = jnp.zeros_like(scores[10])
  flat = jax.jit(lambda s: topk_masks(s, 0.5, layout="flat"))(scores)
  assert 0 < int(jnp.sum(flat[10])) < scores[10].size
  assert count(flat) == topk.num_to_keep(0.5, total)
  assert_same_masks(flat, jax.jit(lambda s: topk_masks(s, 0.5))(scores))
