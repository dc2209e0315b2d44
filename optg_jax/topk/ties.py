"""The tie cut: which keys equal to the threshold are kept.

The keys above the threshold are fewer than `k`; of those equal to it the
ones at the lowest flat positions (in leaf order) make up the rest, so
exactly `k` are kept. The cut is the largest flat position with at most
that many ties before it, found by counting passes over positions: by even
splits until the range is one position (`tie_cut`), or by a fixed number of
radix digits (`fixed_tie_cut`).
"""

from jax import lax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.bracket import uniform_candidates
from optg_jax.topk.counting import Counter
from optg_jax.topk.fixed import digit_candidates
from optg_jax.topk.fixed import digit_widths


def _ties_before(counter: Counter, threshold, candidates):
  """int32[K]: the keys equal to `threshold` at flat positions below
  `candidates[j]`, for each j."""
  return counter.count(lambda i, rows: [
      (rows == threshold) & (counter.positions(i) < candidates[j])
      for j in range(candidates.shape[0])])


def tie_cut(counter: Counter, threshold, ties_to_keep):
  """The largest flat-position cut keeping at most `ties_to_keep` of the
  keys equal to `threshold` (those before it), by counting passes."""
  total = jnp.int32(counter.total)

  def keep_going(carry):
    lo, hi = carry
    return hi - lo > 1

  def one_pass(carry):
    lo, hi = carry
    width = (hi - lo).astype(jnp.uint32)
    candidates = jnp.clip(uniform_candidates(lo.astype(jnp.uint32), width)
                          .astype(jnp.int32), lo + 1, hi - 1)
    counts = _ties_before(counter, threshold, candidates)
    few = counts <= ties_to_keep
    return (jnp.maximum(lo, jnp.max(jnp.where(few, candidates, 0))),
            jnp.minimum(hi, jnp.min(jnp.where(few, total, candidates))))

  lo, _ = lax.while_loop(keep_going, one_pass,
                         (jnp.zeros_like(ties_to_keep),
                          jnp.full_like(ties_to_keep, total)))
  return lo


def fixed_tie_cut(counter: Counter, threshold, ties_to_keep):
  """`tie_cut` by radix digits of the positions: a pass per digit.

  The largest cut `c < 2**bits` (`bits` enough for every position) with at
  most `ties_to_keep` keys equal to `threshold` before it. When no cut is
  needed it is `2**bits - 1`, past every position, so it is always used.
  """
  bits = int(counter.total).bit_length()
  lo = jnp.zeros_like(ties_to_keep)
  rest = bits
  for width in digit_widths(bits):
    rest -= width
    candidates = digit_candidates(lo, rest, width, np.int32)
    counts = _ties_before(counter, threshold, candidates)
    few = counts <= ties_to_keep
    lo = jnp.maximum(lo, jnp.max(jnp.where(few, candidates, 0)))
  return lo
