"""optg_jax: OptG sparse training (Optimizing Gradient-driven Criteria) in JAX.

Use as `import optg_jax as optg`. The library modules import neither
TensorFlow nor the training harness (`optg_jax.train`, `optg_jax.data`).
"""

from optg_jax.dynamic import BUDGETS
from optg_jax.dynamic import drop_fraction
from optg_jax.dynamic import DYNAMIC_METHODS
from optg_jax.dynamic import dynamic_sparse
from optg_jax.dynamic import dynamic_sparse_masks
from optg_jax.dynamic import dynamic_update_due
from optg_jax.dynamic import erk_densities
from optg_jax.dynamic import layer_budgets
from optg_jax.dynamic import regrow_at_zero
from optg_jax.export import export_sparse
from optg_jax.export import load_sparse
from optg_jax.export import sparse_metadata
from optg_jax.export import to_bcoo
from optg_jax.keep_sparse import keep_sparse
from optg_jax.keep_sparse import KeepSparseState
from optg_jax.keep_sparse import trained_params
from optg_jax.nm import NM
from optg_jax.nm import nm_mask
from optg_jax.nm import nm_masks
from optg_jax.nm import reduction_axis
from optg_jax.report import sparsity_report
from optg_jax.report import sparsity_table
from optg_jax.schedules import epochwise_cosine_schedule
from optg_jax.schedules import final_sparsity_shortfall
from optg_jax.schedules import last_refresh_step
from optg_jax.schedules import refresh_due
from optg_jax.schedules import SigmoidSparsity
from optg_jax.schedules import sigmoid_sparsity_schedule
from optg_jax.schedules import supermask_learning_rate
from optg_jax.schedules import TARGET_TOLERANCE
from optg_jax.topk import topk_masks
from optg_jax.topk import TopKHint
from optg_jax.topk import warm_topk_masks
from optg_jax.masks import apply_masks
from optg_jax.transform import CRITERIA
from optg_jax.transform import forced_count
from optg_jax.masks import get_masks
from optg_jax.masks import get_optg_state
from optg_jax.transform import mask_transform
from optg_jax.transform import OptGState
from optg_jax.tree import path_to_str
from optg_jax.transform import SCORE_NORMALIZATIONS
from optg_jax.transform import STATIC_ARGS
from optg_jax.masks import trained_masks

__version__ = "0.1.0"

__all__ = (
    "BUDGETS",
    "CRITERIA",
    "DYNAMIC_METHODS",
    "KeepSparseState",
    "NM",
    "OptGState",
    "SCORE_NORMALIZATIONS",
    "STATIC_ARGS",
    "SigmoidSparsity",
    "TARGET_TOLERANCE",
    "TopKHint",
    "apply_masks",
    "drop_fraction",
    "dynamic_sparse",
    "dynamic_sparse_masks",
    "dynamic_update_due",
    "epochwise_cosine_schedule",
    "erk_densities",
    "export_sparse",
    "final_sparsity_shortfall",
    "forced_count",
    "get_masks",
    "get_optg_state",
    "keep_sparse",
    "last_refresh_step",
    "layer_budgets",
    "load_sparse",
    "mask_transform",
    "nm_mask",
    "nm_masks",
    "path_to_str",
    "reduction_axis",
    "regrow_at_zero",
    "refresh_due",
    "sigmoid_sparsity_schedule",
    "sparse_metadata",
    "sparsity_report",
    "sparsity_table",
    "supermask_learning_rate",
    "to_bcoo",
    "topk_masks",
    "trained_masks",
    "trained_params",
    "warm_topk_masks",
)
