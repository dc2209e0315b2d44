"""The train and eval steps: pure functions of the values they need.

The same functions run under `jax.pmap` (`axis_name="batch"`: gradients,
batch statistics and metrics averaged over the replicas) and under
`jax.jit` over a mesh (`axis_name=None`: the batch is global).
`launch/diagnose.py` trains with them too.
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

import optg_jax as optg
from optg_jax.harness.state import masked_params
from optg_jax.harness.state import Schedules
from optg_jax.harness.state import TrainState


def cross_entropy_loss(logits, labels, label_smoothing: float):
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes),
                                label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     targets).mean()


def _tree_all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _mean_over(axis_name: Optional[str]):
  """`lax.pmean` over the replicas of a pmapped step; under `jax.jit` the
  batch is global and its mean already is the mean over devices."""
  if axis_name is None:
    return lambda tree: tree
  return lambda tree: lax.pmean(tree, axis_name=axis_name)


def train_step(state: TrainState, batch, *, model, tx, schedules: Schedules,
               label_smoothing: float, sparse: bool,
               axis_name: Optional[str] = "batch",
               return_grads: bool = False, refresh: Optional[bool] = None):
  """One step: forward on the masked weights, mean gradients, optax update.

  Args:
    state: the train state.
    batch: `{"image", "label"}`, this replica's (pmap) or global (jit).
    model: the Flax model.
    tx: the optax chain (`mask_transform` first when `sparse`).
    schedules: the run's schedules, for the metrics.
    label_smoothing: of the cross-entropy.
    sparse: whether the forward pass runs on the masks in force.
    axis_name: the pmap axis to average over; None under `jax.jit`.
    return_grads: also return the (mean) gradients with respect to the
      masked weights, `G` of the scores' `G * W` (`launch/diagnose.py`).
    refresh: `mask_transform`'s `refresh`, chosen on the host
      (`Run.refresh_of`): False compiles a step without the top-k, True one
      that refreshes where due; None decides on the device.

  A step whose loss or gradients are not finite leaves the state unchanged
  (but for the step count) and reports `finite = 0`; the host stops the run.
  """
  mean = _mean_over(axis_name)
  masked = masked_params(sparse, state.params, state.opt_state)

  def loss_fn(masked):
    logits, new_model_state = model.apply(
        {"params": masked, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"])
    loss = cross_entropy_loss(logits, batch["label"], label_smoothing)
    return loss, (new_model_state, logits)

  dynamic_scale = state.dynamic_scale
  if dynamic_scale is not None:
    grad_fn = dynamic_scale.value_and_grad(loss_fn, has_aux=True,
                                           axis_name=axis_name)
    dynamic_scale, scale_finite, (loss, aux), grads = grad_fn(masked)
  else:
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(masked)
    grads = mean(grads)
    scale_finite = jnp.bool_(True)
  new_model_state, logits = aux
  batch_stats = mean(new_model_state["batch_stats"])
  loss = mean(loss)
  # Identical on every device: loss and gradients are pmean-ed.
  finite = jnp.isfinite(loss) & _tree_all_finite(grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                 refresh=refresh)
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
      "accuracy": mean(accuracy),
      "learning_rate": schedules.learning_rate(state.step),
      "mask_learning_rate": schedules.mask_learning_rate(state.step),
      "scheduled_sparsity": schedules.sparsity(state.step),
      # Finite loss and gradients (an fp16 overflow is handled by the scale).
      "finite": finite.astype(jnp.float32),
  }

  if return_grads:
    return new_state, metrics, grads
  return new_state, metrics


def eval_step(state: TrainState, masks, batch, *, model,
              axis_name: Optional[str] = "batch"):
  """Sums of loss, top-1 and top-5 hits over the real (unpadded) examples.

  Summed over the replicas of a pmapped step (`axis_name`); under
  `jax.jit` (`axis_name=None`) the batch is global. The weights are masked
  with `masks` (None: a dense run), which need not be the state's: an
  evaluation between epochs uses the masks the epoch trained with, not
  those the refresh after its last step has just drawn.
  """
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
  return sums if axis_name is None else lax.psum(sums, axis_name=axis_name)
