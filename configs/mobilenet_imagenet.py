"""MobileNet-V1 on ImageNet with OptG (the paper's recipe), sparsity 80%.

  python launch/train.py --config=configs/mobilenet_imagenet.py \
      --workdir=DIR --config.data_dir=TFDS_DIR [--config.sparsity=0.9]

As in the reference, the convs start from PyTorch's default initialisation
(uniform in +-1/sqrt(fan_in)) and the bias-free classifier from Kaiming-normal;
see docs/RECIPES.md for every hyper-parameter.
"""

import ml_collections

from configs import default


def get_config():
  """180 epochs, batch 256, lr 0.05, weight decay 4e-5, label smoothing 0.1."""
  config = default.get_config()
  config.model = "mobilenet_v1"
  config.model_kwargs = ml_collections.ConfigDict(dict(
      kernel_init="torch_default", head_init="kaiming_normal",
      head_bias=False))
  config.sparsity = 0.8
  config.num_epochs = 180
  config.learning_rate = 0.05
  config.weight_decay = 4e-5
  return config
