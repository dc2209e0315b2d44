"""MobileNet-V1 on ImageNet with OptG (the paper's recipe), sparsity 80%."""

from configs import default


def get_config():
  """180 epochs, batch 256, lr 0.05, weight decay 4e-5, label smoothing 0.1."""
  config = default.get_config()
  config.model = "mobilenet_v1"
  config.sparsity = 0.8
  config.num_epochs = 180
  config.learning_rate = 0.05
  config.weight_decay = 4e-5
  return config
