"""What a run trains: the model, the train state, the schedules and the
optax chain `mask_transform -> add_decayed_weights -> sgd(momentum)`."""

from typing import Any, Optional

import flax
from flax.training import dynamic_scale as dynamic_scale_lib
import jax
import jax.numpy as jnp
import optax

import optg_jax as optg
from optg_jax import models
from optg_jax import nm
from optg_jax.harness.config import as_config_error


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue: saved in every checkpoint."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  dynamic_scale: Optional[dynamic_scale_lib.DynamicScale]


def half_precision_dtype() -> jnp.dtype:
  """bfloat16, or float16 on GPUs without native bfloat16 (before Ampere)."""
  device = jax.local_devices()[0]
  if device.platform == "gpu":
    capability = getattr(device, "compute_capability", None)
    if capability is not None and float(capability) < 8.0:
      return jnp.float16
  return jnp.bfloat16


class Schedules(flax.struct.PyTreeNode):
  """The run's schedules, functions of the optimizer step."""
  learning_rate: Any = flax.struct.field(pytree_node=False)
  sparsity: Any = flax.struct.field(pytree_node=False)
  mask_learning_rate: Any = flax.struct.field(pytree_node=False)


def create_schedules(config, steps_per_epoch: int,
                     target: float) -> Schedules:
  """Warm-up + cosine learning rate, sigmoid sparsity, coupled mask lr.

  `config.lr_schedule` "epochwise_cosine" is the reference's learning rate,
  set once per epoch (`optg.epochwise_cosine_schedule`); "warmup_cosine" is
  optax's per-step linear warm-up from 0 and a cosine over the remaining
  steps. The mask learning rate follows the chosen one. The library's
  refusals are `ConfigError`s naming the config field.

  Args:
    config: the run's config.
    steps_per_epoch: optimizer steps per epoch.
    target: the run's target sparsity (`target_sparsity`; a dense run has
      no sparsity schedule).
  """
  base_lr = config.learning_rate
  if config.lr_reference_batch_size:
    base_lr = base_lr * config.batch_size / config.lr_reference_batch_size
  schedule_steps = config.num_epochs * steps_per_epoch
  if config.lr_schedule == "epochwise_cosine":
    with as_config_error(total_epochs="num_epochs",
                         warmup_epochs="warmup_epochs",
                         base_lr="learning_rate"):
      learning_rate = optg.epochwise_cosine_schedule(
          base_lr, config.num_epochs, steps_per_epoch,
          warmup_epochs=config.warmup_epochs)
  else:
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    learning_rate = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps,
        decay_steps=schedule_steps, end_value=0.0)
  if config.method == "dense":
    sparsity = lambda step: jnp.float32(0.0)
    mask_lr = lambda step: jnp.float32(0.0)
  elif config.method in optg.DYNAMIC_METHODS:  # At the target from step 0.
    sparsity = lambda step: jnp.float32(target)
    mask_lr = lambda step: jnp.float32(0.0)
  else:
    with as_config_error(target="sparsity", total_epochs="num_epochs",
                         beta="beta", granularity="sparsity_granularity"):
      sparsity = optg.sigmoid_sparsity_schedule(
          target, config.num_epochs, steps_per_epoch, beta=config.beta,
          granularity=config.sparsity_granularity)
      mask_lr = optg.supermask_learning_rate(learning_rate, sparsity, target)
  return Schedules(learning_rate=learning_rate, sparsity=sparsity,
                   mask_learning_rate=mask_lr)


def create_optimizer(config, schedules: Schedules, update_every: int,
                     schedule_steps: int, structure: Optional[nm.NM],
                     t_end: Optional[int] = None
                     ) -> optax.GradientTransformation:
  """`mask_transform -> add_decayed_weights -> sgd(momentum)`.

  For RigL and SET, `optg.dynamic_sparse` around the same weights'
  optimizer: its masks at the target from step 0, updated every
  `update_every` (`config.delta_t`) steps until `t_end`.

  The library's refusals of the config's values (`mask_transform`'s) are
  `ConfigError`s naming the config field: an N:M `structure` with a
  `min_kept_per_unit`, for one.

  Args:
    config: the run's config.
    schedules: from `create_schedules`.
    update_every: the refresh period in steps.
    schedule_steps: the steps of the whole schedule (`num_epochs`): no
      refresh after the last, whose masks are the model (`num_train_steps`
      only stops a run early).
    structure: the N:M pattern (`structure_of`), or None.
    t_end: RigL's and SET's last step that may move the masks.
  """
  weights = [
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedules.learning_rate, momentum=config.momentum,
                nesterov=config.nesterov),
  ]
  if config.method in optg.DYNAMIC_METHODS:
    with as_config_error(budget="budget", delta_t="delta_t",
                         alpha="drop_fraction", t_end="end_fraction",
                         sparsity="sparsity", total_steps="num_epochs"):
      return optg.dynamic_sparse(
          config.method, float(config.sparsity), optax.chain(*weights),
          total_steps=schedule_steps, delta_t=update_every,
          alpha=config.drop_fraction, t_end=t_end, budget=config.budget,
          seed=config.seed)
  chain = []
  if config.method != "dense":
    with as_config_error(criterion="method", momentum="mask_momentum",
                         score_normalization="score_normalization",
                         min_kept_per_unit="min_kept_per_unit",
                         update_every="update_every_steps",
                         layout="topk_layout", total_steps="num_epochs",
                         sparsity="sparsity",
                         mask_learning_rate="learning_rate"):
      chain.append(optg.mask_transform(
          schedules.sparsity, schedules.mask_learning_rate,
          momentum=config.mask_momentum, update_every=update_every,
          criterion=config.method,
          score_normalization=config.score_normalization or None,
          min_kept_per_unit=config.min_kept_per_unit, structure=structure,
          indivisible="dense", total_steps=schedule_steps,
          topk_layout=config.topk_layout))
  return optax.chain(*chain, *weights)


def current_masks(sparse: bool, opt_state):
  """The masks in force for the next step, or None for a dense run."""
  return optg.get_masks(opt_state) if sparse else None


def trained_masks(sparse: bool, opt_state):
  """The masks the last step trained with, or None for a dense run.

  The model a run reports, evaluates and ships: the refresh after a step
  draws masks for the steps to come, which no step has trained with yet.
  """
  return optg.trained_masks(opt_state) if sparse else None


def masked_params(sparse: bool, params, opt_state):
  """The params the next step's forward pass runs on."""
  masks = current_masks(sparse, opt_state)
  return params if masks is None else optg.apply_masks(params, masks)


def create_model(config, num_classes: int):
  dtype = half_precision_dtype() if config.half_precision else jnp.float32
  return models.create(config.model, num_classes, dtype=dtype,
                       **config.model_kwargs.to_dict())


def create_train_state(rng, config, model, image_shape,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises the model variables and the optimizer state."""
  variables = jax.jit(
      lambda rng: model.init(rng, jnp.zeros((1,) + tuple(image_shape),
                                            jnp.float32), train=False))(rng)
  params = variables["params"]
  dynamic_scale = None
  if config.half_precision and model.dtype == jnp.float16:
    dynamic_scale = dynamic_scale_lib.DynamicScale()
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), dynamic_scale=dynamic_scale)
