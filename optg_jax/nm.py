"""N:M structured masks: n kept weights in every group of m.

An N:M mask splits a kernel along one axis into groups of `m` consecutive
entries and keeps exactly `n` of each group: the pattern that sparse tensor
cores execute (2:4 on NVIDIA Ampere and later). The groups run along the
reduction axis of the layer's product, the axis a dot product sums over:
the input channels of a conv kernel (HWIO, axis 2) and the inputs of a
dense kernel `(in, out)` (axis 0), so every output unit keeps `n` of every
`m` consecutive inputs.

    masks = optg.nm_masks(scores, 2, 4)   # the 2 best of every 4 inputs
    assert optg.nm.is_nm(masks["Dense_0"]["kernel"], 2, 4)

The masks keep the highest scores of each group; ties go to the lower index
along the axis, and NaN scores rank below every number. `nm_mask` and
`nm_masks` are pure JAX and jittable (`n`, `m` and `axis` static); `is_nm`,
`group_counts` and `indivisible_leaves` inspect concrete arrays (NumPy) and
shapes.
"""

import dataclasses
import functools
import re
from typing import Any, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from optg_jax import topk
from optg_jax.tree import path_to_str

PyTree = Any

INDIVISIBLE = ("error", "dense")

# Groups up to this size are ranked by counting (m * m comparisons per group,
# exact with ties, no sort); larger groups by a stable sort.
_MAX_COUNTED_GROUP = 16

_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def _check_nm(n, m) -> None:
  """Raises ValueError unless `n` and `m` are ints with `0 < n < m`."""
  for name, value in (("n", n), ("m", m)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f"N:M {name} must be an int, got {value!r}")
  if not 0 < n < m:
    raise ValueError(f"N:M needs 0 < n < m, got {n}:{m}")


@dataclasses.dataclass(frozen=True)
class NM:
  """An N:M sparsity pattern: `n` kept entries in every group of `m`.

  Attributes:
    n: entries kept per group, `0 < n < m`.
    m: the group size.
  """
  n: int
  m: int

  def __post_init__(self):
    _check_nm(self.n, self.m)
    object.__setattr__(self, "n", int(self.n))
    object.__setattr__(self, "m", int(self.m))

  @classmethod
  def parse(cls, text: str) -> "NM":
    """The pattern of an "N:M" string such as "2:4".

    Args:
      text: two positive integers joined by a colon, `N < M`.

    Returns:
      The `NM`.

    Raises:
      ValueError: if `text` is not of that form.
    """
    match = _NM_PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
      raise ValueError(f"N:M pattern must be a string like '2:4', got "
                       f"{text!r}")
    return cls(int(match.group(1)), int(match.group(2)))

  @property
  def density(self) -> float:
    """The fraction of entries kept, `n / m`."""
    return self.n / self.m

  def __str__(self) -> str:
    return f"{self.n}:{self.m}"


def reduction_axis(shape: Tuple[int, ...]) -> int:
  """The axis the N:M groups run along by default: the kernel's inputs.

  That is the reduction axis of the layer's product: axis 2 of a conv
  kernel in HWIO layout (ndim 4), axis 1 of a 1-D conv kernel (W, I, O)
  (ndim 3), axis 0 of a dense kernel (in, out) (ndim 2).

  Args:
    shape: the kernel's shape.

  Returns:
    The axis, a non-negative int.

  Raises:
    ValueError: for any other number of dimensions.
  """
  ndim = len(shape)
  if ndim not in (2, 3, 4):
    raise ValueError(f"no default N:M axis for a kernel of shape "
                     f"{tuple(shape)}: expected 2 (in, out), 3 (W, I, O) or "
                     "4 (H, W, I, O) dimensions; pass axis")
  return ndim - 2


def _resolve_axis(shape: Tuple[int, ...], axis: Optional[int]) -> int:
  """`axis` (or the default) as a non-negative int, checked against shape."""
  if axis is None:
    return reduction_axis(shape)
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise ValueError(f"axis must be an int or None, got {axis!r}")
  ndim = len(shape)
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} is out of range for shape {tuple(shape)}")
  return int(axis) % ndim


