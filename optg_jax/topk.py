"""Exact global top-k masks over a pytree of scores, without sorting.

`topk_masks` keeps the `k = N - round(sparsity * N)` highest scores of a whole
pytree (all leaves together). It never sorts and never concatenates the
leaves: each float32 score is mapped to an unsigned 32-bit key whose integer
order is the float order, and the k-th largest key is found by a radix select,
one bit per counting pass (32 passes, counts summed over the leaves). Scores
equal to that threshold are then cut by position, lowest flat index (in leaf
order) first, by a second radix select over the index bits, so the number of
kept entries is always exactly `k`.

Every pass is an elementwise comparison and a sum over each leaf in its own
shape (no leaf is flattened or gathered), so a leaf sharded over a mesh under
`jax.jit` is counted shard by shard and only the scalar counts are
all-reduced. Inside `jax.shard_map`, `axis_name` names the mesh axis the
scores are sharded over and the counts are `psum`-ed over it, which gives the
global top-k of the whole sharded pytree.

This module is pure JAX and knows nothing of optax or of the OptG transform.
"""

from fractions import Fraction
import math
from typing import Any, Hashable, Optional, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Sparsity = Union[float, int, jax.Array, np.ndarray]
AxisName = Union[Hashable, Tuple[Hashable, ...]]

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


def _varying_axes(x) -> frozenset:
  """The manual mesh axes `x` varies over inside `jax.shard_map`.

  Empty outside `shard_map`, and for every value under `check_vma=False`.
  """
  manual_axis_type = getattr(jax.typeof(x), "mat", None)
  return frozenset(getattr(manual_axis_type, "varying", ()))


def _sharded_leaves(leaves, axis_name):
  """Which leaves are sharded, the number of shards and the axis names.

  Without `axis_name` no leaf is sharded, and a leaf that varies over a mesh
  axis (a shard of an array inside `shard_map`) is refused. With it, a leaf
  is sharded if it varies over the named axes and replicated (counted once)
  if it varies over none of them; under `check_vma=False` nothing varies, and
  every leaf is taken to be sharded.
  """
  if axis_name is None:
    for leaf in leaves:
      if _varying_axes(leaf):
        raise ValueError(
            "topk_masks got scores that vary over mesh axes "
            f"{tuple(sorted(map(str, _varying_axes(leaf))))} inside shard_map, "
            "which would give a per-shard top-k; pass axis_name=<the axis the "
            "scores are sharded over> for the global top-k")
    return [False] * len(leaves), 1, None
  names = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (
      axis_name,)
  try:
    shards = lax.axis_size(names)
    checks_vma = set(names) <= _varying_axes(lax.axis_index(names))
  except NameError as error:
    raise ValueError(
        f"topk_masks got axis_name={axis_name!r}, which is not a mesh axis in "
        "scope; call it inside jax.shard_map over that axis") from error
  if not checks_vma:
    return [True] * len(leaves), shards, names
  sharded = []
  for leaf in leaves:
    varying = _varying_axes(leaf)
    if varying and varying != set(names):
      raise ValueError(
          f"topk_masks got axis_name={axis_name!r} but scores that vary over "
          f"mesh axes {tuple(sorted(map(str, varying)))}; axis_name must name "
          "exactly the axes the scores are sharded over")
    sharded.append(bool(varying))
  return sharded, shards, names


