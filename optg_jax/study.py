"""Studies: many ordinary training runs, and their results as tables and plots.

    python launch/study.py --config=configs/fashion_mnist.py \
        --methods=optg,magnitude,dense --sparsities=0.9,0.95,0.98,0.99 \
        --seeds=0,1,2 --workdir=DIR

A study is a grid of methods x sparsities x seeds; each run is an ordinary
workdir of `train_and_evaluate`, `DIR/runs/METHOD/sparsity=S/seed=N`, so a
finished run is read back rather than redone and an interrupted one resumes
from its checkpoints. A dense run has no sparsity and is run once per seed.

A method is a base method ("optg", "magnitude", "dense") followed by
modifiers joined with "+", each setting config fields:

  every<N>   refresh the masks every N steps (`update_every_steps=N`)
  epoch      refresh once an epoch (`update_every_steps=0`, the reference)
  floor<N>   every output unit keeps N input weights (`min_kept_per_unit`)
  rms        rank layer-RMS-normalised scores (`score_normalization`)

e.g. "optg+every1", "magnitude+every1", "optg+epoch+floor1". Without a
modifier the config's own fields stand.

The grid is canonical: repeated seeds or sparsities are run once, two
sparsities closer than the harness's target tolerance are refused (no run
could tell them apart), so are two methods that run the same config; an
N:M method ("optg+2:4") runs once, at its own sparsity 1 - N/M, whatever
the sparsities. A study workdir is one configuration: `DIR/study.json`
records the base config it was started with, and an invocation with
another base config is refused, naming the changed fields (a run is read
back only if its recorded `config.json` is the one the study would run).
One study at a time holds `DIR/study.lock`. A damaged `summary.json` is set
aside (`summary.json.damaged`) and its run redone from its checkpoints.

The results: `DIR/results.csv` (one row per run), `DIR/results.md` (mean ±
std over seeds) and PNG plots in `DIR/`: accuracy against sparsity,
accuracy against sparse MACs, the learned per-layer sparsity of each method
at one sparsity, and the sparsity and mask-learning-rate schedules.
"""

import csv
import fcntl
import io
import json
import math
import os
import re
import time
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple)

import numpy as np

BASE_METHODS = ("optg", "magnitude", "dense")
RESULT_FIELDS = ("method", "sparsity", "seed", "eval_accuracy",
                 "actual_sparsity", "kept_params", "sparse_macs",
                 "dense_macs", "collapsed_layers", "dead_units",
                 "fatal_collapse", "wall_time_s", "steps", "status")
PLOTS = ("accuracy_vs_sparsity.png", "accuracy_vs_macs.png",
         "layer_sparsity.png", "schedules.png")

_MODIFIERS = (
    (re.compile(r"every(\d+)$"), lambda m: {"update_every_steps":
                                            int(m.group(1))}),
    (re.compile(r"epoch$"), lambda m: {"update_every_steps": 0}),
    (re.compile(r"floor(\d+)$"), lambda m: {"min_kept_per_unit":
                                            int(m.group(1))}),
    (re.compile(r"rms$"), lambda m: {"score_normalization": "layer_rms"}),
    (re.compile(r"(\d+):(\d+)$"), lambda m: {"structure": m.group(0)}),
)


# Two target sparsities closer than this cannot be told apart by a run
# (the harness's tolerance on the shipped masks, `schedules.TARGET_TOLERANCE`).
SPARSITY_RESOLUTION = 1e-3
STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"
EXIT_BAD_INPUT, EXIT_IO = 2, 4


class StudyError(ValueError):
  """A study's arguments or workdir are wrong; the message is one line.

  `code`: the exit code of `launch/study.py` (2 bad input, 4 I/O).
  """

  def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
    super().__init__(message)
    self.code = code


class Run(NamedTuple):
  """One run of a study."""
  method: str
  sparsity: float  # 0 for dense runs.
  seed: int


