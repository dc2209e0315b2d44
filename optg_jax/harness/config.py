"""The configuration of a run: checks, and the values derived from it.

Two layers, one rule each. `validate_config` refuses (one-line
`ConfigError`) what only the harness knows: the names of the model,
method, dataset and parallelism, the batch sizes and the periods. The
values handed to the library (the sparsity, the schedules, the N:M
`structure`, `mask_transform`'s options) are the library's to check: the
harness builds the library's objects from the config once (`Run`) and
hands their `ValueError` on as a `ConfigError` naming the config field
(`as_config_error`). `check_target` refuses a run whose shipped masks
cannot reach the target. The fields are read as `config.x`: their defaults
live in `configs/default.py` only.
"""

import contextlib
import re
from typing import Optional

import ml_collections
import numpy as np

import optg_jax as optg
from optg_jax import data
from optg_jax import models
from optg_jax import nm
from optg_jax import schedules
from optg_jax import topk
from optg_jax.harness import host_memory
from optg_jax.harness.errors import ConfigError

METHODS = ("optg", "magnitude", "taylor", "rigl", "set", "dense")
LR_SCHEDULES = ("epochwise_cosine", "warmup_cosine")
# How the steps run over the devices: `jax.pmap` (one replica a local
# device), or `jax.jit` over a mesh of every process's devices.
PARALLELISMS = ("pmap", "jit")


@contextlib.contextmanager
def as_config_error(**fields: str):
  """Hands a library `ValueError` on as a one-line `ConfigError`.

  The library's messages name its arguments; `fields` maps those the
  enclosed calls are handed to the config fields passed as them, and the
  message is prefixed with the field of the argument it names first, or
  with every field given when it names none:

    with as_config_error(beta="beta", granularity="sparsity_granularity"):
      optg.sigmoid_sparsity_schedule(..., beta=config.beta, ...)
    # ConfigError: config.beta: beta must be a positive number, got -1.0

  Args:
    **fields: the library's argument name -> the config field.
  """
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    message = str(e)
    named = [(found.start(), field) for argument, field in fields.items()
             for found in [re.search(rf"\b{re.escape(argument)}\b", message)]
             if found]
    names = [min(named)[1]] if named else list(dict.fromkeys(fields.values()))
    raise ConfigError(", ".join(f"config.{name}" for name in names) + ": " +
                      " ".join(message.split())) from None


def validate_config(config: ml_collections.ConfigDict,
                    global_device_count: int) -> None:
  """Raises ConfigError (one line) for a configuration the harness refuses.

  The harness's own rules, and the sparsity's (the library's, also for a
  dense run). The library's rules on the other values it is handed are
  checked where `Run` builds its objects (`as_config_error`).
  """

  def fail(message):
    raise ConfigError(message)

  if config.model not in models.names():
    fail(f"unknown model {config.model!r}; valid models: "
         f"{', '.join(models.names())}")
  with as_config_error(model_kwargs="model_kwargs"):
    models.check_kwargs(config.model, config.model_kwargs.to_dict())
  if config.method not in METHODS:
    fail(f"unknown method {config.method!r}; valid methods: "
         f"{', '.join(METHODS)}")
  if config.dataset not in data.DATASETS:
    fail(f"unknown dataset {config.dataset!r}; valid datasets: "
         f"{', '.join(data.DATASETS)}")
  with as_config_error(sparsity="sparsity"):
    topk.num_to_keep(config.sparsity, 1)  # The library's rule: [0, 1).
  if config.method != "dense" and config.sparsity == 0:
    fail(f"method {config.method!r} needs a sparsity > 0 (use method "
         "'dense' for a dense run)")
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if not isinstance(value, int) or value <= 0:
      fail(f"{name} must be a positive integer, got {value!r}")
    if value % global_device_count:
      fail(f"{name} {value} is not divisible by the global device count "
           f"{global_device_count}")
  # The run's length: the loop's, whatever the schedules.
  if not isinstance(config.num_epochs, int) or config.num_epochs <= 0:
    fail(f"num_epochs must be a positive integer, got {config.num_epochs!r}")
  lr_schedule = config.lr_schedule
  if lr_schedule not in LR_SCHEDULES:
    fail(f"unknown lr_schedule {lr_schedule!r}; valid: "
         f"{', '.join(LR_SCHEDULES)}")
  # optax's warm-up and cosine, as the harness chains them (the library
  # checks its "epochwise_cosine").
  if lr_schedule == "warmup_cosine" and not (
      0 <= config.warmup_epochs < config.num_epochs):
    fail(f"warmup_epochs must be in [0, num_epochs), got "
         f"{config.warmup_epochs!r}")
  # ImageNet's crops (optg_jax.data.imagenet); other datasets ignore it.
  augmentation = config.augmentation
  if augmentation not in data.imagenet.AUGMENTATIONS:
    fail(f"unknown augmentation {augmentation!r}; valid: "
         f"{', '.join(data.imagenet.AUGMENTATIONS)}")
  if config.structure and config.method in ("dense", "rigl", "set"):
    fail(f"structure {config.structure!r} needs method 'optg' or "
         f"'magnitude', not {config.method!r}")
  if config.method in ("rigl", "set"):
    if not 0 < config.end_fraction <= 1:
      fail(f"end_fraction must be in (0, 1], got {config.end_fraction!r}")
    for name in ("min_kept_per_unit", "score_normalization"):
      if config[name]:
        fail(f"{name} is an option of OptG's ranking; method "
             f"{config.method!r} does not take it (pass "
             f"--config.{name}={'0' if name == 'min_kept_per_unit' else chr(39) * 2})")
  # The library takes 0 (a frozen network); a run needs a positive one.
  if config.learning_rate <= 0:
    fail(f"learning_rate must be positive, got {config.learning_rate!r}")
  for name in ("log_every_steps", "checkpoint_every_steps"):
    if config[name] <= 0:
      fail(f"{name} must be positive, got {config[name]!r}")
  if config.parallelism not in PARALLELISMS:
    fail(f"unknown parallelism {config.parallelism!r}; valid: "
         f"{', '.join(PARALLELISMS)}")
  if config.host_allocator not in host_memory.HOST_ALLOCATORS:
    fail(f"unknown host_allocator {config.host_allocator!r}; valid: "
         f"{', '.join(host_memory.HOST_ALLOCATORS)}")
  if config.keep_checkpoints < 1:
    fail(f"keep_checkpoints must be at least 1, got "
         f"{config.keep_checkpoints!r}")


