"""OptG training and evaluation: `train_and_evaluate(config, workdir)`.

The harness behind `launch/train.py`: it validates the configuration, builds
the input pipeline, the Flax model and the optax chain
`mask_transform -> add_decayed_weights -> sgd(momentum)` (for RigL and SET,
`dynamic_sparse` around the same weights' optimizer), and runs the
train step over the devices (`jax.pmap` by default, `jax.jit` over a mesh
with `config.parallelism="jit"`), with orbax checkpoints (resumed
automatically), clu metrics, and a summary of the sparse model at the end.
`config.method` is "optg", "magnitude" (gradual magnitude pruning through
the same transform), "taylor" (the one-shot criterion), "rigl" or "set"
(sparse from the first step, `optg_jax.dynamic`) or "dense" (no masks), so
the baselines run through the same code.

This module gathers the names a user of the harness calls: the entry point,
`Run` and the steps, the checkpoint helpers, and the errors a run ends with
(each with its exit code, `optg_jax.harness.errors`). The code lives in
`optg_jax.harness`, one concern a module (see its docstring).
"""

# pylint: disable=unused-import
from optg_jax.harness.checkpoints import checkpoint_manager
from optg_jax.harness.checkpoints import restore_latest
from optg_jax.harness.errors import CheckpointError
from optg_jax.harness.errors import ConfigChanged
from optg_jax.harness.errors import ConfigError
from optg_jax.harness.errors import NonFiniteError
from optg_jax.harness.errors import WorkdirBusy
from optg_jax.harness.errors import WorkdirError
from optg_jax.harness.config import check_target
from optg_jax.harness.config import structure_of
from optg_jax.harness.config import target_sparsity
from optg_jax.harness.config import update_every_steps
from optg_jax.harness.config import validate_config
from optg_jax.harness.evaluation import EvalHistory
from optg_jax.harness.evaluation import evaluate
from optg_jax.harness.loop import check_finite
from optg_jax.harness.loop import train_and_evaluate
from optg_jax.harness.parallel import Jit
from optg_jax.harness.parallel import Pmap
from optg_jax.harness.run import Run
from optg_jax.harness.state import create_model
from optg_jax.harness.state import create_optimizer
from optg_jax.harness.state import create_schedules
from optg_jax.harness.state import current_masks
from optg_jax.harness.steps import eval_step
from optg_jax.harness.steps import train_step
from optg_jax.harness.summary import collapse_findings
from optg_jax.harness.preemption import Preempted


def replicate(tree):
  """A host pytree on every local device, as the pmapped steps take it."""
  return Pmap().place(tree)
