"""The configuration of a run: checks, and the values derived from it.

`validate_config` refuses (one-line `ConfigError`) a configuration that
cannot run; `check_target` one whose shipped masks cannot reach the target.
The fields are read as `config.x`: their defaults live in
`configs/default.py` only.
"""

from typing import Optional

import ml_collections
import numpy as np

import optg_jax as optg
from optg_jax import data
from optg_jax import models
from optg_jax import nm
from optg_jax import schedules
from optg_jax import topk
from optg_jax.harness.errors import ConfigError

METHODS = ("optg", "magnitude", "taylor", "dense")
LR_SCHEDULES = ("epochwise_cosine", "warmup_cosine")
# How the steps run over the devices: `jax.pmap` (one replica a local
# device), or `jax.jit` over a mesh of every process's devices.
PARALLELISMS = ("pmap", "jit")


def validate_config(config: ml_collections.ConfigDict,
                    global_device_count: int) -> None:
  """Raises ConfigError (one line) for a configuration that cannot run."""

  def fail(message):
    raise ConfigError(message)

  if config.model not in models.names():
    fail(f"unknown model {config.model!r}; valid models: "
         f"{', '.join(models.names())}")
  try:
    models.check_kwargs(config.model, config.model_kwargs.to_dict())
  except ValueError as e:
    fail(f"model_kwargs: {e}")
  if config.method not in METHODS:
    fail(f"unknown method {config.method!r}; valid methods: "
         f"{', '.join(METHODS)}")
  if config.dataset not in data.DATASETS:
    fail(f"unknown dataset {config.dataset!r}; valid datasets: "
         f"{', '.join(data.DATASETS)}")
  sparsity = config.sparsity
  if (not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or
      not 0.0 <= sparsity < 1.0):
    fail(f"sparsity must be a number in [0, 1), got {sparsity!r}")
  if config.method != "dense" and sparsity == 0:
    fail(f"method {config.method!r} needs a sparsity > 0 (use method "
         "'dense' for a dense run)")
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if not isinstance(value, int) or value <= 0:
      fail(f"{name} must be a positive integer, got {value!r}")
    if value % global_device_count:
      fail(f"{name} {value} is not divisible by the global device count "
           f"{global_device_count}")
  if not isinstance(config.num_epochs, int) or config.num_epochs <= 0:
    fail(f"num_epochs must be a positive integer, got {config.num_epochs!r}")
  if config.warmup_epochs < 0 or config.warmup_epochs >= config.num_epochs:
    fail(f"warmup_epochs must be in [0, num_epochs), got "
         f"{config.warmup_epochs!r}")
  lr_schedule = config.lr_schedule
  if lr_schedule not in LR_SCHEDULES:
    fail(f"unknown lr_schedule {lr_schedule!r}; valid: "
         f"{', '.join(LR_SCHEDULES)}")
  if lr_schedule == "epochwise_cosine" and not isinstance(
      config.warmup_epochs, int):
    fail(f"lr_schedule 'epochwise_cosine' needs whole warmup_epochs, got "
         f"{config.warmup_epochs!r}")
  # ImageNet's crops (optg_jax.data.imagenet); other datasets ignore it.
  augmentation = config.augmentation
  if augmentation not in data.imagenet.AUGMENTATIONS:
    fail(f"unknown augmentation {augmentation!r}; valid: "
         f"{', '.join(data.imagenet.AUGMENTATIONS)}")
  if config.beta <= 0:
    fail(f"beta must be positive, got {config.beta!r}")
  if config.topk_layout not in topk.LAYOUTS:
    fail(f"unknown topk_layout {config.topk_layout!r}; valid: "
         f"{', '.join(topk.LAYOUTS)}")
  if config.sparsity_granularity not in schedules.GRANULARITIES:
    fail(f"unknown sparsity_granularity {config.sparsity_granularity!r}; "
         f"valid: {', '.join(schedules.GRANULARITIES)}")
  structure = config.structure
  if structure:
    try:
      nm.NM.parse(structure)
    except ValueError as e:
      fail(f"structure: {e}")
    if config.method == "dense":
      fail(f"structure {structure!r} needs method 'optg' or 'magnitude', "
           "not 'dense'")
  normalization = config.score_normalization or None
  if normalization not in optg.SCORE_NORMALIZATIONS:
    fail(f"unknown score_normalization {normalization!r}; valid: '' (none), "
         + ", ".join(repr(n) for n in optg.SCORE_NORMALIZATIONS if n))
  floor = config.min_kept_per_unit
  if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
    fail(f"min_kept_per_unit must be a non-negative integer, got {floor!r}")
  if structure and floor > nm.NM.parse(structure).n:
    pattern = nm.NM.parse(structure)
    fail(f"min_kept_per_unit={floor} cannot be kept with structure "
         f"{structure}: N:M keeps {pattern.n} of every {pattern.m} inputs of "
         f"each unit (a floor of up to {pattern.n} is implied); set "
         f"min_kept_per_unit to at most {pattern.n}")
  if config.learning_rate <= 0:
    fail(f"learning_rate must be positive, got {config.learning_rate!r}")
  for name in ("log_every_steps", "checkpoint_every_steps"):
    if config[name] <= 0:
      fail(f"{name} must be positive, got {config[name]!r}")
  if config.parallelism not in PARALLELISMS:
    fail(f"unknown parallelism {config.parallelism!r}; valid: "
         f"{', '.join(PARALLELISMS)}")
  if config.keep_checkpoints < 1:
    fail(f"keep_checkpoints must be at least 1, got "
         f"{config.keep_checkpoints!r}")


