"""OptG training and evaluation: `train_and_evaluate(config, workdir)`.

The harness behind `launch/train.py`: it validates the configuration, builds
the input pipeline, the Flax model and the optax chain
`mask_transform -> add_decayed_weights -> sgd(momentum)`, and runs a
`jax.pmap`ped train step over the local devices (`axis_name="batch"`), with
orbax checkpoints (resumed automatically), clu metrics, and a summary of the
sparse model at the end. `config.method` is "optg", "magnitude" (gradual
magnitude pruning through the same transform) or "dense" (no masks), so the
baselines run through the same code.
"""

import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
from flax import jax_utils
from flax.training import dynamic_scale as dynamic_scale_lib
import jax
from jax import lax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

import optg_jax as optg
from optg_jax import checkpoints
from optg_jax import console
from optg_jax import data
from optg_jax import flops
from optg_jax import models
from optg_jax import nm
from optg_jax import schedules as schedules_lib
from optg_jax import topk
from optg_jax.checkpoints import checkpoint_manager
from optg_jax.checkpoints import restore_latest
from optg_jax.errors import CheckpointError
from optg_jax.errors import ConfigChanged
from optg_jax.errors import ConfigError
from optg_jax.errors import NonFiniteError
from optg_jax.errors import WorkdirBusy
from optg_jax.errors import WorkdirError
from optg_jax.preemption import Preempted
from optg_jax.preemption import SigtermFlag

METHODS = ("optg", "magnitude", "dense")
LR_SCHEDULES = ("epochwise_cosine", "warmup_cosine")


# Names the entry points and tests use from here.
__all__ = ["CheckpointError", "ConfigChanged", "ConfigError", "NonFiniteError",
           "Preempted", "WorkdirBusy", "WorkdirError", "checkpoint_manager",
           "restore_latest", "train_and_evaluate"]


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue: saved in every checkpoint."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  dynamic_scale: Optional[dynamic_scale_lib.DynamicScale]


# ---------------------------------------------------------------------------
# Configuration.


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
  lr_schedule = config.get("lr_schedule", "warmup_cosine")
  if lr_schedule not in LR_SCHEDULES:
    fail(f"unknown lr_schedule {lr_schedule!r}; valid: "
         f"{', '.join(LR_SCHEDULES)}")
  if lr_schedule == "epochwise_cosine" and not isinstance(
      config.warmup_epochs, int):
    fail(f"lr_schedule 'epochwise_cosine' needs whole warmup_epochs, got "
         f"{config.warmup_epochs!r}")
  # ImageNet's crops (optg_jax.data.imagenet); other datasets ignore it.
  augmentation = config.get("augmentation", "inception")
  if augmentation not in data.imagenet.AUGMENTATIONS:
    fail(f"unknown augmentation {augmentation!r}; valid: "
         f"{', '.join(data.imagenet.AUGMENTATIONS)}")
  if config.beta <= 0:
    fail(f"beta must be positive, got {config.beta!r}")
  structure = config.get("structure", "")
  if structure:
    try:
      nm.NM.parse(structure)
    except ValueError as e:
      fail(f"structure: {e}")
    if config.method == "dense":
      fail(f"structure {structure!r} needs method 'optg' or 'magnitude', "
           "not 'dense'")
  normalization = config.get("score_normalization", "") or None
  if normalization not in optg.SCORE_NORMALIZATIONS:
    fail(f"unknown score_normalization {normalization!r}; valid: '' (none), "
         + ", ".join(repr(n) for n in optg.SCORE_NORMALIZATIONS if n))
  floor = config.get("min_kept_per_unit", 0)
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
  if config.keep_checkpoints < 1:
    fail(f"keep_checkpoints must be at least 1, got "
         f"{config.keep_checkpoints!r}")


def structure_of(config) -> Optional[nm.NM]:
  """The run's N:M pattern (`config.structure`), or None: unstructured."""
  structure = config.get("structure", "")
  return nm.NM.parse(structure) if structure else None


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


def half_precision_dtype() -> jnp.dtype:
  """bfloat16, or float16 on GPUs without native bfloat16 (before Ampere)."""
  device = jax.local_devices()[0]
  if device.platform == "gpu":
    capability = getattr(device, "compute_capability", None)
    if capability is not None and float(capability) < 8.0:
      return jnp.float16
  return jnp.bfloat16


# ---------------------------------------------------------------------------
# Optimizer and schedules.


class Schedules(flax.struct.PyTreeNode):
  """The run's schedules, functions of the optimizer step."""
  learning_rate: Any = flax.struct.field(pytree_node=False)
  sparsity: Any = flax.struct.field(pytree_node=False)
  mask_learning_rate: Any = flax.struct.field(pytree_node=False)


