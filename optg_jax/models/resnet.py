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

These models keep Flax's defaults: LeCun-normal (truncated) kernels, and in
every residual block the last BatchNorm's scale starts at zero, so each
block starts as the identity; "SAME" padding, which pads a stride-2 3x3 conv
on an even input by (0, 1) where PyTorch pads (1, 1).

`ResNet50Cifar` ("resnet50_cifar") is the OptG reference's CIFAR-10
"ResNet-50": the 6n + 2 CIFAR ResNet with n = 8 (50 layers), widths 32, 64
and 128, option A shortcuts (`zero_pad_shortcut`: subsample, then zeros for
the new channels) and a classifier without bias: 3,006,560 kernel weights
for 10 classes. It takes the reference's init and padding by default:
Kaiming-normal kernels (untruncated, fan-in, ReLU gain), every BatchNorm
scale 1, and PyTorch's symmetric padding, so that the strided 3x3 conv of a
downsampling block is centred on the pixels its shortcut keeps.

Every `ResNet` attribute can be set through `models.create`, e.g.
`kernel_init="kaiming_normal", zero_init_residual=False` for the reference's
init of the other ResNets.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from optg_jax.models import initializers

ModuleDef = Any

SHORTCUTS = ("projection", "zero_pad")


def zero_pad_shortcut(x: jax.Array, features: int,
                      strides: Tuple[int, int] = (2, 2)) -> jax.Array:
  """The parameter-free "option A" shortcut of He et al. on NHWC inputs.

  As the reference's `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, lo, hi))` in
  NCHW: keeps every `strides`-th row and column (from the first), then pads
  the channels with `lo = (features - c) // 2` zeros before and the other
  `features - c - lo` after.

  Args:
    x: `(batch, height, width, c)`.
    features: the output channels, at least `c`.
    strides: the subsampling; `(1, 1)` only pads.

  Returns:
    `(batch, ceil(height / strides[0]), ceil(width / strides[1]),
    features)`.

  Raises:
    ValueError: if `features < c`.
  """
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f"a zero-padding shortcut cannot reduce {x.shape[-1]} "
                     f"channels to {features}")
  x = x[:, ::strides[0], ::strides[1], :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResidualBlock(nn.Module):
  """A residual block: `act(shortcut(x) + branch(x))`.

  Subclasses define `branch`; the shortcut is the identity, or where the
  branch changes the shape a strided 1x1 projection conv with BatchNorm
  (`shortcut="projection"`) or `zero_pad_shortcut` (`"zero_pad"`).
  `zero_init_residual` starts the branch's last BatchNorm scale at 0 (else
  1).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: Tuple[int, int] = (1, 1)
  shortcut: str = "projection"
  zero_init_residual: bool = True

  def branch(self, x):
    raise NotImplementedError

  def last_norm(self):
    """The branch's last BatchNorm."""
    scale_init = (nn.initializers.zeros_init() if self.zero_init_residual
                  else nn.initializers.ones_init())
    return self.norm(scale_init=scale_init)

  @nn.compact
  def __call__(self, x):
    y = self.branch(x)
    residual = x
    if residual.shape != y.shape:
      if self.shortcut == "projection":
        residual = self.conv(y.shape[-1], (1, 1), self.strides,
                             name="conv_proj")(residual)
        residual = self.norm(name="norm_proj")(residual)
      elif self.shortcut == "zero_pad":
        residual = zero_pad_shortcut(residual, y.shape[-1], self.strides)
      else:
        raise ValueError(f"unknown shortcut {self.shortcut!r}; valid "
                         f"shortcuts: {', '.join(SHORTCUTS)}")
    return self.act(residual + y)


class BasicBlock(ResidualBlock):
  """Two 3x3 convs, the first strided."""

  def branch(self, x):
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    return self.last_norm()(y)


class BottleneckBlock(ResidualBlock):
  """1x1, 3x3 (strided: v1.5), 1x1 with 4x expansion."""

  def branch(self, x):
    y = self.conv(self.filters, (1, 1))(x)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.act(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    return self.last_norm()(y)


def _conv(features, kernel_size, strides=(1, 1), *, torch_padding: bool,
          **kwargs):
  """An `nn.Conv`; `torch_padding` pads each side by `(k - 1) // 2`."""
  if torch_padding:
    kwargs.setdefault("padding", [((k - 1) // 2, (k - 1) // 2)
                                  for k in kernel_size])
  return nn.Conv(features, kernel_size, strides, **kwargs)


class ResNet(nn.Module):
  """A ResNet: a stem, stages of residual blocks, pooling and a classifier.

  Attributes:
    stage_sizes: blocks per stage; stage `i` has `widths[i]` filters and
      halves the resolution, except the first.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_classes: the classifier's outputs.
    widths: filters of each stage (before a bottleneck's 4x expansion).
    stem: "imagenet" (7x7/2 conv and 3x3/2 max pool) or "cifar" (3x3 conv).
    shortcut: where a block changes the shape, "projection" (1x1 strided
      conv and BatchNorm, option B) or "zero_pad" (`zero_pad_shortcut`,
      option A, no parameters).
    head_bias: whether the Dense classifier `head` has a bias (zeros at
      init).
    kernel_init: the conv kernels' init, a name of
      `optg_jax.models.initializers`: "lecun_normal" (Flax's default),
      "kaiming_normal" (the reference's) or "torch_default".
    head_init: the classifier kernel's init; None: `kernel_init`.
    zero_init_residual: whether the last BatchNorm scale of every residual
      block starts at 0 (each block starts as the identity); False: every
      BatchNorm scale starts at 1, as in the reference.
    torch_padding: pad every conv by `(k - 1) // 2` on each side, as
      PyTorch's `padding=k // 2`; False: Flax's "SAME", which differs only
      for a strided conv on an even input (e.g. (0, 1) for a 3x3/2 conv).
    dtype: the compute dtype; parameters are float32.
    act: the activation.

  The defaults (projection shortcuts, LeCun-normal kernels, zero-initialised
  last BatchNorm scales, "SAME" padding, a classifier bias) are those of all
  the named ResNets except `ResNet50Cifar`.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  shortcut: str = "projection"
  head_bias: bool = True
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  zero_init_residual: bool = True
  torch_padding: bool = False
  dtype: Any = jnp.float32
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"unknown shortcut {self.shortcut!r}; valid "
                       f"shortcuts: {', '.join(SHORTCUTS)}")
    head_init = initializers.get(
        self.kernel_init if self.head_init is None else self.head_init)
    conv = functools.partial(_conv, torch_padding=self.torch_padding,
                             use_bias=False, dtype=self.dtype,
                             kernel_init=initializers.get(self.kernel_init))
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
                           strides=strides, shortcut=self.shortcut,
                           zero_init_residual=self.zero_init_residual,
                           name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, use_bias=self.head_bias,
                 kernel_init=head_init, dtype=self.dtype, name="head")(x)
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

# The reference's CIFAR-10 "ResNet-50" (6 * 8 + 2 layers), with its init.
ResNet50Cifar = functools.partial(
    ResNet, stage_sizes=(8, 8, 8), block_cls=BasicBlock,
    widths=(32, 64, 128), stem="cifar", shortcut="zero_pad", head_bias=False,
    kernel_init="kaiming_normal", zero_init_residual=False,
    torch_padding=True)
