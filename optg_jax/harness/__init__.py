"""The training harness behind `launch/train.py`, one concern a module:

  config      checks of a config, and the values derived from it
  state       the model, train state, schedules and optax chain
  steps       the train and eval steps (pure functions of their values)
  parallel    how the steps run over the devices: `Pmap` or `Jit`
  run         `Run`: a config resolved once into what the loop needs
  evaluation  `evaluate` and `EvalHistory` (best-of at the target)
  summary     collapse findings, the sparse model's figures, output files
  loop        `train_and_evaluate`: the loop, read top to bottom

Checkpoints, the workdir's lock, the console and preemption are modules of
the package beside it (`optg_jax.checkpoints`, `optg_jax.workdir`,
`optg_jax.console`, `optg_jax.preemption`); `optg_jax.train` gathers the
names a user of the harness needs.
"""
