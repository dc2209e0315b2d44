r"""Records what every mask refresh of a run does: the collapse diagnosis.

  python launch/diagnose.py --config=configs/quickstart.py \
      --config.sparsity=0.99 --output=DIR

Trains the configured run in this process on one device, with the harness's
model, data, schedules and optax chain (`optg_jax.train`), and at every
refresh records per layer
(`optg_jax.studies.diagnostics.refresh_stats`): pruned and
regrown weights with their magnitudes, dead output units, score quantiles,
the signal-to-noise ratio of `G * W` accumulated since the last refresh, the
train accuracy before the refresh, and two eval accuracies: of the masks the
steps before the refresh trained with (the model at that point, what an
evaluation between epochs reports) and of the masks the refresh draws,
before any step trains with them. The last row is the end of the run: the
model it ships. Writes
`DIR/refreshes.json` (everything) and `DIR/refreshes.md` (tables). Nothing
is checkpointed; this is a measurement, not a training run to keep.

Bad flags (`--record_every` below 1, an `--output` that is a file, a config
that cannot run) are one `error: ...` line and exit code 2 before any
training; an `--output` that cannot be created or written, exit code 4.
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration.",
                                lock_config=True)
flags.DEFINE_string("output", None, "Directory for refreshes.json/.md.")
flags.DEFINE_integer("max_refreshes", 0, "Stop after this many refreshes "
                     "(0: run to the end).")
flags.DEFINE_integer("record_every", 1, "Record every this many refreshes "
                     "(pruned and regrown then count against the masks of "
                     "the previous record; the criterion sums span the same "
                     "steps). Useful when the run refreshes every step.")
flags.mark_flags_as_required(["config", "output"])


def _overview(records, steps_per_epoch):
  """One row per refresh: where the masks changed most, and the SNR."""
  lines = ["| step | epoch | sparsity | train acc before | eval acc, masks "
           "trained | eval acc, new masks | median layer SNR | dead units | "
           "most pruned layers (pruned fraction of the layer; pruned / "
           "regrown this refresh) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    layers = r["layers"]
    snrs = [s["snr_p50"] for s in layers.values()
            if s.get("snr_p50") is not None]
    worst = sorted(layers.items(),
                   key=lambda kv: -(1 - kv[1]["kept"] / kv[1]["total"]))[:3]
    worst = "; ".join(
        f"{n.replace('/kernel', '')} {1 - s['kept'] / s['total']:.0%} "
        f"({s['pruned']}/{s['regrown']})" for n, s in worst
        if s["kept"] < s["total"])
    lines.append(
        f"| {r['step']} | {r['step'] / steps_per_epoch:.1f} | "
        f"{r['sparsity']:.4f} | {r['train_accuracy']:.3f} | "
        f"{r['eval_accuracy_trained']:.3f} | "
        f"{_maybe(r['eval_accuracy_new'], '.3f')} | "
        f"{np.median(snrs) if snrs else float('nan'):.2f} | "
        f"{sum(s['dead_units'] for s in layers.values())} | {worst or '—'} |")
  return "\n".join(lines) + "\n"


def _maybe(value, spec):
  return "—" if value is None else format(value, spec)


def _table(records, steps_per_epoch):
  lines = ["## Refreshes at a glance", "", _overview(records,
                                                    steps_per_epoch),
           "## Per layer"]
  for r in records:
    what = ("End of the run (the model it ships)" if r["final"] else
            "Refresh")
    lines.append(f"\n### {what} at step {r['step']} (epoch "
                 f"{r['step'] / steps_per_epoch:.2f}): sparsity "
                 f"{r['sparsity']:.4f}, train accuracy before "
                 f"{r['train_accuracy']:.3f}, eval accuracy of the masks "
                 f"trained {r['eval_accuracy_trained']:.3f}, of the new "
                 f"masks {_maybe(r['eval_accuracy_new'], '.3f')}\n")
    lines.append("| layer | kept | total | pruned | regrown | dead units | "
                 "mean abs W regrown | mean abs W kept | score p01 | "
                 "score p50 | score p99 | SNR p50 |")
    lines.append("|---" * 12 + "|")
    fmt = lambda v, f: "—" if v is None else format(v, f)
    for name, s in r["layers"].items():
      score = s.get("score", {})
      lines.append(
          f"| {name} | {s['kept']} | {s['total']} | {s['pruned']} | "
          f"{s['regrown']} | {s['dead_units']} | "
          f"{fmt(s['regrown_abs_w'], '.3g')} | {fmt(s['kept_abs_w'], '.3g')}"
          f" | {fmt(score.get('p01'), '.3g')} | {fmt(score.get('p50'), '.3g')}"
          f" | {fmt(score.get('p99'), '.3g')} | "
          f"{fmt(s.get('snr_p50'), '.2f')} |")
  return "\n".join(lines) + "\n"


import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order


def _check_flags():
  """Refuses bad flags and an output that cannot be written, before any
  training (exit 2 and 4)."""
  if FLAGS.record_every < 1:
    _fail(f"--record_every must be >= 1, got {FLAGS.record_every}")
  if FLAGS.max_refreshes < 0:
    _fail(f"--max_refreshes must be >= 0, got {FLAGS.max_refreshes}")
  output = FLAGS.output
  if os.path.exists(output) and not os.path.isdir(output):
    _fail(f"--output {output} is a file; name a directory")
  existing = os.path.abspath(output)
  while not os.path.exists(existing):  # Created at the end, when written.
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    _fail(f"--output {output}: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    _fail(f"--output {output}: {existing} is not writable", 4)


def _fail(message, code=2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _write(path, text):
  from optg_jax.harness import files  # pylint: disable=g-import-not-at-top
  try:
    files.write_atomically(path, text)
  except OSError as e:
    _fail(f"cannot write {path}: {e.strerror or e}", 4)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from optg_jax.harness import console  # pylint: disable=g-import-not-at-top
  _check_flags()
  console.import_tensorflow(console.set_up())
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optg_jax as optg  # pylint: disable=g-import-not-at-top
  from optg_jax import data  # pylint: disable=g-import-not-at-top
  from optg_jax.studies import diagnostics

  from optg_jax import train  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  try:
    run = train.Run(config)
  except (train.ConfigError, data.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if config.method == "dense":
    print("error: method 'dense' has no refreshes to diagnose",
          file=sys.stderr)
    sys.exit(2)
  if run.dynamic:
    print(f"error: method {config.method!r} drops and grows weights; "
          "diagnose records the refreshes of a ranking (optg, magnitude, "
          "taylor)", file=sys.stderr)
    sys.exit(2)
  model, tx = run.model, run.tx
  every = run.update_every
  state = run.initial_state()

  # The harness's own steps, on one device (jit, the batch whole).
  train_step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, schedules=run.schedules,
      label_smoothing=config.label_smoothing, sparse=True, axis_name=None,
      return_grads=True))
  eval_step = jax.jit(functools.partial(train.eval_step, model=model,
                                        axis_name=None))

  @jax.jit
  def step(state, batch):
    masks = optg.get_masks(state.opt_state)
    new_state, metrics, grads = train_step(state, batch)
    # The scores' criterion this step: G * W, G of the masked weights.
    criterion = jax.tree.map(
        lambda g, w, m: None if m is None else g * w, grads, state.params,
        masks, is_leaf=lambda x: x is None)
    return new_state, criterion, metrics["accuracy"]

  def evaluate(state, masks):
    hits = count = 0.0
    for batch in data.eval_iterator(config, local_device_count=1):
      sums = eval_step(state, masks, jax.tree.map(lambda x: x[0], batch))
      hits, count = hits + float(sums["top1"]), count + float(sums["count"])
    return hits / count

  batches = data.train_iterator(config, local_device_count=1)
  zeros = lambda: jax.tree.map(
      lambda m: None if m is None else jnp.zeros(m.shape, jnp.float32),
      optg.get_masks(state.opt_state), is_leaf=lambda x: x is None)
  acc_sum, acc_sumsq, accuracies, records = zeros(), zeros(), [], []
  add = jax.jit(lambda s, q, c: (
      jax.tree.map(lambda a, b: a + b, s, c),
      jax.tree.map(lambda a, b: a + b * b, q, c)))
  old_masks = optg.get_masks(state.opt_state)
  refreshes = 0
  for t in range(run.total_steps):
    batch = jax.tree.map(lambda x: x[0], next(batches))
    state, criterion, accuracy = step(state, batch)
    acc_sum, acc_sumsq = add(acc_sum, acc_sumsq, criterion)
    accuracies.append(accuracy)
    final = t + 1 == run.total_steps
    if (t + 1) % every and not final:
      continue
    refreshes += 1
    if refreshes % FLAGS.record_every and not final:
      continue
    host = jax.device_get(state)
    trained = optg.trained_masks(host.opt_state)
    # At the end no refresh follows the last step: the masks are the model.
    new_masks = trained if final else optg.get_masks(host.opt_state)
    scores = (optg.get_optg_state(host.opt_state).scores
              if config.method == "optg" else None)
    layers = diagnostics.refresh_stats(
        jax.device_get(old_masks), new_masks, host.params, scores,
        jax.device_get(acc_sum), jax.device_get(acc_sumsq))
    record = {
        "step": t + 1,
        "final": final,
        "sparsity": optg.sparsity_report(new_masks)["sparsity"],
        "train_accuracy": float(np.mean(jax.device_get(accuracies))),
        "eval_accuracy_trained": evaluate(state, trained),
        "eval_accuracy_new": None if final else evaluate(state, new_masks),
        "layers": layers,
    }
    records.append(record)
    if final:
      print(f"end of the run at step {t + 1}: sparsity "
            f"{record['sparsity']:.4f}, train accuracy "
            f"{record['train_accuracy']:.3f}, eval accuracy "
            f"{record['eval_accuracy_trained']:.3f}", flush=True)
    else:
      print(f"refresh at step {t + 1}: sparsity {record['sparsity']:.4f}, "
            f"train accuracy {record['train_accuracy']:.3f}, eval accuracy "
            f"of the masks trained {record['eval_accuracy_trained']:.3f}, of "
            f"the new masks {record['eval_accuracy_new']:.3f}", flush=True)
    acc_sum, acc_sumsq, accuracies = zeros(), zeros(), []
    old_masks = new_masks
    if FLAGS.max_refreshes and len(records) >= FLAGS.max_refreshes:
      break
  try:
    os.makedirs(FLAGS.output, exist_ok=True)
  except OSError as e:
    _fail(f"cannot create --output {FLAGS.output}: {e.strerror or e}", 4)
  _write(os.path.join(FLAGS.output, "refreshes.json"), json.dumps(
      {"config": config.to_dict(), "refreshes": records}, indent=1,
      default=str))
  _write(os.path.join(FLAGS.output, "refreshes.md"),
         _table(records, run.steps_per_epoch))
  print(f"wrote {FLAGS.output}/refreshes.json and refreshes.md")


if __name__ == "__main__":
  from optg_jax.harness import console as _console  # pylint: disable=all
  _console.run_main(main, __doc__)