def structure_of(config) -> Optional[nm.NM]:
  """The run's N:M pattern (`config.structure`), or None: unstructured.

  Raises:
    ConfigError: a `config.structure` that is not an N:M pattern.
  """
  if not config.structure:
    return None
  with as_config_error(structure="structure"):
    return nm.NM.parse(config.structure)


def target_sparsity(config, structure: Optional[nm.NM]) -> float:
  """The sparsity the run prunes to.

  `config.sparsity`, or with an N:M `structure` (`structure_of(config)`)
  the sparsity of N:M itself, `(m - n) / m` of the kernels whose reduction
  axis divides into groups of `m` (`config.sparsity` does not apply then;
  kernels that do not divide, such as a 3-channel stem, stay dense).
  """
  if structure is not None:
    return (structure.m - structure.n) / structure.m
  return float(config.sparsity)


def update_every_steps(config, steps_per_epoch: int) -> int:
  """Mask refresh period: `config.update_every_steps`, 0 for once an epoch."""
  return config.update_every_steps or steps_per_epoch


# How far below its target the masks a run ends with may be.
TARGET_TOLERANCE = optg.TARGET_TOLERANCE


def check_target(config, sparsity: schedules.SigmoidSparsity,
                 update_every: int, prunable) -> None:
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
    sparsity: the run's sparsity schedule (`Schedules.sparsity`), whose
      `target` is the run's.
    update_every: the refresh period in steps.
    prunable: the prunable leaves (arrays or shape structs), for the counts.
  """
  total = sum(int(np.prod(x.shape)) for x in prunable)
  keep = topk.num_to_keep(sparsity.target, total)
  if keep == 0:
    raise ConfigError(
        f"sparsity {config.sparsity} keeps no weight of {config.model}'s "
        f"{total:,} prunable weights; the largest sparsity that keeps one "
        f"is {(total - 1) / total:.8f}")
  message = schedules.shortfall_message(
      sparsity, update_every,
      names={"total_epochs": "num_epochs",
             "update_every": "update_every_steps"})
  if message:
    raise ConfigError(message)
  floor = config.min_kept_per_unit
  # With N:M a floor is the library's to refuse (`mask_transform`).
  if floor and not config.structure:
    forced = optg.forced_count(prunable, floor)
    if forced > keep:
      raise ConfigError(
          f"min_kept_per_unit={floor} keeps {forced:,} weights, more than "
          f"the {keep:,} that sparsity {config.sparsity} keeps of "
          f"{config.model}'s {total:,}")