def create_schedules(config, steps_per_epoch: int) -> Schedules:
  """Warm-up + cosine learning rate, sigmoid sparsity, coupled mask lr.

  `config.lr_schedule` "epochwise_cosine" is the reference's learning rate,
  set once per epoch (`optg.epochwise_cosine_schedule`); "warmup_cosine" is
  optax's per-step linear warm-up from 0 and a cosine over the remaining
  steps. The mask learning rate follows the chosen one.
  """
  base_lr = config.learning_rate
  if config.lr_reference_batch_size:
    base_lr = base_lr * config.batch_size / config.lr_reference_batch_size
  total_steps = config.num_epochs * steps_per_epoch
  if config.get("lr_schedule", "warmup_cosine") == "epochwise_cosine":
    learning_rate = optg.epochwise_cosine_schedule(
        base_lr, config.num_epochs, steps_per_epoch,
        warmup_epochs=config.warmup_epochs)
  else:
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    learning_rate = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=0.0)
  if config.method == "dense":
    sparsity = lambda step: jnp.float32(0.0)
    mask_lr = lambda step: jnp.float32(0.0)
  else:
    target = target_sparsity(config)
    sparsity = optg.sigmoid_sparsity_schedule(
        target, config.num_epochs, steps_per_epoch, beta=config.beta)
    mask_lr = optg.supermask_learning_rate(learning_rate, sparsity, target)
  return Schedules(learning_rate=learning_rate, sparsity=sparsity,
                   mask_learning_rate=mask_lr)


def update_every_steps(config, steps_per_epoch: int) -> int:
  """Mask refresh period: `config.update_every_steps`, 0 for once an epoch."""
  return config.update_every_steps or steps_per_epoch


def create_optimizer(config, schedules: Schedules,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """`mask_transform -> add_decayed_weights -> sgd(momentum)`."""
  chain = []
  if config.method != "dense":
    chain.append(optg.mask_transform(
        schedules.sparsity, schedules.mask_learning_rate,
        momentum=config.mask_momentum,
        update_every=update_every_steps(config, steps_per_epoch),
        criterion=config.method,
        score_normalization=config.get("score_normalization", "") or None,
        # N:M keeps n of every m inputs of each unit: the floor is implied.
        min_kept_per_unit=(0 if structure_of(config) else
                           config.get("min_kept_per_unit", 0)),
        structure=structure_of(config), indivisible="dense",
        # No refresh after the run's last step: the masks the last step
        # trains with are the model (`num_train_steps` only stops early).
        total_steps=config.num_epochs * steps_per_epoch))
  chain += [
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedules.learning_rate, momentum=config.momentum,
                nesterov=config.nesterov),
  ]
  return optax.chain(*chain)


def current_masks(config, opt_state):
  """The masks in force for the next step, or None for a dense run."""
  return None if config.method == "dense" else optg.get_masks(opt_state)


def shipped_masks(config, opt_state):
  """The masks the last step trained with, or None for a dense run.

  The model a run reports, evaluates and ships: the refresh after a step
  draws masks for the steps to come, which no step has trained with yet.
  """
  return None if config.method == "dense" else optg.trained_masks(opt_state)


def masked_params(config, params, opt_state):
  """The params the next step's forward pass runs on."""
  masks = current_masks(config, opt_state)
  return params if masks is None else optg.apply_masks(params, masks)


# ---------------------------------------------------------------------------
# Model and state.


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


# ---------------------------------------------------------------------------
# Steps.


def cross_entropy_loss(logits, labels, label_smoothing: float):
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes),
                                label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     targets).mean()


def _tree_all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step(state: TrainState, batch, *, model, tx, config,
               schedules: Schedules):
  """One pmapped step: forward on the masked weights, pmean, optax update.

  A step whose loss or gradients are not finite leaves the state unchanged
  (but for the step count) and reports `finite = 0`; the host stops the run.
  """
  masked = masked_params(config, state.params, state.opt_state)

  def loss_fn(masked):
    logits, new_model_state = model.apply(
        {"params": masked, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"])
    loss = cross_entropy_loss(logits, batch["label"], config.label_smoothing)
    return loss, (new_model_state, logits)

  dynamic_scale = state.dynamic_scale
  if dynamic_scale is not None:
    grad_fn = dynamic_scale.value_and_grad(loss_fn, has_aux=True,
                                           axis_name="batch")
    dynamic_scale, scale_finite, (loss, aux), grads = grad_fn(masked)
  else:
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(masked)
    grads = lax.pmean(grads, axis_name="batch")
    scale_finite = jnp.bool_(True)
  new_model_state, logits = aux
  batch_stats = lax.pmean(new_model_state["batch_stats"], axis_name="batch")
  loss = lax.pmean(loss, axis_name="batch")
  # Identical on every device: loss and gradients are pmean-ed.
  finite = jnp.isfinite(loss) & _tree_all_finite(grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if dynamic_scale is not None:
    # fp16 loss scaling: an overflow skips the step and lowers the scale.
    apply_step, finite = scale_finite, finite | ~scale_finite
  else:
    apply_step = finite
  choose = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(apply_step, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=choose(params, state.params),
      batch_stats=choose(batch_stats, state.batch_stats),
      opt_state=choose(opt_state, state.opt_state),
      dynamic_scale=dynamic_scale)

  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  metrics = {
      "loss": loss,
      "accuracy": lax.pmean(accuracy, axis_name="batch"),
      "learning_rate": schedules.learning_rate(state.step),
      "mask_learning_rate": schedules.mask_learning_rate(state.step),
      "scheduled_sparsity": schedules.sparsity(state.step),
      # Finite loss and gradients (an fp16 overflow is handled by the scale).
      "finite": finite.astype(jnp.float32),
  }
  return new_state, metrics


def eval_step(state: TrainState, masks, batch, *, model, config):
  """Sums of loss, top-1 and top-5 hits over the real (unpadded) examples.

  The weights are masked with `masks` (None: a dense run), which need not be
  the state's: an evaluation between epochs uses the masks the epoch trained
  with, not those the refresh after its last step has just drawn.
  """
  del config
  masked = state.params if masks is None else optg.apply_masks(state.params,
                                                               masks)
  logits = model.apply({"params": masked, "batch_stats": state.batch_stats},
                       batch["image"], train=False)
  logits = logits.astype(jnp.float32)
  weight = batch["mask"].astype(jnp.float32)
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top5 = jnp.any(lax.top_k(logits, min(5, logits.shape[-1]))[1] ==
                 labels[:, None], axis=-1)
  sums = {
      "loss": jnp.sum(loss * weight),
      "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * weight),
      "top5": jnp.sum(top5 * weight),
      "count": jnp.sum(weight),
  }
  return lax.psum(sums, axis_name="batch")


# ---------------------------------------------------------------------------
# Helpers of the loop.


def replicate(tree):
  """Copies a host pytree to every local device, stacked on a new axis 0.

  The copies carry the sharding the pmapped steps give their outputs (a
  "batch" mesh over the local devices), so the state fed back from one step
  to the next never changes sharding and the step compiles once.
  """
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(devices), ("batch",)),
      jax.sharding.PartitionSpec("batch"))

  def one(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x[None], (len(devices),) + x.shape),
                          sharding)

  return jax.tree.map(one, tree)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState,
                    config):
  """Saves the replicated `state` with its digest (`checkpoints.save`).

  A save that fails on the filesystem (a full disk, a read-only or vanished
  directory) removes its temporary directory and raises WorkdirError: the
  checkpoints saved before stay complete and listed.
  """
  start = time.time()
  host_state = jax.device_get(jax_utils.unreplicate(state))
  step = int(host_state.step)
  try:
    checkpoints.save(manager, host_state, config)
  except OSError as e:
    if jax.process_index() == 0:
      _remove_temporary(str(manager.directory), step)
    raise WorkdirError(
        f"cannot save the checkpoint of step {step} in {manager.directory}: "
        f"{checkpoints.describe_os_error(e)}; the checkpoints saved before "
        "are intact") from None
  console.info("Saved the checkpoint of step %d in %s (%.1f s)", step,
           manager.directory, time.time() - start)


