"""Studies: many ordinary training runs, and their results as tables and plots.

    python launch/study.py --config=configs/fashion_mnist.py \
        --methods=optg,magnitude,dense --sparsities=0.9,0.95,0.98,0.99 \
        --seeds=0,1,2 --workdir=DIR

A study is a grid of methods x sparsities x seeds; each run is an ordinary
workdir of `train_and_evaluate`, `DIR/runs/METHOD/sparsity=S/seed=N`, so a
finished run is read back rather than redone and an interrupted one resumes
from its checkpoints. A dense run has no sparsity and is run once per seed.

A method is a base method ("optg", "magnitude", "taylor": the one-shot
criterion, "rigl", "set": dynamic sparse training, "dense") followed by
modifiers joined with "+", each setting config fields:

  every<N>   refresh the masks every N steps (`update_every_steps=N`)
  epoch      refresh once an epoch (`update_every_steps=0`, the reference)
  stepwise   the sparsity rises every step (`sparsity_granularity="step"`)
  epochwise  the sparsity is set once an epoch (the paper's)
  floor<N>   every output unit keeps N input weights (`min_kept_per_unit`)
  rms        rank layer-RMS-normalised scores (`score_normalization`)
  N:M        N:M masks, N kept of every M weights, 0 < N < M (`structure`,
             and `min_kept_per_unit=0`: no floor with a structure)
  dt<N>      RigL, SET: move the masks every N steps (`delta_t`)
  drop<F>    RigL, SET: the initial drop fraction F (`drop_fraction`)
  <N>x       N times the config's epochs (`rigl+2x`, to compare at a cost)

e.g. "optg+every1", "optg+epoch+floor1", "rigl+dt50". Without a modifier
the config's own fields stand. A method takes one modifier of each kind
(every<N>, epoch or dt<N> set the refresh period: "optg+every8+epoch" is
refused).

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
std over seeds, the worst run, training MACs) and PNG plots in `DIR/`:
accuracy against sparsity, sparse MACs and training MACs, the per-layer
sparsity of each method at one sparsity, the schedules. When methods differ
only in their refresh period (`optg+every8`, `optg+epoch`, `rigl+dt50`),
`results.md` also has accuracy by refresh period, and a plot of it.
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

from optg_jax import nm
from optg_jax.harness import files
# The tables, plots and document sections of a study's results.
from optg_jax.studies.report import aggregate  # noqa
from optg_jax.studies.report import by_refresh_period  # noqa
from optg_jax.studies.report import EXIT_BAD_INPUT  # noqa
from optg_jax.studies.report import EXIT_IO
from optg_jax.studies.report import check_section  # noqa
from optg_jax.studies.report import markdown  # noqa
from optg_jax.studies.report import plot  # noqa
from optg_jax.studies.report import period_family  # noqa
from optg_jax.studies.report import PLOTS  # noqa
from optg_jax.studies.report import replace_section  # noqa
from optg_jax.studies.report import StudyError

BASE_METHODS = ("optg", "magnitude", "taylor", "rigl", "set", "dense")
DYNAMIC_BASES = ("rigl", "set")
RESULT_FIELDS = ("method", "sparsity", "seed", "refresh_period",
                 "eval_accuracy", "actual_sparsity", "kept_params",
                 "sparse_macs",
                 "dense_macs", "training_macs", "collapsed_layers",
                 "dead_units",
                 "fatal_collapse", "wall_time_s", "steps", "status")

# (pattern, kind, config fields): a method takes one modifier of each kind.
_MODIFIERS = (
    (re.compile(r"every(\d+)$"), "refresh period",
     lambda m: {"update_every_steps": int(m.group(1))}),
    (re.compile(r"epoch$"), "refresh period",
     lambda m: {"update_every_steps": 0}),
    (re.compile(r"stepwise$"), "sparsity granularity",
     lambda m: {"sparsity_granularity": "step"}),
    (re.compile(r"epochwise$"), "sparsity granularity",
     lambda m: {"sparsity_granularity": "epoch"}),
    (re.compile(r"floor(\d+)$"), "unit floor",
     lambda m: {"min_kept_per_unit": int(m.group(1))}),
    (re.compile(r"rms$"), "score normalization",
     lambda m: {"score_normalization": "layer_rms"}),
    # N:M keeps N of every M inputs of each unit: no unit floor (the
    # transform refuses one with a structure).
    (re.compile(r"(\d+):(\d+)$"), "N:M structure",
     lambda m: {"structure": m.group(0), "min_kept_per_unit": 0}),
    # RigL's and SET's refresh period.
    (re.compile(r"dt(\d+)$"), "refresh period",
     lambda m: {"delta_t": int(m.group(1))}),
    (re.compile(r"drop(\d*\.\d+|\d+)$"), "drop fraction",
     lambda m: {"drop_fraction": float(m.group(1))}),
    (re.compile(r"(\d+)x$"), "training length",
     lambda m: {"epochs_factor": int(m.group(1))}),
)
# The modifiers of RigL and SET only, and those they do not take.
_DYNAMIC_ONLY = re.compile(r"dt\d+|drop.*")
_SCHEDULED_ONLY = re.compile(r"every\d+|epoch\w*|stepwise|floor\d+|rms|\d+:\d+")


# Two target sparsities closer than this cannot be told apart by a run
# (the harness's tolerance on the shipped masks, `schedules.TARGET_TOLERANCE`).
SPARSITY_RESOLUTION = 1e-3
STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"


class StudyRun(NamedTuple):
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
    StudyError: for an unknown base method or modifier, a modifier on
      "dense", two modifiers of one kind (`optg+every8+epoch`), every0, or
      an N:M structure without 0 < N < M.
  """
  base, *modifiers = spec.split("+")
  if base not in BASE_METHODS:
    raise StudyError(f"unknown method {spec!r}: it must start with one of "
                     f"{', '.join(BASE_METHODS)}")
  if base == "dense" and modifiers:
    raise StudyError(f"method {spec!r}: dense runs take no modifiers")
  fields, kinds = {"method": base}, {}
  if base in DYNAMIC_BASES:  # OptG's ranking options do not apply.
    fields.update(min_kept_per_unit=0, score_normalization="")
  for modifier in modifiers:
    for pattern, kind, to_fields in _MODIFIERS:
      match = pattern.match(modifier)
      if match:
        break
    else:
      raise StudyError(f"unknown modifier {modifier!r} in method {spec!r}; "
                       "valid: every<N>, epoch, stepwise, epochwise, "
                       "floor<N>, rms, N:M, dt<N>, drop<F>, <N>x")
    if kind in kinds:
      raise StudyError(f"method {spec!r}: {kinds[kind]} and {modifier} both "
                       f"set the {kind}; a method takes one of each kind, "
                       "keep one")
    dynamic = base in DYNAMIC_BASES
    if (_SCHEDULED_ONLY if dynamic else _DYNAMIC_ONLY).fullmatch(modifier):
      raise StudyError(
          f"method {spec!r}: {modifier} is "
          + (f"OptG's and magnitude pruning's, not {base}'s" if dynamic
             else f"RigL's and SET's, not {base}'s"))
    kinds[kind] = modifier
    fields.update(to_fields(match))
  if "unit floor" in kinds and "N:M structure" in kinds:
    raise StudyError(f"method {spec!r}: {kinds['N:M structure']} keeps N of "
                     "every M inputs of each unit, a unit floor "
                     f"({kinds['unit floor']}) does not apply; keep one")
  if any(re.fullmatch(r"every0+", m) for m in modifiers):
    raise StudyError(f"method {spec!r}: every<N> needs N >= 1")
  for name in ("delta_t", "epochs_factor"):
    if fields.get(name, 1) < 1:
      raise StudyError(f"method {spec!r}: {name} must be at least 1")
  if not 0 <= fields.get("drop_fraction", 0) <= 1:
    raise StudyError(f"method {spec!r}: the drop fraction must be in [0, 1]")
  if "structure" in fields:
    try:
      nm.NM.parse(fields["structure"])
    except ValueError:
      raise StudyError(f"method {spec!r}: structure {fields['structure']} "
                       "is not N:M with 0 < N < M (N weights kept of every "
                       "M), e.g. 2:4") from None
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
         notes: Optional[List[str]] = None) -> List[StudyRun]:
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
        runs.append(StudyRun(method, float(sparsity), int(seed)))
  if base_config is not None:
    _check_distinct_methods(base_config, methods)
  return runs


