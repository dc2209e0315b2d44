"""Exact global top-k masks over a pytree of scores, without sorting.

`topk_masks` keeps the `k = N - round(sparsity * N)` highest scores of a whole
pytree (all leaves together). It never sorts and never concatenates the
leaves: each float32 score is mapped to an unsigned 32-bit key whose integer
order is the float order, and the k-th largest key is found by a radix select,
one bit per counting pass (32 passes, counts summed over the leaves). Scores
equal to that threshold are then cut by position, lowest flat index (in leaf
order) first, by a second radix select over the index bits, so the number of
kept entries is always exactly `k`.

This module is pure JAX and knows nothing of optax or of the OptG transform.
"""

from fractions import Fraction
import math
from typing import Any, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Sparsity = Union[float, int, jax.Array, np.ndarray]

_SIGN_BIT = np.uint32(0x80000000)
_ALL_BITS = np.uint32(0xFFFFFFFF)
_MAX_ENTRIES = 2**31 - 1


def order_preserving_keys(scores: jax.Array) -> jax.Array:
  """Maps float scores to uint32 keys with the same (ascending) order.

  Non-negative floats get their sign bit set; negative floats have all bits
  flipped. `-0.0` is folded onto `+0.0` so that the two zeros tie, as they do
  under float comparison. NaNs map above `+inf` (a NaN score ranks highest).

  Args:
    scores: an array of float32 (or narrower float) scores.

  Returns:
    A uint32 array of the same shape.
  """
  x = jnp.asarray(scores).astype(jnp.float32)
  x = jnp.where(x == 0, jnp.float32(0), x)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits & _SIGN_BIT) != 0
  return jnp.where(negative, bits ^ _ALL_BITS, bits | _SIGN_BIT)


def _is_python_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not (
      isinstance(value, bool))


def _check_sparsity(sparsity) -> None:
  """Raises ValueError for a concrete sparsity outside [0, 1) or NaN."""
  if isinstance(sparsity, jax.core.Tracer):
    return  # A traced sparsity is trusted.
  if isinstance(sparsity, bool):
    raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
  array = np.asarray(sparsity) if not isinstance(sparsity, str) else None
  if array is None or array.shape or array.dtype.kind not in "fiu":
    raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
  value = float(array)
  if math.isnan(value) or not 0.0 <= value < 1.0:
    raise ValueError(f"sparsity must be a number in [0, 1), got {value!r}")


def num_to_keep(sparsity: float, total: int) -> int:
  """Exact `total - round(sparsity * total)` for a concrete sparsity.

  The product is taken in exact rational arithmetic and rounded half to even,
  so the count does not depend on floating-point rounding of the product.

  Args:
    sparsity: a number in [0, 1).
    total: the number of entries.

  Returns:
    The number of entries to keep.
  """
  _check_sparsity(sparsity)
  return total - round(Fraction(float(np.asarray(sparsity))) * total)


def _traced_num_to_keep(sparsity: jax.Array, total: int) -> jax.Array:
  """`total - round(float32(sparsity) * total)`, exact, in uint32 arithmetic.

  A float32 times an integer below 2**31 needs up to 55 bits, more than
  float32 (or float64) holds, so the product is formed exactly from 16-bit
  limbs in two 32-bit words and rounded half to even. Assumes
  `0 <= sparsity < 1`.
  """
  s = jnp.asarray(sparsity, jnp.float32)
  bits = lax.bitcast_convert_type(s, jnp.uint32)
  biased_exp = ((bits >> 23) & 0xFF).astype(jnp.int32)
  mantissa = (bits & np.uint32(0x7FFFFF)) | jnp.where(
      biased_exp > 0, np.uint32(0x800000), np.uint32(0))
  # s = mantissa * 2**-shift, shift >= 24 whenever s < 1.
  shift = 150 - jnp.maximum(biased_exp, 1)

  a1, a0 = mantissa >> 16, mantissa & np.uint32(0xFFFF)
  b1, b0 = np.uint32(total >> 16), np.uint32(total & 0xFFFF)
  low_product = a0 * b0
  middle = a1 * b0 + a0 * b1
  lo = low_product + (middle << 16)
  carry = (lo < low_product).astype(jnp.uint32)
  hi = a1 * b1 + (middle >> 16) + carry  # product = hi * 2**32 + lo < 2**55.

  def shift_right(amount):
    """(hi:lo) >> amount as uint32 (the result fits), for 0 <= amount."""
    amount = amount.astype(jnp.uint32)
    small = (hi << (32 - amount)) | (lo >> amount)
    small = jnp.where(amount == 0, lo, small)
    large = jnp.where(amount >= 64, np.uint32(0),
                      hi >> jnp.minimum(amount - 32, 31))
    return jnp.where(amount < 32, small, large)

  def low_bits_nonzero(amount):
    """Whether (hi:lo) mod 2**amount != 0."""
    amount = amount.astype(jnp.uint32)
    lo_mask = jnp.where(amount >= 32, _ALL_BITS,
                        (np.uint32(1) << jnp.minimum(amount, 31)) - 1)
    hi_mask = jnp.where(amount >= 64, _ALL_BITS,
                        jnp.where(amount <= 32, np.uint32(0),
                                  (np.uint32(1) << jnp.clip(amount - 32, 0, 31))
                                  - 1))
    return ((lo & lo_mask) | (hi & hi_mask)) != 0

  with_half = shift_right(shift - 1)  # floor(product / 2**(shift - 1)).
  quotient = with_half >> 1
  half_bit = (with_half & 1) == 1
  sticky = low_bits_nonzero(shift - 1)
  round_up = half_bit & (sticky | ((quotient & 1) == 1))
  rounded = quotient + round_up.astype(jnp.uint32)
  return jnp.int32(total) - rounded.astype(jnp.int32)