def _grouped(x: jax.Array, axis: int, m: int) -> jax.Array:
  """`x` with `axis` moved last and split into groups: (..., groups, m)."""
  x = jnp.moveaxis(x, axis, -1)
  return x.reshape(x.shape[:-1] + (x.shape[-1] // m, m))


def _ungrouped(x: jax.Array, axis: int) -> jax.Array:
  """Inverse of `_grouped`."""
  x = x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
  return jnp.moveaxis(x, -1, axis)


def _ranking_keys(scores: jax.Array) -> jax.Array:
  """uint32 keys in the order of the scores, NaN below every number."""
  keys = topk.order_preserving_keys(scores)  # -0.0 and +0.0 tie.
  return jnp.where(jnp.isnan(scores), jnp.uint32(0), keys)


def _group_ranks(keys: jax.Array) -> jax.Array:
  """The rank of each entry within its group (last axis), 0 the best.

  An entry is beaten by every entry of its group with a higher key, and by
  those with the same key at a lower position.
  """
  m = keys.shape[-1]
  if m <= _MAX_COUNTED_GROUP:
    mine = keys[..., :, None]
    other = keys[..., None, :]
    position = np.arange(m)
    earlier = position[None, :] < position[:, None]  # other before mine.
    beaten_by = (other > mine) | ((other == mine) & earlier)
    return jnp.sum(beaten_by, axis=-1, dtype=jnp.int32)
  # Descending keys, equal keys in position order (the sort is stable).
  order = jnp.argsort(~keys, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def nm_mask(scores: jax.Array, n: int, m: int,
            axis: Optional[int] = None) -> jax.Array:
  """The N:M mask of one array: the `n` best scores of every `m` entries.

  The entries along `axis` are split into consecutive groups of `m`
  (positions `0..m-1`, `m..2m-1`, ...) and each group keeps exactly the `n`
  entries with the highest scores; ties are broken by position, the lower
  index along `axis` first, and NaN scores rank below every number
  (`-0.0` and `0.0` tie). Pure and jittable with `n`, `m` and `axis`
  static. Counting the ranks costs `m` comparisons per entry.

  Args:
    scores: a float array (float32, bfloat16 or float16; wider floats are
      compared after rounding to float32).
    n: entries kept per group, `0 < n < m`.
    m: the group size.
    axis: the axis the groups run along; None for `reduction_axis`.

  Returns:
    A bool array of the shape of `scores`, True for kept entries.

  Raises:
    ValueError: for a bad `n`, `m` or `axis`, or if the length of `axis` is
      not a multiple of `m`.
  """
  _check_nm(n, m)
  shape = tuple(np.shape(scores))
  axis = _resolve_axis(shape, axis)
  if shape[axis] % m:
    raise ValueError(f"N:M {n}:{m}: axis {axis} of shape {shape} has length "
                     f"{shape[axis]}, not a multiple of {m}")
  return _nm_mask_compiled(jnp.asarray(scores), n, m, axis)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_mask_compiled(scores: jax.Array, n: int, m: int,
                      axis: int) -> jax.Array:
  """`nm_mask` for checked arguments, compiled once per shape.

  Outside `jax.jit` its dozen operations would each be dispatched on their
  own, many times slower on large kernels.
  """
  keys = _grouped(_ranking_keys(scores), axis, m)
  return _ungrouped(_group_ranks(keys) < n, axis)


def _leaf_axis(path: str, shape: Tuple[int, ...], axis: Optional[int]) -> int:
  """The group axis of a leaf, or a ValueError naming the leaf."""
  if len(shape) < 2:
    raise ValueError(f"leaf '{path}' has shape {shape}, but N:M masks are "
                     "for kernels (ndim >= 2): give it a None score")
  try:
    return _resolve_axis(shape, axis)
  except ValueError as e:
    raise ValueError(f"leaf '{path}': {e}") from None


def nm_masks(scores: PyTree, n: int, m: int, axis: Optional[int] = None,
             indivisible: str = "error") -> PyTree:
  """N:M masks of a pytree of scores (`nm_mask` on every leaf).

  Only kernels are masked: every array leaf must have `ndim >= 2`; give the
  leaves that are not to be masked (biases, BatchNorm scales) a `None`
  score, and they come out `None`.

  Args:
    scores: a pytree of float arrays (ndim >= 2) and `None` leaves.
    n: entries kept per group, `0 < n < m`.
    m: the group size.
    axis: the group axis of every leaf; None for each leaf's
      `reduction_axis`.
    indivisible: what to do with a leaf whose axis length is not a multiple
      of `m` (an RGB stem's 3 input channels): "error" raises, "dense" keeps
      the whole leaf (all True).

  Returns:
    A pytree of bool arrays with the structure of `scores`, `None` where
    `scores` has `None`.

  Raises:
    ValueError: for a bad `n`, `m`, `axis` or `indivisible`, a leaf with
      `ndim < 2`, or (with `indivisible="error"`) a leaf whose axis length is
      not a multiple of `m`; the message names the leaf's path.
  """
  _check_nm(n, m)
  if indivisible not in INDIVISIBLE:
    raise ValueError(f"indivisible must be one of {INDIVISIBLE}, got "
                     f"{indivisible!r}")

  def one(key_path, leaf):
    if leaf is None:
      return None
    path = path_to_str(key_path)
    shape = tuple(np.shape(leaf))
    leaf_axis = _leaf_axis(path, shape, axis)
    if shape[leaf_axis] % m:
      if indivisible == "dense":
        return jnp.ones_like(leaf, dtype=bool)
      raise ValueError(
          f"N:M {n}:{m}: leaf '{path}' has length {shape[leaf_axis]} along "
          f"axis {leaf_axis} (shape {shape}), not a multiple of {m}; pass "
          "indivisible='dense' to keep such leaves dense")
    return nm_mask(leaf, n, m, leaf_axis)

  return jax.tree_util.tree_map_with_path(one, scores,
                                          is_leaf=lambda x: x is None)


def progressive_nm_masks(scores: PyTree, n: int, m: int, fraction,
                         indivisible: str = "dense") -> PyTree:
  """Masks with a `fraction` of the groups pruned to N:M, the rest dense.

  How OptG reaches N:M gradually. Each group of `m` (along each leaf's
  reduction axis) is either dense or N:M (its `n` best scores kept). A
  group's claim to stay dense is the best score it would lose, its
  `(n + 1)`-th highest: the groups with the lowest such scores are pruned
  first, exactly `round(fraction * G)` of the `G` groups of all leaves
  (`topk.topk_masks` over the groups, ties by leaf order then position).
  At `fraction = 0` every mask is dense, at 1 every divisible leaf is N:M;
  in between the kept count over the N:M-able weights is
  `W - round(fraction * G) * (m - n)`, so the sparsity of those weights is
  `fraction * (m - n) / m` up to the rounding of the group count: a
  sparsity schedule that rises to `(m - n) / m` ramps the masks from dense
  to N:M as it does unstructured masks.

  Args:
    scores: a pytree of float arrays (ndim >= 2) and `None` leaves; higher
      is better.
    n: entries kept per N:M group, `0 < n < m`.
    m: the group size.
    fraction: the share of groups to prune to N:M, in [0, 1]; a number or
      a traced scalar.
    indivisible: "dense" keeps leaves whose axis is not a multiple of `m`
      dense (they are left out of the groups); "error" raises.

  Returns:
    A pytree of bool masks with the structure of `scores`.
  """
  _check_nm(n, m)
  if indivisible not in INDIVISIBLE:
    raise ValueError(f"indivisible must be one of {INDIVISIBLE}, got "
                     f"{indivisible!r}")
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      scores, is_leaf=lambda x: x is None)
  grouped = []  # (axis, ranks, group scores) of each N:M-able leaf.
  for key_path, leaf in flat:
    if leaf is None:
      grouped.append(None)
      continue
    path = path_to_str(key_path)
    shape = tuple(np.shape(leaf))
    axis = _leaf_axis(path, shape, None)
    if shape[axis] % m:
      if indivisible == "error":
        raise ValueError(
            f"N:M {n}:{m}: leaf '{path}' has length {shape[axis]} along "
            f"axis {axis} (shape {shape}), not a multiple of {m}")
      grouped.append("dense")
      continue
    values = _grouped(jnp.asarray(leaf).astype(jnp.float32), axis, m)
    ranks = _group_ranks(_grouped(_ranking_keys(jnp.asarray(leaf)), axis, m))
    lost = jnp.max(jnp.where(ranks == n, values, -jnp.inf), axis=-1)
    lost = jnp.where(jnp.isnan(lost), -jnp.inf, lost)
    grouped.append((axis, ranks, lost))

  claims = [g[2] for g in grouped if isinstance(g, tuple)]
  if not claims:
    stay_dense = []
  elif _is_concrete_number(fraction) and float(fraction) >= 1.0:
    stay_dense = [jnp.zeros(c.shape, bool) for c in claims]
  elif _is_concrete_number(fraction) and float(fraction) <= 0.0:
    stay_dense = [jnp.ones(c.shape, bool) for c in claims]
  else:
    if not isinstance(fraction, jax.core.Tracer) and not isinstance(
        fraction, (int, float, np.number)):
      fraction = float(fraction)
    stay_dense = topk.topk_masks(claims, fraction)
  stay_dense = iter(stay_dense)

  masks = []
  for (_, leaf), g in zip(flat, grouped):
    if g is None:
      masks.append(None)
    elif isinstance(g, str):
      masks.append(jnp.ones(np.shape(leaf), bool))
    else:
      axis, ranks, _ = g
      keep = next(stay_dense)[..., None] | (ranks < n)
      masks.append(_ungrouped(keep, axis))
  return jax.tree.unflatten(treedef, masks)


def _is_concrete_number(x) -> bool:
  return not isinstance(x, jax.core.Tracer) and np.ndim(x) == 0


def indivisible_leaves(tree: PyTree, m: int,
                       axis: Optional[int] = None) -> List[Tuple[str, int]]:
  """The leaves whose group axis is not a multiple of `m`.

  These are the leaves `nm_masks(..., indivisible="dense")` keeps dense.

  Args:
    tree: a pytree of arrays or shape structs (ndim >= 2) and `None` leaves.
    m: the group size.
    axis: the group axis; None for each leaf's `reduction_axis`.

  Returns:
    `(path, axis length)` of each such leaf, in leaf order.

  Raises:
    ValueError: for a leaf with `ndim < 2` or a bad `axis`.
  """
  found = []
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: x is None)[0]
  for key_path, leaf in leaves:
    if leaf is None:
      continue
    path = path_to_str(key_path)
    shape = tuple(np.shape(leaf))
    length = shape[_leaf_axis(path, shape, axis)]
    if length % m:
      found.append((path, length))
  return found


def group_counts(mask, m: int, axis: Optional[int] = None) -> np.ndarray:
  """The number of True entries in each group of `m` along the axis.

  Args:
    mask: a concrete bool (or 0/1) array.
    m: the group size (>= 1).
    axis: the group axis; None for `reduction_axis`.

  Returns:
    An int array of shape `(..., groups)`: the mask's other axes in order,
    then the groups.

  Raises:
    ValueError: for a bad `axis`, or an axis length not a multiple of `m`.
  """
  mask = np.asarray(mask)
  axis = _resolve_axis(mask.shape, axis)
  if mask.shape[axis] % m:
    raise ValueError(f"axis {axis} of shape {mask.shape} has length "
                     f"{mask.shape[axis]}, not a multiple of {m}")
  moved = np.moveaxis(mask.astype(bool), axis, -1)
  grouped = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  return grouped.sum(axis=-1)


def is_nm(mask, n: int, m: int, axis: Optional[int] = None) -> bool:
  """Whether every group of `m` along the axis holds exactly `n` True.

  Args:
    mask: a concrete bool (or 0/1) array.
    n: the kept count per group, `0 < n < m`.
    m: the group size.
    axis: the group axis; None for `reduction_axis`.

  Returns:
    True if the mask is that N:M pattern; False otherwise, also when the
    axis length is not a multiple of `m`.

  Raises:
    ValueError: for a bad `n`, `m` or `axis`.
  """
  _check_nm(n, m)
  mask = np.asarray(mask)
  axis = _resolve_axis(mask.shape, axis)
  if mask.shape[axis] % m:
    return False
  return bool(np.all(group_counts(mask, m, axis) == n))
