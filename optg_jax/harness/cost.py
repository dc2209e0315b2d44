"""Training MACs: what each step of a run costs, by method, and their sum.

Per example and step, with `f_D` the dense forward pass's MACs and `f_S`
the forward pass's with the masks in force (`flops.count_macs`'s rule: the
kept kernel entries times the output positions of each conv and dense
layer), a forward pass costs `f`, a backward pass `2 f`: `f` for the
gradients of the activations and `f` for those of the weights. The weights'
gradients are dense (`f_D`) where a method reads the gradient of pruned
weights:

  dense                 3 f_D
  magnitude, set        3 f_S
  optg, taylor          2 f_S + f_D    (the scores' `G * W` at every weight)
  rigl                  3 f_S, and 2 f_S + f_D at a mask update (`|G|`)

the accounting of the RigL paper (Evci et al., 2020, appendix H), applied
to every method alike. The harness sums the figure over the steps a run
trains (`StepCost`; `CostLedger`, which survives preemption) and multiplies
by the batch size: `summary.json`'s `training_macs`, beside
`dense_training_macs`, a dense run's. `f_S` is a float32 sum on the device
(exact below 2**24 MACs per example, else to a relative 6e-8).
"""

import json
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from optg_jax import flops
from optg_jax.tree import path_to_str

LEDGER_FILE = "training_macs.json"


class StepCost:
  """The MACs of one step per example.

  `f_S` is computed on the device when the masks change (`forward_of`, a
  reduction over the masks), never in the train step; the per-step figure
  follows on the host (`step_macs`), in float64.

  Args:
    model: the Flax model.
    image_shape: one input's shape.
    method: the run's method (`config.method`).
  """

  def __init__(self, model, image_shape, method: str):
    variables = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)),
        train=False))
    macs = flops.count_macs(model, variables, (1,) + tuple(image_shape))
    self.method = method
    self.dense = int(macs.dense)
    self.positions: Dict[str, int] = {
        layer.path: layer.output_size for layer in macs.per_layer}
    self._forward = None

  def dense_step(self) -> int:
    """A dense step's MACs per example, `3 f_D`."""
    return 3 * self.dense

  def sparse_forward(self, masks):
    """`f_S` of the masks in force (float32, traced): `f_D` less the pruned
    entries times their layer's output positions."""
    pruned = jnp.float32(0)
    for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
      positions = self.positions.get(path_to_str(path))
      if positions is not None:
        removed = mask.size - jnp.sum(mask, dtype=jnp.int32)
        pruned += removed.astype(jnp.float32) * jnp.float32(positions)
    return jnp.float32(self.dense) - pruned

  def forward_of(self, masks):
    """`f_S` of `masks` as a device scalar (None for a dense run), computed
    once per change of the masks: not in the train step."""
    if masks is None:
      return None
    if self._forward is None:
      self._forward = jax.jit(self.sparse_forward)
    return self._forward(masks)

  def step_macs(self, forward: Optional[float], refresh: Optional[bool]
                ) -> float:
    """One step's MACs per example, from `f_S` of the masks in force
    (`forward`, None for a dense run) and the step's `refresh`."""
    if self.method == "rigl" and refresh is None:
      raise ValueError("RigL's step cost needs the step's refresh, chosen on "
                       "the host (Run.refresh_of): a mask-update step also "
                       "computes the dense gradient")
    dense = float(self.dense)
    if self.method == "dense" or forward is None:
      return 3 * dense
    sparse = float(forward)
    if self.method in ("optg", "taylor") or (self.method == "rigl" and
                                             refresh):
      return 2 * sparse + dense
    return 3 * sparse

  def __call__(self, masks, refresh: Optional[bool]) -> float:
    """`step_macs` of the masks in force (host arrays or device arrays)."""
    forward = self.forward_of(masks)
    return self.step_macs(None if forward is None else float(forward),
                          refresh)

  def values(self, steps) -> list:
    """`step_macs` of `(forward, refresh)` pairs, the forwards fetched from
    the device together."""
    forwards = jax.device_get([f for f, _ in steps])
    return [self.step_macs(f, r) for f, (_, r) in zip(forwards, steps)]


class CostLedger:
  """The sum of the steps' MACs per example, kept across preemptions.

  The loop hands it each step (`step`: `f_S` of the masks in force, a
  device scalar, and the step's `refresh`); `flush` fetches and adds them.
  `WORKDIR/training_macs.json` maps each checkpointed step to the sum up to
  it (`record`, before the checkpoint is written, so a checkpoint's step
  always has its entry unless the run began before this file existed); a
  resumed run reads its start step's sum. A run resumed without one has no
  total (`None`).
  """

  def __init__(self, workdir: str, start_step: int, cost: StepCost):
    self.path = os.path.join(workdir, LEDGER_FILE)
    self.cost = cost
    self.pending = []
    self.sums: Dict[str, float] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.sums = {k: v for k, v in json.load(f).items()
                     if int(k) <= start_step}
    self.total: Optional[float] = (
        0.0 if start_step == 0 else self.sums.get(str(start_step)))

  def step(self, forward, refresh: Optional[bool]) -> None:
    """Notes a step: `f_S` of its masks (device scalar or None) and its
    `refresh`."""
    self.pending.append((forward, refresh))

  def flush(self) -> None:
    """Adds the noted steps, in float64."""
    if self.pending and self.total is not None:
      self.total += float(sum(self.cost.values(self.pending)))
    self.pending = []

  def record(self, step: int) -> None:
    """Flushes, then writes the sum up to `step` (process 0)."""
    self.flush()
    if self.total is None or jax.process_index() != 0:
      return
    self.sums[str(step)] = self.total
    with open(self.path + ".tmp", "w") as f:
      json.dump(self.sums, f, indent=1)
    os.replace(self.path + ".tmp", self.path)
