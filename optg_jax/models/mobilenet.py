"""MobileNet-V1 (Howard et al. 2017) and MobileNet-V2 (Sandler et al. 2018)."""

import functools
from typing import Any, Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from optg_jax.models import initializers

ModuleDef = Any

# (output channels, stride) of the 13 depthwise-separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2),
             (1024, 1))

# (expansion, output channels, repeats, stride of the first) per stage.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of `divisor`, losing at most 10%."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def _norms(train: bool, dtype, kernel_init: str):
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype,
                           kernel_init=initializers.get(kernel_init))
  norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=dtype)
  return conv, norm


def _head(module, x):
  """The Dense classifier `head` of a MobileNet, from its attributes."""
  init = (module.kernel_init if module.head_init is None
          else module.head_init)
  return nn.Dense(module.num_classes, use_bias=module.head_bias,
                  kernel_init=initializers.get(init), dtype=module.dtype,
                  name="head")(x)


class ConvBN(nn.Module):
  """Conv (groups optional), BatchNorm and an activation (or none)."""
  features: int
  kernel_size: Tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef
  act: Any = nn.relu
  strides: Tuple[int, int] = (1, 1)
  groups: int = 1

  @nn.compact
  def __call__(self, x):
    pad = [((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size]
    x = self.conv(self.features, self.kernel_size, self.strides, padding=pad,
                  feature_group_count=self.groups)(x)
    x = self.norm()(x)
    return x if self.act is None else self.act(x)


class MobileNetV1(nn.Module):
  """MobileNet-V1: a strided 3x3 conv, then depthwise-separable blocks.

  Attributes:
    num_classes: the classifier's outputs.
    width: the width multiplier (1.0: 4,231,976 parameters for 1000
      classes).
    head_bias: whether the classifier `head` has a bias (zeros at init);
      True by default, False in the reference (a 1x1 conv without bias).
    kernel_init: the conv kernels' init (depthwise ones included), a name
      of `optg_jax.models.initializers`: "lecun_normal" (Flax's default, the
      default here), "kaiming_normal" or "torch_default" (the reference's
      convs).
    head_init: the classifier kernel's init; None (the default):
      `kernel_init`. The reference's is "kaiming_normal".
    dtype: the compute dtype; parameters are float32.
  """
  num_classes: int
  width: float = 1.0
  head_bias: bool = True
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = _norms(train, self.dtype, self.kernel_init)
    block = functools.partial(ConvBN, conv=conv, norm=norm)
    channels = lambda c: max(8, int(c * self.width))
    x = jnp.asarray(x, self.dtype)
    in_channels = channels(32)
    x = block(in_channels, (3, 3), strides=(2, 2), name="stem")(x)
    for i, (out, stride) in enumerate(V1_BLOCKS):
      x = block(in_channels, (3, 3), strides=(stride, stride),
                groups=in_channels, name=f"block{i + 1}_depthwise")(x)
      in_channels = channels(out)
      x = block(in_channels, (1, 1), name=f"block{i + 1}_pointwise")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = _head(self, x)
    return jnp.asarray(x, jnp.float32)


class InvertedResidual(nn.Module):
  """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity skip."""
  features: int
  expansion: int
  block: ModuleDef
  strides: Tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    in_channels = x.shape[-1]
    hidden = in_channels * self.expansion
    y = x
    if self.expansion != 1:
      y = self.block(hidden, (1, 1), name="expand")(y)
    y = self.block(hidden, (3, 3), strides=self.strides, groups=hidden,
                   name="depthwise")(y)
    y = self.block(self.features, (1, 1), act=None, name="project")(y)
    if self.strides == (1, 1) and in_channels == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNet-V2 (torchvision's layout: 3,504,872 parameters at width 1).

  Attributes:
    num_classes: the classifier's outputs.
    width: the width multiplier.
    dropout_rate: dropout before the classifier when training (needs a
      'dropout' rng when positive); 0 by default.
    head_bias: whether the classifier `head` has a bias (zeros at init);
      True by default.
    kernel_init: the conv kernels' init, a name of
      `optg_jax.models.initializers`; "lecun_normal" (Flax's default) by
      default.
    head_init: the classifier kernel's init; None (the default):
      `kernel_init`.
    dtype: the compute dtype; parameters are float32.
  """
  num_classes: int
  width: float = 1.0
  dropout_rate: float = 0.0
  head_bias: bool = True
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = _norms(train, self.dtype, self.kernel_init)
    block = functools.partial(ConvBN, conv=conv, norm=norm, act=jax.nn.relu6)
    x = jnp.asarray(x, self.dtype)
    x = block(make_divisible(32 * self.width), (3, 3), strides=(2, 2),
              name="stem")(x)
    for i, (expansion, out, repeats, stride) in enumerate(V2_STAGES):
      for j in range(repeats):
        strides = (stride, stride) if j == 0 else (1, 1)
        x = InvertedResidual(make_divisible(out * self.width), expansion,
                             block, strides,
                             name=f"stage{i + 1}_block{j + 1}")(x)
    x = block(make_divisible(1280 * max(1.0, self.width)), (1, 1),
              name="last")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = _head(self, x)
    return jnp.asarray(x, jnp.float32)
