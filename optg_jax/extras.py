"""Which optional packages the parts of optg_jax beyond the library need.

`pip install optg_jax` installs the library (JAX, NumPy, optax): the
transform, the top-k, the schedules, masks, reports and exports. The
models, the input pipelines, the training harness and the study tools need
the `train` extra (`pip install 'optg_jax[train]'`); importing one of them
without it fails with one line naming the extra, before anything else is
imported.
"""

import importlib.util
from typing import Sequence

# Import names of the `train` extra's packages, as the parts need them.
FLAX = ("flax",)
HARNESS = ("flax", "orbax.checkpoint", "clu", "ml_collections", "absl",
           "tensorflow", "tensorflow_datasets")
STUDIES = HARNESS + ("matplotlib",)


def _missing(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is None
  except ModuleNotFoundError:  # A parent package is missing.
    return True


def require(modules: Sequence[str], part: str) -> None:
  """Raises one ImportError naming the extra if a module is not installed.

  Args:
    modules: import names, e.g. `("flax", "orbax.checkpoint")`.
    part: what needs them, e.g. "optg_jax.harness".
  """
  missing = [m for m in modules if _missing(m)]
  if missing:
    raise ImportError(
        f"{part} needs the training extra ({', '.join(missing)} not "
        "installed): pip install 'optg_jax[train]'")
