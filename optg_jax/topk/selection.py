"""The selection: `topk_masks`, `warm_topk_masks` and what they share.

`_select` checks the arguments and, called outside `jax.jit`, compiles the
selection once per shapes and layout (`_select_compiled`). `_select_traced`
maps the scores to keys, counts them with a `Counter` (leaf by leaf, or
concatenated for `layout="flat"`), finds the threshold and the tie cut
(adaptive or fixed-pass) and builds the masks and the next hint.
"""

import functools
from typing import Any, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from optg_jax.topk.counting import Counter
from optg_jax.topk.fixed import fixed_passes
from optg_jax.topk.fixed import fixed_threshold_search
from optg_jax.topk.keys import order_preserving_keys
from optg_jax.topk.search import threshold_search
from optg_jax.topk.search import TopKHint
from optg_jax.topk.sharding import AxisName
from optg_jax.topk.sharding import sharded_leaves
from optg_jax.topk.sparsity import check_sparsity
from optg_jax.topk.sparsity import num_to_keep
from optg_jax.topk.sparsity import Sparsity
from optg_jax.topk.sparsity import traced_num_to_keep
from optg_jax.topk.ties import fixed_tie_cut
from optg_jax.topk.ties import tie_cut

PyTree = Any

_MAX_ENTRIES = 2**31 - 1
LAYOUTS = ("leaves", "flat")


