"""The number of entries a sparsity keeps: `N - round(sparsity * N)`, exact.

For a concrete sparsity the product is rational arithmetic on the host
(`num_to_keep`); for a traced one it is formed exactly from 16-bit limbs in
uint32 arithmetic (`traced_num_to_keep`), so that both round alike.
"""

from fractions import Fraction
import math
from typing import Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.keys import ALL_BITS

Sparsity = Union[float, int, jax.Array, np.ndarray]


def check_sparsity(sparsity) -> None:
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
  check_sparsity(sparsity)
  return total - round(Fraction(float(np.asarray(sparsity))) * total)


def traced_num_to_keep(sparsity: jax.Array, total: int) -> jax.Array:
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
    lo_mask = jnp.where(amount >= 32, ALL_BITS,
                        (np.uint32(1) << jnp.minimum(amount, 31)) - 1)
    hi_mask = jnp.where(amount >= 64, ALL_BITS,
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
