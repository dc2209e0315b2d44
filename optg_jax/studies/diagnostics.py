"""What a mask refresh did, layer by layer: the measurements behind RESULTS.md.

`refresh_stats` compares the masks before and after a refresh and describes,
per prunable layer, how many weights were pruned and how many came back
(regrowth) with what magnitudes, the distribution of the scores, and the
signal-to-noise ratio of the criterion accumulated since the last refresh:

  snr = |sum_t x_t| / sqrt(sum_t x_t ** 2),   x_t = G_t * W_t  (one weight)

For terms that are pure zero-mean noise this is about |N(0, 1)| (median
0.67) whatever the number of steps; a consistent signal makes it grow like
the square root of the number of steps. The median over a layer's weights
says whether the scores that decide the next masks carry information.

Everything here is NumPy on the host: it is for studies, not the train step.
"""

from typing import Any, Dict, Optional

import jax
import numpy as np

from optg_jax.tree import path_to_str

PyTree = Any

NOISE_ONLY_SNR = 0.674  # Median of |N(0, 1)|.


def _leaves(tree) -> Dict[str, np.ndarray]:
  return {path_to_str(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _quantiles(x: np.ndarray) -> Dict[str, float]:
  q = np.quantile(x, [0.01, 0.5, 0.99]) if x.size else [np.nan] * 3
  return {"p01": float(q[0]), "p50": float(q[1]), "p99": float(q[2])}


def refresh_stats(old_masks: PyTree, new_masks: PyTree, params: PyTree,
                  scores: Optional[PyTree] = None,
                  criterion_sum: Optional[PyTree] = None,
                  criterion_sumsq: Optional[PyTree] = None
                  ) -> Dict[str, Dict[str, Any]]:
  """Per-layer statistics of one refresh.

  Args:
    old_masks: the masks in force before the refresh (bool, `None` leaves
      skipped), e.g. `get_masks` of the state before the step.
    new_masks: the masks after it.
    params: the dense weights (the params tree; only masked leaves are read).
    scores: the scores the refresh ranked, or None (magnitude pruning).
    criterion_sum: per weight, `sum_t G_t * W_t` since the last refresh.
    criterion_sumsq: per weight, `sum_t (G_t * W_t) ** 2` over the same steps.

  Returns:
    `{layer path: {...}}` with `kept`, `total`, `pruned` (kept before, not
    now), `regrown` (pruned before, kept now), `dead_units` (output units
    with no kept input weight), `regrown_abs_w` (mean |W| of the regrown
    weights), `kept_abs_w` (mean |W| of the weights kept throughout),
    `score` (quantiles p01/p50/p99, when scores are given) and `snr_p50`
    (median SNR of the accumulated criterion, when its sums are given).
  """
  old, new = _leaves(old_masks), _leaves(new_masks)
  weights = {k: v for k, v in _leaves(params).items() if k in new}
  score_leaves = _leaves(scores) if scores is not None else {}
  sums = _leaves(criterion_sum) if criterion_sum is not None else {}
  sumsqs = _leaves(criterion_sumsq) if criterion_sumsq is not None else {}
  stats = {}
  for name, mask in new.items():
    before = old[name].astype(bool)
    mask = mask.astype(bool)
    w = np.abs(weights[name])
    regrown = mask & ~before
    stay = mask & before
    row = {
        "kept": int(mask.sum()),
        "total": int(mask.size),
        "pruned": int((before & ~mask).sum()),
        "regrown": int(regrown.sum()),
        "dead_units": int((~mask.reshape(-1, mask.shape[-1]).any(0)).sum()),
        "regrown_abs_w": float(w[regrown].mean()) if regrown.any() else None,
        "kept_abs_w": float(w[stay].mean()) if stay.any() else None,
    }
    if name in score_leaves:
      row["score"] = _quantiles(score_leaves[name].ravel())
    if name in sums and name in sumsqs:
      denom = np.sqrt(sumsqs[name])
      snr = np.abs(sums[name])[denom > 0] / denom[denom > 0]
      row["snr_p50"] = float(np.median(snr)) if snr.size else None
    stats[name] = row
  return stats
