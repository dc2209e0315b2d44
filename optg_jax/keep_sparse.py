"""Params that are the sparse network: `keep_sparse` around an OptG chain.

With `mask_transform` alone, the caller keeps the dense weights `W` and must
run the model on `apply_masks(W, get_masks(opt_state))`; forgetting it trains
and evaluates a dense network while the masks report a sparse one, and
nothing can notice. `keep_sparse(tx)` turns that around: the params a caller
holds are always `W * M`, the sparse network, so a train step written for
any optax optimizer (`jax.grad` of the loss at the params, Flax's
`TrainState.apply_gradients`, `nnx.Optimizer.update`) is an OptG train step
as it stands, and evaluating or saving the params evaluates or saves the
sparse network. The dense values of the pruned weights, which OptG keeps
(they regrow with them, weight decay still reaches them), live in the
optimizer state.

  tx = optg.keep_sparse(optax.chain(
      optg.mask_transform(sparsity, mask_lr), optax.add_decayed_weights(wd),
      optax.sgd(lr, momentum=0.9)))
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optg_jax import masks as masks_lib
from optg_jax import transform
from optg_jax.tree import path_to_str

PyTree = Any


class KeepSparseState(NamedTuple):
  """State of `keep_sparse`."""
  # The dense weights `W` of the prunable leaves after the last update
  # (`None` elsewhere). The params hold `W * M`: where a weight is kept the
  # params are its value (bit for bit op by op; a jitted step may round the
  # two additions differently), where it is pruned its value is here.
  dense: PyTree
  inner: PyTree  # The wrapped chain's state (it holds the `OptGState`).


def _is_none(x) -> bool:
  return x is None


_INIT_THESE = "init the optimizer with the params you update"


def _listed(paths, most: int = 3) -> str:
  names = [path_to_str(p) for p in paths]
  more = f", ... ({len(names)} in all)" if len(names) > most else ""
  return ", ".join(names[:most]) + more


def _short(treedef, most: int = 100) -> str:
  text = str(treedef)
  return text if len(text) <= most else text[:most] + "..."


def _check_like_init(params: PyTree, dense: PyTree) -> None:
  """Refuses params of another tree, or another leaf shape, than at init.

  `dense` (`KeepSparseState.dense`) has the structure of the params given
  to `init` (None at the leaves that are not pruned) and, elsewhere, their
  shapes. Tree structures and shapes are static: under `jit` this runs at
  trace time only.

  Raises:
    ValueError: naming `keep_sparse`, the leaf paths (or the two tree
      structures) or the shapes, and the fix.
  """
  treedef = jax.tree.structure(dense, is_leaf=_is_none)
  try:
    leaves = treedef.flatten_up_to(params)  # What `jax.tree.map` accepts.
  except (ValueError, TypeError):
    at_init = [p for p, _ in
               jax.tree_util.tree_flatten_with_path(dense, is_leaf=_is_none)[0]]
    given = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    extra = [p for p in given if p not in at_init]
    missing = [p for p in at_init if p not in given]
    if extra or missing:
      detail = "; ".join(
          ([f"they have {_listed(extra)}, not at init"] if extra else []) +
          ([f"they lack {_listed(missing)}"] if missing else []))
    else:
      detail = (f"they are {_short(jax.tree.structure(params))}, at init "
                f"{_short(treedef)}")
    raise ValueError(f"keep_sparse: update got params of another tree than "
                     f"init did ({detail}); {_INIT_THESE}") from None
  wrong = [i for i, (p, d) in enumerate(zip(
      leaves, jax.tree.leaves(dense, is_leaf=_is_none)))
           if d is not None and jnp.shape(p) != jnp.shape(d)]
  if wrong:
    path, d = jax.tree_util.tree_flatten_with_path(
        dense, is_leaf=_is_none)[0][wrong[0]]
    more = (f" ({len(wrong)} leaves have other shapes)" if len(wrong) > 1
            else "")
    raise ValueError(
        f"keep_sparse: update got params leaf {path_to_str(path)} of shape "
        f"{tuple(jnp.shape(leaves[wrong[0]]))}, but {tuple(jnp.shape(d))} "
        f"at init{more}; {_INIT_THESE}")


def keep_sparse(inner: optax.GradientTransformation
                ) -> optax.GradientTransformation:
  """Wraps an OptG chain so that the params are always the sparse network.

  The params given to `update` are taken to be `W * M_t` (the masks in
  force, as this wrapper left them); the wrapped chain sees the dense
  weights `W` (the kept entries from the params, the pruned ones from this
  state), so its scores, weight decay and momentum are exactly those of the
  plain chain. The updates returned make the params `W' * M_{t+1}`, with
  `W'` the dense weights after the step and `M_{t+1}` the masks for the next
  step, bit for bit: kept entries get the chain's update, regrown ones their
  dense value, newly pruned ones become zero. The gradients given to
  `update` are then those of the loss at the params, which are the masked
  weights: what OptG needs, with no `apply_masks` in the train step.

  With `total_steps` known to the transform (a `sigmoid_sparsity_schedule`
  brings it), no refresh follows the last step, so the params at the end of
  the run are the sparse model it trained. Between steps the params hold
  the masks of the next step: just after a refresh, masks no step has
  trained with yet; `trained_params` gives the model just trained (the
  reference's per-epoch evaluation).

  The state holds one more copy of the prunable weights.

  Args:
    inner: a chain with `mask_transform` first (`optax.chain(
      optg.mask_transform(...), ...)`).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a
    `KeepSparseState`.

  Raises:
    ValueError: at `init`, if `inner` holds no `mask_transform`, or not as
      its first transformation; at `update`, for params of another tree
      structure or leaf shape than those given to `init` (checked when
      traced: nothing per step under `jit`).
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    plain = transform.unwrap_nnx(params)
    inner_state = inner.init(params)
    masks = masks_lib.get_masks(inner_state)  # Checks the chain.
    dense = jax.tree.map(lambda m, p: None if m is None else p, masks, plain,
                         is_leaf=_is_none)
    return KeepSparseState(dense=dense, inner=inner_state)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("keep_sparse needs the params: call "
                       "update(updates, state, params)")
    updates, params = transform.unwrap_nnx(updates), transform.unwrap_nnx(
        params)
    _check_like_init(params, state.dense)
    old_masks = masks_lib.get_masks(state.inner)
    dense = jax.tree.map(
        lambda m, p, d: p if m is None else jnp.where(m, p, d),
        old_masks, params, state.dense, is_leaf=_is_none)
    inner_updates, inner_state = inner.update(updates, state.inner, dense,
                                              **extra_args)
    new_dense = optax.apply_updates(dense, inner_updates)
    new_masks = masks_lib.get_masks(inner_state)

    def sparse_update(old, new, p, u, w):
      if old is None:
        return u
      # Kept: the chain's update (p + u is the new dense value, as p is the
      # dense value). Regrown: p is 0, the update is the new value. Pruned
      # now: minus the value, to 0.
      return jnp.where(new, jnp.where(old, u, w.astype(u.dtype)),
                       -p.astype(u.dtype))

    out = jax.tree.map(sparse_update, old_masks, new_masks, params,
                       inner_updates, new_dense, is_leaf=_is_none)
    kept_dense = jax.tree.map(lambda m, w: None if m is None else w,
                              new_masks, new_dense, is_leaf=_is_none)
    return out, KeepSparseState(dense=kept_dense, inner=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _keep_sparse_states(opt_state: PyTree) -> list:
  is_state = lambda x: isinstance(x, KeepSparseState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state)
          if is_state(x)]


def trained_params(params: PyTree, opt_state: PyTree) -> PyTree:
  """The sparse model trained so far: the weights with `trained_masks`.

  What to evaluate, report and ship: the weights masked by the masks the
  last update's forward pass ran with. Works with the plain chain (`params`
  the dense weights) and with `keep_sparse` (`params` the sparse ones; the
  dense values of weights pruned by the latest refresh come from its
  state). At the end of a run whose transform knows `total_steps` this
  equals `apply_masks(params, get_masks(opt_state))`; just after a refresh
  it is the model the period trained, not the next period's masks: what an
  eval step between epochs runs (Flax's `eval_step`, on
  `trained_params(state.params, state.opt_state)`). Elementwise, so it
  works on a `pmap`-replicated state (a leading device axis on every leaf)
  and a sharded one, inside `jax.pmap` or `jax.jit` or outside them.

  Args:
    params: the params the caller holds (Flax NNX `nnx.state(model,
      nnx.Param)` too: each variable keeps its wrapper).
    opt_state: the optimizer state (`nnx.Optimizer.opt_state` too).

  Returns:
    `params`' structure, pruned entries zero.

  Raises:
    ValueError: no `mask_transform` state, several, or not first in its
      chain; several `keep_sparse` states.
  """
  masks = masks_lib.trained_masks(opt_state)
  wrappers = _keep_sparse_states(opt_state)
  if len(wrappers) > 1:
    raise ValueError(f"found {len(wrappers)} keep_sparse states in the "
                     "optimizer state; expected at most one")
  if wrappers:
    # The weights kept now are the params; those the latest refresh pruned
    # hold zero there, and their values are in the wrapper's state.
    in_force = masks_lib.get_masks(opt_state)
    values = jax.tree.map(
        lambda m, p, d: None if m is None else jnp.where(m, p, d),
        in_force, transform.unwrap_nnx(params),
        transform.unwrap_nnx(wrappers[0].dense), is_leaf=_is_none)
    params = transform.replace_values(params, values)
  return masks_lib.apply_masks(params, masks)
