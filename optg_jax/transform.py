"""The OptG mask optimizer as an optax gradient transformation.

Each prunable weight `W` carries a float32 score `S` (initialised to 0) and a
binary mask `M` (initially all ones). The model runs on `W * M`; the incoming
updates are the gradients `G` with respect to those masked weights. One step:

  dS  = G * W                            (straight-through, every weight)
  buf = momentum * buf + dS;  S = S - mask_lr(t) * buf
  out = G * M_t                          (pruned weights get no loss gradient)
  M_{t+1} = topk(S, sparsity(t + 1))     when (t + 1) % update_every == 0

`M_t` is the mask that was in force for step t's forward pass. The first two
lines are `score_update`, the third `zero_pruned`; in the fourth,
`ranking_keys` is what the top-k ranks, `selected_masks` the top-k and
`masks_after_update` the "when". Invalid arguments are refused first
(`transform_checks`), and `init` refuses params that leave nothing to prune
(`_check_prunable`). Put this transformation first in the chain so that
weight decay and the weights' optimizer come after it:

  optax.chain(mask_transform(...), optax.add_decayed_weights(wd),
              optax.sgd(lr, momentum=0.9))
"""

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optg_jax import nm
from optg_jax import schedules
from optg_jax import topk
from optg_jax.transform_checks import check_refresh
from optg_jax.transform_checks import check_schedules
from optg_jax.transform_checks import checked_options
from optg_jax.transform_checks import checked_period
from optg_jax.transform_checks import CRITERIA  # Public here too.
from optg_jax.transform_checks import is_traced
from optg_jax.transform_checks import SCORE_NORMALIZATIONS  # Public too.
from optg_jax.tree import is_nnx_variable
from optg_jax.tree import path_to_str
from optg_jax.tree import unwrap_nnx

PyTree = Any
Where = Callable[[str, jax.Array], bool]

# The arguments of `mask_transform` that `optax.inject_hyperparams` must
# leave alone (`static_args`): a schedule of the sparsity must reach the
# transform, which evaluates it at the step after the update; the others
# are Python values, not hyperparameters. The learning rate and momentum of
# the scores may be injected.
STATIC_ARGS = ("sparsity", "update_every", "where", "criterion",
               "score_normalization", "min_kept_per_unit", "axis_name",
               "structure", "indivisible", "total_steps", "topk_layout")


class OptGState(NamedTuple):
  """State of `mask_transform`. Prunable leaves hold arrays, others `None`."""
  count: jax.Array  # Number of updates so far (int32 scalar).
  scores: PyTree  # float32 scores `S` (all `None` for "magnitude").
  # float32 momentum buffers of the scores (all `None` unless "optg").
  momentum: PyTree
  masks: PyTree  # bool masks in force for the next forward pass.
  # bool masks the last update's forward pass ran with: the model trained so
  # far (before any update, the initial masks). They differ from `masks`
  # only just after a refresh, which drew `masks` for the steps to come.
  trained_masks: PyTree
  # Where the last refreshes found the top-k threshold: the next refresh's
  # search starts there (`topk.warm_topk_masks`; the masks are those of a
  # search from scratch whatever it holds).
  topk_hint: topk.TopKHint


def zero_pruned(tree: PyTree, masks: PyTree) -> PyTree:
  """`tree` with the entries the masks prune set to zero (`None`: kept).

  An NNX variable of `tree` keeps its wrapper, with the masked value.
  """

  def one(x, m):
    if m is None:
      return x
    if is_nnx_variable(x):
      value = unwrap_nnx(x)
      return x.replace(jnp.where(m, value, jnp.zeros_like(value)))
    return jnp.where(m, x, jnp.zeros_like(x))

  return jax.tree.map(one, tree, unwrap_nnx(masks), is_leaf=is_nnx_variable)


def replace_values(tree: PyTree, values: PyTree) -> PyTree:
  """`tree` with its leaves replaced by those of `values` (`None`: kept).

  An NNX variable of `tree` keeps its wrapper, with the new value.
  """

  def one(x, v):
    if v is None:
      return x
    if is_nnx_variable(x):
      return x.replace(v)
    return v

  return jax.tree.map(one, tree, values, is_leaf=is_nnx_variable)


def default_where(path: str, leaf: jax.Array) -> bool:
  """Prunes conv and dense kernels: every leaf with `ndim >= 2`."""
  del path
  return jnp.ndim(leaf) >= 2