def parse_method(spec: str) -> Dict[str, Any]:
  """The config fields a method name sets.

  Args:
    spec: e.g. "optg", "magnitude+every1", "optg+epoch+floor1", "optg+2:4"
      (N:M masks: `config.structure`).

  Returns:
    `{"method": base, other fields...}`.

  Raises:
    StudyError: for an unknown base method or modifier, or a modifier on
      "dense".
  """
  base, *modifiers = spec.split("+")
  if base not in BASE_METHODS:
    raise StudyError(f"unknown method {spec!r}: it must start with one of "
                     f"{', '.join(BASE_METHODS)}")
  fields = {"method": base}
  for modifier in modifiers:
    for pattern, to_fields in _MODIFIERS:
      match = pattern.match(modifier)
      if match:
        fields.update(to_fields(match))
        break
    else:
      raise StudyError(f"unknown modifier {modifier!r} in method {spec!r}; "
                       "valid: every<N>, epoch, floor<N>, rms, N:M")
  if base == "dense" and modifiers:
    raise StudyError(f"method {spec!r}: dense runs take no modifiers")
  if any(re.fullmatch(r"every0+", m) for m in modifiers):
    raise StudyError(f"method {spec!r}: every<N> needs N >= 1")
  return fields


def structure_sparsity(method: str) -> Optional[float]:
  """The sparsity of an N:M method (1 - N/M), None for the others."""
  structure = parse_method(method).get("structure")
  if structure is None:
    return None
  n, m = (int(x) for x in structure.split(":"))
  return round(1.0 - n / m, 12)


def _merged(values, kind: str, notes: Optional[List[str]]):
  unique = list(dict.fromkeys(values))
  if len(unique) != len(values) and notes is not None:
    notes.append(f"{kind} repeat ({', '.join(f'{v:g}' for v in values)}): "
                 "each runs once")
  return unique


def plan(methods: Sequence[str], sparsities: Sequence[float],
         seeds: Sequence[int], base_config=None,
         notes: Optional[List[str]] = None) -> List[Run]:
  """The study's runs, methods first, then sparsities, then seeds.

  Args:
    methods: method names (`parse_method`).
    sparsities: target sparsities of the unstructured sparse methods.
    seeds: seeds.
    base_config: when given, two methods that run the same config on it
      (e.g. "optg" and "optg+epoch" on a config that refreshes once an
      epoch) are refused.
    notes: when given, gets a line for each merge (repeated seeds or
      sparsities).

  Raises:
    StudyError: an unknown or repeated method, two methods of one config,
      sparsities outside (0, 1) or closer than `SPARSITY_RESOLUTION`.
  """
  if not methods or not seeds:
    raise StudyError("a study needs at least one method and one seed")
  for method in methods:
    parse_method(method)
  if len(set(methods)) != len(methods):
    raise StudyError(f"methods repeat: {', '.join(methods)}")
  for s in sparsities:
    if not 0.0 < s < 1.0:
      raise StudyError(f"sparsities must be in (0, 1), got {s:g}")
  sparsities = sorted(_merged([float(s) for s in sparsities], "sparsities",
                              notes))
  for a, b in zip(sparsities, sparsities[1:]):
    if b - a < SPARSITY_RESOLUTION or f"{a:g}" == f"{b:g}":
      raise StudyError(f"sparsities {a:g} and {b:g} differ by {b - a:.2g}, "
                       f"less than {SPARSITY_RESOLUTION:g}: no run tells "
                       "them apart; keep one")
  seeds = _merged([int(s) for s in seeds], "seeds", notes)
  unstructured = [m for m in methods
                  if m != "dense" and structure_sparsity(m) is None]
  if unstructured and not sparsities:
    raise StudyError("a study of sparse methods needs --sparsities")
  if notes is not None and sparsities and any(
      structure_sparsity(m) is not None for m in methods):
    notes.append("N:M methods run once, at their own sparsity 1 - N/M")
  runs = []
  for method in methods:
    own = structure_sparsity(method)
    if method == "dense":
      grid = [0.0]
    elif own is not None:
      grid = [own]
    else:
      grid = sparsities
    for sparsity in grid:
      for seed in seeds:
        runs.append(Run(method, float(sparsity), int(seed)))
  if base_config is not None:
    _check_distinct_methods(base_config, methods)
  return runs


