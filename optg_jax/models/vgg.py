"""VGG-19 with BatchNorm for CIFAR, as in the network-pruning literature."""

import functools
from typing import Any, Optional, Sequence, Union

from flax import linen as nn
import jax.numpy as jnp

from optg_jax.models import initializers

# Output channels of the 3x3 convs; "M": 2x2 max pooling.
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
  """3x3 conv + BatchNorm + ReLU stacks with max pooling, then one Dense.

  The classifier maps the globally averaged last features (512 channels,
  1x1 at 32x32 input) straight to the classes. The convs have no bias (the
  BatchNorm after each makes one redundant): VGG-19 has 20,035,018
  parameters for 10 classes, 5,504 fewer than codebases that keep the conv
  biases. Five 2x2 poolings need inputs of at least 32x32.

  Attributes:
    num_classes: the classifier's outputs.
    layers: the conv widths and "M" for pooling.
    head_bias: whether the classifier `head` has a bias (zeros at init);
      True by default, as the reference's VGG.
    kernel_init: the conv kernels' init, a name of
      `optg_jax.models.initializers`: "lecun_normal" (Flax's default, the
      default here), "kaiming_normal" (the reference's) or "torch_default".
    head_init: the classifier kernel's init; None (the default):
      `kernel_init`.
    dtype: the compute dtype; parameters are float32.
  """
  num_classes: int
  layers: Sequence[Union[int, str]] = VGG19
  head_bias: bool = True
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=[(1, 1),
                                                                   (1, 1)],
                             use_bias=False, dtype=self.dtype,
                             kernel_init=initializers.get(self.kernel_init))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(norm()(conv(layer)(x)))
    x = jnp.mean(x, axis=(1, 2))
    head_init = initializers.get(
        self.kernel_init if self.head_init is None else self.head_init)
    x = nn.Dense(self.num_classes, use_bias=self.head_bias,
                 kernel_init=head_init, dtype=self.dtype, name="head")(x)
    return jnp.asarray(x, jnp.float32)


VGG19Cifar = functools.partial(VGG, layers=VGG19)