def _count(leaves, predicate) -> jax.Array:
  """Sum over leaves of the number of entries where predicate(i, leaf) holds."""
  total = jnp.int32(0)
  for i, leaf in enumerate(leaves):
    total = total + jnp.sum(predicate(i, leaf), dtype=jnp.int32)
  return total


def topk_masks(scores: PyTree, sparsity: Sparsity) -> PyTree:
  """Exact global top-k masks over a pytree of scores.

  Keeps exactly `k = N - round(sparsity * N)` entries, `N` being the number of
  entries over all leaves: the highest scores first, ties at the threshold
  broken by flat position (lowest index within the leaf order first). The
  k-th largest score is found by a radix select over order-preserving 32-bit
  keys (one counting pass per bit, counts summed across leaves), so the cost
  is linear in `N` and no sort or concatenation happens. Pure and jittable.

  Args:
    scores: a pytree of float arrays (float32, bfloat16 or float16; wider
      floats are compared after rounding to float32). `None` leaves pass
      through as `None`.
    sparsity: the fraction of entries to prune. A concrete number must be in
      [0, 1) (else ValueError); a traced value is trusted to be.

  Returns:
    A pytree of bool arrays with the structure of `scores` (`None` where
    `scores` has `None`), True for kept entries.
  """
  _check_sparsity(sparsity)
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    return scores
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  total = sum(sizes)
  if total > _MAX_ENTRIES:
    raise ValueError(
        f"topk_masks supports at most {_MAX_ENTRIES} scores, got {total}")
  if total == 0:
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), scores)

  if isinstance(sparsity, jax.core.Tracer):
    k = _traced_num_to_keep(sparsity, total)
  else:
    k = jnp.int32(num_to_keep(sparsity, total))

  keys = [order_preserving_keys(leaf).reshape(-1) for leaf in leaves]

  # Radix select: the largest key t with count(key >= t) >= k.
  def threshold_bit(i, t):
    candidate = t | (np.uint32(1) << (31 - i).astype(jnp.uint32))
    count = _count(keys, lambda _, key: key >= candidate)
    return jnp.where(count >= k, candidate, t)

  threshold = lax.fori_loop(0, 32, threshold_bit, jnp.uint32(0))
  num_above = _count(keys, lambda _, key: key > threshold)
  num_ties = _count(keys, lambda _, key: key == threshold)
  ties_to_keep = k - num_above

  offsets = np.cumsum([0] + sizes[:-1])

  def positions(i):
    return lax.iota(jnp.int32, sizes[i]) + jnp.int32(offsets[i])

  # Among the ties, keep those whose global flat position is below a cut:
  # the largest cut with count(tie & position < cut) <= ties_to_keep.
  index_bits = max(total.bit_length(), 1)

  def cut_bit(i, cut):
    candidate = cut | (jnp.int32(1) << (index_bits - 1 - i))
    count = _count(keys, lambda j, key: (key == threshold) &
                   (positions(j) < candidate))
    return jnp.where(count <= ties_to_keep, candidate, cut)

  cut = lax.cond(
      num_ties > ties_to_keep,
      lambda: lax.fori_loop(0, index_bits, cut_bit, jnp.int32(0)),
      lambda: jnp.int32(total))

  masks = [
      ((key > threshold) | ((key == threshold) & (positions(i) < cut)))
      .reshape(np.shape(leaf)) for i, (key, leaf) in enumerate(
          zip(keys, leaves))
  ]
  return jax.tree.unflatten(treedef, masks)
