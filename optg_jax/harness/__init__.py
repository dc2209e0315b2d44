"""The training harness behind `launch/train.py`, one concern a module:

  config      checks of a config, and the values derived from it
  state       the model, train state, schedules and optax chain
  steps       the train and eval steps (pure functions of their values)
  parallel    how the steps run over the devices: `Pmap` or `Jit`
  run         `Run`: a config resolved once into what the loop needs
  evaluation  `evaluate` and `EvalHistory` (best-of at the target)
  summary     collapse findings, the sparse model's figures, output files
  loop        `train_and_evaluate`: the loop, read top to bottom

and its plumbing:

  checkpoints orbax checkpoints: save, verify, restore, set damage aside
  workdir     the run directory's lock and its records
  preemption  SIGTERM agreed over the processes, then a checkpoint
  multihost   what the processes agree on (one value, all or none)
  console     the progress lines and the one-line errors
  errors      the errors a run ends with, each with its exit code
  files       writes that leave a whole file or none

`optg_jax.train` gathers the names a user of the harness needs. Needs the
`train` extra (`pip install 'optg_jax[train]'`).
"""

from optg_jax import extras

extras.require(extras.HARNESS, "optg_jax.harness")
