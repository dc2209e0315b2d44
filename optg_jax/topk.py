"""Exact global top-k masks over a pytree of scores, without sorting.

`topk_masks` keeps the `k = N - round(sparsity * N)` highest scores of a whole
pytree (all leaves together). It never sorts and never concatenates the
leaves (unless asked to, `layout="flat"`): each float32 score is mapped to
an unsigned 32-bit key whose integer order is the float order, and the k-th
largest key is found by counting passes, each counting the keys above a few
candidate thresholds at once (counts summed over the leaves) and narrowing
the bracket around the threshold; `warm_topk_masks` starts from where the
last selection ended. Scores equal to that threshold are then cut by
position, lowest flat index (in leaf order) first, by the same kind of
search over positions, so the number of kept entries is always exactly `k`.
Called outside `jax.jit`, the selection is compiled once per shapes.

With `layout="flat"` (for accelerators) the keys of all leaves are
concatenated first and the search takes a fixed number of passes, a radix
select: each pass reads the next four bits of the threshold's key (eight
passes), then of the tie cut's position, so no loop decides on the device
when to stop and a compiled step holds no branch.

Every pass is an elementwise comparison and a sum over each leaf in its own
shape (no leaf is flattened or gathered), so a leaf sharded over a mesh under
`jax.jit` is counted shard by shard and only the scalar counts are
all-reduced. Inside `jax.shard_map`, `axis_name` names the mesh axis the
scores are sharded over and the counts are `psum`-ed over it, which gives the
global top-k of the whole sharded pytree.

This module is pure JAX and knows nothing of optax or of the OptG transform.
"""

from fractions import Fraction
import functools
import math
from typing import Any, Hashable, NamedTuple, Optional, Tuple, Union

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


class TopKHint(NamedTuple):
  """Where the last selections found their thresholds: a warm start.

  `threshold` and `previous` are the order-preserving keys (see
  `order_preserving_keys`) of the k-th largest score of the last selection
  and of the one before; `selections` counts how many of the two are set
  (0, 1 or 2). A hint only chooses where the search looks first: the masks
  are exactly those of `topk_masks` whatever it holds.
  """
  threshold: jax.Array  # uint32 scalar.
  previous: jax.Array  # uint32 scalar.
  selections: jax.Array  # int32 scalar: 0, 1 or 2.


def empty_hint() -> TopKHint:
  """A hint that knows nothing: the selection starts from the full range."""
  return TopKHint(threshold=jnp.zeros([], jnp.uint32),
                  previous=jnp.zeros([], jnp.uint32),
                  selections=jnp.zeros([], jnp.int32))


# Candidate thresholds counted per pass over the scores: five fit in the
# fields of one uint32 word for every row width (see `_Counter`), so a pass
# reads the scores once; each extra word would cost most of another pass.
_CANDIDATES = 5
# A warm start's first candidates (see `_warm_candidates`): fractions of
# the last move of the threshold, or keys around it when it moved less than
# `_MIN_WARM_SPREAD` keys.
_WARM_FRACTIONS = (0.2, 0.45, 0.7, 1.0, 1.5)
_WARM_AROUND = (-256.0, -64.0, 0.0, 64.0, 256.0)
_MIN_WARM_SPREAD = 256.0
# Interpolated candidates sit at these multiples of the random error of a
# straight-line guess on both sides of it (see `_interpolated_candidates`).
_NEAR, _FAR = 2.0, 16.0
_INTERPOLATE, _UNIFORM = 0, 1


