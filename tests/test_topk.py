"""Tests of the exact global top-k (optg_jax/topk.py)."""

from fractions import Fraction

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
def test_matches_sort_reference_and_exact_count(tie_levels, sparsity):
  rng = np.random.default_rng(int(1000 * sparsity) + (tie_levels or 0))
  leaves = random_tree(rng, tie_levels)
  masks = topk_masks([jnp.asarray(x) for x in leaves], sparsity)
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


def test_all_equal_leaves_break_ties_by_position():
  tree = {"a": jnp.ones((4, 5)), "b": jnp.ones((10,)), "c": None}
  # 0.25 * 30 = 7.5 rounds to 8 (half to even): keep 22, that is all 20
  # entries of "a" (first in leaf order) and the first 2 of "b".
  masks = topk_masks(tree, 0.25)
  assert masks["c"] is None
  assert count(masks) == 22
  assert bool(jnp.all(masks["a"]))
  np.testing.assert_array_equal(np.asarray(masks["b"]),
                                [True] * 2 + [False] * 8)


def test_negative_zero_and_infinities_order():
  scores = [jnp.array([-0.0, 0.0, -jnp.inf, jnp.inf, -1.0, 1.0, -0.0])]
  masks = topk_masks(scores, 3 / 7)  # keep 4: inf, 1, then zeros by position
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


def test_traced_sparsity_under_jit_gives_exact_count():
  rng = np.random.default_rng(2)
  leaves = [jnp.asarray(x) for x in random_tree(rng, tie_levels=3)]
  total = sum(x.size for x in leaves)
  fn = jax.jit(topk_masks)
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


def test_bfloat16_and_float16_scores():
  rng = np.random.default_rng(3)
  for dtype in (jnp.bfloat16, jnp.float16):
    leaves = [jnp.asarray(x, dtype) for x in random_tree(rng)]
    masks = topk_masks(leaves, 0.8)
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


def test_no_leaves_and_sparsity_near_one():
  assert topk_masks({"a": None}, 0.5) == {"a": None}
  masks = topk_masks([jnp.arange(10.0)], 0.96)  # round(9.6) = 10: keep none
  assert count(masks) == 0
