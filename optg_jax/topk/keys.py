"""Order-preserving keys: float32 scores as uint32 of the same order.

The selection never compares floats: each score becomes a uint32 key whose
integer order is the float order (`order_preserving_keys`), and the k-th
largest key is searched for among the integers.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_SIGN_BIT = np.uint32(0x80000000)
ALL_BITS = np.uint32(0xFFFFFFFF)


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
  return jnp.where(negative, bits ^ ALL_BITS, bits | _SIGN_BIT)


def to_signed(keys):
  """uint32 keys as int32 of the same order."""
  return lax.bitcast_convert_type(keys ^ _SIGN_BIT, jnp.int32)


def from_signed(values):
  """The inverse of `to_signed`."""
  return lax.bitcast_convert_type(values, jnp.uint32) ^ _SIGN_BIT
