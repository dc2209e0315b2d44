"""Throughput of ResNet-50 training on random data (no dataset needed).

  python launch/train.py --config=configs/fake_data_benchmark.py --workdir=DIR \
      [--config.method=dense]
"""

from configs import default


def get_config():
  """ResNet-50, batch 256, 100 steps of random 224x224 images."""
  config = default.get_config()
  config.dataset = "fake"
  config.fake_num_train = 256 * 100
  config.fake_num_eval = 256
  config.fake_num_classes = 1000
  config.fake_image_size = 224
  config.num_epochs = 10
  # The schedule of the whole 10 epochs reaches the target (beta 2: the last
  # epoch trains 0.9 * sigmoid(-8) = 3e-4 short of it); the benchmark stops
  # after 100 steps.
  config.beta = 2.0
  config.num_train_steps = 100
  config.warmup_epochs = 0
  config.log_every_steps = 20
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 10_000
  config.half_precision = True
  return config
