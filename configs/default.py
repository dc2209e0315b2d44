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
  # The reference's ResNet: Kaiming-normal (fan-in) kernels, every BatchNorm
  # scale 1, a bias-free classifier (a 1x1 conv), and PyTorch's symmetric
  # padding of the strided 3x3 convs (Flax's "SAME" pads them (0, 1)).
  # These are attributes of the ResNets: another model needs its own
  # model_kwargs (see mobilenet_imagenet.py).
  config.model_kwargs = ml_collections.ConfigDict(dict(
      kernel_init="kaiming_normal", zero_init_residual=False,
      head_bias=False, torch_padding=True))
  config.dataset = "imagenet2012"
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  # > 0: evaluate on this many training examples held out of training
  # (digits and Fashion-MNIST), to choose a recipe without the test split.
  config.validation_size = 0
  config.image_size = 224
  config.cache = False
  # ImageNet crops: "torchvision" (the reference: RandomResizedCrop, bilinear;
  # eval resize 256, centre crop 224) | "inception" (bounding-box crop
  # covering >= 10%, bicubic).
  config.augmentation = "torchvision"
  config.shuffle_buffer_size = 16 * 1024

  # Sparsity: OptG, its magnitude-pruning baseline, RigL or SET, or a dense
  # run. "optg" | "magnitude" | "taylor" (opt-in: the one-shot criterion
  # OptG accumulates, -G * W summed since the last refresh) | "rigl" | "set"
  # (sparse from step 0; see the fields below) | "dense".
  config.method = "optg"
  config.sparsity = 0.9  # Target sparsity P of the prunable weights.
  config.beta = 1.0  # Steepness of the sigmoid sparsity schedule.
  # "epoch" (the paper: the sigmoid's sparsity is set once an epoch) | "step"
  # (opt-in: it rises at every step, for refreshes more often than an epoch).
  config.sparsity_granularity = "epoch"
  config.mask_momentum = 0.9  # Momentum of the scores' SGD.
  config.update_every_steps = 0  # Mask refresh period; 0: once an epoch.
  # How a refresh's top-k reads the scores: "leaves" | "flat" (the same masks;
  # a fixed number of passes, no loop on the device: several times faster on
  # a GPU, slower on a CPU; see docs/guides/benchmarks.md).
  config.topk_layout = "leaves"
  # "" (the paper: unstructured) or "N:M", e.g. "2:4": n kept weights in every
  # m consecutive inputs of each kernel, reached gradually; the target is
  # then (m - n) / m of the N:M-able kernels and `sparsity` does not apply.
  config.structure = ""
  # Opt-in variants of the ranking, not in the paper (see mask_transform):
  config.score_normalization = ""  # "" (the paper) | "layer_rms"
  config.min_kept_per_unit = 0  # 0 (the paper) | n kept inputs per unit
  # RigL and SET (method "rigl" | "set"): the target sparsity from step 0,
  # each layer's budget "erk" (Erdos-Renyi-Kernel) | "uniform"; every
  # `delta_t` steps until `end_fraction` of the run, each layer drops and
  # regrows `drop_fraction` (cosine-decayed) of its weights.
  config.budget = "erk"
  config.delta_t = 100
  config.drop_fraction = 0.3
  config.end_fraction = 0.75

  # Optimisation of the weights.
  config.num_epochs = 100
  config.num_train_steps = -1  # > 0 stops earlier (benchmarks).
  # "epochwise_cosine": the reference's lr, set once per epoch (warm-up from
  # base / warmup_epochs, cosine over all epochs); "warmup_cosine": optax's
  # per-step warm-up from 0 and cosine over the remaining steps.
  config.lr_schedule = "epochwise_cosine"
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
  # How the steps run over the devices: "pmap" (a replica of the state on
  # every local device, the batch split across them) or "jit" (one program
  # over a mesh of every process's devices, the state as global arrays).
  # docs/guides/harness.md, "pmap or jit".
  config.parallelism = "pmap"
  # The host's malloc: "system" (glibc's defaults) or "keep" (freed memory
  # kept for reuse: one arena, no unmapping), so that XLA's CPU runtime stops
  # faulting a large model's step temporaries in afresh at every step
  # (optg_jax/harness/host_memory.py).
  config.host_allocator = "system"

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 100
  # The reference validates every epoch (and reports the best one).
  config.eval_every_epochs = 1  # 0: evaluate at the end only.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.eval_only = False
  return config