def _check_distinct_methods(base_config, methods: Sequence[str]) -> None:
  """Refuses two methods whose runs have the same config."""
  from optg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  seen = {}
  for method in methods:
    sparsity = structure_sparsity(method) or 0.5
    record = json.dumps(checkpoints.config_record(run_config(
        base_config, Run(method, 0.0 if method == "dense" else sparsity, 0))),
                        sort_keys=True)
    if record in seen:
      raise StudyError(f"methods {seen[record]} and {method} run the same "
                       "config on this base config; keep one")
    seen[record] = method


def run_dir(workdir: str, run: Run) -> str:
  """`WORKDIR/runs/METHOD/sparsity=S/seed=N`."""
  return os.path.join(workdir, "runs", run.method, f"sparsity={run.sparsity:g}",
                      f"seed={run.seed}")


def run_config(base_config, run: Run):
  """The base config with the run's method, sparsity and seed."""
  config = base_config.copy_and_resolve_references()
  for key, value in parse_method(run.method).items():
    config[key] = value
  if run.method != "dense":
    config.sparsity = run.sparsity
  config.seed = run.seed
  return config


SUMMARY_FIELDS = ("eval_accuracy", "sparsity", "kept_params", "sparse_macs",
                  "dense_macs", "wall_time_s", "steps")


def read_summary(directory: str) -> Optional[Dict[str, Any]]:
  """The run's `summary.json`, or None when it has none.

  Raises:
    ValueError: the file is damaged (not JSON, or without a figure a study
      reads).
  """
  path = os.path.join(directory, "summary.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} cannot be read: {e}") from None
  if not isinstance(summary, dict):
    raise ValueError(f"{path} holds no summary")
  missing = [k for k in SUMMARY_FIELDS if k not in summary]
  if missing:
    raise ValueError(f"{path} lacks {', '.join(missing)}")
  return summary


def _summary_or_aside(directory: str, progress) -> Optional[Dict[str, Any]]:
  """`read_summary`, a damaged file renamed `summary.json.damaged` (the
  run is then redone from its checkpoints)."""
  try:
    return read_summary(directory)
  except ValueError as e:
    path = os.path.join(directory, "summary.json")
    os.replace(path, path + ".damaged")
    progress(f"{e}; set aside as {path}.damaged, the run is redone")
    return None


def _recorded_config_is(directory: str, config) -> bool:
  """Whether the run's `config.json` records `config`'s trajectory."""
  from optg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(directory, checkpoints.CONFIG_FILE)) as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    return False
  return not checkpoints.config_changes(recorded,
                                        checkpoints.config_record(config))


def _row(run: Run, summary: Optional[Dict[str, Any]], status: str):
  row = {"method": run.method, "sparsity": run.sparsity, "seed": run.seed,
         "status": status}
  if summary:
    row.update({
        "eval_accuracy": summary["eval_accuracy"],
        "actual_sparsity": summary["sparsity"],
        "kept_params": summary["kept_params"],
        "sparse_macs": summary["sparse_macs"],
        "dense_macs": summary["dense_macs"],
        "collapsed_layers": len(summary.get("collapsed_layers", [])),
        "dead_units": sum(summary.get("dead_units", {}).values()),
        "fatal_collapse": len(summary.get("fatal_collapse", [])),
        "wall_time_s": summary["wall_time_s"],
        "steps": summary["steps"],
    })
  return row


