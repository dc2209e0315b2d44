"""N:M masks (optg_jax/nm.py) against an independent NumPy reference."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import optg_jax as optg
from optg_jax import nm

PATTERNS = [(1, 4), (2, 4), (3, 4), (4, 8), (2, 8)]


def reference_mask(scores, n, m, axis):
  """Keeps the n best of every m along `axis`: a stable sort per group.

  NaN ranks lowest; among equal scores the lower position wins.
  """
  x = np.moveaxis(np.asarray(scores, np.float32), axis, -1)
  mask = np.zeros(x.shape, bool)
  flat_x = x.reshape(-1, x.shape[-1])
  flat_mask = mask.reshape(-1, x.shape[-1])
  for row, out in zip(flat_x, flat_mask):
    for start in range(0, row.size, m):
      group = row[start:start + m]
      # NumPy sorts NaN last, and -0.0 and 0.0 compare equal.
      best = np.argsort(-group, kind="stable")[:n]
      out[start + best] = True
  return np.moveaxis(flat_mask.reshape(x.shape), -1, axis)


def check_groups(mask, n, m, axis):
  moved = np.moveaxis(np.asarray(mask), axis, -1)
  counts = moved.reshape(moved.shape[:-1] + (-1, m)).sum(-1)
  np.testing.assert_array_equal(counts, n)


@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("shape", [(3, 3, 16, 8), (32, 10), (5, 8, 6)])
def test_random_scores_match_reference(shape, n, m):
  rng = np.random.default_rng(0)
  scores = rng.standard_normal(shape).astype(np.float32)
  axis = nm.reduction_axis(shape)
  mask = optg.nm_mask(scores, n, m)
  assert mask.dtype == jnp.bool_ and mask.shape == shape
  check_groups(mask, n, m, axis)
  np.testing.assert_array_equal(mask, reference_mask(scores, n, m, axis))
  assert nm.is_nm(mask, n, m)


@pytest.mark.parametrize("n, m", PATTERNS)
def test_ties_are_broken_by_position(n, m):
  rng = np.random.default_rng(1)
  # Few distinct values: most groups hold ties at the cut.
  scores = rng.integers(0, 3, (3, 3, 16, 4)).astype(np.float32)
  mask = optg.nm_mask(scores, n, m)
  check_groups(mask, n, m, 2)
  np.testing.assert_array_equal(mask, reference_mask(scores, n, m, 2))


@pytest.mark.parametrize("n, m", PATTERNS)
def test_all_equal_scores_keep_the_first_n(n, m):
  scores = np.ones((2 * m, 3), np.float32)
  mask = np.asarray(optg.nm_mask(scores, n, m))
  expected = np.tile(np.arange(m) < n, 2)[:, None].repeat(3, axis=1)
  np.testing.assert_array_equal(mask, expected)


def test_a_small_group_by_hand():
  scores = np.array([[0.5, 2.0, 1.0, 1.0, -1.0, -3.0, -2.0, -1.0]],
                    np.float32).T  # Dense (in=8, out=1).
  mask = np.asarray(optg.nm_mask(scores, 2, 4))[:, 0]
  # The tie 1.0, 1.0 goes to the lower index; likewise -1.0, -1.0.
  np.testing.assert_array_equal(
      mask, [False, True, True, False, True, False, False, True])


def test_nan_ranks_lowest_and_zeros_tie():
  scores = np.array([[np.nan, -np.inf, 0.0, -0.0],
                     [-0.0, 0.0, np.nan, 1.0]], np.float32).T
  mask = np.asarray(optg.nm_mask(scores, 2, 4))
  np.testing.assert_array_equal(mask[:, 0], [False, False, True, True])
  np.testing.assert_array_equal(mask[:, 1], [True, False, False, True])
  mask = np.asarray(optg.nm_mask(scores, 3, 4))
  np.testing.assert_array_equal(mask[:, 0], [False, True, True, True])
  np.testing.assert_array_equal(mask[:, 1], [True, True, False, True])
  np.testing.assert_array_equal(mask, reference_mask(scores, 3, 4, 0))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_float_scores(dtype):
  rng = np.random.default_rng(2)
  # Rounded to the narrow type, many scores tie.
  scores = jnp.asarray(rng.standard_normal((3, 3, 32, 16)), dtype)
  mask = optg.nm_mask(scores, 2, 4)
  check_groups(mask, 2, 4, 2)
  np.testing.assert_array_equal(
      mask, reference_mask(np.asarray(scores.astype(jnp.float32)), 2, 4, 2))


def test_bfloat16_numpy_scores():
  rng = np.random.default_rng(3)
  scores = rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(
      optg.nm_mask(scores, 1, 4),
      reference_mask(scores.astype(np.float32), 1, 4, 0))


def test_large_groups_use_the_sort_and_agree():
  rng = np.random.default_rng(4)
  scores = rng.integers(0, 5, (64, 6)).astype(np.float32)
  mask = optg.nm_mask(scores, 8, 32)
  check_groups(mask, 8, 32, 0)
  np.testing.assert_array_equal(mask, reference_mask(scores, 8, 32, 0))


def test_explicit_axis():
  rng = np.random.default_rng(5)
  scores = rng.standard_normal((6, 8)).astype(np.float32)
  for axis in (1, -1):
    mask = optg.nm_mask(scores, 2, 4, axis=axis)
    check_groups(mask, 2, 4, 1)
    np.testing.assert_array_equal(mask, reference_mask(scores, 2, 4, 1))
    assert nm.is_nm(mask, 2, 4, axis=axis)
  assert not nm.is_nm(optg.nm_mask(scores, 2, 4, axis=1), 2, 4)


def test_jit_gives_the_same_masks():
  rng = np.random.default_rng(6)
  tree = {"conv": {"kernel": rng.standard_normal((3, 3, 8, 4))},
          "dense": {"kernel": rng.standard_normal((16, 10)),
                    "bias": None}}
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  eager = optg.nm_masks(tree, 2, 4)
  jitted = jax.jit(optg.nm_masks, static_argnums=(1, 2))(tree, 2, 4)
  assert jax.tree.structure(eager, is_leaf=lambda x: x is None) == (
      jax.tree.structure(jitted, is_leaf=lambda x: x is None))
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_array_equal(a, b)
  one = jax.jit(optg.nm_mask, static_argnums=(1, 2, 3))(
      tree["conv"]["kernel"], 4, 8, 2)
  np.testing.assert_array_equal(one, optg.nm_mask(tree["conv"]["kernel"], 4,
                                                  8))


def test_tree_masks_conv_and_dense_along_their_inputs():
  rng = np.random.default_rng(7)
  scores = {"conv_init": {"kernel": rng.standard_normal((3, 3, 8, 16)),
                          "bias": None},
            "blocks": [{"kernel": rng.standard_normal((1, 1, 16, 4))}],
            "head": {"kernel": rng.standard_normal((64, 10)), "bias": None},
            "bn": None}
  masks = optg.nm_masks(scores, 2, 4)
  assert masks["bn"] is None and masks["head"]["bias"] is None
  assert masks["conv_init"]["bias"] is None
  for mask, score, axis in ((masks["conv_init"]["kernel"],
                             scores["conv_init"]["kernel"], 2),
                            (masks["blocks"][0]["kernel"],
                             scores["blocks"][0]["kernel"], 2),
                            (masks["head"]["kernel"],
                             scores["head"]["kernel"], 0)):
    assert mask.dtype == jnp.bool_
    check_groups(mask, 2, 4, axis)
    np.testing.assert_array_equal(mask, reference_mask(score, 2, 4, axis))


def test_indivisible_leaf_error_names_it():
  scores = {"conv_init": {"kernel": np.zeros((3, 3, 3, 16), np.float32)},
            "head": {"kernel": np.zeros((16, 10), np.float32)}}
  with pytest.raises(ValueError, match=r"conv_init/kernel.*length 3"):
    optg.nm_masks(scores, 2, 4)
  masks = optg.nm_masks(scores, 2, 4, indivisible="dense")
  assert np.all(masks["conv_init"]["kernel"])
  check_groups(masks["head"]["kernel"], 2, 4, 0)
  assert nm.indivisible_leaves(scores, 4) == [("conv_init/kernel", 3)]
  assert nm.indivisible_leaves(scores, 2) == [("conv_init/kernel", 3)]
  assert not nm.indivisible_leaves({"a": scores["head"]["kernel"],
                                    "b": None}, 8)


def test_bad_arguments():
  scores = {"w": np.zeros((8, 4), np.float32)}
  with pytest.raises(ValueError, match="indivisible"):
    optg.nm_masks(scores, 2, 4, indivisible="sparse")
  with pytest.raises(ValueError, match="0 < n < m"):
    optg.nm_masks(scores, 4, 4)
  with pytest.raises(ValueError, match="0 < n < m"):
    optg.nm_mask(scores["w"], 0, 4)
  with pytest.raises(ValueError, match="must be an int"):
    optg.nm_mask(scores["w"], 2.0, 4)
  with pytest.raises(ValueError, match="'b'.*ndim >= 2"):
    optg.nm_masks({"b": np.zeros(8, np.float32)}, 2, 4)
  with pytest.raises(ValueError, match="'x'.*5 dimensions|'x'.*shape"):
    optg.nm_masks({"x": np.zeros((1, 1, 1, 4, 4), np.float32)}, 2, 4)
  with pytest.raises(ValueError, match="out of range"):
    optg.nm_mask(scores["w"], 2, 4, axis=2)
  with pytest.raises(ValueError, match="not a multiple of 4"):
    optg.nm_mask(np.zeros((6, 4), np.float32), 2, 4)
  for shape in [(4,), (1, 1, 1, 1, 4)]:
    with pytest.raises(ValueError, match="no default N:M axis"):
      optg.reduction_axis(shape)


def test_reduction_axis():
  assert optg.reduction_axis((3, 3, 64, 128)) == 2
  assert optg.reduction_axis((5, 64, 128)) == 1
  assert optg.reduction_axis((512, 10)) == 0


def test_is_nm():
  mask = np.array([[1, 1, 0, 0, 0, 1, 0, 1]], bool).T
  assert nm.is_nm(mask, 2, 4)
  assert not nm.is_nm(mask, 1, 4)
  assert nm.is_nm(mask, 4, 8)
  assert not nm.is_nm(mask, 1, 2)
  assert not nm.is_nm(mask[:6], 2, 4)  # 6 is not a multiple of 4.
  mask[0, 0] = False
  assert not nm.is_nm(mask, 2, 4)


def test_nm_value_type():
  pattern = optg.NM.parse("2:4")
  assert pattern == optg.NM(2, 4) and (pattern.n, pattern.m) == (2, 4)
  assert str(pattern) == "2:4" and pattern.density == 0.5
  assert optg.NM.parse(" 4 : 8 ").density == 0.5
  assert str(optg.NM.parse("1:4")) == "1:4"
  assert hash(pattern) == hash(optg.NM(2, 4))
  with pytest.raises(AttributeError):
    pattern.n = 3
  for bad in ["2/4", "2:", ":4", "a:b", "2:4:8", "-1:4", "2.0:4", "", None,
              24]:
    with pytest.raises(ValueError, match="like '2:4'"):
      optg.NM.parse(bad)
  for bad in ["4:4", "0:4", "5:4"]:
    with pytest.raises(ValueError, match="0 < n < m"):
      optg.NM.parse(bad)
  with pytest.raises(ValueError, match="must be an int"):
    optg.NM(2.5, 4)