def structure_of(config) -> Optional[nm.NM]:
  """The run's N:M pattern (`config.structure`), or None: unstructured."""
  return nm.NM.parse(config.structure) if config.structure else None


def target_sparsity(config) -> float:
  """The sparsity the run prunes to.

  `config.sparsity`, or with an N:M `structure` the sparsity of N:M itself,
  `(m - n) / m` of the kernels whose reduction axis divides into groups of
  `m` (`config.sparsity` does not apply then; kernels that do not divide,
  such as a 3-channel stem, stay dense).
  """
  structure = structure_of(config)
  if structure is not None:
    return (structure.m - structure.n) / structure.m
  return float(config.sparsity)


def update_every_steps(config, steps_per_epoch: int) -> int:
  """Mask refresh period: `config.update_every_steps`, 0 for once an epoch."""
  return config.update_every_steps or steps_per_epoch


# How far below its target the masks a run ends with may be.
TARGET_TOLERANCE = optg.TARGET_TOLERANCE


def check_target(config, steps_per_epoch: int, prunable) -> None:
  """Refuses (ConfigError) a run that cannot reach its target sparsity.

  Judged on the model the run ships, the masks its last step trains with:
  a sparsity that keeps no weight, a refresh period that draws no masks
  before the run ends, masks that fall short of the target by more than
  `TARGET_TOLERANCE` (`schedules.shortfall_message`), and
  `min_kept_per_unit` floors that need more weights than the target keeps.
  The schedule is that of the whole run (`num_epochs`); `num_train_steps`
  only stops it early.

  Args:
    config: the run's config (not a dense one).
    steps_per_epoch: optimizer steps per epoch.
    prunable: the prunable leaves (arrays or shape structs), for the counts.
  """
  total = sum(int(np.prod(x.shape)) for x in prunable)
  target = target_sparsity(config)
  keep = topk.num_to_keep(target, total)
  if keep == 0:
    raise ConfigError(
        f"sparsity {config.sparsity} keeps no weight of {config.model}'s "
        f"{total:,} prunable weights; the largest sparsity that keeps one "
        f"is {(total - 1) / total:.8f}")
  message = schedules.shortfall_message(
      optg.sigmoid_sparsity_schedule(
          target, config.num_epochs, steps_per_epoch, beta=config.beta,
          granularity=config.sparsity_granularity),
      update_every_steps(config, steps_per_epoch),
      names={"total_epochs": "num_epochs",
             "update_every": "update_every_steps"})
  if message:
    raise ConfigError(message)
  floor = config.min_kept_per_unit
  if floor and structure_of(config) is None:
    forced = optg.forced_count(prunable, floor)
    if forced > keep:
      raise ConfigError(
          f"min_kept_per_unit={floor} keeps {forced:,} weights, more than "
          f"the {keep:,} that sparsity {config.sparsity} keeps of "
          f"{config.model}'s {total:,}")
