"""Multiply-accumulates (MACs) of dense and sparse models, found by tracing.

    macs = count_macs(model, variables, (1, 224, 224, 3), masks)
    macs.dense, macs.sparse   # per example
    for layer in macs.per_layer: ...

The model is run under `jax.eval_shape` (nothing is computed) with a Flax
method interceptor that records every `nn.Conv` and `nn.Dense` call: its
kernel's shape and its output's spatial size. The cost of a layer is the
number of its kernel entries that are kept times the number of output
positions:

  conv:  kept kernel entries x (output height x output width)
  dense: kept kernel entries

A conv kernel has shape `(kh, kw, in_channels / groups, out_channels)`, so
grouped and depthwise convs come out right with no special case. Only conv
and dense layers are counted (no BatchNorm, pooling, activations or biases),
as sparse-training papers report FLOPs. Figures are per example whatever the
batch in `input_shape`. Layers that hold a kernel but whose cost this rule
does not give (`nn.ConvTranspose`, `nn.ConvLocal`, `nn.DenseGeneral`,
`nn.Einsum`) raise `NotImplementedError` rather than go uncounted.
"""

from optg_jax import extras

extras.require(extras.FLAX, "optg_jax.flops")

import inspect
import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class LayerMacs(NamedTuple):
  """The cost of one conv or dense layer, per example.

  Attributes:
    path: the '/'-joined path of the layer's kernel within
      `variables["params"]` (no "params/" prefix), e.g.
      `"stage1_block1/Conv_0/kernel"`: what `optg.path_to_str` gives for the
      mask's key path, and the layer's key in `optg.sparsity_report`.
    kind: "conv" or "dense".
    kernel_shape: the kernel's shape.
    output_size: output positions per example: height x width for a 2-D
      conv, 1 for a dense layer.
    dense: MACs with every kernel entry.
    sparse: MACs with the kept kernel entries only.
  """
  path: str
  kind: str
  kernel_shape: Tuple[int, ...]
  output_size: int
  dense: int
  sparse: int


class MacCount(NamedTuple):
  """MACs per example of a model: totals and per layer (in call order)."""
  dense: int
  sparse: int
  per_layer: List[LayerMacs]


def _lookup(tree, keys: Sequence[str]):
  for key in keys:
    if tree is None:
      return None
    try:
      tree = tree[key]
    except (KeyError, TypeError):
      return None
  return tree


# Layers with a kernel whose cost is not (kernel entries x output positions).
_UNCOUNTED = (nn.ConvTranspose, nn.ConvLocal, nn.DenseGeneral, nn.Einsum)


def _takes_train(model: nn.Module) -> bool:
  """Whether the model's `__call__` has a `train` argument (or **kwargs)."""
  parameters = inspect.signature(model.__call__).parameters
  return "train" in parameters or any(
      p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def count_macs(model: nn.Module, variables: Any,
               input_shape: Sequence[int],
               masks: Optional[Any] = None) -> MacCount:
  """Counts the MACs of the conv and dense layers of a Flax model.

  Args:
    model: a Flax linen module; called as `model.apply(variables, x,
      train=False)`, or without `train` if its `__call__` has no such
      argument.
    variables: the model's variables (`{"params": ..., ...}`); arrays or
      `jax.ShapeDtypeStruct` values.
    input_shape: the input's shape, batch first, e.g. `(1, 224, 224, 3)`.
    masks: None (every weight kept) or a pytree with the structure of
      `variables["params"]`: bool arrays on pruned leaves, None elsewhere
      (as from `optg.get_masks`). A kernel with no mask is fully kept.

  Returns:
    A `MacCount`. Without masks `sparse == dense`.

  Raises:
    ValueError: if a mask's shape differs from its kernel's.
    NotImplementedError: if the model calls an `nn.ConvTranspose`,
      `nn.ConvLocal`, `nn.DenseGeneral` or `nn.Einsum` layer.
  """
  records = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, _UNCOUNTED):
      raise NotImplementedError(
          f"count_macs does not count {type(module).__name__} layers "
          f"({'/'.join(module.path)})")
    if isinstance(module, (nn.Conv, nn.Dense)):
      kernel_shape = tuple(module.variables["params"]["kernel"].shape)
      if isinstance(module, nn.Conv):
        # The spatial dimensions of the output sit just before the features.
        spatial = len(kernel_shape) - 2
        kind, positions = "conv", math.prod(out.shape[-1 - spatial:-1])
      else:
        # Any dimensions between the batch and the features (none for the
        # usual [batch, features]) are positions too.
        kind, positions = "dense", math.prod(out.shape[1:-1])
      records.append((tuple(module.path), kind, kernel_shape,
                      int(positions)))
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  call_kwargs = {"train": False} if _takes_train(model) else {}

  def forward(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, **call_kwargs)

  jax.eval_shape(forward, variables, x)

  per_layer = []
  for path, kind, kernel_shape, positions in records:
    entries = math.prod(kernel_shape)
    mask = _lookup(masks, path + ("kernel",)) if masks is not None else None
    if mask is None:
      kept = entries
    else:
      if tuple(np.shape(mask)) != kernel_shape:
        raise ValueError(f"the mask of {'/'.join(path)}/kernel has shape "
                         f"{tuple(np.shape(mask))}, its kernel "
                         f"{kernel_shape}")
      kept = int(np.count_nonzero(np.asarray(mask)))
    per_layer.append(LayerMacs(
        path="/".join(path + ("kernel",)), kind=kind,
        kernel_shape=kernel_shape, output_size=positions,
        dense=entries * positions, sparse=kept * positions))
  return MacCount(dense=sum(l.dense for l in per_layer),
                  sparse=sum(l.sparse for l in per_layer),
                  per_layer=per_layer)
