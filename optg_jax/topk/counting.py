"""Counting passes: how many keys of a pytree satisfy a few predicates.

`Counter` holds the keys of every leaf in a row view and answers, in one
read of the keys, how many satisfy each of several predicates (their bits
packed into the fields of one uint32 word), summed over all leaves and, for
leaves sharded inside `jax.shard_map`, `psum`-ed over the mesh. Every search
of the threshold and of the tie cut is a sequence of such passes.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.keys import ALL_BITS
from optg_jax.topk.keys import from_signed
from optg_jax.topk.keys import to_signed


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


def _row_width(length: int) -> int:
  """The rows a leaf's last axis is cut into for counting (see `Counter`).

  The largest divisor `w <= 32` of `length` that leaves a multiple of 8 rows
  (so that a last axis sharded over up to 8 devices is cut shard by shard),
  else the largest divisor `w <= 32`.
  """
  divisors = [w for w in range(min(length, 32), 0, -1) if length % w == 0]
  for w in divisors:
    if (length // w) % 8 == 0:
      return w
  return divisors[0]


class Counter:
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
      row_min = jnp.min(jnp.where(inside, rows, ALL_BITS), axis=-1)
      highest.append(from_signed(jnp.max(to_signed(row_max))))
      lowest.append(from_signed(jnp.min(to_signed(row_min))))
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