def _check_distinct_methods(base_config, methods: Sequence[str]) -> None:
  """Refuses two methods whose runs have the same config."""
  from optg_jax.harness import checkpoints
  seen = {}
  for method in methods:
    sparsity = structure_sparsity(method) or 0.5
    one = StudyRun(method, 0.0 if method == "dense" else sparsity, 0)
    record = json.dumps(
        checkpoints.config_record(run_config(base_config, one)),
        sort_keys=True)
    if record in seen:
      raise StudyError(f"methods {seen[record]} and {method} run the same "
                       "config on this base config; keep one")
    seen[record] = method


def run_dir(workdir: str, run: StudyRun) -> str:
  """`WORKDIR/runs/METHOD/sparsity=S/seed=N`."""
  return os.path.join(workdir, "runs", run.method, f"sparsity={run.sparsity:g}",
                      f"seed={run.seed}")


def run_config(base_config, run: StudyRun):
  """The base config with the run's method, sparsity and seed."""
  config = base_config.copy_and_resolve_references()
  fields = parse_method(run.method)
  factor = fields.pop("epochs_factor", 1)
  config.num_epochs *= factor
  if config.get("num_train_steps", -1) > 0:  # A run cut short: as much.
    config.num_train_steps *= factor
  for key, value in fields.items():
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
  from optg_jax.harness import checkpoints
  try:
    with open(os.path.join(directory, checkpoints.CONFIG_FILE)) as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    return False
  return not checkpoints.config_changes(recorded,
                                        checkpoints.config_record(config))