def prunable_tree(params: PyTree, where: Where, fn) -> PyTree:
  """`fn(leaf)` on the leaves `where` selects, `None` on the others."""

  def select(path, leaf):
    return fn(leaf) if where(path_to_str(path), leaf) else None

  return jax.tree_util.tree_map_with_path(select, params)


def _shape(leaf) -> Tuple[int, ...]:
  return tuple(getattr(leaf, "shape", np.shape(leaf)))


def num_units(leaf) -> int:
  """Output units of a kernel: its last axis (Dense `(in, out)`, conv HWIO)."""
  shape = _shape(leaf)
  return int(shape[-1]) if shape else 1


def forced_count(masks_or_params: PyTree, min_kept_per_unit: int) -> int:
  """How many weights `min_kept_per_unit` keeps whatever the scores.

  Args:
    masks_or_params: the prunable leaves (arrays; `None` leaves skipped).
    min_kept_per_unit: the per-unit floor.

  Returns:
    `sum over leaves of units * min(floor, fan-in)`.
  """
  total = 0
  for leaf in jax.tree.leaves(masks_or_params):
    fan_in = int(np.prod(_shape(leaf)[:-1]))
    total += num_units(leaf) * min(min_kept_per_unit, fan_in)
  return total


def _unit_floor(ranking: jax.Array, n: int) -> jax.Array:
  """`ranking` with each output unit's `n` best entries raised to +inf."""
  shape = ranking.shape
  flat = ranking.reshape(-1, shape[-1]).T  # [units, fan-in]
  n = min(n, flat.shape[1])
  _, best = jax.lax.top_k(flat, n)  # Ties: the lowest index first.
  chosen = jnp.zeros(flat.shape, bool).at[
      jnp.arange(flat.shape[0])[:, None], best].set(True)
  raised = jnp.where(chosen, jnp.inf, flat)
  return raised.T.reshape(shape)


def _filled_like(leaf, value, dtype) -> jax.Array:
  """`value` in the shape of `leaf`, placed like `leaf`, also under `jax.jit`.

  A constant is not placed like anything: under `jax.jit` it would come out
  on one device whatever the sharding of `leaf`. A select on `leaf` whose two
  branches agree comes out sharded like `leaf` (and, inside `shard_map`,
  varying like it); XLA folds it into the constant.
  """
  value = jnp.asarray(value, dtype)
  return jnp.where(jnp.isnan(leaf), value, value)


def _layer_rms_normalized(ranking: jax.Array) -> jax.Array:
  """`ranking / sqrt(mean(ranking ** 2))`, left as is when it is all zero."""
  rms = jnp.sqrt(jnp.mean(jnp.square(ranking)))
  return jnp.where(rms > 0, ranking / jnp.where(rms > 0, rms, 1.0), ranking)


def _score_gradient(g: jax.Array, w: jax.Array) -> jax.Array:
  """`dS = G * W` in float32: the straight-through gradient of the scores."""
  return g.astype(jnp.float32) * w.astype(jnp.float32)


def score_update(state: OptGState, updates: PyTree, params: PyTree, *,
                 criterion: str, mask_lr: schedules.Schedule,
                 momentum) -> Tuple[PyTree, PyTree]:
  """The scores and their momentum buffers after one update.

  "optg": `buf = momentum * buf + G * W;  S = S - mask_lr(t) * buf`.
  "taylor": `S = S - G * W`, no rate and no momentum (`update` resets `S`
  to 0 at each refresh). "magnitude" keeps no scores: nothing changes.
  """
  masks = state.masks
  if criterion == "optg":
    lr = jnp.asarray(mask_lr(state.count), jnp.float32)

    def new_buffer(g, w, m, buf):
      if m is None:
        return None
      score_grad = _score_gradient(g, w)
      return momentum * buf + score_grad

    buffers = jax.tree.map(new_buffer, updates, params, masks,
                           state.momentum)
    scores = jax.tree.map(
        lambda m, s, b: None if m is None else s - lr * b,
        masks, state.scores, buffers, is_leaf=lambda x: x is None)
    return scores, buffers
  if criterion == "taylor":
    scores = jax.tree.map(
        lambda m, s, g, w: None if m is None else s - _score_gradient(g, w),
        masks, state.scores, updates, params, is_leaf=lambda x: x is None)
    return scores, state.momentum
  return state.scores, state.momentum


