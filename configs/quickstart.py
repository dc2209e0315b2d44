"""A quick start on a laptop CPU: ResNet-20 on scikit-learn's digits, 90%.

Real data (1,797 bundled 8x8 handwritten digits), no download, a few minutes
on 2 CPU cores:

  python launch/train.py --config=configs/quickstart.py --workdir=/tmp/optg_quickstart

30 epochs with beta = 1: the final refresh falls short of the target by
0.9 * sigmoid(-15), about 3e-7, well under 1e-3.
"""

from configs import default


def get_config():
  """ResNet-20 (CIFAR style), OptG to 90% sparsity on digits."""
  config = default.get_config()
  config.model = "resnet20_cifar"
  config.dataset = "digits"
  config.sparsity = 0.9
  config.beta = 1.0
  config.num_epochs = 30
  config.warmup_epochs = 2
  config.batch_size = 64
  config.eval_batch_size = 100
  config.learning_rate = 0.1
  config.lr_reference_batch_size = 0
  config.weight_decay = 5e-4
  config.label_smoothing = 0.0
  config.log_every_steps = 20
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 200
  return config
