"""RigL and SET: sparse from the first step, masks moved by drop and grow.

The two dynamic sparse training methods a user would otherwise pick, in
OptG's family: the same `OptGState` (masks in force, masks trained, the
step count), the same `refresh` chosen on the host, the same tie rule as
the top-k, so `get_masks`, `trained_masks`, `keep_sparse`, the reports and
the harness work with them unchanged.

- RigL (Evci et al., 2020, "Rigging the Lottery"): each layer drops its
  active weights of smallest `|W|` and grows as many inactive ones of
  largest `|G|`, `G` the dense gradient `dL/d(W * M)`.
- SET (Mocanu et al., 2018): the same drop; growth at random.

Each layer keeps a fixed number of weights from step 0 (`layer_budgets`:
uniform, or Erdős–Rényi-Kernel, `erk_densities`), drawn at random at
`init`. After step `t` (0-based), when `(t + 1) % delta_t == 0` and
`t + 1 <= t_end` (and `t + 1 < total_steps`), every layer swaps
`floor(f(t + 1) * kept)` weights, `f(t) = alpha / 2 * (1 + cos(pi * t /
t_end))` (`drop_fraction`):

  survivors = the kept - n of the active weights with the largest |W|
              (the weights step t ran with, before its update)
  grown     = the n entries outside `survivors` with the largest |G|
              (RigL) or random keys (SET): a weight just dropped may regrow
  M_{t+1}   = survivors | grown               (exactly `kept` per layer)

Ties go to the lowest flat index and a NaN ranks highest, as in
`topk.topk_masks`. Grown weights start at zero with their optimizer state
(momentum) reset: `regrow_at_zero` does it for the chain it wraps, and
`dynamic_sparse` builds the whole thing:

  tx = optg.dynamic_sparse("rigl", 0.9, optax.chain(
      optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9)),
      total_steps=num_steps)

`G` must be the gradient with respect to the masked weights `W * M`, taken
where the model runs (`jax.grad` of the loss at `apply_masks(params,
masks)`, or at the params under `keep_sparse`): it is nonzero at the
inactive weights too. A gradient taken through the mask (`jax.grad` of a
loss that applies the masks itself) is zero there, and growth could only
bring back what the drop just removed.

Where this differs from the RigL release, by choice: the release skips the
weights' update on a mask-update step (its gradient serves the growth
only); here that step's update is applied, with the masks in force, and
the new masks take effect from the next step. The drop ranks the weights
the step ran with, as the release's does. The release also updates at its
begin step 0, before any training, where the masks are random anyway; the
first update here follows step `delta_t - 1`.
"""

import functools
import math
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optg_jax import masks as masks_lib
from optg_jax import topk
from optg_jax.topk.keys import ALL_BITS
from optg_jax.transform import nothing_selected_message
from optg_jax.transform import prunable_tree
from optg_jax.transform import default_where
from optg_jax.transform import masks_after_update
from optg_jax.transform import OptGState
from optg_jax.transform import zero_pruned
from optg_jax.transform_checks import check_refresh
from optg_jax.tree import unwrap_nnx

PyTree = Any
Shape = Tuple[int, ...]

DYNAMIC_METHODS = ("rigl", "set")
BUDGETS = ("erk", "uniform")
# The share of the run after which the masks no longer move, by default.
DEFAULT_END_FRACTION = 0.75