def ranking_keys(scores: PyTree, params: PyTree, masks: PyTree, *,
                 criterion: str, score_normalization: Optional[str],
                 min_kept_per_unit: int) -> PyTree:
  """What the top-k ranks: the scores (`|W|` for "magnitude"), as the paper.

  Opt-in: "layer_rms" divides each layer's by its root-mean-square, and
  `min_kept_per_unit` raises each unit's best `n` to +inf.
  """
  keys = scores
  if criterion == "magnitude":
    keys = jax.tree.map(lambda w, m: None if m is None else jnp.abs(w),
                        params, masks)
  if not score_normalization and not min_kept_per_unit:
    return keys  # The paper.

  def one(leaf):
    leaf = leaf.astype(jnp.float32)
    if score_normalization == "layer_rms":
      leaf = _layer_rms_normalized(leaf)
    if min_kept_per_unit and leaf.ndim >= 1:
      leaf = _unit_floor(leaf, min_kept_per_unit)
    return leaf

  return jax.tree.map(lambda r: None if r is None else one(r), keys,
                      is_leaf=lambda x: x is None)


def selected_masks(keys: PyTree, sparsity, hint: topk.TopKHint, *,
                   structure: Optional[nm.NM], indivisible: str,
                   axis_name: Optional[topk.AxisName], topk_layout: str
                   ) -> Tuple[PyTree, topk.TopKHint]:
  """The masks a refresh draws and the next search's hint.

  The global top-k of `keys` at `sparsity` (`topk.warm_topk_masks`), or,
  with `structure`, progressive N:M masks at the share `sparsity` of the
  pattern's own (`nm.progressive_nm_masks`).
  """
  if structure is not None:
    nm_sparsity = (structure.m - structure.n) / structure.m
    share = jnp.clip(jnp.asarray(sparsity, jnp.float32) /
                     jnp.float32(nm_sparsity), 0.0, 1.0)
    return nm.progressive_nm_masks(keys, structure.n, structure.m, share,
                                   indivisible=indivisible), hint
  return topk.warm_topk_masks(keys, sparsity, hint, axis_name=axis_name,
                              layout=topk_layout)


def masks_after_update(draw: Callable[[], Any], kept: Any, due, refresh,
                       step, update_every: int,
                       due_call: str = "optg.refresh_due(step, update_every, "
                       "total_steps)") -> Tuple[Any, Any]:
  """`(draw() if due else kept, due)`: the masks and hint of the next step.

  `due` says whether this update refreshes. Run op by op, a Python branch;
  traced, a select (`refresh=True`, or `update_every=1`) or a `lax.cond`.
  `refresh=False` draws nothing and gives `due=False` (op by op, a due
  refresh is a ValueError naming `due_call`; traced, the caller's word is
  trusted).
  """
  traced = is_traced(due)
  if refresh is False:
    if not traced and bool(due):
      raise ValueError(
          f"refresh=False at step {int(step)}, whose update refreshes the "
          f"masks (update_every={update_every}); pass refresh={due_call}")
    return kept, False  # The caller's word: no top-k in this step.
  if not traced:
    return (draw() if bool(due) else kept), due
  if refresh or update_every == 1:
    # A step that may refresh: a select of the new masks costs less than a
    # branch, whose predicate the host waits for and whose operands XLA
    # copies.
    return jax.tree.map(lambda new, old: jnp.where(due, new, old), draw(),
                        kept), due
  return jax.lax.cond(due, draw, lambda: kept), due


