"""Which leaves of the scores are sharded inside `jax.shard_map`.

Under `jax.jit` a sharded leaf needs nothing: each pass counts it shard by
shard. Inside `jax.shard_map` each call sees its shards only, and
`sharded_leaves` tells from `axis_name` (and from the axes each leaf varies
over) whose counts are `psum`-ed over the mesh and whose are counted once.
"""

from typing import Hashable, Tuple, Union

import jax
from jax import lax

AxisName = Union[Hashable, Tuple[Hashable, ...]]


def _varying_axes(x) -> frozenset:
  """The manual mesh axes `x` varies over inside `jax.shard_map`.

  Empty outside `shard_map`, and for every value under `check_vma=False`.
  """
  manual_axis_type = getattr(jax.typeof(x), "mat", None)
  return frozenset(getattr(manual_axis_type, "varying", ()))


def sharded_leaves(leaves, axis_name):
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
