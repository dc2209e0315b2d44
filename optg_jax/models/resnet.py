"""ResNets: ResNet v1.5 for ImageNet and the CIFAR ResNets of He et al.

ImageNet (`ResNet18` ... `ResNet152`): torchvision's layout and parameter
counts. A 7x7/2 conv, BatchNorm, ReLU and a 3x3/2 max pool; four stages of
basic or bottleneck blocks, the bottleneck's stride on its 3x3 conv (v1.5);
global average pooling and a Dense classifier with bias. Convs have no bias.

CIFAR (`ResNet20Cifar`, `ResNet32Cifar`, `ResNet56Cifar`; He et al. 2016,
section 4.2): a 3x3 conv with 16 filters, then three stages of n = 3, 5, 9
basic blocks with 16, 32 and 64 filters. Where a block changes the shape,
its shortcut is a 1x1 strided projection conv with BatchNorm (option B of
the paper), not the parameter-free zero padding (option A): 2,752 more
parameters, e.g. 855,770 for ResNet-56 with 10 classes. No pooling after
the stem, so inputs as small as 8x8 work.

In every residual block the last BatchNorm's scale starts at zero, so each
block starts as the identity.
"""

import functools
from typing import Any, Callable, Sequence, Tuple

from flax import linen as nn
import jax.numpy as jnp

ModuleDef = Any


class ResidualBlock(nn.Module):
  """A residual block: `act(shortcut(x) + branch(x))`.

  Subclasses define `branch`; the shortcut is the identity, or a strided 1x1
  projection conv with BatchNorm where the branch changes the shape.
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: Tuple[int, int] = (1, 1)

  def branch(self, x):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    y = self.branch(x)
    residual = x
    if residual.shape != y.shape:
      residual = self.conv(y.shape[-1], (1, 1), self.strides,
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class BasicBlock(ResidualBlock):
  """Two 3x3 convs; a 1x1 projection shortcut when the shape changes."""

  def branch(self, x):
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    return self.norm(scale_init=nn.initializers.zeros_init())(y)


class BottleneckBlock(ResidualBlock):
  """1x1, 3x3 (strided: v1.5), 1x1 with 4x expansion; projection shortcut."""

  def branch(self, x):
    y = self.conv(self.filters, (1, 1))(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    return self.norm(scale_init=nn.initializers.zeros_init())(y)


class ResNet(nn.Module):
  """A ResNet: a stem, stages of residual blocks, pooling and a classifier.

  Attributes:
    stage_sizes: blocks per stage; stage `i` has `widths[i]` filters and
      halves the resolution, except the first.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_classes: the classifier's outputs.
    widths: filters of each stage (before a bottleneck's 4x expansion).
    stem: "imagenet" (7x7/2 conv and 3x3/2 max pool) or "cifar" (3x3 conv).
    dtype: the compute dtype; parameters are float32.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.widths[0], (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name="conv_init")(x)
      x = self.act(norm(name="bn_init")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    elif self.stem == "cifar":
      x = conv(self.widths[0], (3, 3), name="conv_init")(x)
      x = self.act(norm(name="bn_init")(x))
    else:
      raise ValueError(f"unknown stem {self.stem!r}: 'imagenet' or 'cifar'")
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(width, conv=conv, norm=norm, act=self.act,
                           strides=strides,
                           name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return jnp.asarray(x, jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                              block_cls=BottleneckBlock)

_CIFAR = dict(block_cls=BasicBlock, widths=(16, 32, 64), stem="cifar")
ResNet20Cifar = functools.partial(ResNet, stage_sizes=(3, 3, 3), **_CIFAR)
ResNet32Cifar = functools.partial(ResNet, stage_sizes=(5, 5, 5), **_CIFAR)
ResNet56Cifar = functools.partial(ResNet, stage_sizes=(9, 9, 9), **_CIFAR)