def _remove_temporary(directory: str, step: int):
  """Deletes what a failed save of `step` left (never a listed checkpoint)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith(f"{step}.") and "tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def evaluate(p_eval_step, state, masks, config, local_device_count: int,
             interrupt: Optional[Callable[[], bool]] = None):
  """Loss, top-1 and top-5 over the whole eval split (every process).

  Args:
    p_eval_step: the pmapped `eval_step`.
    state: the replicated state (weights and batch statistics).
    masks: the replicated masks to evaluate with; None for a dense run.
    config: the run's config.
    local_device_count: devices of this process.
    interrupt: polled after each batch; when it returns True the evaluation
      stops early and its figures are incomplete (the caller discards them).

  Returns:
    `eval_loss`, `eval_accuracy`, `eval_top5_accuracy`, `eval_examples` and,
    with masks, `eval_sparsity` (the sparsity of `masks`).
  """
  totals = None
  for batch in data.eval_iterator(config, process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  local_device_count=local_device_count):
    sums = p_eval_step(state, masks, batch)
    sums = jax.tree.map(lambda x: float(x[0]), sums)
    totals = sums if totals is None else jax.tree.map(
        lambda a, b: a + b, totals, sums)
    if interrupt is not None and interrupt():
      break
  count = totals["count"]
  metrics = {"eval_loss": totals["loss"] / count,
             "eval_accuracy": totals["top1"] / count,
             "eval_top5_accuracy": totals["top5"] / count,
             "eval_examples": int(count)}
  if masks is not None:
    leaves = [np.asarray(x[0]) for x in jax.tree.leaves(masks)]
    total = sum(x.size for x in leaves)
    metrics["eval_sparsity"] = 1.0 - sum(
        int(np.count_nonzero(x)) for x in leaves) / max(total, 1)
  return metrics


EVAL_FIGURES = ("eval_accuracy", "eval_top5_accuracy", "eval_loss",
                "eval_sparsity")


class EvalHistory:
  """Every evaluation of a run, kept in `WORKDIR/evaluations.json`.

  Every evaluation uses the masks the steps before it trained with
  (`masks: "trained"`), as the reference's per-epoch validation does:
  between epochs, the masks the epoch just trained with, not those the
  refresh after its last step drew for the next epoch; at the end of the
  run, the model it ships. The best evaluation (highest top-1, the earliest
  on ties) is the reference's `best_acc1`, counted only among evaluations
  of masks drawn at the target sparsity (their scheduled sparsity within
  `TARGET_TOLERANCE` of it): on a schedule still rising, an early epoch of
  an almost dense network would win it. Before the target is reached there
  is no best.

  The file survives preemption; a resumed run drops the evaluations after
  its checkpoint (it computes them again), and the final evaluation of a
  run stopped early by `num_train_steps` (`final: true`), so that a run
  resumed further keeps the evaluations of one never stopped.
  """

  def __init__(self, workdir: str, start_step: int, target: float,
               read_only: bool = False):
    self.path = os.path.join(workdir, "evaluations.json")
    self.target = target
    self.read_only = read_only
    self.records = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.records = [r for r in json.load(f)
                        if r["step"] <= start_step and not r.get("final")]

  def add(self, step: int, epoch: float, scheduled: float, metrics,
          final: bool = False) -> Dict:
    """Records the evaluation after `step` of masks drawn at `scheduled`."""
    record = {"step": int(step), "epoch": float(epoch), "masks": "trained",
              "scheduled_sparsity": float(scheduled),
              **{k: float(metrics[k]) for k in EVAL_FIGURES if k in metrics},
              "eval_examples": int(metrics["eval_examples"])}
    if final:
      record["final"] = True
    self.records = [r for r in self.records if r["step"] != step] + [record]
    if jax.process_index() == 0 and not self.read_only:
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.records, f, indent=1)
      os.replace(self.path + ".tmp", self.path)
    return record

  def at(self, step: int) -> Optional[Dict]:
    """The evaluation after `step`, if there is one."""
    return next((r for r in self.records if r["step"] == step), None)

  def at_target(self, record: Dict) -> bool:
    """Whether an evaluation's masks were drawn at the target sparsity."""
    return (abs(record.get("scheduled_sparsity", 0.0) - self.target)
            <= TARGET_TOLERANCE)

  def best(self) -> Optional[Dict]:
    eligible = [r for r in self.records if self.at_target(r)]
    if not eligible:
      return None
    return max(eligible, key=lambda r: (r["eval_accuracy"], -r["step"]))

  def summary(self) -> Dict[str, Any]:
    best = self.best()
    return {"best_eval_accuracy": best and best["eval_accuracy"],
            "best_eval_step": best and best["step"],
            "evaluations": self.records}


