"""The Flax models of the paper: ImageNet ResNets and MobileNets, CIFAR nets,
and the LeNets for small studies (Fashion-MNIST).

    from optg_jax import models
    model = models.create("resnet50", num_classes=1000, dtype=jnp.bfloat16)
    variables = model.init(rng, jnp.zeros((1, 224, 224, 3)), train=False)
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=["batch_stats"])

All models take NHWC images, hold float32 parameters whatever the compute
`dtype`, return float32 logits, and keep BatchNorm statistics in the
`batch_stats` collection. They carry no sparsity logic: OptG masks the
weights before `apply` (see `optg_jax.apply_masks`).

"resnet50_cifar" is the OptG reference's CIFAR-10 "ResNet-50" (a 6n + 2
CIFAR ResNet, n = 8, with zero-padding shortcuts and its initialisation),
not the ImageNet one. Every model's kernel init can be chosen by name
(`kernel_init`, `head_init`; see `optg_jax.models.initializers`); the
ResNets, VGG and MobileNets also take `head_bias`, and the ResNets
`zero_init_residual`.
"""

from optg_jax import extras

extras.require(extras.FLAX, "optg_jax.models")

import dataclasses
from typing import Any, Callable, Dict, List, Tuple

import jax.numpy as jnp

from optg_jax.models import initializers
from optg_jax.models.lenet import LeNet300100
from optg_jax.models.lenet import LeNet5
from optg_jax.models.mobilenet import MobileNetV1
from optg_jax.models.mobilenet import MobileNetV2
from optg_jax.models.resnet import BasicBlock
from optg_jax.models.resnet import BottleneckBlock
from optg_jax.models.resnet import ResNet
from optg_jax.models.resnet import ResNet101
from optg_jax.models.resnet import ResNet152
from optg_jax.models.resnet import ResNet18
from optg_jax.models.resnet import ResNet20Cifar
from optg_jax.models.resnet import ResNet32Cifar
from optg_jax.models.resnet import ResNet34
from optg_jax.models.resnet import ResNet50
from optg_jax.models.resnet import ResNet50Cifar
from optg_jax.models.resnet import ResNet56Cifar
from optg_jax.models.vgg import VGG
from optg_jax.models.vgg import VGG19Cifar

IMAGENET_INPUT = (224, 224, 3)
CIFAR_INPUT = (32, 32, 3)
MNIST_INPUT = (28, 28, 1)

# name -> (constructor, usual input shape)
_MODELS: Dict[str, Tuple[Callable[..., Any], Tuple[int, int, int]]] = {
    "resnet18": (ResNet18, IMAGENET_INPUT),
    "resnet34": (ResNet34, IMAGENET_INPUT),
    "resnet50": (ResNet50, IMAGENET_INPUT),
    "resnet101": (ResNet101, IMAGENET_INPUT),
    "resnet152": (ResNet152, IMAGENET_INPUT),
    "mobilenet_v1": (MobileNetV1, IMAGENET_INPUT),
    "mobilenet_v2": (MobileNetV2, IMAGENET_INPUT),
    "resnet20_cifar": (ResNet20Cifar, CIFAR_INPUT),
    "resnet32_cifar": (ResNet32Cifar, CIFAR_INPUT),
    "resnet56_cifar": (ResNet56Cifar, CIFAR_INPUT),
    "resnet50_cifar": (ResNet50Cifar, CIFAR_INPUT),
    "vgg19_cifar": (VGG19Cifar, CIFAR_INPUT),
    "lenet_300_100": (LeNet300100, MNIST_INPUT),
    "lenet5": (LeNet5, MNIST_INPUT),
}


def names() -> List[str]:
  """The names `create` accepts, sorted."""
  return sorted(_MODELS)


def _lookup(name: str):
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; valid models: "
                     f"{', '.join(names())}")
  return _MODELS[name]


def create(name: str, num_classes: int, dtype: Any = jnp.float32, **kwargs):
  """Builds a model by name.

  Args:
    name: one of `names()`.
    num_classes: the classifier's outputs.
    dtype: the compute dtype (e.g. `jnp.bfloat16`); parameters stay float32.
    **kwargs: further attributes of the model, e.g. `width=0.5` for the
      MobileNets or `kernel_init="kaiming_normal"`.

  Returns:
    The Flax module.

  Raises:
    ValueError: for an unknown name, an attribute the model does not have,
      or an unknown initialiser name.
  """
  constructor, _ = _lookup(name)
  check_kwargs(name, kwargs)
  return constructor(num_classes=num_classes, dtype=dtype, **kwargs)


def attributes(name: str) -> List[str]:
  """The attributes of a model that `create` may set, sorted."""
  constructor, _ = _lookup(name)
  module = getattr(constructor, "func", constructor)  # functools.partial
  fixed = {"parent", "name", "num_classes", "dtype"}
  return sorted(f.name for f in dataclasses.fields(module)
                if f.init and f.name not in fixed)


def check_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
  """Raises ValueError (one line) if `kwargs` do not fit the model `name`."""
  valid = attributes(name)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f"model {name!r} has no attribute "
                     f"{', '.join(map(repr, unknown))}; its attributes: "
                     f"{', '.join(valid)}")
  for key in ("kernel_init", "head_init"):
    if kwargs.get(key) is not None:
      initializers.get(kwargs[key])


def default_input_shape(name: str) -> Tuple[int, int, int]:
  """The usual input `(height, width, channels)` of a model: 224, 32 or 28."""
  return _lookup(name)[1]
