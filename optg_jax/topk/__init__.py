"""Exact global top-k masks over a pytree of scores, without sorting.

`topk_masks` keeps the `k = N - round(sparsity * N)` highest scores of a whole
pytree (all leaves together). It never sorts and never concatenates the
leaves (unless asked to, `layout="flat"`): each float32 score is mapped to
an unsigned 32-bit key whose integer order is the float order, and the k-th
largest key is found by counting passes, each counting the keys above a few
candidate thresholds at once (counts summed over the leaves) and narrowing
the bracket around the threshold; `warm_topk_masks` starts from where the
last selection ended. Scores equal to that threshold are then cut by
position, lowest flat index (in leaf order) first, by the same kind of
search over positions, so the number of kept entries is always exactly `k`.
Called outside `jax.jit`, the selection is compiled once per shapes.

With `layout="flat"` (for accelerators) the keys of all leaves are
concatenated first and the search takes a fixed number of passes, a radix
select: each pass reads the next four bits of the threshold's key (eight
passes), then of the tie cut's position, so no loop decides on the device
when to stop and a compiled step holds no branch.

Every pass is an elementwise comparison and a sum over each leaf in its own
shape (no leaf is flattened or gathered), so a leaf sharded over a mesh under
`jax.jit` is counted shard by shard and only the scalar counts are
all-reduced. Inside `jax.shard_map`, `axis_name` names the mesh axis the
scores are sharded over and the counts are `psum`-ed over it, which gives the
global top-k of the whole sharded pytree.

This package is pure JAX and knows nothing of optax or of the OptG transform.
One concern a module, each importing only those above it:

  keys       order-preserving uint32 keys of float scores
  sparsity   the exact number of entries a sparsity keeps (host or traced)
  sharding   which leaves are sharded inside `jax.shard_map`
  counting   `Counter`: several counts in one pass over the keys
  bracket    the bracket around the threshold that each pass narrows
  search     the adaptive threshold search, cold or warm (`TopKHint`)
  fixed      the fixed-pass radix select of the threshold (`layout="flat"`)
  ties       the tie cut by flat position, adaptive or fixed-pass
  selection  `topk_masks`, `warm_topk_masks`: checks, layouts, masks, hint
"""

from optg_jax.topk.fixed import fixed_passes
from optg_jax.topk.keys import order_preserving_keys
from optg_jax.topk.search import empty_hint
from optg_jax.topk.search import TopKHint
from optg_jax.topk.selection import check_layout
from optg_jax.topk.selection import LAYOUTS
from optg_jax.topk.selection import selection_passes
from optg_jax.topk.selection import topk_masks
from optg_jax.topk.selection import warm_topk_masks
from optg_jax.topk.sharding import AxisName
from optg_jax.topk.sparsity import num_to_keep
from optg_jax.topk.sparsity import Sparsity

# Internal, kept as `topk.<name>` for the tests and benchmarks.
from optg_jax.topk.sparsity import traced_num_to_keep as _traced_num_to_keep