def collapse_findings(report, input_layer: Optional[str],
                      output_layer: Optional[str]) -> Dict[str, Any]:
  """What a sparsity report says about layers cut off by pruning.

  A collapsed layer (no kept weight) or a dead unit (an output unit or
  channel with no kept input weight) is harmless only where another path
  carries the signal past it, e.g. a residual branch beside its shortcut.
  The model's input layer collapsed, its classifier collapsed, or a class
  with no kept weight (a dead unit of the classifier) never are: those are
  `fatal`. Collapsed layers elsewhere are fatal in a plain chain (LeNet, VGG,
  MobileNet V1) and may be harmless in a residual network; they are listed
  as `collapsed_layers` for the reader to judge.

  Args:
    report: `optg.sparsity_report(masks)`.
    input_layer: the kernel path of the model's first layer (call order).
    output_layer: the kernel path of the model's classifier (last layer).

  Returns:
    `{"collapsed_layers": [...], "dead_units": {path: count},
    "fatal": [one-line reasons]}`.
  """
  fatal = []
  for name in report["collapsed_layers"]:
    if name == input_layer:
      fatal.append(f"the input layer {name} has no kept weight")
    elif name == output_layer:
      fatal.append(f"the classifier {name} has no kept weight")
  if output_layer in report["dead_units"] and (
      output_layer not in report["collapsed_layers"]):
    fatal.append(f"{report['dead_units'][output_layer]} classes have no kept "
                 f"weight in the classifier {output_layer}")
  return {"collapsed_layers": list(report["collapsed_layers"]),
          "dead_units": dict(report["dead_units"]), "fatal": fatal}


class _CollapseWatch:
  """Warns once per change when a refresh cuts a layer or a unit off."""

  def __init__(self, input_layer, output_layer, update_every: int):
    self.input_layer, self.output_layer = input_layer, output_layer
    self.update_every = update_every
    self.last = None

  def check(self, report, step: int):
    findings = collapse_findings(report, self.input_layer, self.output_layer)
    # A new warning when the set of layers cut off changes, not the counts.
    key = (tuple(findings["collapsed_layers"]),
           tuple(sorted(findings["dead_units"])), tuple(findings["fatal"]))
    if key == self.last:
      return
    if self.last is not None or any(key):
      refresh = optg.last_refresh_step(step, self.update_every)
      if not any(key):
        logging.warning("Mask refresh at step %d: no layer or unit is cut "
                        "off any more", refresh)
      else:
        dead = sorted(findings["dead_units"].items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{n} {c}" for n, c in dead[:4]) + (
            f", and {len(dead) - 4} more layers" if len(dead) > 4 else "")
        logging.warning(
            "Mask refresh at step %d (sparsity %.4f): collapsed layers: %s; "
            "%d dead units (no kept input weight): %s%s", refresh,
            report["sparsity"],
            ", ".join(findings["collapsed_layers"]) or "none",
            sum(findings["dead_units"].values()), listed or "none",
            ("; FATAL: " + "; ".join(findings["fatal"]))
            if findings["fatal"] else "")
    self.last = key


def model_layers(model, variables, image_shape):
  """The kernel paths of the conv and dense layers in call order."""
  macs = flops.count_macs(model, variables, (1,) + tuple(image_shape))
  return [layer.path for layer in macs.per_layer]


