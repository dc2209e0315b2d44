"""Reading an optimizer state's masks, and applying them.

`get_masks(opt_state)` gives the masks in force for the next step,
`trained_masks(opt_state)` those the last step trained with (the model to
report and ship), `apply_masks(params, masks)` the masked weights. They
find the `OptGState` anywhere in the state (an `optax.chain`, an
`optax.inject_hyperparams`, Flax's `TrainState`, an `nnx.Optimizer`) and
refuse a chain where `mask_transform` is not first.
"""

from typing import Any, Tuple

import jax
import optax

from optg_jax.transform import OptGState
from optg_jax.transform import zero_pruned
from optg_jax.tree import unwrap_nnx

PyTree = Any


def _find_states(opt_state: PyTree) -> list:
  """Every `OptGState` in `opt_state`, with its key path."""
  is_state = lambda x: isinstance(x, OptGState)
  flat = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_state)[0]
  return [(path, x) for path, x in flat if is_state(x)]


def _check_first(path: Tuple[Any, ...], opt_state: PyTree) -> None:
  """Raises ValueError when the transform is not first in its chain.

  `optax.chain` keeps its members' states in a tuple, in order; wrappers
  (`inject_hyperparams`, `MultiSteps`, `multi_transform`, `keep_sparse`,
  ...) hold theirs in named fields. Any transformation before this one
  would change the gradients it reads (`G * W` is the score's gradient
  only for the raw `G`) and would see the unmasked ones.
  """
  node = opt_state
  for key in path:
    if isinstance(key, jax.tree_util.SequenceKey) and key.idx > 0:
      before = [type(x).__name__ for x in node[:key.idx]]
      raise ValueError(
          "mask_transform is not the first transformation of its chain: "
          f"it comes after {len(before)} other "
          f"{'state' if len(before) == 1 else 'states'} "
          f"({', '.join(before)}), which would change the gradients its "
          "scores learn from; put it first, e.g. optax.chain("
          "optg.mask_transform(...), optax.add_decayed_weights(wd), "
          "optax.sgd(lr, momentum))")
    if isinstance(key, jax.tree_util.SequenceKey):
      node = node[key.idx]
    elif isinstance(key, jax.tree_util.DictKey):
      node = node[key.key]
    elif isinstance(key, jax.tree_util.GetAttrKey):
      node = getattr(node, key.name)
    else:
      return  # A container this check does not know: nothing to say.


def get_optg_state(opt_state: PyTree) -> OptGState:
  """The single `OptGState` inside an optimizer state.

  Looks through any nesting of optax states (`chain`, `inject_hyperparams`,
  `multi_transform`, `MultiSteps`, `keep_sparse`, ...), and
  `nnx.Optimizer.opt_state`.

  Args:
    opt_state: an optax optimizer state.

  Returns:
    The `OptGState` found, with arrays (Flax NNX variables unwrapped).

  Raises:
    ValueError: if there is none or more than one, or if the transform is
      not the first of its chain.
  """
  found = _find_states(opt_state)
  if not found:
    raise ValueError("no mask_transform state found in the optimizer state")
  if len(found) > 1:
    raise ValueError(f"found {len(found)} mask_transform states in the "
                     "optimizer state; expected exactly one")
  path, state = found[0]
  _check_first(path, opt_state)
  return unwrap_nnx(state)


def _masks_of(masks: PyTree) -> PyTree:
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x: None if is_masked(x) else x, masks,
                      is_leaf=is_masked)


def get_masks(opt_state: PyTree) -> PyTree:
  """The masks in force for the next forward pass.

  What a train step runs the model with: `apply_masks(params,
  get_masks(opt_state))`. Just after a refresh they are masks no step has
  trained with yet; to evaluate, report or ship the model, use
  `trained_masks` (or `trained_params`).

  Args:
    opt_state: an optax optimizer state containing one `mask_transform`
      state, anywhere (`nnx.Optimizer.opt_state` too).

  Returns:
    A pytree with the params' structure: bool arrays on prunable leaves,
    `None` elsewhere. Leaves that the transform does not see (other groups
    of `optax.multi_transform`) are `None` too. For Flax NNX, the structure
    of `nnx.as_pure(nnx.state(model, nnx.Param))`.

  Raises:
    ValueError: no transform state, several, or the transform is not the
      first of its chain.
  """
  return _masks_of(get_optg_state(opt_state).masks)


def trained_masks(opt_state: PyTree) -> PyTree:
  """The masks the last update's forward pass ran with: the model so far.

  The sparse network a run has trained, and the one to evaluate, report
  and ship: at a refresh once an epoch, the masks the epoch just trained
  with (`get_masks` then already holds those the refresh drew for the next
  epoch). Before any update, the initial (all-kept) masks. Same structure
  as `get_masks`.

  Args:
    opt_state: an optax optimizer state containing one `mask_transform`
      state, anywhere.

  Returns:
    Bool arrays on prunable leaves, `None` elsewhere.
  """
  return _masks_of(get_optg_state(opt_state).trained_masks)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Zeroes the pruned weights; a `None` mask passes the weight through.

  Args:
    params: the dense weights. Flax NNX state (`nnx.state(model, nnx.Param)`)
      works as well: each variable keeps its wrapper, with a masked value,
      so that `nnx.update(model, apply_masks(...))` accepts the result.
    masks: a pytree with the params' structure: bool arrays or `None`.

  Returns:
    The params with pruned entries set to zero.
  """
  return zero_pruned(params, masks)