def run_study(base_config, runs: Sequence[Run], workdir: str,
              train_fn: Callable[[Any, str], Dict[str, Any]],
              total_steps: Callable[[Run], int],
              progress: Callable[[str], None] = print,
              stop_on: Tuple[type, ...] = ()) -> List[Dict[str, Any]]:
  """Runs (or reads back) every run of the study, in order.

  A run whose summary covers all its steps is read back; any other is
  started or resumed by `train_fn(config, run_dir)` (a line says so when it
  starts). A run that fails (the exception's message is recorded) does not
  stop the study. A summary written by an earlier release, whose figures
  were those of a refresh after the last step, is not read back: the run's
  checkpoints are then refused (`OldCheckpoint`) and the run reported as
  failed, naming its directory.

  Args:
    base_config: the study's config, before each run's fields.
    runs: from `plan`.
    workdir: the study's directory.
    train_fn: `train_and_evaluate`.
    total_steps: `run -> its number of training steps`, to tell a finished
      run from an interrupted one.
    progress: called with one line per run (and its ETA for the study).
    stop_on: exceptions that stop the study instead of failing one run
      (preemption: the run saved a checkpoint and the study resumes when
      the same command runs again).

  Returns:
    One row per run (`RESULT_FIELDS`).
  """
  rows, spent, trained = [], 0.0, 0
  for i, run in enumerate(runs):
    directory = run_dir(workdir, run)
    config = run_config(base_config, run)
    summary = _summary_or_aside(directory, progress)
    # A summary of an earlier release (the masks of a refresh after the
    # last step, no "masks" field), or of another config, is never read
    # back as this one's (the harness then refuses the workdir's
    # checkpoints: the run fails, naming why).
    done = (summary is not None and summary.get("masks") == "trained" and
            summary.get("steps") == total_steps(run) and
            _recorded_config_is(directory, config))
    status = "read back"
    if not done:
      progress(f"[{i + 1}/{len(runs)}] {run.method} sparsity "
               f"{run.sparsity:g} seed {run.seed}: "
               f"{'resumed' if summary or os.path.isdir(directory) else 'started'}"
               f" ({total_steps(run):,} steps)")
      start = time.time()
      try:
        summary = train_fn(config, directory)
        status = "trained"
      except stop_on:
        raise
      except Exception as e:  # pylint: disable=broad-except
        summary = None
        status = f"failed: {type(e).__name__}: {str(e).splitlines()[0]}"
      spent += time.time() - start
      trained += 1
    rows.append(_row(run, summary, status))
    left = sum(1 for r in runs[i + 1:]
               if not os.path.exists(os.path.join(run_dir(workdir, r),
                                                  "summary.json")))
    eta = (f", study ETA {_duration(spent / trained * left)}"
           if trained and left else "")
    outcome = (f"eval accuracy {summary['eval_accuracy']:.4f}, sparsity "
               f"{summary['sparsity']:.4f} ({status})" if summary else status)
    progress(f"[{i + 1}/{len(runs)}] {run.method} sparsity {run.sparsity:g} "
             f"seed {run.seed}: {outcome}{eta}")
  return rows


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
          else f"{seconds // 60}m{seconds % 60:02d}s")


def write_atomically(path: str, text: str) -> None:
  """Writes `path` through `path.tmp`; on failure the tmp file is removed
  and StudyError (exit 4) raised, `path` left as it was."""
  try:
    with open(path + ".tmp", "w", newline="") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  except OSError as e:
    try:
      os.remove(path + ".tmp")
    except OSError:
      pass
    raise StudyError(f"cannot write {path}: {e.strerror or e}",
                     EXIT_IO) from None


def write_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: row.get(k, "") for k in RESULT_FIELDS})
  write_atomically(path, buffer.getvalue())


# ---------------------------------------------------------------------------
# The study's workdir: one configuration, one writer.