def _model_summary(config, model, state: TrainState, image_shape):
  """Actual sparsity, MACs and the per-layer table of the model the host
  state ships (the masks its last step trained with)."""
  params = state.params
  masks = shipped_masks(config, state.opt_state)
  variables = {"params": params, "batch_stats": state.batch_stats}
  macs = flops.count_macs(model, variables, (1,) + tuple(image_shape),
                          masks=masks)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  if masks is None:
    report = optg.sparsity_report(jax.tree.map(
        lambda p: np.ones(np.shape(p), bool) if np.ndim(p) >= 2 else None,
        params))
  else:
    report = optg.sparsity_report(masks)
  order = [layer.path for layer in macs.per_layer]
  findings = collapse_findings(report, order[0] if order else None,
                               order[-1] if order else None)
  structure = structure_of(config) if masks is not None else None
  nm_figures, nm_note = {}, ""
  if structure is not None:
    nm_layers, dense_layers = _nm_layers(masks, structure)
    nm_figures = {"structure": str(structure), "nm_layers": nm_layers,
                  "dense_layers": dense_layers}
    nm_note = (f"\nN:M {structure} on {len(nm_layers)} layers; not N:M: "
               f"{', '.join(dense_layers) or 'none'}\n")
  return {
      **nm_figures,
      "sparsity": report["sparsity"],
      "prunable_params": report["total"],
      "kept_params": report["kept"],
      "num_params": num_params,
      "dense_macs": int(macs.dense),
      "sparse_macs": int(macs.sparse),
      "collapsed_layers": findings["collapsed_layers"],
      "dead_units": findings["dead_units"],
      "fatal_collapse": findings["fatal"],
      # In call order (the layers MAC counting saw first, then any other).
      "layers": {name: {"kept": r["kept"], "total": r["total"],
                        "dead_units": r["dead_units"]}
                 for name, r in sorted(
                     report["layers"].items(),
                     key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                     else len(order)))},
  }, optg.sparsity_table(report) + _collapse_note(findings) + nm_note


def _nm_layers(masks, structure: nm.NM):
  """The kernels whose masks are N:M, and the others (dense: indivisible,
  or not yet pruned to N:M everywhere)."""
  nm_layers, other = [], []
  flat = jax.tree_util.tree_flatten_with_path(
      masks, is_leaf=lambda x: x is None)[0]
  for path, mask in flat:
    if mask is None:
      continue
    name = optg.path_to_str(path)
    (nm_layers if nm.is_nm(np.asarray(mask), structure.n, structure.m)
     else other).append(name)
  return nm_layers, other


def _collapse_note(findings) -> str:
  """The lines under the sparsity table about layers cut off."""
  if not findings["collapsed_layers"] and not findings["dead_units"]:
    return "\nNo layer collapsed; every output unit keeps an input weight.\n"
  lines = [f"\nCollapsed layers (no kept weight): "
           f"{', '.join(findings['collapsed_layers']) or 'none'}",
           "Dead units (no kept input weight): " + (", ".join(
               f"{n} {c}" for n, c in findings["dead_units"].items())
                                                     or "none")]
  if findings["fatal"]:
    lines.append("FATAL: " + "; ".join(findings["fatal"]))
  lines.append("A collapsed layer or dead unit is harmless only where "
               "another path (a residual shortcut) carries the signal.")
  return "\n".join(lines) + "\n"


SUMMARY = "summary.json"
EVAL_SUMMARY = "eval_summary.json"  # Of `eval_only`.


def _write_outputs(workdir, summary, table, summary_name: str = SUMMARY):
  """The summary and (if given) sparsity.txt, atomic, by process 0."""
  if jax.process_index() != 0:
    return
  outputs = [(summary_name, json.dumps(summary, indent=2) + "\n")]
  if table is not None:
    outputs.append(("sparsity.txt", table))
  for name, text in outputs:
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------
# The run.


# How far below its target the masks a run ends with may be.
TARGET_TOLERANCE = optg.TARGET_TOLERANCE