def erk_densities(shapes: Sequence[Shape], sparsity: float,
                  power: float = 1.0) -> List[float]:
  """Per-layer densities of the Erdős–Rényi-Kernel budget, as RigL's release.

  Each layer's density is `eps * raw`, `raw = (sum(shape) / prod(shape)) **
  power` (a conv kernel's spatial dims included: the "Kernel" of ERK), and
  `eps` makes the kept weights add up to the uniform budget's. A layer whose
  `eps * raw` exceeds 1 is made dense (all layers tied at the largest `raw`
  at once) and `eps` is solved again among the others, the dense layers'
  excess coming off their budget:

    eps = (sum_sparse (N - floor(s N)) - sum_dense floor(s N))
          / sum_sparse raw * N

  Args:
    shapes: the kernels' shapes.
    sparsity: the overall target in [0, 1).
    power: the exponent of `raw` (1: ERK).

  Returns:
    One density in (0, 1] per shape (1.0 for a dense layer).
  """
  topk.num_to_keep(sparsity, 1)  # Checks it is in [0, 1).
  if sparsity == 0:
    return [1.0] * len(shapes)
  sizes = [int(np.prod(s)) for s in shapes]
  raw = [(sum(s) / n) ** power for s, n in zip(shapes, sizes)]
  dense = set()
  while True:
    rhs = divisor = 0.0
    for i, n in enumerate(sizes):
      zeros = math.floor(sparsity * n)
      if i in dense:
        rhs -= zeros
      else:
        rhs += n - zeros
        divisor += raw[i] * n
    if divisor == 0:  # Only at a sparsity too low to leave any layer sparse.
      return [1.0] * len(shapes)
    eps = rhs / divisor
    largest = max(raw[i] for i in range(len(sizes)) if i not in dense)
    if largest * eps <= 1:
      break
    dense |= {i for i in range(len(sizes))
              if i not in dense and raw[i] == largest}
  return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]


def layer_budgets(shapes: Sequence[Shape], sparsity: float,
                  budget: str = "erk", power: float = 1.0) -> List[int]:
  """How many weights each layer keeps: `N - floor(sparsity_l * N)`.

  Args:
    shapes: the kernels' shapes, in the order of the params' leaves.
    sparsity: the overall target in [0, 1).
    budget: "uniform" (every layer at `sparsity`) or "erk"
      (`erk_densities`).
    power: ERK's exponent.

  Returns:
    The kept count of each layer, at least 1 for a layer with a positive
    density.
  """
  if budget not in BUDGETS:
    raise ValueError(f"unknown budget {budget!r}; valid budgets: "
                     f"{', '.join(BUDGETS)}")
  topk.num_to_keep(sparsity, 1)
  sizes = [int(np.prod(s)) for s in shapes]
  if budget == "uniform":  # The float product, as the release floors it.
    return [n - math.floor(float(sparsity) * n) for n in sizes]
  densities = erk_densities(shapes, sparsity, power)
  return [n - math.floor((1.0 - d) * n) for n, d in zip(sizes, densities)]


def drop_fraction(step, alpha: float, t_end: int):
  """RigL's cosine drop fraction `alpha / 2 * (1 + cos(pi * step / t_end))`,
  in float32 (a traced or concrete step)."""
  t = jnp.asarray(step, jnp.float32)
  return (jnp.float32(alpha) / 2 *
          (1 + jnp.cos(jnp.float32(np.pi) * t / jnp.float32(t_end))))


def dynamic_update_due(step: int, delta_t: int, t_end: int,
                       total_steps: Optional[int] = None) -> bool:
  """Whether the update of step `step` (0-based) moves the masks: `(step +
  1) % delta_t == 0`, `step + 1 <= t_end` and `step + 1 < total_steps`.

  What a loop that knows its step passes as `refresh` (see
  `mask_transform`'s "Choosing the refresh on the host").
  """
  done = int(step) + 1
  return (done % int(delta_t) == 0 and done <= int(t_end) and
          (total_steps is None or done < int(total_steps)))


def _top_count(keys: jax.Array, count) -> jax.Array:
  """The `count` largest uint32 `keys` of a flat array, ties to the lowest
  index: exactly `count` entries (a traced count too)."""
  order = jnp.argsort(ALL_BITS - keys, stable=True)
  chosen = jnp.arange(keys.shape[0]) < count
  return jnp.zeros(keys.shape, bool).at[order].set(chosen)


def random_layer_mask(key: jax.Array, shape: Shape, kept: int) -> jax.Array:
  """A mask of `shape` with exactly `kept` entries chosen at random."""
  draws = jax.random.uniform(key, (int(np.prod(shape)),), jnp.float32)
  return _top_count(topk.order_preserving_keys(draws), kept).reshape(shape)