def _flat_positions(like: jax.Array, offset) -> jax.Array:
  """`offset` plus the row-major flat index of every entry of `like`.

  Built from one iota per axis, placed like `like` (a flat iota reshaped
  could not be split the way a leaf sharded on a later axis is), so that it
  is computed shard by shard.
  """
  shape = np.shape(like)
  sharding = jax.typeof(like).sharding
  positions = jnp.broadcast_to(offset, shape).astype(jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    positions = positions + lax.broadcasted_iota(
        jnp.int32, shape, axis, out_sharding=sharding) * jnp.int32(stride)
    stride *= shape[axis]
  return positions


def topk_masks(scores: PyTree, sparsity: Sparsity,
               axis_name: Optional[AxisName] = None) -> PyTree:
  """Exact global top-k masks over a pytree of scores.

  Keeps exactly `k = N - round(sparsity * N)` entries, `N` being the number of
  entries over all leaves: the highest scores first, ties at the threshold
  broken by flat position (lowest index within the leaf order first). The
  k-th largest score is found by a radix select over order-preserving 32-bit
  keys (one counting pass per bit, counts summed across leaves), so the cost
  is linear in `N` and no sort or concatenation happens. Pure and jittable.

  Under `jax.jit`, scores sharded over a mesh are counted shard by shard
  (each pass all-reduces scalar counts; no leaf is gathered onto one device)
  and the masks come out sharded like the scores, identical to the unsharded
  result.

  Inside `jax.shard_map`, each call sees only its shards of the scores. Pass
  the mesh axis they are sharded over as `axis_name`: the counts are summed
  over it, so `N` and `k` are those of the whole sharded pytree and the
  global count is exactly `k`. A leaf that does not vary over `axis_name`
  (replicated) is counted once. The tie-break order is then: leaf order,
  then the shard's index along `axis_name`, then the flat position within
  the shard. That is the global row-major order for a leaf sharded on its
  first axis; for one sharded on another axis (a column-sharded kernel) it
  differs, so the masks equal the unsharded ones except for which scores
  equal to the threshold are kept. Under `shard_map(..., check_vma=False)`
  every leaf is taken to be sharded over `axis_name`, and scores sharded
  without `axis_name` cannot be told from replicated ones: each shard would
  get its own top-k. With `check_vma=True` (the default) that case is a
  ValueError.

  Args:
    scores: a pytree of float arrays (float32, bfloat16 or float16; wider
      floats are compared after rounding to float32). `None` leaves pass
      through as `None`.
    sparsity: the fraction of entries to prune. A concrete number must be in
      [0, 1) (else ValueError); a traced value is trusted to be.
    axis_name: inside `jax.shard_map`, the mesh axis name (or tuple of
      names) that the scores are sharded over; None (the default) elsewhere.

  Returns:
    A pytree of bool arrays with the structure of `scores` (`None` where
    `scores` has `None`), True for kept entries.
  """
  _check_sparsity(sparsity)
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    return scores
  sharded, shards, names = _sharded_leaves(leaves, axis_name)
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  global_sizes = [size * (shards if s else 1)
                  for size, s in zip(sizes, sharded)]
  total = sum(global_sizes)
  if total > _MAX_ENTRIES:
    raise ValueError(
        f"topk_masks supports at most {_MAX_ENTRIES} scores, got {total}")
  if total == 0:
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), scores)

  if isinstance(sparsity, jax.core.Tracer):
    k = _traced_num_to_keep(sparsity, total)
  else:
    k = jnp.int32(num_to_keep(sparsity, total))

  keys = [order_preserving_keys(leaf) for leaf in leaves]

  def count(predicate):
    """Entries over all leaves (all shards) where predicate(i, key) holds."""
    local, replicated = jnp.int32(0), jnp.int32(0)
    for i, key in enumerate(keys):
      n = jnp.sum(predicate(i, key), dtype=jnp.int32)
      if sharded[i]:
        local = local + n
      else:
        replicated = replicated + n
    if any(sharded):
      return lax.psum(local, names) + replicated
    return replicated

  # Radix select: the largest key t with count(key >= t) >= k. The carries
  # start typed like `k` so that they match the loop outputs in shard_map.
  def threshold_bit(i, t):
    candidate = t | (np.uint32(1) << (31 - i).astype(jnp.uint32))
    n = count(lambda _, key: key >= candidate)
    return jnp.where(n >= k, candidate, t)

  threshold = lax.fori_loop(0, 32, threshold_bit,
                            jnp.zeros_like(k, jnp.uint32))
  num_above = count(lambda _, key: key > threshold)
  num_ties = count(lambda _, key: key == threshold)
  ties_to_keep = k - num_above

  offsets = np.cumsum([0] + global_sizes[:-1])

  def positions(i):
    offset = jnp.int32(offsets[i])
    if sharded[i]:
      offset = offset + lax.axis_index(names) * jnp.int32(sizes[i])
    return _flat_positions(keys[i], offset)

  # Among the ties, keep those whose global flat position is below a cut:
  # the largest cut with count(tie & position < cut) <= ties_to_keep.
  index_bits = max(total.bit_length(), 1)

  def cut_bit(i, cut):
    candidate = cut | (jnp.int32(1) << (index_bits - 1 - i))
    n = count(lambda j, key: (key == threshold) & (positions(j) < candidate))
    return jnp.where(n <= ties_to_keep, candidate, cut)

  cut = lax.cond(
      num_ties > ties_to_keep,
      lambda: lax.fori_loop(0, index_bits, cut_bit, jnp.zeros_like(k)),
      lambda: jnp.full_like(k, total))

  masks = [(key > threshold) | ((key == threshold) & (positions(i) < cut))
           for i, key in enumerate(keys)]
  return jax.tree.unflatten(treedef, masks)
