"""Pytree helpers shared by the transform, N:M masks and the reports.

`path_to_str` names a leaf by its key path ('stage1_block1/Conv_0/kernel');
`unwrap_nnx` gives the arrays of a Flax NNX state.
"""

import sys
from typing import Any, Tuple

import jax

PyTree = Any


def path_to_str(path: Tuple[Any, ...]) -> str:
  """A '/'-joined name for a pytree key path, e.g. 'Dense_0/kernel'."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def is_nnx_variable(x) -> bool:
  """Whether `x` is a Flax NNX variable (`nnx.Param`, `nnx.OptArray`, ...)."""
  nnx = sys.modules.get("flax.nnx")  # No NNX variable exists before import.
  variable = getattr(nnx, "Variable", None)
  return variable is not None and isinstance(x, variable)


def unwrap_nnx(tree: PyTree) -> PyTree:
  """`tree` with each Flax NNX variable replaced by its value.

  This is `nnx.as_pure`: `nnx.state(model, nnx.Param)` becomes a `State` of
  arrays whose key paths end at the variables ('conv1/kernel', not
  'conv1/kernel/value'), the structure `nnx.Optimizer` gives `tx.update`.

  Args:
    tree: any pytree.

  Returns:
    `tree` itself when it holds no NNX variable, else the unwrapped copy.
  """
  if not any(is_nnx_variable(x)
             for x in jax.tree.leaves(tree, is_leaf=is_nnx_variable)):
    return tree
  return sys.modules["flax.nnx"].as_pure(tree)
