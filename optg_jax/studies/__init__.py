"""The study and diagnosis tools behind `launch/study.py` and
`launch/diagnose.py`:

  study        a grid of harness runs (methods x sparsities x seeds), resumed
               run by run, with its table of results
  report       the study's aggregated tables, plots and document sections
  diagnostics  refresh statistics per layer (what each refresh prunes and
               revives, and how far the scores move)

Needs the `train` extra (`pip install 'optg_jax[train]'`).
"""

from optg_jax import extras

extras.require(extras.STUDIES, "optg_jax.studies")