def _row(run: StudyRun, summary: Optional[Dict[str, Any]], status: str,
         refresh_period: Optional[int]):
  row = {"method": run.method, "sparsity": run.sparsity, "seed": run.seed,
         "status": status}
  if run.method != "dense" and refresh_period:
    row["refresh_period"] = refresh_period
  if summary:
    row.update({
        "eval_accuracy": summary["eval_accuracy"],
        "actual_sparsity": summary["sparsity"],
        "kept_params": summary["kept_params"],
        "sparse_macs": summary["sparse_macs"],
        "dense_macs": summary["dense_macs"],
        # None for a run resumed from a checkpoint older than the count.
        "training_macs": summary.get("training_macs"),
        "collapsed_layers": len(summary.get("collapsed_layers", [])),
        "dead_units": sum(summary.get("dead_units", {}).values()),
        "fatal_collapse": len(summary.get("fatal_collapse", [])),
        "wall_time_s": summary["wall_time_s"],
        "steps": summary["steps"],
    })
  return row


def run_study(base_config, runs: Sequence[StudyRun], workdir: str,
              train_fn: Callable[[Any, str], Dict[str, Any]],
              total_steps: Callable[[StudyRun], int],
              progress: Callable[[str], None] = print,
              stop_on: Tuple[type, ...] = (),
              refresh_period: Optional[Callable[[StudyRun], int]] = None
              ) -> List[Dict[str, Any]]:
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
    refresh_period: `run -> its mask refresh period in steps`, recorded in
      its row (`refresh_period`), or None.

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
    rows.append(_row(run, summary, status,
                     refresh_period(run) if refresh_period else None))
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
    files.write_atomically(path, text)
  except OSError as e:
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
    from optg_jax.harness import checkpoints
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
          raise StudyError(
              f"study workdir {self.path} holds a study of another base "
              f"config: changed {checkpoints.listed_changes(changes)}; use "
              "another --workdir, or the "
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


def layer_table(workdir: str, runs: Sequence[StudyRun], sparsity: float
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
