r"""Trains a sparse network with OptG: the command-line entry point.

  python launch/train.py --config=configs/imagenet.py --workdir=DIR \
      [--config.sparsity=0.95] [--config.data_dir=TFDS_DIR]

Multi-process runs pass `--coordinator_address`, `--num_processes` and
`--process_id` (see docs/guides/harness.md); on a TPU pod, start the same
command on every worker with none of them. A workdir that holds checkpoints resumes
from the latest one. All the logic lives in `optg_jax.train`.

The console shows a line per logging step (loss, accuracy, sparsity,
images/s, ETA), the evaluations, the checkpoint saves, a short summary, and
every warning and error; process 0 only, other processes print warnings and
errors. `--verbosity=1` adds the INFO logs of the libraries (orbax, clu's
metric writer, JAX, TensorFlow) in absl's format, `--verbosity=2` their
DEBUG logs too.
"""

import ast
import logging as std_logging
import os
import sys

# The repository root, so that configs can import `configs.default`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from optg_jax.harness import console  # pylint: disable=g-import-not-at-top
from optg_jax.harness import host_memory  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and "
                    "the summary.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                  "with no arguments (TPU pods, SLURM and other clusters it "
                  "detects by itself).")
flags.mark_flags_as_required(["config", "workdir"])
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "configs")


def configs_help() -> str:
  """The recipes in configs/, each with the first line of its docstring."""
  lines = ["Configs (--config=configs/NAME.py, then --config.FIELD=VALUE):"]
  for name in sorted(os.listdir(CONFIGS)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    with open(os.path.join(CONFIGS, name)) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    lines.append(f"  {name:26s}{doc.splitlines()[0] if doc else ''}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")

  # Before TensorFlow or JAX start a thread: the allocator's settings only
  # reach threads that have not allocated yet. An unknown value is the
  # config check's to refuse, in one line.
  allocator = FLAGS.config.get("host_allocator", "system")
  kept = (allocator in host_memory.HOST_ALLOCATORS and
          host_memory.set_host_allocator(allocator))
  verbose = console.set_up()
  # TensorFlow only feeds the input pipeline: keep it off the accelerators.
  console.import_tensorflow(verbose)

  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.distributed:
    # Collectives between CPU devices of several processes (a CPU-only run);
    # GPUs and TPUs bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if FLAGS.coordinator_address:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                    num_processes=FLAGS.num_processes,
                    process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)
  if jax.process_index() > 0 and not verbose:
    logging.get_absl_handler().setLevel(std_logging.WARNING)

  from optg_jax import data  # pylint: disable=g-import-not-at-top
  from optg_jax.harness import errors  # pylint: disable=g-import-not-at-top
  from optg_jax import train  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d of %d, local devices %s; host allocator %s "
               "(freed memory kept: %s)", jax.process_index(),
               jax.process_count(), jax.local_devices(), allocator, kept)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (errors.ConfigError, data.DatasetError, errors.NonFiniteError,
          errors.CheckpointError, errors.WorkdirError) as e:
    # One line and the exit code of the faults guide's table
    # (optg_jax.harness.errors).
    print(f"error: {e}", file=sys.stderr)
    sys.exit(errors.exit_code(e))
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
  console.run_main(main, __doc__, configs_help())
