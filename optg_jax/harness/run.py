"""`Run`: a run's config resolved once into what the loop needs."""

import functools

import jax
import jax.numpy as jnp

import optg_jax as optg
from optg_jax import data
from optg_jax import nm
from optg_jax.harness.errors import ConfigError
from optg_jax.harness import parallel
from optg_jax.harness.config import check_target
from optg_jax.harness.config import structure_of
from optg_jax.harness.config import target_sparsity
from optg_jax.harness.config import update_every_steps
from optg_jax.harness.cost import StepCost
from optg_jax.harness.config import validate_config
from optg_jax.harness.state import create_model
from optg_jax.harness.state import create_optimizer
from optg_jax.harness.state import create_schedules
from optg_jax.harness.state import create_train_state
from optg_jax.harness.state import trained_masks
from optg_jax.harness.state import TrainState
from optg_jax.harness.steps import eval_step
from optg_jax.harness.steps import train_step


class Run:
  """A run's config resolved once, before anything is written.

  The values derived from the config (the N:M structure, the target, the
  schedules, the optax chain) are computed here, once, and handed to their
  users; building the library's objects checks the config's values by the
  library's own rules (a refusal is a `ConfigError` naming the field).

  Attributes:
    config: the config.
    parallel: `parallel.Pmap()` or `parallel.Jit()` (`config.parallelism`).
    info: the dataset's `data.dataset_info`.
    steps_per_epoch: optimizer steps per epoch (all processes together).
    schedule_steps: the steps of the whole schedule (`num_epochs` epochs).
    total_steps: the steps this run trains (`num_train_steps` may stop it
      before the schedule's end).
    update_every: the mask refresh period in steps.
    sparse: whether the run has masks (not `method="dense"`).
    target: the target sparsity (0 for a dense run).
    structure: the N:M pattern, or None.
    schedules: learning rate, sparsity and mask learning rate.
    model: the Flax model.
    tx: the optax chain.

  Raises (on construction):
    ConfigError: a config that cannot run or cannot reach its target.
    data.DatasetError: a dataset that is not there.
  """

  def __init__(self, config):
    self.config = config
    validate_config(config, jax.device_count())
    self.structure = structure_of(config)
    self.parallel = parallel.create(config.parallelism)
    self.local_device_count = self.parallel.local_device_count
    self.info = data.dataset_info(config)  # Raises DatasetError.
    try:
      self.steps_per_epoch = data.steps_per_epoch(config,
                                                  jax.process_count())
    except ValueError as e:  # A batch larger than the training split.
      raise ConfigError(str(e)) from None
    self.schedule_steps = config.num_epochs * self.steps_per_epoch
    self.total_steps = self.schedule_steps
    if config.num_train_steps > 0:
      self.total_steps = min(self.total_steps, config.num_train_steps)
    self.dynamic = config.method in optg.DYNAMIC_METHODS
    self.t_end = (max(1, int(config.end_fraction * self.schedule_steps))
                  if self.dynamic else None)
    self.update_every = (config.delta_t if self.dynamic else
                         update_every_steps(config, self.steps_per_epoch))
    self.sparse = config.method != "dense"
    self.target = (target_sparsity(config, self.structure) if self.sparse
                   else 0.0)
    self.schedules = create_schedules(config, self.steps_per_epoch,
                                      self.target)
    self.model = create_model(config, self.info.num_classes)
    self._check_target()
    self.tx = create_optimizer(config, self.schedules, self.update_every,
                               self.schedule_steps, self.structure,
                               t_end=self.t_end)
    self.cost = StepCost(self.model, self.info.image_shape, config.method)

  def _prunable_shapes(self):
    shapes = jax.eval_shape(
        lambda: self.model.init(jax.random.key(0), jnp.zeros(
            (1,) + tuple(self.info.image_shape)), train=False))["params"]
    return [x for x in jax.tree.leaves(shapes) if len(x.shape) >= 2]

  def _check_target(self):
    if self.sparse and not self.dynamic:
      prunable = self._prunable_shapes()
      structure = self.structure
      if structure is not None and not any(
          x.shape[nm.reduction_axis(x.shape)] % structure.m == 0
          for x in prunable if len(x.shape) in (2, 3, 4)):
        raise ConfigError(
            f"structure {structure}: no prunable kernel of "
            f"{self.config.model} has a reduction axis (its inputs) that "
            f"divides into groups of {structure.m}, so nothing could be "
            "pruned; choose an N:M whose M divides the layers' inputs (e.g. "
            "2:4)")
      check_target(self.config, self.schedules.sparsity, self.update_every,
                   prunable)

  def initial_state(self) -> TrainState:
    rng = jax.random.key(self.config.seed)
    return create_train_state(rng, self.config, self.model,
                              self.info.image_shape, self.tx)

  def compiled_steps(self):
    """`(train_step, eval_step)` compiled for `self.parallel`.

    `train_step(state, batch, step)` runs the step `step` (the state's, on
    the host) with the refresh chosen there (`refresh_of`): no branch on
    the device. The eval step is `eval_step(state, masks, batch)`.
    """
    train = functools.partial(
        train_step, model=self.model, tx=self.tx, schedules=self.schedules,
        label_smoothing=self.config.label_smoothing, sparse=self.sparse)
    evaluate = functools.partial(eval_step, model=self.model)
    train_for, evaluate = self.parallel.compile(train, evaluate)

    def train_at(state, batch, step: int):
      return train_for(self.refresh_of(step))(state, batch)

    return train_at, evaluate

  def refresh_of(self, step: int):
    """The train step's `refresh` at step `step`, chosen on the host.

    None for a dense run (no masks). With a refresh every step, True (the
    step after the last is no refresh, which the select in the step
    handles: one compilation). Else whether the update of `step` refreshes
    (`optg.refresh_due`): the steps between refreshes hold no top-k.
    """
    if not self.sparse:
      return None
    if self.dynamic:  # RigL, SET: `delta_t` until `t_end`.
      return optg.dynamic_update_due(step, self.update_every, self.t_end,
                                     self.schedule_steps)
    if self.update_every == 1:
      return True
    return optg.refresh_due(step, self.update_every, self.schedule_steps)

  def trained_masks(self, state):
    """The masks the last step trained with (placed like `state`, on the
    devices or the host), or None: dense."""
    return trained_masks(self.sparse, state.opt_state)

  def scheduled_sparsity(self, done: int) -> float:
    """The scheduled sparsity of the masks the first `done` steps ended
    with (those of the last refresh before step `done`; 0 before any)."""
    if self.dynamic:
      return self.target  # From step 0.
    last = optg.last_refresh_step(done, self.update_every)
    if not self.sparse or last == 0:
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
