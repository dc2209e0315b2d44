"""LeNet-5 on Fashion-MNIST, OptG to 95% sparsity: a study in minutes on a CPU.

  apt-get install dataset-fashion-mnist   # the four IDX files, once
  python launch/train.py --config=configs/fashion_mnist.py --workdir=DIR

Fashion-MNIST is real and harder than the digits, so methods separate; the
Caffe LeNet-5 (430,500 prunable weights) trains on it in a few minutes on 2
CPU cores. `--config.model=lenet_300_100` gives the MLP. Recipes are chosen
with `--config.validation_size=5000` (5,000 training images held out and
evaluated on), never on the test split; see docs/RESULTS.md.
"""

import ml_collections

from configs import default


def get_config():
  """LeNet-5, Fashion-MNIST, OptG to 95% sparsity."""
  config = default.get_config()
  # Not a recipe of the paper: optax's per-step warm-up and cosine, and the
  # models' own initialisation.
  config.lr_schedule = "warmup_cosine"
  config.model_kwargs = ml_collections.ConfigDict()
  config.model = "lenet5"
  config.dataset = "fashion_mnist"
  config.data_dir = "/usr/share/datasets/fashion-mnist"
  config.sparsity = 0.95
  config.num_epochs = 6
  config.warmup_epochs = 1
  # 6 epochs: beta = 4 puts the masks the last epoch trains with (the model
  # the run ships) at 0.99966 of the target (sigmoid(8)); at beta = 2.5 they
  # would be 0.7% of all weights short of it (the harness refuses that).
  config.beta = 4.0
  # The rule of docs/RESULTS.md (section 5), chosen on validation images:
  # refresh the masks every step (the reference: once an epoch) and let the
  # sparsity rise at every step (the reference: once an epoch), so that each
  # refresh prunes a few weights instead of an epoch's rise at once. On
  # LeNet-300-100 (validation, 3 seeds) the refresh every step gains 8 and
  # 10 points at 95% and 99% over once an epoch, the sparsity rising every
  # step 0.9 and 1.7 more: 87.5% and 83.9%. Neither is the paper's; both are
  # opt-in elsewhere (configs/default.py keeps the paper's).
  config.update_every_steps = 1
  config.sparsity_granularity = "step"
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.01
  config.lr_reference_batch_size = 0
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0
  config.log_every_steps = 100
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 2000
  return config
