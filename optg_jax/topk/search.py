"""The adaptive threshold search (`layout="leaves"`), cold or warm.

Each counting pass counts the keys at or above `CANDIDATES` candidates and
narrows the bracket: evenly, or around where a straight line through the
counts at the bracket's ends says the threshold is (while that pays). A
bracket of one or two keys is ended by one pass over its extremes. A warm
start (`TopKHint`) places the first candidates from the last two
thresholds. The loop ends on the device when the bracket is one key.
"""

from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.bracket import CANDIDATES
from optg_jax.topk.bracket import full_bracket
from optg_jax.topk.bracket import INTERPOLATE
from optg_jax.topk.bracket import narrowed
from optg_jax.topk.bracket import Search
from optg_jax.topk.bracket import UNIFORM
from optg_jax.topk.bracket import uniform_candidates
from optg_jax.topk.counting import Counter
from optg_jax.topk.keys import ALL_BITS

# A warm start's first candidates (see `_warm_candidates`): fractions of
# the last move of the threshold, or keys around it when it moved less than
# `_MIN_WARM_SPREAD` keys.
_WARM_FRACTIONS = (0.2, 0.45, 0.7, 1.0, 1.5)
_WARM_AROUND = (-256.0, -64.0, 0.0, 64.0, 256.0)
_MIN_WARM_SPREAD = 256.0
# Interpolated candidates sit at these multiples of the random error of a
# straight-line guess on both sides of it (see `_interpolated_candidates`).
_NEAR, _FAR = 2.0, 16.0


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


def _saturating_add(base, delta):
  """`base + delta` (uint32 + int32), clamped to the uint32 range."""
  up = delta.astype(jnp.uint32)
  down = (-delta).astype(jnp.uint32)
  added = jnp.where(up > ALL_BITS - base, ALL_BITS, base + up)
  taken = jnp.where(down > base, np.uint32(0), base - down)
  return jnp.where(delta >= 0, added, taken)


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


def _finished(search: Search, counter: Counter, k) -> Search:
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
  return Search(threshold, threshold, n_lo, n_hi, search.mode,
                jnp.ones([], bool), search.passes + 1)


def threshold_search(counter: Counter, k, hint: Optional[TopKHint]
                     ) -> Search:
  """The exact threshold: counting passes until the bracket is one key."""
  search = full_bracket(counter, k)

  if hint is not None:
    def warm(s):
      candidates = _warm_candidates(hint)
      s = narrowed(s, candidates, counter.count_at_least(candidates), k)
      # Even when the threshold left the candidates' span, the counts at
      # its edge place it well in the open side: interpolate next.
      return s._replace(mode=jnp.int32(INTERPOLATE) + jnp.zeros_like(s.mode))
    search = lax.cond(hint.selections > 0, warm, lambda s: s, search)

  def keep_going(s):
    return ~s.found & (s.lo < s.hi)

  def one_pass(s):
    def count_pass(s):
      width = s.hi - s.lo
      candidates = jnp.where(
          (s.mode == UNIFORM) | (width <= np.uint32(CANDIDATES)),
          uniform_candidates(s.lo, width),
          _interpolated_candidates(s.lo, width, s.n_lo, s.n_hi, k))
      candidates = jnp.clip(candidates, s.lo + 1, s.hi)
      return narrowed(s, candidates, counter.count_at_least(candidates), k)
    return lax.cond(s.n_lo - s.n_hi <= 2, lambda s: _finished(s, counter, k),
                    count_pass, s)

  return lax.while_loop(keep_going, one_pass, search)
