"""Kernel initialisers of the models, by name (settable from a config).

    kernel_init = initializers.get("kaiming_normal")

The names:

- "lecun_normal": Flax's default for `nn.Conv` and `nn.Dense`, a normal
  truncated at 2 standard deviations and rescaled to variance 1 / fan_in.
- "kaiming_normal": PyTorch's `kaiming_normal_(w, mode="fan_in",
  nonlinearity="relu")`, the reference's init: an untruncated normal with
  standard deviation sqrt(2 / fan_in). (Not `nn.initializers.kaiming_normal`,
  which is truncated.)
- "torch_default": PyTorch's default for `nn.Conv2d` and `nn.Linear` kernels,
  `kaiming_uniform_(w, a=sqrt(5))`: uniform on +-1 / sqrt(fan_in).

Flax conv kernels are HWIO and dense kernels (in, out), so fan_in is
height * width * input channels, or the inputs: as in PyTorch, also for a
depthwise conv, whose kernel has one input channel (fan_in = 9 for 3x3).
"""

from typing import Callable, Dict, List

from flax import linen as nn
import jax

Initializer = Callable[..., jax.Array]

_INITIALIZERS: Dict[str, Callable[[], Initializer]] = {
    "lecun_normal": nn.initializers.lecun_normal,
    "kaiming_normal": lambda: jax.nn.initializers.variance_scaling(
        2.0, "fan_in", "normal"),
    "torch_default": lambda: jax.nn.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform"),
}


def names() -> List[str]:
  """The names `get` accepts, sorted."""
  return sorted(_INITIALIZERS)


def get(name: str) -> Initializer:
  """The kernel initialiser called `name`.

  Args:
    name: one of `names()`.

  Returns:
    A JAX initialiser `init(key, shape, dtype)`.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _INITIALIZERS:
    raise ValueError(f"unknown kernel init {name!r}; valid inits: "
                     f"{', '.join(names())}")
  return _INITIALIZERS[name]()