def check_target(config, steps_per_epoch: int, prunable) -> None:
  """Refuses (ConfigError) a run that cannot reach its target sparsity.

  Judged on the model the run ships, the masks its last step trains with:
  a sparsity that keeps no weight, a refresh period that draws no masks
  before the run ends, masks that fall short of the target by more than
  `TARGET_TOLERANCE` (`schedules_lib.shortfall_message`), and
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
  message = schedules_lib.shortfall_message(
      optg.sigmoid_sparsity_schedule(target, config.num_epochs,
                                     steps_per_epoch, beta=config.beta),
      update_every_steps(config, steps_per_epoch),
      names={"total_epochs": "num_epochs",
             "update_every": "update_every_steps"})
  if message:
    raise ConfigError(message)
  floor = config.get("min_kept_per_unit", 0)
  if floor and structure_of(config) is None:
    forced = optg.forced_count(prunable, floor)
    if forced > keep:
      raise ConfigError(
          f"min_kept_per_unit={floor} keeps {forced:,} weights, more than "
          f"the {keep:,} that sparsity {config.sparsity} keeps of "
          f"{config.model}'s {total:,}")


class _Run:
  """Everything derived from the config before anything is written."""

  def __init__(self, config):
    self.config = config
    self.local_device_count = jax.local_device_count()
    validate_config(config, jax.device_count())
    self.info = data.dataset_info(config)  # Raises DatasetError.
    try:
      self.steps_per_epoch = data.steps_per_epoch(config,
                                                  jax.process_count())
    except ValueError as e:  # A batch larger than the training split.
      raise ConfigError(str(e)) from None
    self.total_steps = config.num_epochs * self.steps_per_epoch
    if config.num_train_steps > 0:
      self.total_steps = min(self.total_steps, config.num_train_steps)
    self.update_every = update_every_steps(config, self.steps_per_epoch)
    self.target = (target_sparsity(config) if config.method != "dense"
                   else 0.0)
    self.schedules = create_schedules(config, self.steps_per_epoch)
    self.model = create_model(config, self.info.num_classes)
    self._check_target()
    self.tx = create_optimizer(config, self.schedules, self.steps_per_epoch)

  def _prunable_shapes(self):
    shapes = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), jnp.zeros(
            (1,) + tuple(self.info.image_shape)), train=False))["params"]
    return [x for x in jax.tree.leaves(shapes) if len(x.shape) >= 2]

  def _check_target(self):
    if self.config.method != "dense":
      prunable = self._prunable_shapes()
      structure = structure_of(self.config)
      if structure is not None and not any(
          x.shape[nm.reduction_axis(x.shape)] % structure.m == 0
          for x in prunable if len(x.shape) in (2, 3, 4)):
        raise ConfigError(
            f"structure {structure}: no prunable kernel of "
            f"{self.config.model} has a reduction axis (its inputs) that "
            f"divides into groups of {structure.m}, so nothing could be "
            "pruned; choose an N:M whose M divides the layers' inputs (e.g. "
            "2:4)")
      check_target(self.config, self.steps_per_epoch, prunable)

  def initial_state(self) -> TrainState:
    rng = jax.random.key(self.config.seed)
    return create_train_state(rng, self.config, self.model,
                              self.info.image_shape, self.tx)

  def pmapped_steps(self):
    p_train = jax.pmap(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          config=self.config, schedules=self.schedules),
        axis_name="batch", donate_argnums=(0,))
    p_eval = jax.pmap(
        functools.partial(eval_step, model=self.model, config=self.config),
        axis_name="batch")
    return p_train, p_eval

  def trained_masks(self, state):
    """The masks the last step trained with (replicated), or None: dense."""
    return shipped_masks(self.config, state.opt_state)

  def scheduled_sparsity(self, done: int) -> float:
    """The scheduled sparsity of the masks the first `done` steps ended
    with (those of the last refresh before step `done`; 0 before any)."""
    last = optg.last_refresh_step(done, self.update_every)
    if self.config.method == "dense" or last == 0:
      return 0.0
    return float(self.schedules.sparsity(last))

  def eval_due(self, done: int) -> bool:
    """Whether an evaluation between epochs follows step `done`.

    Every `eval_every_epochs` epochs, and after the last epoch (then
    besides the final evaluation); never with `eval_every_epochs=0`. A run
    cut short by `num_train_steps` has only its final evaluation at the end:
    the same run resumed further then keeps the same evaluations as one
    that was never stopped.
    """
    every = self.config.eval_every_epochs
    if not every:
      return False
    epoch, within = divmod(done, self.steps_per_epoch)
    return within == 0 and (epoch % every == 0 or
                            epoch == self.config.num_epochs)


def replica_fingerprints(state: TrainState) -> list:
  """SHA-256 of every replica's weights, batch statistics and masks.

  One hex digest per device of the job, in process order: the replicas of a
  healthy run are bitwise identical, so all digests are equal. Every process
  must call this (an all-gather across processes).
  """
  local = jax.device_get((state.params, state.batch_stats,
                          state.opt_state))
  digests = np.stack([
      np.frombuffer(bytes.fromhex(checkpoints.state_digest(
          jax.tree.map(lambda x, i=i: x[i], local))), np.uint8)
      for i in range(jax.local_device_count())])
  if jax.process_count() > 1:
    digests = np.asarray(multihost_utils.process_allgather(digests))
  return [d.tobytes().hex() for d in digests.reshape(-1, 32)]


def _summary(run: _Run, state_host: TrainState, eval_metrics, wall_time):
  config = run.config
  model_figures, table = _model_summary(config, run.model, state_host,
                                        run.info.image_shape)
  final_step = int(state_host.step)
  summary = {
      **{k: float(v) for k, v in eval_metrics.items()
         if k != "eval_examples"},
      "eval_examples": eval_metrics["eval_examples"],
      "sparsity": model_figures["sparsity"],
      "target_sparsity": run.target,
      "scheduled_sparsity": run.scheduled_sparsity(final_step),
      # Every figure is of the masks the last step trained with (earlier
      # releases reported the refresh after it, which no step trained).
      "masks": "trained",
      **{k: v for k, v in model_figures.items() if k != "sparsity"},
      "steps": final_step,
      "epochs": final_step / run.steps_per_epoch,
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "model": config.model,
      "method": config.method,
      "dataset": config.dataset,
      "wall_time_s": wall_time,
  }
  return summary, table


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains (or resumes, or with `config.eval_only` evaluates) and summarises.

  Nothing is written to `workdir` before the configuration, the dataset
  and the workdir are known to be usable: a config that cannot run or
  cannot reach its target, a workdir that is a file, in use by another run
  (`WORKDIR/run.lock`), or holding checkpoints of another configuration
  (`WORKDIR/config.json`) is refused first. A workdir holding checkpoints
  resumes from the latest verified one: params, batch statistics, optimizer
  state (scores and masks), step and, through the step, the position in the
  data.

  Args:
    config: the run's `ml_collections.ConfigDict` (see `configs/`).
    workdir: where checkpoints, metrics, `summary.json` and `sparsity.txt` go.

  Returns:
    The summary written to `WORKDIR/summary.json` (with `eval_only`:
    `WORKDIR/eval_summary.json`).

  Raises:
    ConfigError (and its subclasses WorkdirBusy, ConfigChanged),
    data.DatasetError: bad input, nothing written.
    NonFiniteError, CheckpointError: the run cannot go on.
    WorkdirError: the workdir cannot be written or vanished.
    Preempted: SIGTERM; a checkpoint of the step reached is saved.
  """
  start_time = time.time()
  run = _Run(config)
  place = checkpoints.Workdir(workdir)
  place.check_usable()
  if config.eval_only and not checkpoints.checkpoint_steps(place.path):
    raise ConfigError(f"eval_only: no checkpoint to evaluate in "
                      f"{os.path.join(place.path, 'checkpoints')}")
  with SigtermFlag() as sigterm, place.claim(
      config, record=not config.eval_only):
    try:
      if config.eval_only:
        return _evaluate_only(run, place, sigterm, start_time)
      return _train(run, place, sigterm, start_time)
    except OSError as e:
      if isinstance(e, WorkdirError):
        raise
      raise WorkdirError(f"I/O error in workdir {place.path}: "
                         f"{checkpoints.describe_os_error(e)}") from None


