"""LeNet-300-100 and LeNet-5: small models for studies on 28x28 greyscale.

The two LeNets of the network-pruning literature (e.g. on MNIST and
Fashion-MNIST), small enough that a study of many runs finishes on a laptop
CPU. Neither has BatchNorm; every conv and dense layer has a bias (dense, as
biases stay unpruned). Biases start at zero; `kernel_init` (the hidden
layers') and `head_init` (the classifier's, None: `kernel_init`) name
kernel inits of `optg_jax.models.initializers`, "lecun_normal" (Flax's
default) by default.
"""

import functools
from typing import Any, Optional

from flax import linen as nn
import jax.numpy as jnp

from optg_jax.models import initializers


def _head(module, x):
  """The Dense classifier `head`, from the module's attributes."""
  init = (module.kernel_init if module.head_init is None
          else module.head_init)
  return nn.Dense(module.num_classes, dtype=module.dtype,
                  kernel_init=initializers.get(init), name="head")(x)


class LeNet300100(nn.Module):
  """The MLP 784-300-100-10 with ReLU: 266,200 kernel weights at 28x28x1.

  Attributes:
    num_classes: the classifier's outputs.
    hidden: the widths of the hidden layers.
    kernel_init: the hidden layers' kernel init; "lecun_normal" by default.
    head_init: the classifier kernel's init; None: `kernel_init`.
    dtype: the compute dtype; parameters are float32.
  """
  num_classes: int
  hidden: Any = (300, 100)
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No BatchNorm, no dropout.
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=initializers.get(self.kernel_init))
    x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.relu(dense(width, name=f"fc{i + 1}")(x))
    x = _head(self, x)
    return jnp.asarray(x, jnp.float32)


class LeNet5(nn.Module):
  """The Caffe LeNet-5: conv 20 5x5, pool, conv 50 5x5, pool, dense 500, dense.

  Valid (unpadded) 5x5 convs and 2x2 max pooling: at 28x28x1 the features
  are 24x24x20, 12x12x20, 8x8x50, 4x4x50 = 800, then 500 with ReLU, then the
  classes. As in Caffe's model the convs have no activation. 430,500 kernel
  weights and 2,293,000 MACs per example at 28x28x1 with 10 classes.

  Attributes:
    num_classes: the classifier's outputs.
    kernel_init: the conv and `fc1` kernels' init; "lecun_normal" by
      default.
    head_init: the classifier kernel's init; None: `kernel_init`.
    dtype: the compute dtype; parameters are float32.
  """
  num_classes: int
  kernel_init: str = "lecun_normal"
  head_init: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No BatchNorm, no dropout.
    kernel_init = initializers.get(self.kernel_init)
    conv = functools.partial(nn.Conv, kernel_size=(5, 5), padding="VALID",
                             dtype=self.dtype, kernel_init=kernel_init)
    pool = functools.partial(nn.max_pool, window_shape=(2, 2),
                             strides=(2, 2))
    x = jnp.asarray(x, self.dtype)
    x = pool(conv(20, name="conv1")(x))
    x = pool(conv(50, name="conv2")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(500, dtype=self.dtype, kernel_init=kernel_init,
                         name="fc1")(x))
    x = _head(self, x)
    return jnp.asarray(x, jnp.float32)