def drop_and_grow(mask: jax.Array, weight: jax.Array, growth: jax.Array,
                  kept: int, swapped) -> jax.Array:
  """One layer's new mask: drop `swapped` of its active weights, grow as many.

  Args:
    mask: the layer's mask in force (exactly `kept` entries set).
    weight: its weights: the active ones of smallest `|weight|` are dropped.
    growth: the growth criterion (RigL `|G|`, SET random draws in [0, 1)):
      among the entries the drop does not keep, the largest are grown.
    kept: the layer's budget.
    swapped: how many to drop and grow (at most `kept`; may be traced).

  Returns:
    The new mask, with exactly `kept` entries set.
  """
  flat = mask.reshape(-1)
  magnitude = topk.order_preserving_keys(jnp.abs(weight).reshape(-1))
  # Inactive entries get key 0, below every active one (|W| >= 0 maps above
  # 2**31), so only active weights survive.
  survivors = _top_count(jnp.where(flat, magnitude, 0), kept - swapped)
  wanted = topk.order_preserving_keys(growth.reshape(-1))
  grown = _top_count(jnp.where(survivors, 0, wanted), swapped)
  return (survivors | grown).reshape(mask.shape)


def _checked(method, sparsity, total_steps, delta_t, alpha, t_end, budget,
             power) -> int:
  """Refuses invalid arguments of `dynamic_sparse_masks`; returns `t_end`."""
  if method not in DYNAMIC_METHODS:
    raise ValueError(f"unknown method {method!r}; valid methods: "
                     f"{', '.join(DYNAMIC_METHODS)}")
  if budget not in BUDGETS:
    raise ValueError(f"unknown budget {budget!r}; valid budgets: "
                     f"{', '.join(BUDGETS)}")
  if callable(sparsity) or isinstance(sparsity, jax.Array):
    raise ValueError(f"{method}: sparsity must be a Python number in "
                     f"[0, 1) (the budget is fixed from step 0), got "
                     f"{type(sparsity).__name__}")
  topk.num_to_keep(sparsity, 1)
  for name, value in (("total_steps", total_steps), ("delta_t", delta_t)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 1:
      raise ValueError(f"{method}: {name} must be an int >= 1, got "
                       f"{value!r}")
  if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
    raise ValueError(f"{method}: alpha must be a number in [0, 1], got "
                     f"{alpha!r}")
  if not (isinstance(power, (int, float)) and power > 0):
    raise ValueError(f"{method}: power must be a number > 0, got {power!r}")
  if t_end is None:
    t_end = max(1, int(DEFAULT_END_FRACTION * total_steps))
  if isinstance(t_end, bool) or not isinstance(t_end, (int, np.integer)) \
      or not 1 <= t_end <= total_steps:
    raise ValueError(f"{method}: t_end must be an int in [1, total_steps="
                     f"{total_steps}], got {t_end!r}")
  return int(t_end)


def dynamic_sparse_masks(sparsity: float, *, method: str, total_steps: int,
                         delta_t: int = 100, alpha: float = 0.3,
                         t_end: Optional[int] = None, budget: str = "erk",
                         where=None, seed: int = 0, power: float = 1.0
                         ) -> optax.GradientTransformationExtraArgs:
  """The masks of RigL or SET, as the first transformation of a chain.

  What `mask_transform` is to OptG: its state is an `OptGState` (no scores,
  no momentum) whose masks are at the budget from `init` on; the updates it
  is given must be the gradients with respect to the masked weights (see
  the module's docstring: not through the mask), and those it passes on
  are them masked by the masks in force. It leaves the
  weights alone: grown weights keep whatever value the params hold, so wrap
  the chain in `regrow_at_zero` (or build it with `dynamic_sparse`) for
  RigL's zero-initialised growth and momentum reset. The model runs on
  `apply_masks(params, get_masks(opt_state))`, or wrap in `keep_sparse`.

  Args:
    sparsity: the target, a Python number in [0, 1): the masks hold it
      from step 0.
    method: "rigl" (grow the largest `|G|`) or "set" (grow at random).
    total_steps: the run's number of updates (no update after the last).
    delta_t: steps between mask updates.
    alpha: the initial drop fraction (cosine-decayed to 0 at `t_end`).
    t_end: the last step whose update may move the masks; default 75% of
      `total_steps`.
    budget: "erk" (Erdős–Rényi-Kernel, the RigL paper's choice) or
      "uniform". RigL's release keeps the first layer dense under a
      uniform budget and sparse under ERK: choose it with `where`.
    where: `where(path, leaf) -> bool` selects the prunable leaves, as in
      `mask_transform` (default: every leaf with `ndim >= 2`).
    seed: of the initial masks and of SET's growth (per step and layer,
      from `jax.random.fold_in`: no random state to carry).
    power: ERK's exponent of `sum(shape) / prod(shape)`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is an
    `OptGState`; `update` takes `refresh` as `mask_transform`'s does (pass
    `dynamic_update_due(step, delta_t, t_end, total_steps)`).
  """
  t_end = _checked(method, sparsity, total_steps, delta_t, alpha, t_end,
                   budget, power)
  where = default_where if where is None else where
  base_key = jax.random.key(seed)
  budgets = functools.partial(layer_budgets, sparsity=sparsity,
                              budget=budget, power=power)

  def init_fn(params):
    params = unwrap_nnx(params)
    shapes = prunable_tree(params, where, lambda p: tuple(jnp.shape(p)))
    treedef = jax.tree.structure(params)
    flat = treedef.flatten_up_to(shapes)  # A shape or None per leaf.
    chosen = [s for s in flat if s is not None]
    if not chosen:
      raise ValueError(nothing_selected_message(params, method))
    kept = iter(budgets(chosen))
    init_key = jax.random.fold_in(base_key, 0)
    leaf = iter(range(len(chosen)))
    masks = [None if s is None else random_layer_mask(
        jax.random.fold_in(init_key, next(leaf)), s, next(kept))
             for s in flat]
    masks = jax.tree.unflatten(treedef, masks)
    nothing = jax.tree.map(lambda _: None, masks)
    return OptGState(count=jnp.zeros([], jnp.int32), scores=nothing,
                     momentum=nothing, masks=masks, trained_masks=masks,
                     topk_hint=topk.empty_hint())

  def new_masks(masks, params, updates, step):
    leaves, treedef = jax.tree.flatten(masks)
    kept = budgets([m.shape for m in leaves])
    prunable = lambda tree: treedef.flatten_up_to(jax.tree.map(
        lambda m, x: None if m is None else x, masks, tree,
        is_leaf=lambda x: x is None))
    weights, grads = prunable(params), prunable(updates)
    fraction = drop_fraction(step, alpha, t_end)
    step_key = jax.random.fold_in(jax.random.fold_in(base_key, 1), step)
    out = []
    for i, (m, w, g, k) in enumerate(zip(leaves, weights, grads, kept)):
      swapped = jnp.floor(fraction * jnp.float32(k)).astype(jnp.int32)
      swapped = jnp.clip(swapped, 0, k)
      if method == "rigl":
        growth = jnp.abs(g.astype(jnp.float32))
      else:
        growth = jax.random.uniform(jax.random.fold_in(step_key, i), m.shape,
                                    jnp.float32)
      out.append(drop_and_grow(m, w, growth, k, swapped))
    return jax.tree.unflatten(treedef, out)

  def update_fn(updates, state, params=None, refresh=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{method} needs the params: call "
                       "update(updates, state, params)")
    check_refresh(refresh)
    wrapped_updates = updates
    updates, state, params = map(unwrap_nnx, (updates, state, params))
    next_step = optax.safe_int32_increment(state.count)
    due = ((next_step % delta_t == 0) & (next_step <= t_end) &
           (next_step < total_steps))
    draw = lambda: (new_masks(state.masks, params, updates, next_step),
                    state.topk_hint)
    (masks, hint), _ = masks_after_update(
        draw, (state.masks, state.topk_hint), due, refresh, state.count,
        delta_t, due_call="optg.dynamic_update_due(step, delta_t, t_end, "
        "total_steps)")
    return zero_pruned(wrapped_updates, state.masks), state._replace(
        count=next_step, masks=masks, trained_masks=state.masks,
        topk_hint=hint)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _grown(old: PyTree, new: PyTree) -> PyTree:
  return jax.tree.map(lambda o, n: None if o is None else n & ~o, old, new,
                      is_leaf=lambda x: x is None)


def _reset_where(state: PyTree, grown: PyTree, params: PyTree) -> PyTree:
  """`state` with every params-shaped float tree (momentum, Adam's moments)
  zeroed where `grown` is set; the masks' own state is left alone."""
  treedef = jax.tree.structure(params)
  shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]
  grown_leaves = treedef.flatten_up_to(grown)

  def params_like(x):
    if isinstance(x, OptGState):
      return True
    if jax.tree.structure(x) != treedef:
      return False
    leaves = jax.tree.leaves(x)
    return all(jnp.shape(a) == s and jnp.issubdtype(jnp.result_type(a),
                                                     jnp.floating)
               for a, s in zip(leaves, shapes))

  def reset(x):
    if isinstance(x, OptGState) or not params_like(x):
      return x
    leaves = [a if g is None else jnp.where(g, jnp.zeros_like(a), a)
              for a, g in zip(jax.tree.leaves(x), grown_leaves)]
    return jax.tree.unflatten(treedef, leaves)

  return jax.tree.map(reset, state, is_leaf=params_like)