def _restored(run: _Run, workdir: str):
  """The checkpoint manager and the host state to start from."""
  manager = checkpoint_manager(workdir, run.config)
  state = restore_latest(manager, run.initial_state(), workdir,
                         config=run.config)
  return manager, state


def _interruptible(sigterm: SigtermFlag):
  """Polled between evaluation batches: SIGTERM stops an evaluation that
  can be done again (one process; several agree at the end only)."""
  if jax.process_count() > 1:
    return None
  return lambda: sigterm.received


def _evaluate_only(run: _Run, place, sigterm: SigtermFlag,
                   start_time: float) -> Dict[str, Any]:
  """`eval_only`: evaluates the latest checkpoint into eval_summary.json.

  The training's own outputs (summary.json, sparsity.txt,
  evaluations.json) are left as they are.
  """
  _, state = _restored(run, place.path)
  step = int(state.step)
  _, p_eval = run.pmapped_steps()
  state = replicate(jax.device_get(state))
  history = EvalHistory(place.path, step, run.target, read_only=True)
  eval_metrics = evaluate(p_eval, state, run.trained_masks(state),
                          run.config, run.local_device_count,
                          interrupt=_interruptible(sigterm))
  if sigterm.agreed(True):
    raise Preempted(step, saved=False)
  summary, _ = _summary(run, jax.device_get(jax_utils.unreplicate(state)),
                        eval_metrics, time.time() - start_time)
  summary.update(history.summary())
  summary["eval_only"] = True
  place.check_present(step)
  _write_outputs(place.path, summary, None, summary_name=EVAL_SUMMARY)
  console.log_summary(summary, place.path, summary_name=EVAL_SUMMARY)
  return summary


def _train(run: _Run, place, sigterm: SigtermFlag,
           start_time: float) -> Dict[str, Any]:
  """Trains from the latest checkpoint to the end, then evaluates."""
  config, workdir = run.config, place.path
  manager, state = _restored(run, workdir)
  start_step = int(state.step)
  layers = model_layers(run.model, {"params": state.params,
                                    "batch_stats": state.batch_stats},
                        run.info.image_shape)
  watch = _CollapseWatch(layers[0] if layers else None,
                         layers[-1] if layers else None, run.update_every)
  p_train, p_eval = run.pmapped_steps()
  state = replicate(jax.device_get(state))
  history = EvalHistory(workdir, start_step, run.target)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  logging.info("Training %s (%s, target sparsity %s) on %s: steps %d..%d, "
               "%d steps/epoch, %d devices", config.model, config.method,
               target_sparsity(config), config.dataset, start_step,
               run.total_steps,
               run.steps_per_epoch, jax.device_count())

  train_iter = data.train_iterator(
      config, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(),
      local_device_count=run.local_device_count)
  train_iter = jax_utils.prefetch_to_device(train_iter, 2)
  hooks = []
  # steps_per_sec and uptime in TensorBoard; the console has `progress`.
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=run.total_steps, writer=writer,
      every_steps=config.log_every_steps, every_secs=None)
  if jax.process_index() == 0:
    hooks.append(report_progress)

  train_metrics = []
  last_saved = start_step
  last_evaluation = None  # (step, metrics) of this process's latest one.
  progress = console.Progress(run.total_steps, run.steps_per_epoch,
                             config.batch_size, start_step)
  for step in range(start_step, run.total_steps):
    batch = next(train_iter)
    done = step + 1
    state, metrics = p_train(state, batch)
    if step == start_step:
      progress.start(metrics)  # Once compiled and run.
    train_metrics.append(metrics)
    for hook in hooks:
      hook(done)
    at_log = done % config.log_every_steps == 0 or done == run.total_steps
    if at_log:
      place.check_present(done)
      progress.report(done, _check_finite_and_log(
          writer, train_metrics, done, state, config, watch=watch))
      train_metrics = []
    if run.eval_due(done):
      # Before a SIGTERM stops the run: the masks it needs are in no
      # checkpoint.
      with progress.paused(state):
        last_evaluation = (done, _epoch_evaluation(run, state, p_eval,
                                                   writer, history, done))
    if sigterm.agreed(at_log):
      _check_finite_and_log(writer, train_metrics, done, state, config,
                            write=False)
      if last_saved != done:
        place.check_present(done)
        save_checkpoint(manager, state, config)
      writer.flush()
      raise Preempted(done)
    last_saved = _periodic_work(run, place, state, writer, manager, done,
                                last_saved, train_metrics, progress)

  if train_metrics:
    _check_finite_and_log(writer, train_metrics, run.total_steps, state,
                          config, watch=watch)
  final_step = int(jax_utils.unreplicate(state.step))
  if last_saved != final_step:
    place.check_present(final_step)
    save_checkpoint(manager, state, config)
  # The model the run ships: the masks its last step trained with. The
  # evaluation after the last epoch, if this process just made it, is it.
  if last_evaluation is not None and last_evaluation[0] == final_step:
    eval_metrics = last_evaluation[1]
  else:
    eval_metrics = evaluate(p_eval, state, run.trained_masks(state), config,
                            run.local_device_count,
                            interrupt=_interruptible(sigterm))
  if sigterm.agreed(True):
    # Saved above: the same command evaluates it again.
    writer.flush()
    raise Preempted(final_step)
  writer.write_scalars(run.total_steps, {
      "final_" + k: v for k, v in eval_metrics.items()})
  fingerprints = replica_fingerprints(state)
  if len(set(fingerprints)) > 1:
    logging.error("The replicas of the model differ at the end of the run: "
                  "%s", fingerprints)
  state_host = jax.device_get(jax_utils.unreplicate(state))
  summary, table = _summary(run, state_host, eval_metrics,
                            time.time() - start_time)
  if history.at(final_step) is None or not run.eval_due(final_step):
    history.add(final_step, final_step / run.steps_per_epoch,
                run.scheduled_sparsity(final_step), eval_metrics,
                final=not run.eval_due(final_step))
  summary.update(history.summary())
  summary["replicas_identical"] = len(set(fingerprints)) == 1
  summary["replica_fingerprints"] = fingerprints
  writer.write_scalars(run.total_steps, {
      "actual_sparsity": summary["sparsity"],
      **({"best_eval_accuracy": summary["best_eval_accuracy"]}
         if summary["best_eval_accuracy"] is not None else {})})
  writer.flush()
  place.check_present(final_step)
  _write_outputs(workdir, summary, table)
  console.log_summary(summary, workdir)
  return summary


