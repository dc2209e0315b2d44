"""ResNet-50 on ImageNet with OptG, target sparsity 90% (the paper's recipe).

  python launch/train.py --config=configs/imagenet.py --workdir=DIR \
      --config.data_dir=TFDS_DIR [--config.sparsity=0.95]

Every hyper-parameter beside the reference's is in docs/RECIPES.md: 100
epochs, batch 256, SGD momentum 0.9, lr 0.1 set once per epoch (5 warm-up
epochs, then a cosine over all 100), weight decay 1e-4 on every weight,
label smoothing 0.1, beta 1, a mask refresh once an epoch, Kaiming-normal
initialisation, torchvision's crops.
"""

from configs import default


def get_config():
  """100 epochs, batch 256, lr 0.1, weight decay 1e-4, label smoothing 0.1."""
  return default.get_config()