class StudyWorkdir:
  """Holds a study's workdir for the study's lifetime (a context manager).

  On entry: the directory is created, `study.lock` locked (a second study
  on it is refused), and `study.json` compared with this study's base
  config (another config is refused, naming the changed fields) or written.
  The grid may change between invocations (more seeds, more methods).

  Raises (on entry):
    StudyError: code 2 for a workdir that is a file, busy, or of another
      config; 4 when it cannot be created or written.
  """

  def __init__(self, path: str, base_config, grid: Dict[str, Any]):
    self.path = path
    self.base_config = base_config
    self.grid = grid
    self._fd = None

  def __enter__(self):
    from optg_jax import checkpoints  # pylint: disable=g-import-not-at-top
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise StudyError(f"--workdir {self.path} is a file, not a directory")
    created = not os.path.exists(self.path)
    try:
      os.makedirs(self.path, exist_ok=True)
      self._fd = os.open(os.path.join(self.path, LOCK_FILE),
                         os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise StudyError(f"cannot write the study's workdir {self.path}: "
                       f"{e.strerror or e}", EXIT_IO) from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(self._fd, 512).decode(errors="replace").strip()
      os.close(self._fd)
      self._fd = None
      raise StudyError(f"study workdir {self.path} is in use by another "
                       f"study ({holder or 'holder unknown'}); wait for it "
                       "or use another --workdir") from None
    try:
      os.ftruncate(self._fd, 0)
      os.write(self._fd, f"pid {os.getpid()}\n".encode())
      record = checkpoints.config_record(self.base_config)
      path = os.path.join(self.path, STUDY_FILE)
      if os.path.exists(path):
        try:
          with open(path) as f:
            recorded = json.load(f)["base_config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
          raise StudyError(f"cannot read {path} ({e}); it records the "
                           "study's base config") from None
        changes = checkpoints.config_changes(recorded, record)
        if changes:
          listed = ", ".join(f"{k} ({old!r} -> {new!r})"
                             for k, old, new in changes)
          raise StudyError(
              f"study workdir {self.path} holds a study of another base "
              f"config: changed {listed}; use another --workdir, or the "
              f"recorded values (in {path})")
      write_atomically(path, json.dumps(
          {"base_config": record, "grid": self.grid}, indent=2,
          sort_keys=True) + "\n")
    except BaseException:
      self.__exit__(None, None, None)
      if created:
        _remove_if_empty_of_runs(self.path)
      raise
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    return False


def _remove_if_empty_of_runs(path: str) -> None:
  """Removes a study workdir this invocation created and left runless."""
  for name in (LOCK_FILE, STUDY_FILE, STUDY_FILE + ".tmp"):
    try:
      os.remove(os.path.join(path, name))
    except OSError:
      pass
  try:
    os.rmdir(path)
  except OSError:
    pass


def aggregate(rows: Sequence[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
  """Mean and std (ddof 0) over seeds per (method, sparsity), done runs only.

  Returns:
    `{(method, sparsity): {"n", "accuracy_mean", "accuracy_std",
    "actual_sparsity", "sparse_macs", "fatal_runs", "collapsed_runs",
    "wall_time_s"}}` in the order of `rows`.
  """
  groups: Dict[tuple, List[Dict[str, Any]]] = {}
  for row in rows:
    if "eval_accuracy" in row:
      groups.setdefault((row["method"], row["sparsity"]), []).append(row)
  out = {}
  for key, group in groups.items():
    acc = np.array([r["eval_accuracy"] for r in group], float)
    out[key] = {
        "n": len(group),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std()),
        "actual_sparsity": float(np.mean([r["actual_sparsity"]
                                          for r in group])),
        "sparse_macs": float(np.mean([r["sparse_macs"] for r in group])),
        "fatal_runs": sum(1 for r in group if r["fatal_collapse"]),
        "collapsed_runs": sum(1 for r in group if r["collapsed_layers"]),
        "wall_time_s": float(np.mean([r["wall_time_s"] for r in group])),
    }
  return out


def markdown(rows: Sequence[Dict[str, Any]], title: str,
             command: str, image_prefix: str = "",
             plots: Sequence[str] = PLOTS) -> str:
  """`results.md`: the command, mean ± std accuracy per method and sparsity,
  the per-run figures that matter, and the plots (file names)."""
  stats = aggregate(rows)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
  seeds = sorted({r["seed"] for r in rows})
  lines = [f"## {title}", "", "Regenerate with:", "", "```bash", command,
           "```", "",
           f"Eval accuracy, mean ± std over seeds {seeds} (ddof 0); "
           "`dense` has no sparsity.", ""]
  lines.append("| method | " + " | ".join(f"{s:g}" for s in sparsities) +
               " |")
  lines.append("|---" * (len(sparsities) + 1) + "|")
  for method in methods:
    cells = []
    for s in ([0.0] * len(sparsities) if method == "dense" else sparsities):
      st = stats.get((method, s))
      cells.append("—" if st is None else
                   f"{100 * st['accuracy_mean']:.2f} ± "
                   f"{100 * st['accuracy_std']:.2f}" +
                   (f" (n={st['n']})" if st["n"] != len(seeds) else ""))
    if method == "dense":
      cells = [cells[0]] + [""] * (len(cells) - 1)
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines += ["", "Per method and sparsity: actual sparsity, sparse MACs per "
            "example, runs with a fatal collapse (a collapsed input layer or "
            "classifier, or a class without weights) and with a collapsed "
            "layer anywhere, and the mean wall time of a run.", "",
            "| method | sparsity | actual | sparse MACs | fatal | collapsed "
            "| wall s |", "|---|---|---|---|---|---|---|"]
  for (method, s), st in stats.items():
    lines.append(f"| {method} | {s:g} | {st['actual_sparsity']:.4f} | "
                 f"{st['sparse_macs']:,.0f} | {st['fatal_runs']}/{st['n']} | "
                 f"{st['collapsed_runs']}/{st['n']} | "
                 f"{st['wall_time_s']:.0f} |")
  failed = [r for r in rows if r["status"].startswith("failed")]
  if failed:
    lines += ["", "Failed runs:", ""] + [
        f"- {r['method']} sparsity {r['sparsity']:g} seed {r['seed']}: "
        f"{r['status']}" for r in failed]
  lines += [""] + [f"![{name[:-4]}]({image_prefix}{name})" for name in plots]
  return "\n".join(lines) + "\n"


def _density_axis(ax, sparsities):
  densities = [1 - s for s in sparsities]
  # Dense on the left, sparsest on the right; a margin around one point.
  # The limits first: a log scale autoscaled to one point would warn.
  ax.set_xlim(min(1.0, 1.5 * max(densities)), min(densities) / 1.5)
  ax.set_xscale("log")
  ax.set_xticks(densities)
  ax.set_xticklabels([f"{s:g}" for s in sparsities])
  ax.minorticks_off()
  ax.set_xlabel("sparsity (log scale of the kept fraction)")


def plot(rows: Sequence[Dict[str, Any]], directory: str, title: str,
         schedules: Optional[Dict[str, np.ndarray]] = None,
         layers: Optional[Dict[str, Dict[str, Dict[str, Any]]]] = None,
         layer_sparsity: Optional[float] = None,
         prefix: str = "") -> List[str]:
  """Writes the study's PNG plots; returns their paths.

  Args:
    rows: the study's rows.
    directory: where the PNGs go.
    title: the plots' title.
    schedules: `{"step", "sparsity", "mask_learning_rate",
      "learning_rate"}` arrays over the run, or None to skip that plot.
    layers: `{method: {layer: {"kept", "total"}}}` at `layer_sparsity`.
    layer_sparsity: the sparsity of `layers`.
    prefix: prepended to the file names.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  stats = aggregate(rows)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  sparsities = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
  paths = []

  def save(fig, name):
    path = os.path.join(directory, prefix + name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for method in methods:
    if method == "dense":
      st = stats.get((method, 0.0))
      if st:
        ax.axhline(st["accuracy_mean"], color="k", ls="--", lw=1,
                   label=f"dense ({100 * st['accuracy_mean']:.2f}%)")
      continue
    xs = [s for s in sparsities if (method, s) in stats]
    ax.errorbar([1 - s for s in xs],
                [stats[(method, s)]["accuracy_mean"] for s in xs],
                yerr=[stats[(method, s)]["accuracy_std"] for s in xs],
                marker="o", capsize=3, label=method)
  if sparsities:
    _density_axis(ax, sparsities)
  ax.set_ylabel("eval accuracy (mean ± std over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  save(fig, "accuracy_vs_sparsity.png")

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for method in methods:
    keys = [k for k in stats if k[0] == method]
    ax.plot([stats[k]["sparse_macs"] for k in keys],
            [stats[k]["accuracy_mean"] for k in keys],
            marker="s" if method == "dense" else "o", ls="-", label=method)
  macs = [st["sparse_macs"] for st in stats.values()]
  if macs:  # A margin, also around a single point (before the log scale).
    ax.set_xlim(min(macs) / 1.5, max(macs) * 1.5)
  ax.set_xscale("log")
  ax.set_xlabel("sparse MACs per example (log scale)")
  ax.set_ylabel("eval accuracy (mean over seeds)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  save(fig, "accuracy_vs_macs.png")

  if layers:
    names = list(next(iter(layers.values())))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.32 * len(names) + 2), 4.2))
    width = 0.8 / len(layers)
    for i, (method, per_layer) in enumerate(layers.items()):
      values = [1 - per_layer[n]["kept"] / per_layer[n]["total"]
                for n in names]
      ax.bar(np.arange(len(names)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([n.replace("/kernel", "") for n in names],
                       rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("layer sparsity")
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(f"{title}: layer sparsity at {layer_sparsity:g}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncol=len(layers))
    save(fig, "layer_sparsity.png")

  if schedules is not None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(schedules["step"], schedules["sparsity"], label="sparsity s(t)")
    ax.set_xlabel("step")
    ax.set_ylabel("sparsity")
    ax2 = ax.twinx()
    ax2.plot(schedules["step"], schedules["learning_rate"], color="C2",
             ls=":", label="learning rate")
    ax2.plot(schedules["step"], schedules["mask_learning_rate"], color="C1",
             ls="--", label="mask learning rate")
    ax2.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8,
              loc="center left")
    ax.set_title(f"{title}: schedules"
                 + (f" (target {schedules['target']:g})"
                    if "target" in schedules else ""), fontsize=10)
    ax.grid(alpha=0.3)
    save(fig, "schedules.png")
  return paths


def layer_table(workdir: str, runs: Sequence[Run], sparsity: float
                ) -> Dict[str, Dict[str, Dict[str, Any]]]:
  """Per-layer kept/total of the first seed of every sparse method at
  `sparsity`, from the runs' summaries."""
  out = {}
  for run in runs:
    if run.method == "dense" or not math.isclose(run.sparsity, sparsity):
      continue
    if run.method in out:
      continue
    try:
      summary = read_summary(run_dir(workdir, run))
    except ValueError:
      summary = None
    if summary and "layers" in summary:
      out[run.method] = summary["layers"]
  return out


SECTION_NAME = re.compile(r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*")


def check_section(name: str) -> None:
  """Refuses a section name that is not a plain name (it names files beside
  the document and an HTML comment)."""
  if not SECTION_NAME.fullmatch(name):
    raise StudyError(f"--section {name!r}: use letters, digits, '_' and "
                     "single '-' only")


def replace_section(document: str, name: str, text: str) -> str:
  """Replaces `<!-- study:NAME -->...<!-- /study:NAME -->` in a document
  (appending the marked section when absent)."""
  begin, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
  block = f"{begin}\n{text}{end}"
  if begin in document and end in document:
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail
  return document.rstrip("\n") + "\n\n" + block + "\n"