def mask_transform(sparsity: schedules.ScalarOrSchedule,
                   mask_learning_rate: schedules.ScalarOrSchedule,
                   *,
                   momentum: float = 0.9,
                   update_every: Optional[int] = None,
                   where: Optional[Where] = None,
                   criterion: str = "optg",
                   score_normalization: Optional[str] = None,
                   min_kept_per_unit: Optional[int] = None,
                   axis_name: Optional[topk.AxisName] = None,
                   structure=None,
                   indivisible: str = "dense",
                   total_steps: Optional[int] = None,
                   topk_layout: str = "leaves"
                   ) -> optax.GradientTransformation:
  """OptG: learns global top-k masks from accumulated gradient-driven scores.

  The scores accumulate the first-order criterion `G * W` with SGD momentum
  (no weight decay) at rate `mask_learning_rate`, each term measured on the
  current sparse network; every `update_every` steps the masks become the
  global top-k of the scores at `sparsity(t + 1)`, so layer-wise sparsities
  are learned. The updates passed on are the gradients masked by the masks in
  force, so pruned weights receive no loss gradient (weight decay added
  downstream still reaches them). The model must run on
  `apply_masks(params, get_masks(opt_state))` and the updates given to this
  transformation must be the gradients with respect to those masked weights;
  wrap the chain in `keep_sparse` and the params themselves are that sparse
  network, so the masking cannot be forgotten. It must come first in its
  chain (reading the masks of a chain where it does not is an error).

  The model a run ends with is its weights with the masks its last step
  trained with, `trained_masks(opt_state)`. With `total_steps` known (a
  `sigmoid_sparsity_schedule` brings it), no refresh follows the last step,
  so `get_masks` gives those masks too at the end of the run.

  With `criterion="magnitude"` the same schedule and refresh cadence keep the
  largest `|W|` (of the params passed to `update`) instead: gradual magnitude
  pruning, the usual baseline. It keeps no scores.

  With `criterion="taylor"` (opt-in, not in the paper: its ablation) the
  top-k ranks the one-shot first-order Taylor criterion OptG starts from,
  the same straight-through `-G * W` summed over the steps since the last
  refresh only: the scores restart from 0 after every refresh, with no
  learning rate and no momentum. A refresh every step ranks the last step's
  `-G * W` alone. It isolates what accumulating the criterion over
  training (OptG's scores) adds.

  Args:
    sparsity: the sparsity of each refresh, a Python number in [0, 1) or a
      schedule `step -> sparsity` (see `sigmoid_sparsity_schedule`),
      evaluated at `t + 1` for the refresh after step `t`. Not an array:
      `optax.inject_hyperparams` would evaluate a schedule at `t`, one
      refresh late; pass it `static_args=optg.STATIC_ARGS`.
    mask_learning_rate: the scores' learning rate, a number >= 0 or a
      schedule (see `supermask_learning_rate`). Used by "optg" only.

      Both are checked here, on the host, even when `mask_transform` is
      built inside a traced function: a number (NaN, a negative rate, a
      sparsity outside [0, 1) is a ValueError) and, with `total_steps`
      known, a schedule at every step of the run (the first step where it
      is non-finite or out of range is named; `check_schedules`). Trusted
      in the compiled step: a schedule of a run whose `total_steps` is not
      known (it cannot be checked) or that cannot run on the host, and a
      traced value, such as the rate `optax.inject_hyperparams` passes
      from inside `jax.jit`.
    momentum: the scores' momentum (no Nesterov). Used by "optg" only.
    update_every: refresh the masks when `(t + 1) % update_every == 0`; the
      reference refreshes once per epoch. None: 1, every step.
    where: `where(path, leaf) -> bool` selects the prunable leaves, `path`
      being a '/'-joined key path such as 'Conv_0/kernel'. Default: leaves
      with `ndim >= 2` (conv and dense kernels). Flax NNX state (as
      `nnx.Optimizer` passes it) is unwrapped first: `path` is then
      'conv1/kernel' and `leaf` the array. Selecting no leaf is an error
      (`init` raises ValueError naming the paths it saw).
    criterion: "optg" (the paper), "magnitude" or "taylor" (see above).
    score_normalization: opt-in, not in the paper. None (the paper: rank the
      raw scores) or "layer_rms": each layer's ranking is divided by its
      root-mean-square before the global top-k, so layers whose scores are
      large only because their `G * W` is noisy (a small stem, 1x1
      shortcuts, the classifier) no longer dominate both tails. The scores
      themselves are unchanged.
    min_kept_per_unit: opt-in, not in the paper. None or 0 (the paper; None
      by default so that `optax.inject_hyperparams` leaves it static) or a floor
      `n`: every output unit (last kernel axis: a dense layer's output, a
      conv's output channel) keeps its `n` best-ranked input weights at
      every refresh, whatever the global ranking; the rest of the `k` kept
      weights are chosen globally as usual, so the count stays exactly
      `k`. No layer, channel or class is ever left without weights. If the
      floors add up to more than `k` (see `forced_count`), the top-k cuts
      among them by position and some units lose their floor; a constant
      sparsity is checked here.
    axis_name: None, or, when `update` runs inside `jax.shard_map` with the
      prunable params, their gradients and this state sharded over a mesh
      axis, that axis's name (or a tuple of names): the masks are then the
      global top-k of all shards (see `topk.topk_masks`, which also gives the
      tie-break order). Not needed under `jax.jit`, where sharded arrays are
      partitioned by XLA. With `min_kept_per_unit`, each unit's inputs must
      be whole on every device (a kernel sharded on its last axis); not
      supported with `score_normalization`.
    structure: None (the paper: unstructured masks) or an N:M pattern,
      `optg.NM(2, 4)` or "2:4": the masks are then N:M along each kernel's
      reduction axis (a conv's input channels, a dense layer's inputs; see
      `nm.reduction_axis`), reached gradually. `sparsity(t + 1)` is the
      sparsity of the N:M-able weights, up to `(m - n) / m` (pass a
      schedule that rises to it, e.g. `sigmoid_sparsity_schedule(0.5, ...)`
      for 2:4); each refresh prunes the share `sparsity / ((m - n) / m)` of
      the groups of `m` to their `n` best-ranked entries and leaves the
      others dense, choosing the groups whose best pruned entry ranks
      lowest (exactly `round(share * G)` groups; see
      `nm.progressive_nm_masks`). The scores, their update and the
      criteria are unchanged; "magnitude" gives the N:M magnitude baseline.
      Not supported with `min_kept_per_unit` or `axis_name`.
    indivisible: with `structure`, what to do with a kernel whose reduction
      axis is not a multiple of `m` (a 3-channel RGB stem): "dense" (the
      default) leaves it dense, "error" raises at `init`.
    total_steps: the run's number of updates: no refresh after the last one
      (its masks would be trained by no step). None: the sparsity schedule's
      own `total_steps` when it has one (`sigmoid_sparsity_schedule`'s:
      epochs x steps per epoch), else unbounded. When it is known, a run
      whose masks are never refreshed before the end is a ValueError, its
      schedules are checked at each of its steps (see above), and a
      `sigmoid_sparsity_schedule` whose last trained masks fall short of
      its target by more than `TARGET_TOLERANCE` is a warning naming the
      `beta` or number of epochs that would reach it.
    topk_layout: how the refresh's top-k reads the scores (`topk.topk_masks`'s
      `layout`): "leaves" (the default; each in its own shape, sharded or
      not) or "flat" (concatenated first, a fixed number of passes and no
      loop on the device: several times faster on a GPU, slower on the
      CPU; for unsharded scores). The masks are the same.

  With `optax.inject_hyperparams`, pass `static_args=optg.STATIC_ARGS`: the
  scores' learning rate and momentum can then be injected, and the refreshes
  are those of the plain transform.

  Choosing the refresh on the host. Under `jax.jit` the step count is on
  the device, so by default a compiled step decides there whether it
  refreshes: a `lax.cond` (or, with `update_every=1`, a select), whose
  predicate an accelerator's host waits for in the middle of the step. A
  loop that knows its step can decide instead: `update` (and `optax.chain`,
  `inject_hyperparams`, `keep_sparse` around it) takes the extra argument
  `refresh`, a Python bool, static in the compiled step:

    @functools.partial(jax.jit, static_argnames="refresh")
    def step(params, opt_state, batch, refresh): ...
        tx.update(grads, opt_state, params, refresh=refresh) ...

    params, opt_state = step(params, opt_state, batch,
                             refresh=optg.refresh_due(t, update_every,
                                                      total_steps))

  `refresh=False` compiles a step with no top-k and no branch at all: the
  caller's word that this update does not refresh (called op by op, a due
  refresh refused is a ValueError; under `jit` it is trusted).
  `refresh=True` compiles the top-k and takes its masks where the step
  count says the refresh is due (a select, no branch), so it is correct at
  any step. Two compilations, the masks and states bit for bit those of
  `refresh=None`.

  Returns:
    An `optax.GradientTransformation` whose state is an `OptGState`.

  Raises:
    ValueError: for invalid arguments, with what to pass to
      `optax.inject_hyperparams` when an argument arrives as an array.
  """
  update_every, total_steps = checked_period(sparsity, update_every,
                                             total_steps)
  topk.check_layout(topk_layout, axis_name)
  min_kept_per_unit, structure = checked_options(
      sparsity, momentum, criterion, score_normalization, min_kept_per_unit,
      axis_name, structure, indivisible)
  check_schedules(sparsity, mask_learning_rate, total_steps, criterion)
  where = default_where if where is None else where
  update_scores = functools.partial(
      score_update, criterion=criterion, momentum=momentum,
      mask_lr=schedules.as_schedule(mask_learning_rate))
  rank = functools.partial(
      ranking_keys, criterion=criterion,
      score_normalization=score_normalization,
      min_kept_per_unit=min_kept_per_unit)
  select = functools.partial(
      selected_masks, structure=structure, indivisible=indivisible,
      axis_name=axis_name, topk_layout=topk_layout)

  def sparsity_at(step):
    # A constant stays a Python number so that the top-k count is exact.
    return sparsity(step) if callable(sparsity) else sparsity

  def init_fn(params):
    params = unwrap_nnx(params)  # Flax NNX state: `where` sees the arrays.
    masks = prunable_tree(params,
                           where, lambda p: _filled_like(p, True, bool))
    _check_prunable(params, masks, sparsity, min_kept_per_unit, structure,
                    indivisible)
    nothing = jax.tree.map(lambda _: None, masks)
    zeros = lambda: prunable_tree(
        params, where, lambda p: _filled_like(p, 0, jnp.float32))
    scores = nothing if criterion == "magnitude" else zeros()
    buffers = zeros() if criterion == "optg" else nothing
    return OptGState(count=jnp.zeros([], jnp.int32), scores=scores,
                     momentum=buffers, masks=masks, trained_masks=masks,
                     topk_hint=topk.empty_hint())

  def update_fn(updates, state, params=None, refresh=None, **extra_args):
    del extra_args  # Those of other transformations of the chain.
    if params is None:
      raise ValueError("mask_transform needs the params: call "
                       "update(updates, state, params)")
    check_refresh(refresh)
    wrapped_updates = updates
    updates, state, params = map(unwrap_nnx, (updates, state, params))
    scores, buffers = update_scores(state, updates, params)
    next_step = optax.safe_int32_increment(state.count)
    due = next_step % update_every == 0
    if total_steps is not None:  # No refresh after the run's last step.
      due &= next_step < total_steps
    draw = lambda: select(rank(scores, params, state.masks),
                          sparsity_at(next_step), state.topk_hint)
    (masks, hint), due = masks_after_update(
        draw, (state.masks, state.topk_hint), due, refresh, state.count,
        update_every)
    if criterion == "taylor" and due is not False:
      # The next period sums afresh.
      scores = jax.tree.map(
          lambda s: None if s is None else jnp.where(due, 0.0, s), scores,
          is_leaf=lambda x: x is None)
    masked_updates = zero_pruned(wrapped_updates, state.masks)
    return masked_updates, OptGState(count=next_step, scores=scores,
                                     momentum=buffers, masks=masks,
                                     trained_masks=state.masks,
                                     topk_hint=hint)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_prunable(params, masks, sparsity, min_kept_per_unit, structure,
                    indivisible) -> None:
  """Refuses an `init` whose `where` selects nothing, or leaves the N:M
  pattern nothing to prune, or whose unit floors keep more than `k`."""
  if not jax.tree.leaves(masks):
    raise ValueError(nothing_selected_message(params))
  if structure is not None:
    odd = nm.indivisible_leaves(masks, structure.m)
    if odd and indivisible == "error":
      raise ValueError(
          f"N:M {structure}: the reduction axis of "
          + ", ".join(f"'{path}' ({length})" for path, length in odd)
          + f" is not a multiple of {structure.m}; pass "
          "indivisible='dense' to leave such kernels dense")
    if len(odd) == len(jax.tree.leaves(masks)):
      raise ValueError(f"N:M {structure}: no prunable kernel has a "
                       f"reduction axis that is a multiple of "
                       f"{structure.m}")
  if min_kept_per_unit and not callable(sparsity):
    total = sum(int(np.size(m)) for m in jax.tree.leaves(masks))
    forced = forced_count(masks, min_kept_per_unit)
    if forced > topk.num_to_keep(sparsity, total):
      raise ValueError(
          f"min_kept_per_unit={min_kept_per_unit} keeps {forced} weights, "
          f"more than the {topk.num_to_keep(sparsity, total)} that "
          f"sparsity {sparsity} keeps")


def nothing_selected_message(params: PyTree,
                             name: str = "mask_transform") -> str:
  """Why `where` selected nothing: the paths and shapes it was shown.

  `name`: the transformation that says it (`mask_transform`, "rigl"...).
  """
  seen = [(path_to_str(path), _shape(leaf)) for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]]
  listed = ", ".join(f"{p or '(root)'} {list(s)}" for p, s in seen[:8])
  if len(seen) > 8:
    listed += f", and {len(seen) - 8} more"
  hint = ""
  if seen and all(len(s) <= 1 for _, s in seen):
    hint = (" Every leaf is a vector: inside optax.flatten the transform "
            f"sees one flat vector; put {name} outside optax.flatten"
            " (flatten only the transformations after it).")
  return (f"{name}: `where` selected no leaf to prune, so nothing "
          f"would be pruned; it saw {len(seen)} "
          f"{'leaf' if len(seen) == 1 else 'leaves'}: {listed or 'none'}."
          + hint)
