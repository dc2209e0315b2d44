"""The bracket around the threshold, which every counting pass narrows.

The threshold is the largest key `t` with at least `k` keys `>= t`. A
search holds a bracket `[lo, hi]` known to contain it (`Search`), starts
from every key (`full_bracket`), and after each pass keeps the part the
counts place it in (`narrowed`). The adaptive search (`search.py`) and the
fixed-pass radix select (`fixed.py`) differ only in the candidates they
count.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.counting import Counter
from optg_jax.topk.keys import ALL_BITS

# Candidate thresholds counted per pass over the scores: five fit in the
# fields of one uint32 word for every row width (see `Counter`), so a pass
# reads the scores once; each extra word would cost most of another pass.
CANDIDATES = 5
# How the next pass of the adaptive search guesses (`Search.mode`).
INTERPOLATE, UNIFORM = 0, 1


class Search(NamedTuple):
  """The bracket of a threshold search: the threshold `t` (the largest key
  with at least `k` keys `>= t`) is in `[lo, hi]`; `n_lo` keys are `>= lo`
  (at least k) and `n_hi` keys `> hi` (fewer than k)."""
  lo: jax.Array
  hi: jax.Array
  n_lo: jax.Array
  n_hi: jax.Array
  mode: jax.Array  # INTERPOLATE or UNIFORM: how the next pass guesses.
  found: jax.Array  # The threshold is known: lo == hi, counts exact.
  passes: jax.Array  # Passes over the scores so far.


def full_bracket(counter: Counter, k) -> Search:
  """The search before any pass: every key in the bracket (shaped like
  `k`, which may vary over a mesh axis)."""
  n = jnp.int32(counter.total)
  search = Search(lo=jnp.zeros([], jnp.uint32),
                  hi=jnp.full([], ALL_BITS, jnp.uint32),
                  n_lo=n, n_hi=jnp.zeros([], jnp.int32),
                  mode=jnp.int32(UNIFORM), found=jnp.zeros([], bool),
                  passes=jnp.zeros([], jnp.int32))
  return jax.tree.map(lambda x: x + jnp.zeros_like(k, x.dtype), search)


def narrowed(search: Search, candidates, counts, k) -> Search:
  """The bracket after counting the keys `>= candidates`."""
  enough = counts >= k
  lo = jnp.maximum(search.lo, jnp.max(jnp.where(enough, candidates, 0)))
  n_lo = jnp.minimum(search.n_lo,
                     jnp.min(jnp.where(enough, counts, search.n_lo)))
  hi = jnp.minimum(search.hi, jnp.min(jnp.where(enough, ALL_BITS,
                                                candidates - 1)))
  n_hi = jnp.maximum(search.n_hi, jnp.max(jnp.where(enough, 0, counts)))
  # Interpolate while it pays: a pass that did not cut the bracket by half
  # the factor of an even split is followed by an even split.
  old, new = search.hi - search.lo, hi - lo
  poor = new.astype(jnp.float32) * ((CANDIDATES + 1) / 2) > (
      old.astype(jnp.float32))
  mode = jnp.where(poor, UNIFORM, INTERPOLATE)
  return Search(lo, hi, n_lo, n_hi, mode, lo == hi, search.passes + 1)


def uniform_candidates(lo, width):
  """`CANDIDATES` keys splitting `(lo, lo + width]` evenly (width >= 1);
  every key of it when it holds no more than that."""
  parts = np.uint32(CANDIDATES + 1)
  j = jnp.arange(1, CANDIDATES + 1, dtype=jnp.uint32)
  spread = (width // parts) * j + ((width % parts) * j) // parts
  each = jnp.minimum(j, width)
  return lo + jnp.where(width <= np.uint32(CANDIDATES), each,
                        jnp.maximum(spread, 1))
