"""VGG-19 on CIFAR-10 with OptG (the paper's recipe); `--config.model=resnet56_cifar` for ResNet-56."""

from configs import default


def get_config():
  """160 epochs, batch 256, lr 0.1, weight decay 5e-4, no label smoothing."""
  config = default.get_config()
  config.model = "vgg19_cifar"
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
