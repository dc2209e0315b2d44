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
to every method alike. Each step's figure is a float32 (exact below 2**24,
else to a relative 6e-8); the harness sums them in float64 over the steps a
run trains (`StepCost` in the compiled step, `CostLedger` on the host,
which survives preemption) and multiplies by the batch size: `summary.json`'s
`training_macs`, beside `dense_training_macs`, a dense run's.
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
  """The MACs of one step per example, computed in the compiled step.

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

  def __call__(self, masks, refresh: Optional[bool]):
    """The step's MACs per example (float32); `refresh` as the step's."""
    if self.method == "rigl" and refresh is None:
      raise ValueError("RigL's step cost needs the step's refresh, chosen on "
                       "the host (Run.refresh_of): a mask-update step also "
                       "computes the dense gradient")
    dense = jnp.float32(self.dense)
    if self.method == "dense" or masks is None:
      return 3 * dense
    sparse = self.sparse_forward(masks)
    if self.method in ("optg", "taylor") or (self.method == "rigl" and
                                             refresh):
      return 2 * sparse + dense
    return 3 * sparse


class CostLedger:
  """The sum of the steps' MACs per example, kept across preemptions.

  `WORKDIR/training_macs.json` maps each checkpointed step to the sum up to
  it (written before the checkpoint, so a checkpoint's step always has its
  entry unless the run began before this file existed); a resumed run reads
  its start step's sum. A run resumed without one has no total (`None`).
  """

  def __init__(self, workdir: str, start_step: int):
    self.path = os.path.join(workdir, LEDGER_FILE)
    self.sums: Dict[str, float] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.sums = {k: v for k, v in json.load(f).items()
                     if int(k) <= start_step}
    self.total: Optional[float] = (
        0.0 if start_step == 0 else self.sums.get(str(start_step)))

  def add(self, step_macs) -> None:
    """Adds the steps' figures (host floats), in float64."""
    if self.total is not None:
      self.total += float(sum(float(x) for x in step_macs))

  def record(self, step: int, pending=()) -> None:
    """Writes the sum up to `step` (`pending`: steps not yet added)."""
    if self.total is None or jax.process_index() != 0:
      return
    self.sums[str(step)] = self.total + float(sum(float(x)
                                                  for x in pending))
    with open(self.path + ".tmp", "w") as f:
      json.dump(self.sums, f, indent=1)
    os.replace(self.path + ".tmp", self.path)
