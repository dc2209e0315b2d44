"""Evaluating between epochs: the masks the epoch trained with, or the next.

Trains the quick start (ResNet-20 on the digits) at the reference's cadence
(a mask refresh once an epoch, no per-unit floor), evaluating after every
epoch with the masks that epoch trained with (what the harness does), and
checkpointing every epoch. Then evaluates each checkpoint again with the
masks the refresh after the epoch's last step drew for the next epoch
(`get_masks(state)`: what an evaluation of the checkpoint alone sees), and
prints both curves side by side.

  python benchmarks/eval_masks.py [--workdir DIR] [--sparsity 0.9]
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from configs import quickstart
from optg_jax.harness import checkpoints
from optg_jax import data
from optg_jax import train


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None,
                      help="where the run goes (default: a temporary dir)")
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="optg_eval_masks_")

  config = quickstart.get_config()
  config.sparsity = args.sparsity
  config.seed = args.seed
  config.update_every_steps = 0  # The reference: once an epoch.
  config.min_kept_per_unit = 0
  config.eval_every_epochs = 1
  spe = data.steps_per_epoch(config)
  config.checkpoint_every_steps = spe
  config.keep_checkpoints = config.num_epochs + 1
  summary = train.train_and_evaluate(config, workdir)

  run = train.Run(config)
  _, p_eval = run.compiled_steps()
  manager = train.checkpoint_manager(workdir, config)
  template = run.initial_state()
  trained = {r["step"]: r for r in summary["evaluations"]
             if r["masks"] == "trained"}
  print(f"ResNet-20 on the digits, target {args.sparsity}, a refresh once an "
        f"epoch ({spe} steps), seed {args.seed}; top-1 on the test digits")
  print("| epoch | sparsity trained with | top-1, trained masks | sparsity "
        "of the next masks | top-1, next masks |")
  print("|---:|---:|---:|---:|---:|")
  gaps = []
  for step in sorted(trained):
    if step not in manager.all_steps():
      continue
    state = checkpoints.restore(manager, step, template)
    state = train.replicate(jax.device_get(state))
    refreshed = train.evaluate(p_eval, state,
                               train.current_masks(True, state.opt_state),
                               config, run.parallel)
    t = trained[step]
    gaps.append(t["eval_accuracy"] - refreshed["eval_accuracy"])
    print(f"| {step // spe} | {t['eval_sparsity']:.4f} | "
          f"{t['eval_accuracy']:.4f} | {refreshed['eval_sparsity']:.4f} | "
          f"{refreshed['eval_accuracy']:.4f} |")
  gaps = np.array(gaps)
  print(f"trained minus next masks, top-1: mean {gaps.mean():+.4f}, "
        f"largest {gaps.max():+.4f} (epoch {int(np.argmax(gaps)) + 1}), "
        f"smallest {gaps.min():+.4f}")
  print(f"final (shipped, the last epoch's masks) "
        f"{summary['eval_accuracy']:.4f}; best at the target sparsity "
        f"{summary['best_eval_accuracy']:.4f} at step "
        f"{summary['best_eval_step']}")
  print(json.dumps({"workdir": workdir}))


if __name__ == "__main__":
  main()