def _epoch_evaluation(run, state, p_eval, writer, history, done):
  """Evaluates with the masks the finished epoch trained with; records it."""
  metrics = evaluate(p_eval, state, run.trained_masks(state), run.config,
                     run.local_device_count)
  history.add(done, done / run.steps_per_epoch,
              run.scheduled_sparsity(done), metrics)
  best = history.best()
  writer.write_scalars(done, {
      **{k: v for k, v in metrics.items() if k != "eval_examples"},
      **({"best_eval_accuracy": best["eval_accuracy"]} if best else {})})
  console.info("Evaluation at step %d (epoch %.1f, the masks it trained "
               "with): %s | %s", done, done / run.steps_per_epoch,
               console.eval_figures(metrics), console.best_figure(best))
  return metrics


def _periodic_work(run, place, state, writer, manager, done, last_saved,
                   train_metrics, progress: console.Progress) -> int:
  """Checkpoints inside the loop; returns the last saved step."""
  config = run.config
  if done >= run.total_steps:
    return last_saved  # The end of the run saves.
  if done % config.checkpoint_every_steps == 0:
    _check_finite_and_log(writer, train_metrics, done, state, config,
                          write=False)
    place.check_present(done)
    with progress.paused(state):
      save_checkpoint(manager, state, config)
    return done
  return last_saved


def _check_finite_and_log(writer, train_metrics, step, state, config,
                          write=True, watch: Optional[_CollapseWatch] = None):
  """Stops on a non-finite step; writes averaged train metrics.

  With a `watch`, the masks in force are checked for collapsed layers and
  dead units, and a change since the last check is logged as a warning.

  Returns:
    The scalars written (None when nothing was written).
  """
  if not train_metrics:
    return None
  host = jax.device_get([jax.tree.map(lambda x: x[0], m)
                         for m in train_metrics])
  first_step = step - len(host)  # 0-based index of host[0]'s step.
  for i, m in enumerate(host):
    if m["finite"] < 1:
      what = (f"non-finite gradients (the loss, {float(m['loss']):.6g}, "
              "is finite)" if np.isfinite(m["loss"]) else
              f"a non-finite loss ({float(m['loss'])})")
      raise NonFiniteError(
          f"{what} at step {first_step + i}; stopping without saving a "
          "checkpoint")
  if not write:
    return None
  summary = {f"train_{k}": float(np.mean([m[k] for m in host]))
             for k in ("loss", "accuracy")}
  last = host[-1]
  for k in ("learning_rate", "mask_learning_rate", "scheduled_sparsity"):
    summary[k] = float(last[k])
  if config.method != "dense":
    # The masks the steps just logged trained with.
    masks = jax.device_get(jax.tree.map(
        lambda x: x[0], optg.trained_masks(state.opt_state)))
    report = optg.sparsity_report(masks)
    summary["actual_sparsity"] = report["sparsity"]
    summary["collapsed_layers"] = len(report["collapsed_layers"])
    summary["dead_units"] = sum(report["dead_units"].values())
    if watch is not None:
      watch.check(report, step)
  writer.write_scalars(step, summary)
  return summary
