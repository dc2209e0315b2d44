"""The study command: method names, the plan, a two-run study end to end on
generated Fashion-MNIST files (resumed, tables, plots), and the collapse
guard's findings."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from optg_jax.studies import study
from optg_jax import train
import idx_files
import runs


def test_parse_method_modifiers():
  assert study.parse_method("optg") == {"method": "optg"}
  assert study.parse_method("magnitude+every1") == {
      "method": "magnitude", "update_every_steps": 1}
  assert study.parse_method("optg+epoch+floor2+rms") == {
      "method": "optg", "update_every_steps": 0, "min_kept_per_unit": 2,
      "score_normalization": "layer_rms"}
  assert study.parse_method("taylor+every8+stepwise") == {
      "method": "taylor", "update_every_steps": 8,
      "sparsity_granularity": "step"}
  assert study.parse_method("magnitude+epoch+epochwise") == {
      "method": "magnitude", "update_every_steps": 0,
      "sparsity_granularity": "epoch"}
  for bad, match in (("sgd", "must start with"), ("optg+often", "modifier"),
                     ("dense+every1", "no modifiers"),
                     ("optg+every0", "N >= 1")):
    with pytest.raises(study.StudyError, match=match):
      study.parse_method(bad)


@pytest.mark.parametrize("method,first,second,kind", [
    ("optg+every8+epoch", "every8", "epoch", "refresh period"),
    ("optg+every8+every16", "every8", "every16", "refresh period"),
    ("magnitude+epoch+floor1+every1", "epoch", "every1", "refresh period"),
    ("optg+stepwise+epochwise", "stepwise", "epochwise",
     "sparsity granularity"),
    ("optg+2:4+3:4", "2:4", "3:4", "N:M structure"),
    ("optg+floor1+floor2", "floor1", "floor2", "unit floor"),
    ("taylor+rms+rms", "rms", "rms", "score normalization"),
])
def test_a_method_takes_one_modifier_of_each_kind(method, first, second,
                                                  kind):
  with pytest.raises(study.StudyError) as e:
    study.parse_method(method)
  assert str(e.value) == (
      f"method {method!r}: {first} and {second} both set the {kind}; a "
      "method takes one of each kind, keep one")
  assert e.value.code == study.EXIT_BAD_INPUT == 2
  with pytest.raises(study.StudyError, match="both set the"):
    study.plan([method], [0.9], [0])


@pytest.mark.parametrize("structure", ["4:2", "2:2", "0:4", "2:0", "0:0"])
def test_an_nm_method_needs_n_below_m(structure):
  with pytest.raises(study.StudyError) as e:
    study.parse_method(f"optg+{structure}")
  assert str(e.value) == (
      f"method 'optg+{structure}': structure {structure} is not N:M with "
      "0 < N < M (N weights kept of every M), e.g. 2:4")
  assert e.value.code == 2
  assert study.parse_method("optg+1:4") == {
      "method": "optg", "structure": "1:4", "min_kept_per_unit": 0}
  assert study.structure_sparsity("magnitude+2:4+every8") == 0.5


@pytest.mark.parametrize("method", ["optg+2:4+floor1", "optg+floor1+2:4"])
def test_an_nm_method_takes_no_unit_floor(method):
  with pytest.raises(study.StudyError) as e:
    study.parse_method(method)
  assert str(e.value) == (
      f"method {method!r}: 2:4 keeps N of every M inputs of each unit, a "
      "unit floor (floor1) does not apply; keep one")
  assert e.value.code == 2


def test_the_refresh_period_modifiers_are_those_period_family_drops():
  """`report.period_family` and `parse_method` agree on which modifiers
  set the refresh period."""
  for modifier in ("every1", "every8", "epoch", "stepwise", "epochwise",
                   "floor1", "rms", "2:4"):
    sets_period = "update_every_steps" in study.parse_method(
        f"optg+{modifier}")
    assert (study.period_family(f"optg+{modifier}") == "optg") == (
        sets_period), modifier
  for modifier in ("dt50", "drop0.5", "2x"):
    sets_period = "delta_t" in study.parse_method(f"rigl+{modifier}")
    assert (study.period_family(f"rigl+{modifier}") == "rigl") == (
        sets_period), modifier


def test_plan_runs_dense_once_per_seed():
  plan = study.plan(["optg", "dense"], [0.9, 0.99], [0, 1])
  run = study.StudyRun
  assert plan == [run("optg", 0.9, 0), run("optg", 0.9, 1),
                  run("optg", 0.99, 0), run("optg", 0.99, 1),
                  run("dense", 0.0, 0), run("dense", 0.0, 1)]
  with pytest.raises(study.StudyError, match="repeat"):
    study.plan(["optg", "optg"], [0.9], [0])
  with pytest.raises(study.StudyError, match=r"in \(0, 1\)"):
    study.plan(["optg"], [1.0], [0])


def test_the_grid_is_canonical():
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  # Repeated sparsities and seeds run once (and say so): n counts runs.
  notes = []
  plan = study.plan(["optg"], [0.9, 0.9], [0, 0], notes=notes)
  assert plan == [study.StudyRun("optg", 0.9, 0)]
  assert notes == ["sparsities repeat (0.9, 0.9): each runs once",
                   "seeds repeat (0, 0): each runs once"]
  # Two sparsities no run can tell apart (they shared a directory).
  with pytest.raises(study.StudyError,
                     match="sparsities 0.9 and 0.9 differ by 1e-07"):
    study.plan(["optg"], [0.9, 0.9000001], [0])
  with pytest.raises(study.StudyError, match="0.9 and 0.9005"):
    study.plan(["optg"], [0.9005, 0.9], [0])
  # N:M methods run once, at their own sparsity.
  notes = []
  plan = study.plan(["optg+2:4", "magnitude+1:4", "optg"], [0.9, 0.95],
                    [0], notes=notes)
  assert plan == [study.StudyRun("optg+2:4", 0.5, 0),
                  study.StudyRun("magnitude+1:4", 0.75, 0),
                  study.StudyRun("optg", 0.9, 0),
                  study.StudyRun("optg", 0.95, 0)]
  assert notes == ["N:M methods run once, at their own sparsity 1 - N/M"]
  assert study.plan(["optg+2:4"], [], [0, 1]) == [
      study.StudyRun("optg+2:4", 0.5, 0), study.StudyRun("optg+2:4", 0.5, 1)]
  # Two names of one config on this base config (it refreshes every step).
  config = quickstart.get_config()
  assert config.update_every_steps == 1
  with pytest.raises(study.StudyError, match="methods optg and optg\\+every1 "
                     "run the same config"):
    study.plan(["optg", "optg+every1"], [0.9], [0], config)
  assert len(study.plan(["optg", "optg+epoch"], [0.9], [0], config)) == 2


def _fake_summary(config, directory, accuracy=0.5, steps=10):
  from optg_jax.harness import checkpoints
  os.makedirs(directory, exist_ok=True)
  checkpoints.write_config_record(directory, config)
  summary = {"eval_accuracy": accuracy, "sparsity": config.sparsity,
             "kept_params": 1, "sparse_macs": 2, "dense_macs": 3,
             "wall_time_s": 1.0, "steps": steps, "masks": "trained"}
  with open(os.path.join(directory, "summary.json"), "w") as f:
    json.dump(summary, f)
  return summary


def test_run_study_reads_back_only_its_config_and_redoes_damaged_summaries(
    tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  plan = study.plan(["optg"], [0.9, 0.99], [0])
  calls = []

  def train_fn(config, directory):
    calls.append(directory)
    return _fake_summary(config, directory, accuracy=0.6)

  base = quickstart.get_config()
  lines = []
  run = lambda config: study.run_study(  # pylint: disable=g-long-lambda
      config, plan, str(tmp_path), train_fn, lambda r: 10,
      progress=lines.append)
  assert [r["status"] for r in run(base)] == ["trained"] * 2
  assert [r["status"] for r in run(base)] == ["read back"] * 2
  assert len(calls) == 2
  # Damaged summaries (truncated, empty, a figure missing): set aside, the
  # run redone, never a traceback.
  first = study.run_dir(str(tmp_path), plan[0])
  path = os.path.join(first, "summary.json")
  for damage in ('{"eval_accuracy": 0.', "",
                 json.dumps({"sparsity": 0.9, "steps": 10})):
    with open(path, "w") as f:
      f.write(damage)
    lines.clear()
    rows = run(base)
    assert [r["status"] for r in rows] == ["trained", "read back"]
    assert lines[0].startswith(f"{path} ")
    assert lines[0].endswith(f"set aside as {path}.damaged, the run is "
                             "redone")
    assert os.path.exists(path + ".damaged")
  assert len(calls) == 5
  # A run of another config (its recorded config.json) is never read back.
  changed = quickstart.get_config()
  changed.learning_rate = 0.01
  assert [r["status"] for r in run(changed)] == ["trained"] * 2
  assert len(calls) == 7


def test_a_study_workdir_holds_one_config_and_one_study(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "study")
  config = quickstart.get_config()
  grid = {"methods": ["optg"], "sparsities": [0.9], "seeds": [0]}
  with study.StudyWorkdir(workdir, config, grid):
    # A second study on it, while the first runs: refused.
    with pytest.raises(study.StudyError, match="is in use by another study "
                       f"\\(pid {os.getpid()}\\)") as busy:
      with study.StudyWorkdir(workdir, config, grid):
        pass
    assert busy.value.code == 2
  record = json.load(open(os.path.join(workdir, study.STUDY_FILE)))
  assert record["base_config"]["model"] == config.model
  assert record["grid"] == grid
  # Another base config: refused, naming the changed fields.
  changed = quickstart.get_config()
  changed.model = "resnet32_cifar"
  changed.learning_rate = 0.01
  with pytest.raises(study.StudyError) as other:
    with study.StudyWorkdir(workdir, changed, grid):
      pass
  assert str(other.value).startswith(
      f"study workdir {workdir} holds a study of another base config: "
      f"changed learning_rate ({config.learning_rate!r} -> 0.01), model "
      "('resnet20_cifar' -> 'resnet32_cifar')")
  # The same config with more seeds: accepted, the grid recorded.
  more = dict(grid, seeds=[0, 1])
  with study.StudyWorkdir(workdir, config, more):
    pass
  assert json.load(open(os.path.join(workdir, study.STUDY_FILE)))[
      "grid"] == more
  # A file where the workdir should be; a workdir that cannot be written.
  (tmp_path / "file").write_text("x")
  with pytest.raises(study.StudyError, match="is a file"):
    with study.StudyWorkdir(str(tmp_path / "file"), config, grid):
      pass
  if os.geteuid() != 0:  # Root writes anywhere.
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(study.StudyError) as ro:
      with study.StudyWorkdir(str(tmp_path / "ro" / "s"), config, grid):
        pass
    assert ro.value.code == 4


def test_results_that_cannot_be_written_leave_no_tmp_file(tmp_path,
                                                         monkeypatch):
  path = str(tmp_path / "results.csv")
  (tmp_path / "results.csv").write_text("good\n")
  real_replace = os.replace

  def full(src, dst):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(study.StudyError, match="No space left") as e:
    study.write_csv(path, [])
  monkeypatch.setattr(os, "replace", real_replace)
  assert e.value.code == 4
  assert os.listdir(tmp_path) == ["results.csv"]
  assert (tmp_path / "results.csv").read_text() == "good\n"


@pytest.mark.parametrize("args,message", [
    (["--sparsities=abc"], "--sparsities must be a list of numbers, got abc"),
    (["--sparsities=0.9,0.9000001"], "differ by 1e-07"),
    (["--doc=DOC", "--section=a/b"], "--section 'a/b': use letters"),
    (["--doc=DOC", "--section=x-->y"], "--section 'x-->y': use letters"),
    (["--doc=TMP", "--section=s"], "is a directory; name a Markdown file"),
    (["--workdir=FILE"], "is a file, not a directory"),
])
def test_study_flag_errors_are_one_line_before_anything_runs(
    tmp_path, args, message):
  (tmp_path / "file").write_text("x")
  args = [a.replace("DOC", str(tmp_path / "doc.md"))
          .replace("TMP", str(tmp_path)).replace("FILE",
                                                 str(tmp_path / "file"))
          for a in args]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp_path / 's'}")
  result = subprocess.run(
      [sys.executable, "launch/study.py", "--config=configs/quickstart.py",
       "--methods=optg"] + args,
      cwd=runs.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(result.stderr.splitlines()) == 1 and message in result.stderr
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_plots_of_a_single_sparsity_and_a_single_point_raise_no_warning(
    tmp_path):
  row = dict(method="optg", sparsity=0.9, seed=0, eval_accuracy=0.8,
             actual_sparsity=0.9, kept_params=10, sparse_macs=100,
             dense_macs=1000, collapsed_layers=0, dead_units=0,
             fatal_collapse=0, wall_time_s=1.0, steps=5, status="trained")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Any warning fails the test.
    paths = study.plot([row], str(tmp_path), "one point")
  assert [os.path.basename(p) for p in paths] == [
      "accuracy_vs_sparsity.png", "accuracy_vs_macs.png"]


def test_aggregate_and_markdown():
  rows = [dict(method="optg", sparsity=0.9, seed=s, eval_accuracy=a,
               actual_sparsity=0.9, kept_params=10, sparse_macs=100,
               dense_macs=1000, collapsed_layers=c, dead_units=0,
               fatal_collapse=0, wall_time_s=1.0, steps=5, status="trained")
          for s, a, c in ((0, 0.5, 0), (1, 0.7, 1))]
  stats = study.aggregate(rows)
  assert stats[("optg", 0.9)]["accuracy_mean"] == pytest.approx(0.6)
  assert stats[("optg", 0.9)]["accuracy_std"] == pytest.approx(0.1)
  assert stats[("optg", 0.9)]["collapsed_runs"] == 1
  text = study.markdown(rows, "T", "python launch/study.py ...")
  assert "| optg | 60.00 ± 10.00 |" in text
  assert "python launch/study.py ..." in text


def _period_rows():
  rows = []
  for method, period, accuracies in (
      ("optg+every1", 1, (0.80, 0.82)), ("optg+every8", 8, (0.78, 0.78)),
      ("optg+epoch", 469, (0.70, 0.72)), ("magnitude+every1", 1, (0.75, 0.75)),
      ("magnitude+epoch+floor1", 469, (0.74, 0.76)), ("dense", None, (0.9,))):
    for seed, accuracy in enumerate(accuracies):
      rows.append(dict(
          method=method, sparsity=0.0 if period is None else 0.95, seed=seed,
          eval_accuracy=accuracy, actual_sparsity=0.95, kept_params=10,
          sparse_macs=100, dense_macs=1000, collapsed_layers=0, dead_units=0,
          fatal_collapse=0, wall_time_s=1.0, steps=2814, status="trained",
          **({} if period is None else {"refresh_period": period})))
  return rows


def test_results_by_refresh_period(tmp_path):
  assert study.period_family("optg+every8+floor1") == "optg+floor1"
  assert study.period_family("magnitude+epoch+stepwise") == (
      "magnitude+stepwise")
  rows = _period_rows()
  grouped = study.by_refresh_period(rows)
  # magnitude+every1 and magnitude+epoch+floor1 are not one family.
  assert list(grouped) == [("optg", 0.95)]
  assert list(grouped[("optg", 0.95)]) == [1, 8, 469]
  assert grouped[("optg", 0.95)][469]["accuracy_mean"] == pytest.approx(0.71)
  text = study.markdown(rows, "T", "cmd")
  assert "| method | sparsity | 1 | 8 | 469 |" in text
  assert "| optg | 0.95 | 81.00 ± 1.00 | 78.00 ± 0.00 | 71.00 ± 1.00 |" in text
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    paths = study.plot(rows, str(tmp_path), "periods")
  assert "accuracy_vs_refresh_period.png" in [os.path.basename(p)
                                              for p in paths]
  png = (tmp_path / "accuracy_vs_refresh_period.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  # A single period per family: no such table or plot.
  single = [r for r in rows if r["method"] != "optg+every8" and
            not r["method"].startswith("optg+epoch")]
  assert study.by_refresh_period(single) == {}
  assert "by refresh period" not in study.markdown(single, "T", "cmd")


def test_replace_section_keeps_the_rest():
  doc = "intro\n<!-- study:a -->\nold\n<!-- /study:a -->\noutro\n"
  new = study.replace_section(doc, "a", "new\n")
  assert new == "intro\n<!-- study:a -->\nnew\n<!-- /study:a -->\noutro\n"
  assert study.replace_section("intro\n", "b", "x\n").endswith(
      "<!-- study:b -->\nx\n<!-- /study:b -->\n")


def _study_command(workdir, data_dir, doc=None, popen=False):
  command = [
      sys.executable, "launch/study.py", "--config=configs/fashion_mnist.py",
      "--methods=optg+every2,dense", "--sparsities=0.9", "--seeds=0",
      f"--workdir={workdir}", f"--config.data_dir={data_dir}",
      "--config.model=lenet_300_100", "--config.num_epochs=3",
      "--config.warmup_epochs=0", "--config.batch_size=40",
      "--config.eval_batch_size=20", "--config.beta=14",
      "--config.log_every_steps=3", "--config.checkpoint_every_steps=4"]
  if doc:
    command += [f"--doc={doc}", "--section=tiny"]
  if popen:
    return subprocess.Popen(command, cwd=runs.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=runs.ROOT, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.long
def test_two_run_study_end_to_end(tmp_path):
  data_dir = str(tmp_path / "data")
  idx_files.make_dataset(data_dir)
  workdir = tmp_path / "study"
  doc = tmp_path / "docs" / "RESULTS.md"
  doc.parent.mkdir()
  doc.write_text("# Results\n\nprose stays\n")
  result = _study_command(workdir, data_dir, doc)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith("[")]
  # A line when each run starts, one when it ends.
  assert lines[0] == "[1/2] optg+every2 sparsity 0.9 seed 0: started (21 steps)"
  assert lines[2] == "[2/2] dense sparsity 0 seed 0: started (21 steps)"
  progress = [lines[1], lines[3]]
  assert progress[0].startswith("[1/2] optg+every2 sparsity 0.9 seed 0: "
                                "eval accuracy ")
  assert "study ETA" in progress[0] and "(trained)" in progress[1]
  # While a run trains: its first step, then its progress, in the console.
  console = result.stderr.splitlines()
  assert sum("Compiled and ran the first step" in l for l in console) == 2
  assert any(re.match(r"\d\d:\d\d:\d\d step \d+/21 ", l) for l in console)
  assert not any("Evaluation at step" in l or "Saved the checkpoint" in l
                 for l in console), result.stderr[-3000:]
  # No TensorFlow native lines, no library warnings.
  assert not [l for l in console if re.match(
      r"[IWE]\d{4} |WARNING: All log messages|.*Warning: ", l)], console

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["sparsity"], r["seed"]) for r in rows] == [
      ("optg+every2", "0.9", "0"), ("dense", "0.0", "0")]
  summary = json.load(open(workdir / "runs" / "optg+every2" / "sparsity=0.9"
                           / "seed=0" / "summary.json"))
  assert float(rows[0]["eval_accuracy"]) == summary["eval_accuracy"]
  assert int(rows[0]["sparse_macs"]) == summary["sparse_macs"]
  assert float(rows[0]["actual_sparsity"]) == summary["sparsity"]
  assert int(rows[1]["sparse_macs"]) == int(rows[1]["dense_macs"]) == 266_200
  # One refresh period per method: no plot against the period.
  assert not (workdir / "accuracy_vs_refresh_period.png").exists()
  assert [r["refresh_period"] for r in rows] == ["2", ""]
  for name in study.PLOTS:
    if name == "accuracy_vs_refresh_period.png":
      continue
    png = (workdir / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (doc.parent / "img" / f"tiny_{name}").exists()
  text = (workdir / "results.md").read_text()
  assert "launch/study.py" in text and "| dense |" in text
  document = doc.read_text()
  assert document.startswith("# Results\n\nprose stays\n")
  assert "<!-- study:tiny -->" in document and "img/tiny_" in document

  # Again: nothing is retrained, the results are the same.
  again = _study_command(workdir, data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("(read back)") == 2
  assert "started" not in again.stdout
  with open(workdir / "results.csv") as f:
    assert [r["eval_accuracy"] for r in csv.DictReader(f)] == [
        r["eval_accuracy"] for r in rows]

  # A run that fails (its config.json edited: the harness refuses its
  # checkpoints): exit 1, one error line, the good results kept.
  results = {name: (workdir / name).read_bytes()
             for name in ("results.csv", "results.md")}
  record_path = (workdir / "runs" / "dense" / "sparsity=0" / "seed=0" /
                 "config.json")
  record = json.loads(record_path.read_text())
  record["learning_rate"] = 0.5
  record_path.write_text(json.dumps(record))
  failed = _study_command(workdir, data_dir)
  assert failed.returncode == 1, failed.stderr[-3000:]
  errors = [l for l in failed.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      "error: 1 of 2 runs failed (first: dense sparsity 0 seed 0: "
      "ConfigChanged: workdir " + str(record_path.parent) + " holds a run "
      "of another configuration: changed learning_rate (0.5 -> 0.01); use a "
      "new workdir, or the recorded values (in " + str(record_path) +
      ") to continue it); the results files are left as they were"]
  for name, content in results.items():
    assert (workdir / name).read_bytes() == content

  # Ctrl-C while a run trains: one line, exit 130; nothing else written.
  interrupted = tmp_path / "interrupted"
  process = _study_command(interrupted, data_dir, popen=True)
  assert process.stdout.readline().startswith("[1/2] optg+every2")
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 130, err[-3000:]
  assert [l for l in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", l)
          ] == ["interrupted: the runs that finished are kept; the same "
                "command resumes the study"]
  assert not (interrupted / "results.csv").exists()


@pytest.mark.parametrize("method,message", [
    ("optg+sometimes", "unknown modifier 'sometimes'"),
    ("optg+every8+epoch", "every8 and epoch both set the refresh period"),
    ("optg+4:2", "structure 4:2 is not N:M with 0 < N < M"),
])
def test_study_bad_method_is_one_error_line(tmp_path, method, message):
  result = subprocess.run(
      [sys.executable, "launch/study.py", "--config=configs/quickstart.py",
       f"--methods={method}", f"--workdir={tmp_path / 's'}"],
      cwd=runs.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert message in result.stderr
  assert not (tmp_path / "s").exists()


def test_collapse_findings_say_what_is_fatal():
  import optg_jax as optg  # pylint: disable=g-import-not-at-top
  head = np.ones((6, 10), bool)
  head[:, [3, 7]] = False  # Two classes without weights.
  masks = {"stem": np.ones((3, 3, 1, 4), bool),
           "branch": np.zeros((3, 3, 4, 4), bool), "head": head}
  findings = train.collapse_findings(optg.sparsity_report(masks), "stem",
                                     "head")
  assert findings["collapsed_layers"] == ["branch"]
  assert findings["dead_units"] == {"branch": 4, "head": 2}
  assert findings["fatal"] == [
      "2 classes have no kept weight in the classifier head"]
  masks["stem"] = np.zeros((3, 3, 1, 4), bool)
  findings = train.collapse_findings(optg.sparsity_report(masks), "stem",
                                     "head")
  assert findings["fatal"][0] == "the input layer stem has no kept weight"


def test_sparsity_txt_names_each_collapse_once():
  """The table names the collapsed layers and dead units; the harness's
  note under it adds only what is fatal and why it matters."""
  from optg_jax.harness import summary  # pylint: disable=g-import-not-at-top
  import optg_jax as optg  # pylint: disable=g-import-not-at-top
  masks = {"stem": np.zeros((3, 3, 1, 4), bool),
           "head": np.ones((6, 10), bool)}
  report = optg.sparsity_report(masks)
  findings = train.collapse_findings(report, "stem", "head")
  text = optg.sparsity_table(report) + summary.collapse_note(findings)
  # Its row, the dead units, the collapse, the fatal note (6 when the note
  # repeated the table).
  assert text.count("stem") == 4
  assert text.splitlines()[-4:] == [
      "COLLAPSED (no kept weight): stem", "",
      "FATAL: the input layer stem has no kept weight",
      "A collapsed layer or dead unit is harmless only where another path "
      "(a residual shortcut) carries the signal."]
  assert summary.collapse_note({"collapsed_layers": [], "dead_units": {},
                                "fatal": []}) == (
      "\nNo layer collapsed; every output unit keeps an input weight.\n")


@pytest.mark.slow
def test_collapse_is_reported_in_summary_table_and_log(tmp_path, caplog):
  """LeNet-300-100 pruned to 99.8% by magnitude on tiny data: the input
  layer (smaller initial weights than the others) loses every weight;
  summary.json, sparsity.txt and the log say so, and call it fatal."""
  data_dir = str(tmp_path / "data")
  idx_files.make_dataset(data_dir)
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  config = fashion_mnist.get_config()
  config.update(dict(
      data_dir=data_dir, model="lenet_300_100", method="magnitude",
      sparsity=0.998, num_epochs=3, warmup_epochs=0, batch_size=40,
      eval_batch_size=20, beta=14.0, log_every_steps=2,
      update_every_steps=2))
  workdir = tmp_path / "run"
  with caplog.at_level("WARNING"):
    summary = train.train_and_evaluate(config, str(workdir))
  assert summary["collapsed_layers"] == ["fc1/kernel"]
  assert summary["layers"]["fc1/kernel"]["kept"] == 0
  assert summary["dead_units"]["fc1/kernel"] == 300
  assert ("the input layer fc1/kernel has no kept weight"
          in summary["fatal_collapse"])
  assert list(summary["layers"]) == ["fc1/kernel", "fc2/kernel",
                                     "head/kernel"]
  table = (workdir / "sparsity.txt").read_text()
  assert "300/300 COLLAPSED" in table and "FATAL: the input layer" in table
  warnings = [r.getMessage() for r in caplog.records
              if "Mask refresh at step" in r.getMessage()]
  assert warnings and "FATAL: the input layer fc1/kernel" in warnings[-1]
  # And once more at the end of the run.
  assert [r.getMessage() for r in caplog.records
          if "at the end of the run" in r.getMessage()] == [
              "Layers left with no kept weight at the end of the run: "
              "fc1/kernel"]
  # With a floor of one input per unit nothing is cut off, same count.
  config.min_kept_per_unit = 1
  floor = train.train_and_evaluate(config, str(tmp_path / "floor"))
  assert floor["dead_units"] == {} and floor["collapsed_layers"] == []
  assert floor["fatal_collapse"] == []
  assert floor["kept_params"] == summary["kept_params"]
  assert "No layer collapsed" in (tmp_path / "floor" /
                                  "sparsity.txt").read_text()


def test_unit_floor_larger_than_target_is_a_config_error(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.sparsity = 0.999  # Keeps 271 of 270,608; ResNet-20 has 794 units.
  config.min_kept_per_unit = 1
  with pytest.raises(train.ConfigError, match="min_kept_per_unit=1 keeps"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_run_study_records_failures_and_stops_on_preemption(tmp_path):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  plan = study.plan(["optg"], [0.9, 0.99], [0])
  calls = []

  def fails(config, directory):
    calls.append((config.sparsity, directory))
    raise RuntimeError("no luck\nsecond line")

  rows = study.run_study(quickstart.get_config(), plan, str(tmp_path), fails,
                         lambda run: 10, progress=lambda line: None)
  assert [r["status"] for r in rows] == ["failed: RuntimeError: no luck"] * 2
  assert calls[1] == (0.99, study.run_dir(str(tmp_path), plan[1]))

  class Stop(Exception):
    pass

  def preempted(config, directory):
    raise Stop()

  with pytest.raises(Stop):
    study.run_study(quickstart.get_config(), plan, str(tmp_path), preempted,
                    lambda run: 10, progress=lambda line: None,
                    stop_on=(Stop,))
