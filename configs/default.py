"""Defaults of every field; the ResNet-50 / ImageNet recipe of the paper.

The other configs import this one and override a few fields. Every field can
be overridden on the command line, e.g. `--config.sparsity=0.95`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """ResNet-50 on ImageNet, OptG to 90% sparsity, the authors' recipe."""
  config = ml_collections.ConfigDict()

  # Model and data.
  config.model = "resnet50"
  config.model_kwargs = ml_collections.ConfigDict()
  config.dataset = "imagenet2012"
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  # > 0: evaluate on this many training examples held out of training
  # (digits and Fashion-MNIST), to choose a recipe without the test split.
  config.validation_size = 0
  config.image_size = 224
  config.cache = False
  config.shuffle_buffer_size = 16 * 1024

  # Sparsity: OptG, its magnitude-pruning baseline, or a dense run.
  config.method = "optg"  # "optg" | "magnitude" | "dense"
  config.sparsity = 0.9  # Target sparsity P of the prunable weights.
  config.beta = 1.0  # Steepness of the sigmoid sparsity schedule.
  config.mask_momentum = 0.9  # Momentum of the scores' SGD.
  config.update_every_steps = 0  # Mask refresh period; 0: once an epoch.
  # Opt-in variants of the ranking, not in the paper (see mask_transform):
  config.score_normalization = ""  # "" (the paper) | "layer_rms"
  config.min_kept_per_unit = 0  # 0 (the paper) | n kept inputs per unit

  # Optimisation of the weights.
  config.num_epochs = 100
  config.num_train_steps = -1  # > 0 stops earlier (benchmarks).
  config.warmup_epochs = 5
  config.batch_size = 256  # Global, over all devices and processes.
  config.eval_batch_size = 256
  config.learning_rate = 0.1  # At lr_reference_batch_size; scaled linearly.
  config.lr_reference_batch_size = 256  # 0: no scaling.
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4  # On all weights.
  config.label_smoothing = 0.1
  config.half_precision = False

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_epochs = 10  # 0: evaluate at the end only.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.eval_only = False
  return config