def _row_width(length: int) -> int:
  """The rows a leaf's last axis is cut into for counting (see `_Counter`).

  The largest divisor `w <= 32` of `length` that leaves a multiple of 8 rows
  (so that a last axis sharded over up to 8 devices is cut shard by shard),
  else the largest divisor `w <= 32`.
  """
  divisors = [w for w in range(min(length, 32), 0, -1) if length % w == 0]
  for w in divisors:
    if (length // w) % 8 == 0:
      return w
  return divisors[0]


class _Counter:
  """Counting passes over the keys of a pytree of scores (all leaves).

  Each leaf's last axis is cut into rows of `w <= 32` entries. A pass
  evaluates several predicates per entry, packs their bits into the fields
  of one uint32 word (`w.bit_length()` bits each), sums the words along
  each row (a field cannot overflow) and then the unpacked fields over the
  rows: one read of the keys for several counts, and a reduction that XLA
  fuses with the comparisons. Counts of sharded leaves are `psum`-ed over
  the named axes; replicated leaves are counted once.
  """

  def __init__(self, keys, sharded, names, sizes, global_sizes):
    self.keys = keys
    self.sharded = sharded
    self.names = names
    self.sizes = sizes
    self.total = sum(global_sizes)
    self.offsets = np.cumsum([0] + global_sizes[:-1])
    self.widths = [_row_width(int(np.shape(k)[-1])) if np.ndim(k) else 1
                   for k in keys]
    self.rows = [self._rows(key, w) for key, w in zip(keys, self.widths)]

  @staticmethod
  def _rows(x, w):
    shape = np.shape(x)
    if not shape:
      return jnp.reshape(x, (1, 1))
    return jnp.reshape(x, shape[:-1] + (shape[-1] // w, w))

  def positions(self, i) -> jax.Array:
    """Global flat positions of leaf `i`'s entries, in its row view."""
    return self._rows(_flat_positions(self.keys[i], self._offset(i)),
                      self.widths[i])

  def _combine(self, per_leaf, reduce_sharded, reduce_replicated):
    local = [v for v, s in zip(per_leaf, self.sharded) if s]
    replicated = [v for v, s in zip(per_leaf, self.sharded) if not s]
    parts = []
    if local:
      parts.append(reduce_sharded(functools.reduce(reduce_replicated, local)))
    if replicated:
      parts.append(functools.reduce(reduce_replicated, replicated))
    return functools.reduce(reduce_replicated, parts)

  def count(self, predicates) -> jax.Array:
    """int32[K]: over all entries, how many satisfy each predicate.

    `predicates(i, rows)` gives K bool arrays shaped like `rows`, the keys
    of leaf `i` in its row view.
    """
    per_leaf = []
    for i, rows in enumerate(self.rows):
      bools = predicates(i, rows)
      bits = self.widths[i].bit_length()
      per_word = 32 // bits
      field = np.uint32((1 << bits) - 1)
      counts = []
      for first in range(0, len(bools), per_word):
        group = bools[first:first + per_word]
        word = group[0].astype(jnp.uint32)
        for j, b in enumerate(group[1:], 1):
          word = word | (b.astype(jnp.uint32) << np.uint32(bits * j))
        sums = jnp.sum(word, axis=-1, dtype=jnp.uint32)
        for j in range(len(group)):
          counts.append(jnp.sum(((sums >> np.uint32(bits * j)) & field)
                                .astype(jnp.int32)))
      per_leaf.append(jnp.stack(counts))
    return self._combine(per_leaf, lambda v: lax.psum(v, self.names),
                         jnp.add)

  def count_at_least(self, candidates) -> jax.Array:
    """int32[K]: the number of keys `>= candidates[j]`, for each j."""
    k = candidates.shape[0]
    return self.count(
        lambda _, rows: [rows >= candidates[j] for j in range(k)])

  def extremes(self, lo, hi):
    """The largest and the smallest key in `[lo, hi]` (uint32 scalars)."""
    highest, lowest = [], []
    for rows in self.rows:
      inside = (rows >= lo) & (rows <= hi)
      # Along the rows in uint32, then over them as int32 (the same order
      # after flipping the sign bit): two reductions of different types,
      # which XLA keeps apart, so that the first fuses with the comparison.
      row_max = jnp.max(jnp.where(inside, rows, np.uint32(0)), axis=-1)
      row_min = jnp.min(jnp.where(inside, rows, _ALL_BITS), axis=-1)
      highest.append(_from_signed(jnp.max(_to_signed(row_max))))
      lowest.append(_from_signed(jnp.min(_to_signed(row_min))))
    return (self._combine(highest, lambda v: lax.pmax(v, self.names),
                          jnp.maximum),
            self._combine(lowest, lambda v: lax.pmin(v, self.names),
                          jnp.minimum))

  def masks(self, threshold, cut):
    """Kept: keys above `threshold`, and those equal to it before `cut`."""
    out = []
    for i, key in enumerate(self.keys):
      kept = (key > threshold) | ((key == threshold) & (
          _flat_positions(key, self._offset(i)) < cut))
      out.append(kept)
    return out

  def _offset(self, i):
    """The global flat position of leaf `i`'s first entry (its shard's)."""
    offset = jnp.int32(self.offsets[i])
    if self.sharded[i]:
      offset = offset + lax.axis_index(self.names) * jnp.int32(self.sizes[i])
    return offset


def _to_signed(keys):
  """uint32 keys as int32 of the same order."""
  return lax.bitcast_convert_type(keys ^ _SIGN_BIT, jnp.int32)


def _from_signed(values):
  """The inverse of `_to_signed`."""
  return lax.bitcast_convert_type(values, jnp.uint32) ^ _SIGN_BIT


def _saturating_add(base, delta):
  """`base + delta` (uint32 + int32), clamped to the uint32 range."""
  up = delta.astype(jnp.uint32)
  down = (-delta).astype(jnp.uint32)
  added = jnp.where(up > _ALL_BITS - base, _ALL_BITS, base + up)
  taken = jnp.where(down > base, np.uint32(0), base - down)
  return jnp.where(delta >= 0, added, taken)


def _uniform_candidates(lo, width):
  """`_CANDIDATES` keys splitting `(lo, lo + width]` evenly (width >= 1);
  every key of it when it holds no more than that."""
  parts = np.uint32(_CANDIDATES + 1)
  j = jnp.arange(1, _CANDIDATES + 1, dtype=jnp.uint32)
  spread = (width // parts) * j + ((width % parts) * j) // parts
  each = jnp.minimum(j, width)
  return lo + jnp.where(width <= np.uint32(_CANDIDATES), each,
                        jnp.maximum(spread, 1))


def _interpolated_candidates(lo, width, n_lo, n_hi, k):
  """Candidates around where the counts say the threshold is.

  The count falls from `n_lo` at `lo` to `n_hi` just above `lo + width`;
  where a straight line between them crosses `k` is the guess. The others
  sit at `_NEAR` and `_FAR` times the random error of such a guess,
  `1 / sqrt(keys between)` of the bracket, on both sides (at most an eighth
  of the bracket). A guess further off makes a poor pass, and the next one
  splits the bracket evenly.
  """
  span = width.astype(jnp.float32) + 1.0
  between = (n_lo - n_hi).astype(jnp.float32)
  fraction = ((n_lo - k).astype(jnp.float32) + 0.5) / between
  error = lax.rsqrt(between)
  steps = jnp.minimum(jnp.stack([_NEAR * error, _FAR * error]), 0.125)
  fractions = jnp.concatenate([fraction[None], fraction + steps,
                               fraction - steps])
  offsets = jnp.clip(fractions * span, 1.0, width.astype(jnp.float32))
  return lo + jnp.minimum(offsets.astype(jnp.uint32), width)


def _warm_candidates(hint):
  """The first candidates of a warm start, from the last two thresholds.

  After a move of the threshold, at fractions of that move onwards (the
  threshold of a training run tends to keep moving the same way, more
  slowly); else around the last threshold, at 64 and 256 keys either side.
  """
  move = lax.bitcast_convert_type(hint.threshold - hint.previous, jnp.int32)
  move = jnp.where(hint.selections >= 2, move, 0).astype(jnp.float32)
  onwards = move * jnp.asarray(_WARM_FRACTIONS, jnp.float32)
  around = jnp.asarray(_WARM_AROUND, jnp.float32)
  offsets = jnp.where(jnp.abs(move) >= _MIN_WARM_SPREAD, onwards, around)
  offsets = jnp.clip(offsets, -2.0**31, 2.0**31 - 256).astype(jnp.int32)
  return _saturating_add(hint.threshold, offsets)


class _Search(NamedTuple):
  """The bracket of a threshold search: the threshold `t` (the largest key
  with at least `k` keys `>= t`) is in `[lo, hi]`; `n_lo` keys are `>= lo`
  (at least k) and `n_hi` keys `> hi` (fewer than k)."""
  lo: jax.Array
  hi: jax.Array
  n_lo: jax.Array
  n_hi: jax.Array
  mode: jax.Array  # _INTERPOLATE or _UNIFORM: how the next pass guesses.
  found: jax.Array  # The threshold is known: lo == hi, counts exact.
  passes: jax.Array  # Passes over the scores so far.


def _narrowed(search: _Search, candidates, counts, k) -> _Search:
  """The bracket after counting the keys `>= candidates`."""
  enough = counts >= k
  lo = jnp.maximum(search.lo, jnp.max(jnp.where(enough, candidates, 0)))
  n_lo = jnp.minimum(search.n_lo,
                     jnp.min(jnp.where(enough, counts, search.n_lo)))
  hi = jnp.minimum(search.hi, jnp.min(jnp.where(enough, _ALL_BITS,
                                                candidates - 1)))
  n_hi = jnp.maximum(search.n_hi, jnp.max(jnp.where(enough, 0, counts)))
  # Interpolate while it pays: a pass that did not cut the bracket by half
  # the factor of an even split is followed by an even split.
  old, new = search.hi - search.lo, hi - lo
  poor = new.astype(jnp.float32) * ((_CANDIDATES + 1) / 2) > (
      old.astype(jnp.float32))
  mode = jnp.where(poor, _UNIFORM, _INTERPOLATE)
  return _Search(lo, hi, n_lo, n_hi, mode, lo == hi, search.passes + 1)


def _finished(search: _Search, counter: _Counter, k) -> _Search:
  """Ends a bracket holding one or two keys with one pass: its largest key
  is the threshold when exactly one more key must be kept; its smallest
  when all of them must."""
  highest, lowest = counter.extremes(search.lo, search.hi)
  between = search.n_lo - search.n_hi
  top = (k - search.n_hi == 1) | (highest == lowest)
  threshold = jnp.where(top, highest, lowest)
  n_lo = jnp.where(top, search.n_hi + jnp.where(highest == lowest, between, 1),
                   search.n_lo)
  n_hi = jnp.where(top, search.n_hi, search.n_hi + 1)
  return _Search(threshold, threshold, n_lo, n_hi, search.mode,
                 jnp.ones([], bool), search.passes + 1)


def _full_bracket(counter: _Counter, k) -> _Search:
  """The search before any pass: every key in the bracket (shaped like
  `k`, which may vary over a mesh axis)."""
  n = jnp.int32(counter.total)
  search = _Search(lo=jnp.zeros([], jnp.uint32),
                   hi=jnp.full([], _ALL_BITS, jnp.uint32),
                   n_lo=n, n_hi=jnp.zeros([], jnp.int32),
                   mode=jnp.int32(_UNIFORM), found=jnp.zeros([], bool),
                   passes=jnp.zeros([], jnp.int32))
  return jax.tree.map(lambda x: x + jnp.zeros_like(k, x.dtype), search)


def _threshold_search(counter: _Counter, k, hint: Optional[TopKHint]
                      ) -> _Search:
  """The exact threshold: counting passes until the bracket is one key."""
  search = _full_bracket(counter, k)

  if hint is not None:
    def warm(s):
      candidates = _warm_candidates(hint)
      s = _narrowed(s, candidates, counter.count_at_least(candidates), k)
      # Even when the threshold left the candidates' span, the counts at
      # its edge place it well in the open side: interpolate next.
      return s._replace(mode=jnp.int32(_INTERPOLATE) + jnp.zeros_like(s.mode))
    search = lax.cond(hint.selections > 0, warm, lambda s: s, search)

  def keep_going(s):
    return ~s.found & (s.lo < s.hi)

  def one_pass(s):
    def count_pass(s):
      width = s.hi - s.lo
      candidates = jnp.where(
          (s.mode == _UNIFORM) | (width <= np.uint32(_CANDIDATES)),
          _uniform_candidates(s.lo, width),
          _interpolated_candidates(s.lo, width, s.n_lo, s.n_hi, k))
      candidates = jnp.clip(candidates, s.lo + 1, s.hi)
      return _narrowed(s, candidates, counter.count_at_least(candidates), k)
    return lax.cond(s.n_lo - s.n_hi <= 2, lambda s: _finished(s, counter, k),
                    count_pass, s)

  return lax.while_loop(keep_going, one_pass, search)


def _tie_cut(counter: _Counter, threshold, ties_to_keep):
  """The largest flat-position cut keeping at most `ties_to_keep` of the
  keys equal to `threshold` (those before it), by counting passes."""
  total = jnp.int32(counter.total)

  def keep_going(carry):
    lo, hi = carry
    return hi - lo > 1

  def one_pass(carry):
    lo, hi = carry
    width = (hi - lo).astype(jnp.uint32)
    candidates = jnp.clip(_uniform_candidates(lo.astype(jnp.uint32), width)
                          .astype(jnp.int32), lo + 1, hi - 1)
    counts = counter.count(lambda i, rows: [
        (rows == threshold) & (counter.positions(i) < candidates[j])
        for j in range(_CANDIDATES)])
    few = counts <= ties_to_keep
    return (jnp.maximum(lo, jnp.max(jnp.where(few, candidates, 0))),
            jnp.minimum(hi, jnp.min(jnp.where(few, total, candidates))))

  lo, _ = lax.while_loop(keep_going, one_pass,
                         (jnp.zeros_like(ties_to_keep),
                          jnp.full_like(ties_to_keep, total)))
  return lo


# The fixed-pass selection (`layout="flat"`) reads this many bits of the
# keys (and of the tie positions) per pass: `2**_DIGIT_BITS - 1` candidates,
# three words of `_Counter` fields, eight passes for a 32-bit key.
_DIGIT_BITS = 4


def _digit_widths(bits: int):
  """`bits` cut into digits of `_DIGIT_BITS` (the first may be narrower)."""
  widths = [_DIGIT_BITS] * (bits // _DIGIT_BITS)
  if bits % _DIGIT_BITS:
    widths.insert(0, bits % _DIGIT_BITS)
  return widths


def _digit_candidates(lo, rest: int, width: int, dtype):
  """`lo + j * 2**rest` for `j = 1, ..., 2**width - 1`: the values that
  split `[lo, lo + 2**(rest + width))` by the next digit."""
  j = np.arange(1, 2**width, dtype=np.uint64) << np.uint64(rest)
  return lo + jnp.asarray(j.astype(dtype))


def _fixed_threshold_search(counter: _Counter, k) -> _Search:
  """The exact threshold by radix digits: a pass per digit of the key.

  Each pass counts the keys at or above the candidates that split the
  bracket by the next `_DIGIT_BITS` bits and keeps the part the threshold
  is in (`_narrowed`), so after the last digit the bracket is one key. The
  passes are fixed in number (eight), whatever the scores: no loop decides
  on the device when to stop.
  """
  search = _full_bracket(counter, k)
  rest = 32
  for width in _digit_widths(32):
    rest -= width
    candidates = _digit_candidates(search.lo, rest, width, np.uint32)
    search = _narrowed(search, candidates, counter.count_at_least(candidates),
                       k)
  return search._replace(found=jnp.ones_like(search.found))


def _fixed_tie_cut(counter: _Counter, threshold, ties_to_keep):
  """`_tie_cut` by radix digits of the positions: a pass per digit.

  The largest cut `c < 2**bits` (`bits` enough for every position) with at
  most `ties_to_keep` keys equal to `threshold` before it. When no cut is
  needed it is `2**bits - 1`, past every position, so it is always used.
  """
  bits = int(counter.total).bit_length()
  lo = jnp.zeros_like(ties_to_keep)
  rest = bits
  for width in _digit_widths(bits):
    rest -= width
    candidates = _digit_candidates(lo, rest, width, np.int32)
    counts = counter.count(lambda i, rows, c=candidates: [
        (rows == threshold) & (counter.positions(i) < c[j])
        for j in range(c.shape[0])])
    few = counts <= ties_to_keep
    lo = jnp.maximum(lo, jnp.max(jnp.where(few, candidates, 0)))
  return lo


def fixed_passes(total: int) -> int:
  """The passes of the fixed-pass selection of `total` scores: the key's
  digits, then the positions' (the masks' own pass not counted)."""
  return len(_digit_widths(32)) + len(_digit_widths(int(total).bit_length()))


LAYOUTS = ("leaves", "flat")


def check_layout(layout, axis_name) -> None:
  """Raises ValueError for a `layout` not in LAYOUTS or used with
  `axis_name`."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if layout == "flat" and axis_name is not None:
    raise ValueError("layout='flat' is not supported with axis_name (each "
                     "shard_map shard would be concatenated on its own)")


def _select(scores, sparsity, axis_name, hint, layout="leaves"):
  """The masks, the hint for the next selection, and the passes taken."""
  _check_sparsity(sparsity)
  check_layout(layout, axis_name)
  leaves = jax.tree.leaves(scores)
  if not leaves or axis_name is not None or any(
      isinstance(x, jax.core.Tracer)
      for x in jax.tree.leaves((scores, sparsity, hint))):
    return _select_traced(scores, sparsity, axis_name, hint, layout)
  # Called op by op: one compiled selection per shapes and layout, instead
  # of its loops being traced and compiled anew at every call. The count is
  # exact on the host; the traced selection checks the size.
  total = sum(int(np.prod(np.shape(leaf))) for leaf in leaves)
  k = jnp.int32(num_to_keep(sparsity, min(total, _MAX_ENTRIES)))
  return _select_compiled(scores, k, hint, layout)


@functools.partial(jax.jit, static_argnums=3)
def _select_compiled(scores, k, hint, layout):
  return _select_traced(scores, None, None, hint, layout, k=k)


def _select_traced(scores, sparsity, axis_name, hint, layout, k=None):
  """`_select` as traced; `k`, when given, replaces the count of `sparsity`."""
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    return scores, hint, jnp.zeros([], jnp.int32)
  sharded, shards, names = _sharded_leaves(leaves, axis_name)
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  global_sizes = [size * (shards if s else 1)
                  for size, s in zip(sizes, sharded)]
  total = sum(global_sizes)
  if total > _MAX_ENTRIES:
    raise ValueError(
        f"topk_masks supports at most {_MAX_ENTRIES} scores, got {total}")
  if total == 0:
    return (jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), scores),
            hint, jnp.zeros([], jnp.int32))

  if k is None and isinstance(sparsity, jax.core.Tracer):
    k = _traced_num_to_keep(sparsity, total)
  elif k is None:
    k = jnp.int32(num_to_keep(sparsity, total))

  keys = [order_preserving_keys(leaf) for leaf in leaves]
  fixed = layout == "flat"
  flat = fixed and len(leaves) > 1
  if flat:  # One vector in leaf order: the same flat positions.
    keys = [jnp.concatenate([key.reshape(-1) for key in keys])]
    counter = _Counter(keys, [False], names, [total], [total])
  else:
    counter = _Counter(keys, sharded, names, sizes, global_sizes)
  if fixed:  # Passes fixed in number: no loop, no branch.
    search = _fixed_threshold_search(counter, k)
    cut = _fixed_tie_cut(counter, search.lo, k - search.n_hi)
    passes = jnp.int32(fixed_passes(total))
  else:
    search = _threshold_search(counter, k, hint)
    ties_to_keep = k - search.n_hi
    cut = lax.cond((search.n_lo - search.n_hi > ties_to_keep) & (k > 0),
                   lambda: _tie_cut(counter, search.lo, ties_to_keep),
                   lambda: jnp.full_like(k, total))
    passes = search.passes
  threshold = search.lo
  # k == 0 has no threshold: no key is "at least k-th largest".
  masks = [m & (k > 0) for m in counter.masks(threshold, cut)]
  if flat:
    ends = np.cumsum(sizes)[:-1].tolist()
    masks = [part.reshape(np.shape(leaf)) for part, leaf in
             zip(jnp.split(masks[0], ends), leaves)]
  # k == 0 keeps nothing; its bracket ends at the largest key, which is
  # not a threshold to start the next search from.
  if hint is not None:
    hint = TopKHint(
        threshold=jnp.where(k > 0, threshold, hint.threshold),
        previous=jnp.where(k > 0, hint.threshold, hint.previous),
        selections=jnp.where(k > 0, jnp.minimum(hint.selections + 1, 2),
                             hint.selections).astype(jnp.int32))
  return jax.tree.unflatten(treedef, masks), hint, passes


def topk_masks(scores: PyTree, sparsity: Sparsity,
               axis_name: Optional[AxisName] = None,
               layout: str = "leaves") -> PyTree:
  """Exact global top-k masks over a pytree of scores.

  Keeps exactly `k = N - round(sparsity * N)` entries, `N` being the number of
  entries over all leaves: the highest scores first, ties at the threshold
  broken by flat position (lowest index within the leaf order first). The
  k-th largest score is found by counting passes over order-preserving
  32-bit keys: each pass counts the keys above a few candidate thresholds
  at once and narrows the bracket around the threshold (evenly, or where
  the counts say it lies), so the cost is linear in `N` and no sort or
  concatenation happens. Pure and jittable. `warm_topk_masks` gives the
  same masks starting from where the last selection ended.

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
    layout: "leaves" (the default) counts each leaf in its own shape, as
      described above. "flat", for accelerators, concatenates the keys of
      all leaves into one vector first (one copy of the scores), so that
      each pass is a few large operations instead of a few per leaf (on a
      GPU a pass over ResNet-50's 54 kernels costs more in kernel launches
      than in reading the scores), and takes a fixed number of passes
      (`fixed_passes`: a radix select of the key, four bits a pass, then
      of the tie cut's position), with no loop or branch on the device. On
      the CPU it is slower (more passes than the search). The masks are the
      same. Under `jax.jit` it gathers sharded scores (use "leaves"); not
      supported with `axis_name`.

  Returns:
    A pytree of bool arrays with the structure of `scores` (`None` where
    `scores` has `None`), True for kept entries.
  """
  return _select(scores, sparsity, axis_name, None, layout)[0]


def warm_topk_masks(scores: PyTree, sparsity: Sparsity, hint: TopKHint,
                    axis_name: Optional[AxisName] = None,
                    layout: str = "leaves") -> Tuple[PyTree, TopKHint]:
  """`topk_masks`, starting the search from where the last ones ended.

  Between two refreshes of a training run the scores, and so the
  threshold, move little. The first counting pass looks around the last
  threshold moved by its last move (at several distances at once), which
  leaves a narrow bracket, and the next passes interpolate within it; when
  the scores moved a lot, the search widens and goes on as the cold one
  does. The masks are exactly those of `topk_masks(scores, sparsity,
  axis_name)` (same count, same tie rule) whatever the hint holds. With
  `layout="flat"` the passes are fixed in number and the hint saves none;
  it is still updated, so that the layouts can be switched.

  Args:
    scores: as for `topk_masks`.
    sparsity: as for `topk_masks`.
    hint: the `TopKHint` this function returned last time for these
      scores, or `empty_hint()` at the start.
    axis_name: as for `topk_masks`.
    layout: as for `topk_masks`.

  Returns:
    `(masks, hint)`: the masks of `topk_masks` and the hint for the next
    call.
  """
  masks, hint, _ = _select(scores, sparsity, axis_name, hint, layout)
  return masks, hint


def selection_passes(scores: PyTree, sparsity: Sparsity,
                     hint: Optional[TopKHint] = None,
                     axis_name: Optional[AxisName] = None,
                     layout: str = "leaves") -> jax.Array:
  """How many passes over the scores the threshold search takes (int32):
  cold without `hint`, warm with it. For benchmarks and tests."""
  return _select(scores, sparsity, axis_name, hint, layout)[2]
