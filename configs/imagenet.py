"""ResNet-50 on ImageNet with OptG, target sparsity 90% (the paper's recipe).

  python launch/train.py --config=configs/imagenet.py --workdir=DIR \
      --config.data_dir=TFDS_DIR [--config.sparsity=0.95]
"""

from configs import default


def get_config():
  """100 epochs, batch 256, lr 0.1, weight decay 1e-4, label smoothing 0.1."""
  return default.get_config()
