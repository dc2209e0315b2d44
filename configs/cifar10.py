"""CIFAR-10 with OptG, the paper's two models and recipe (sparsity 90%).

  python launch/train.py --config=configs/cifar10.py --workdir=DIR \
      --config.data_dir=TFDS_DIR [--config.model=resnet50_cifar]

`vgg19_cifar` (the default) and `resnet50_cifar` are the paper's CIFAR-10
models: the reference's "ResNet-50" is a 6n+2 CIFAR ResNet with n = 8,
widths 32/64/128 and zero-padding shortcuts, not the ImageNet ResNet-50.
Both start from Kaiming-normal kernels (fan-in) and BatchNorm scales of 1.
`--config.model=resnet56_cifar` (projection shortcuts, not in the paper)
also runs; it keeps its zero-initialised residual BatchNorm scales. See
docs/RECIPES.md for every hyper-parameter beside the reference's.
"""

import ml_collections

from configs import default


def get_config():
  """160 epochs, batch 256, lr 0.1, weight decay 5e-4, no label smoothing."""
  config = default.get_config()
  config.model = "vgg19_cifar"
  config.model_kwargs = ml_collections.ConfigDict(dict(
      kernel_init="kaiming_normal"))
  config.dataset = "cifar10"
  config.image_size = 32
  config.sparsity = 0.9
  config.num_epochs = 160
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.label_smoothing = 0.0
  config.eval_batch_size = 1000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 2000
  return config
