"""The fixed-pass radix select (`layout="flat"`, for accelerators).

Each pass reads the next `_DIGIT_BITS` bits of the threshold's key: it
counts the keys at or above the `2**_DIGIT_BITS - 1` candidates that split
the bracket by that digit and keeps the part the threshold is in. The
passes are fixed in number (`fixed_passes`), so no loop decides on the
device when to stop and a compiled step holds no branch. The tie cut's
position is read the same way (`ties.fixed_tie_cut`).
"""

import jax.numpy as jnp
import numpy as np

from optg_jax.topk.bracket import full_bracket
from optg_jax.topk.bracket import narrowed
from optg_jax.topk.bracket import Search
from optg_jax.topk.counting import Counter

# The fixed-pass selection (`layout="flat"`) reads this many bits of the
# keys (and of the tie positions) per pass: `2**_DIGIT_BITS - 1` candidates,
# three words of `Counter` fields, eight passes for a 32-bit key.
_DIGIT_BITS = 4


def digit_widths(bits: int):
  """`bits` cut into digits of `_DIGIT_BITS` (the first may be narrower)."""
  widths = [_DIGIT_BITS] * (bits // _DIGIT_BITS)
  if bits % _DIGIT_BITS:
    widths.insert(0, bits % _DIGIT_BITS)
  return widths


def digit_candidates(lo, rest: int, width: int, dtype):
  """`lo + j * 2**rest` for `j = 1, ..., 2**width - 1`: the values that
  split `[lo, lo + 2**(rest + width))` by the next digit."""
  j = np.arange(1, 2**width, dtype=np.uint64) << np.uint64(rest)
  return lo + jnp.asarray(j.astype(dtype))


def fixed_threshold_search(counter: Counter, k) -> Search:
  """The exact threshold by radix digits: a pass per digit of the key.

  Each pass counts the keys at or above the candidates that split the
  bracket by the next `_DIGIT_BITS` bits and keeps the part the threshold
  is in (`narrowed`), so after the last digit the bracket is one key. The
  passes are fixed in number (eight), whatever the scores: no loop decides
  on the device when to stop.
  """
  search = full_bracket(counter, k)
  rest = 32
  for width in digit_widths(32):
    rest -= width
    candidates = digit_candidates(search.lo, rest, width, np.uint32)
    search = narrowed(search, candidates, counter.count_at_least(candidates),
                      k)
  return search._replace(found=jnp.ones_like(search.found))


def fixed_passes(total: int) -> int:
  """The passes of the fixed-pass selection of `total` scores: the key's
  digits, then the positions' (the masks' own pass not counted)."""
  return len(digit_widths(32)) + len(digit_widths(int(total).bit_length()))