def regrow_at_zero(inner: optax.GradientTransformation
                   ) -> optax.GradientTransformationExtraArgs:
  """Wraps a chain of `dynamic_sparse_masks` so grown weights start at zero.

  After the wrapped chain's update, each weight the masks have just grown
  (kept now, not in force before) gets the update that sets it to zero,
  and every params-shaped float tree of the chain's state (SGD's momentum,
  Adam's moments) is zeroed there too, as RigL's release resets the
  momentum of new connections. A weight dropped and grown back in the same
  update is not new and keeps its value. The state is the chain's own.
  Wrapped in `keep_sparse`, the dense value of a grown weight is zero.

  With `refresh=False` (a step the host knows moves no mask) nothing is
  added to the step. Its masks are those of the step that decides on the
  device (`refresh=None`), bit for bit; its weights may differ from them by
  rounding (a unit in the last place a step), as XLA may then fuse each
  weight's update into one multiply-add that the other step's select keeps
  apart.

  Args:
    inner: a chain with `dynamic_sparse_masks` (or `mask_transform`) first.
  """
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("regrow_at_zero needs the params: call "
                       "update(updates, state, params)")
    if extra_args.get("refresh") is False:  # The masks cannot move.
      return inner.update(updates, state, params, **extra_args)
    old = masks_lib.get_masks(state)
    out, state = inner.update(updates, state, params, **extra_args)
    plain_params, plain_out = unwrap_nnx(params), unwrap_nnx(out)
    grown = _grown(old, masks_lib.get_masks(state))
    zeroing = jax.tree.map(
        lambda g, u, p: u if g is None else jnp.where(
            g, -p.astype(u.dtype), u), grown, plain_out, plain_params,
        is_leaf=lambda x: x is None)
    return zeroing, _reset_where(state, grown, plain_params)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def dynamic_sparse(method: str, sparsity: float,
                   optimizer: optax.GradientTransformation, *,
                   total_steps: int, **kwargs
                   ) -> optax.GradientTransformationExtraArgs:
  """RigL or SET with the weights' optimizer: the whole transformation.

  `regrow_at_zero(optax.chain(dynamic_sparse_masks(sparsity, method=method,
  total_steps=total_steps, **kwargs), optimizer))`.

  Args:
    method: "rigl" or "set".
    sparsity: the target, held from step 0.
    optimizer: what updates the weights, e.g. `optax.chain(
      optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))`.
    total_steps: the run's number of updates.
    **kwargs: `dynamic_sparse_masks`'s other arguments (`delta_t`, `alpha`,
      `t_end`, `budget`, `where`, `seed`, `power`).
  """
  return regrow_at_zero(optax.chain(
      dynamic_sparse_masks(sparsity, method=method, total_steps=total_steps,
                           **kwargs), optimizer))