def check_layout(layout, axis_name) -> None:
  """Raises ValueError for a `layout` not in LAYOUTS or used with
  `axis_name`."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if layout == "flat" and axis_name is not None:
    raise ValueError("layout='flat' is not supported with axis_name (each "
                     "shard_map shard would be concatenated on its own)")


def _select(scores, sparsity, axis_name, hint, layout="leaves"):
  """The masks, the hint for the next selection, and the passes taken."""
  check_sparsity(sparsity)
  check_layout(layout, axis_name)
  leaves = jax.tree.leaves(scores)
  if not leaves or axis_name is not None or any(
      isinstance(x, jax.core.Tracer)
      for x in jax.tree.leaves((scores, sparsity, hint))):
    return _select_traced(scores, sparsity, axis_name, hint, layout)
  # Called op by op: one compiled selection per shapes and layout, instead
  # of its loops being traced and compiled anew at every call. The count is
  # exact on the host; the traced selection checks the size.
  total = sum(int(np.prod(np.shape(leaf))) for leaf in leaves)
  k = jnp.int32(num_to_keep(sparsity, min(total, _MAX_ENTRIES)))
  return _select_compiled(scores, k, hint, layout)


@functools.partial(jax.jit, static_argnums=3)
def _select_compiled(scores, k, hint, layout):
  return _select_traced(scores, None, None, hint, layout, k=k)


def _select_traced(scores, sparsity, axis_name, hint, layout, k=None):
  """`_select` as traced; `k`, when given, replaces the count of `sparsity`."""
  leaves, treedef = jax.tree.flatten(scores)
  if not leaves:
    return scores, hint, jnp.zeros([], jnp.int32)
  sharded, shards, names = sharded_leaves(leaves, axis_name)
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  global_sizes = [size * (shards if s else 1)
                  for size, s in zip(sizes, sharded)]
  total = sum(global_sizes)
  if total > _MAX_ENTRIES:
    raise ValueError(
        f"topk_masks supports at most {_MAX_ENTRIES} scores, got {total}")
  if total == 0:
    return (jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), scores),
            hint, jnp.zeros([], jnp.int32))

  if k is None and isinstance(sparsity, jax.core.Tracer):
    k = traced_num_to_keep(sparsity, total)
  elif k is None:
    k = jnp.int32(num_to_keep(sparsity, total))

  keys = [order_preserving_keys(leaf) for leaf in leaves]
  fixed = layout == "flat"
  flat = fixed and len(leaves) > 1
  if flat:  # One vector in leaf order: the same flat positions.
    keys = [jnp.concatenate([key.reshape(-1) for key in keys])]
    counter = Counter(keys, [False], names, [total], [total])
  else:
    counter = Counter(keys, sharded, names, sizes, global_sizes)
  if fixed:  # Passes fixed in number: no loop, no branch.
    search = fixed_threshold_search(counter, k)
    cut = fixed_tie_cut(counter, search.lo, k - search.n_hi)
    passes = jnp.int32(fixed_passes(total))
  else:
    search = threshold_search(counter, k, hint)
    ties_to_keep = k - search.n_hi
    cut = lax.cond((search.n_lo - search.n_hi > ties_to_keep) & (k > 0),
                   lambda: tie_cut(counter, search.lo, ties_to_keep),
                   lambda: jnp.full_like(k, total))
    passes = search.passes
  threshold = search.lo
  # k == 0 has no threshold: no key is "at least k-th largest".
  masks = [m & (k > 0) for m in counter.masks(threshold, cut)]
  if flat:
    ends = np.cumsum(sizes)[:-1].tolist()
    masks = [part.reshape(np.shape(leaf)) for part, leaf in
             zip(jnp.split(masks[0], ends), leaves)]
  # k == 0 keeps nothing; its bracket ends at the largest key, which is
  # not a threshold to start the next search from.
  if hint is not None:
    hint = TopKHint(
        threshold=jnp.where(k > 0, threshold, hint.threshold),
        previous=jnp.where(k > 0, hint.threshold, hint.previous),
        selections=jnp.where(k > 0, jnp.minimum(hint.selections + 1, 2),
                             hint.selections).astype(jnp.int32))
  return jax.tree.unflatten(treedef, masks), hint, passes


def topk_masks(scores: PyTree, sparsity: Sparsity,
               axis_name: Optional[AxisName] = None,
               layout: str = "leaves") -> PyTree:
  """Exact global top-k masks over a pytree of scores.

  Keeps exactly `k = N - round(sparsity * N)` entries, `N` being the number of
  entries over all leaves: the highest scores first, ties at the threshold
  broken by flat position (lowest index within the leaf order first). The
  k-th largest score is found by counting passes over order-preserving
  32-bit keys: each pass counts the keys above a few candidate thresholds
  at once and narrows the bracket around the threshold (evenly, or where
  the counts say it lies), so the cost is linear in `N` and no sort or
  concatenation happens. Pure and jittable. `warm_topk_masks` gives the
  same masks starting from where the last selection ended.

  Under `jax.jit`, scores sharded over a mesh are counted shard by shard
  (each pass all-reduces scalar counts; no leaf is gathered onto one device)
  and the masks come out sharded like the scores, identical to the unsharded
  result.

  Inside `jax.shard_map`, each call sees only its shards of the scores. Pass
  the mesh axis they are sharded over as `axis_name`: the counts are summed
  over it, so `N` and `k` are those of the whole sharded pytree and the
  global count is exactly `k`. A leaf that does not vary over `axis_name`
  (replicated) is counted once. The tie-break order is then: leaf order,
  then the shard's index along `axis_name`, then the flat position within
  the shard. That is the global row-major order for a leaf sharded on its
  first axis; for one sharded on another axis (a column-sharded kernel) it
  differs, so the masks equal the unsharded ones except for which scores
  equal to the threshold are kept. Under `shard_map(..., check_vma=False)`
  every leaf is taken to be sharded over `axis_name`, and scores sharded
  without `axis_name` cannot be told from replicated ones: each shard would
  get its own top-k. With `check_vma=True` (the default) that case is a
  ValueError.

  Args:
    scores: a pytree of float arrays (float32, bfloat16 or float16; wider
      floats are compared after rounding to float32). `None` leaves pass
      through as `None`.
    sparsity: the fraction of entries to prune. A concrete number must be in
      [0, 1) (else ValueError); a traced value is trusted to be.
    axis_name: inside `jax.shard_map`, the mesh axis name (or tuple of
      names) that the scores are sharded over; None (the default) elsewhere.
    layout: "leaves" (the default) counts each leaf in its own shape, as
      described above. "flat", for accelerators, concatenates the keys of
      all leaves into one vector first (one copy of the scores), so that
      each pass is a few large operations instead of a few per leaf (on a
      GPU a pass over ResNet-50's 54 kernels costs more in kernel launches
      than in reading the scores), and takes a fixed number of passes
      (`fixed_passes`: a radix select of the key, four bits a pass, then
      of the tie cut's position), with no loop or branch on the device. On
      the CPU it is slower (more passes than the search). The masks are the
      same. Under `jax.jit` it gathers sharded scores (use "leaves"); not
      supported with `axis_name`.

  Returns:
    A pytree of bool arrays with the structure of `scores` (`None` where
    `scores` has `None`), True for kept entries.
  """
  return _select(scores, sparsity, axis_name, None, layout)[0]


def warm_topk_masks(scores: PyTree, sparsity: Sparsity, hint: TopKHint,
                    axis_name: Optional[AxisName] = None,
                    layout: str = "leaves") -> Tuple[PyTree, TopKHint]:
  """`topk_masks`, starting the search from where the last ones ended.

  Between two refreshes of a training run the scores, and so the
  threshold, move little. The first counting pass looks around the last
  threshold moved by its last move (at several distances at once), which
  leaves a narrow bracket, and the next passes interpolate within it; when
  the scores moved a lot, the search widens and goes on as the cold one
  does. The masks are exactly those of `topk_masks(scores, sparsity,
  axis_name)` (same count, same tie rule) whatever the hint holds. With
  `layout="flat"` the passes are fixed in number and the hint saves none;
  it is still updated, so that the layouts can be switched.

  Args:
    scores: as for `topk_masks`.
    sparsity: as for `topk_masks`.
    hint: the `TopKHint` this function returned last time for these
      scores, or `empty_hint()` at the start.
    axis_name: as for `topk_masks`.
    layout: as for `topk_masks`.

  Returns:
    `(masks, hint)`: the masks of `topk_masks` and the hint for the next
    call.
  """
  masks, hint, _ = _select(scores, sparsity, axis_name, hint, layout)
  return masks, hint


def selection_passes(scores: PyTree, sparsity: Sparsity,
                     hint: Optional[TopKHint] = None,
                     axis_name: Optional[AxisName] = None,
                     layout: str = "leaves") -> jax.Array:
  """How many passes over the scores the threshold search takes (int32):
  cold without `hint`, warm with it. For benchmarks and tests."""
  return _select(scores, sparsity, axis_name, hint, layout)[2]
