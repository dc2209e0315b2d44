"""A study's results: the mean ± std table, the plots, and the section of
a Markdown document they replace (`launch/study.py --doc --section`)."""

import os
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

PLOTS = ("accuracy_vs_sparsity.png", "accuracy_vs_macs.png",
         "accuracy_vs_training_macs.png",
         "accuracy_vs_refresh_period.png", "layer_sparsity.png",
         "schedules.png")
# The modifiers that set a method's refresh period: those of the kind
# "refresh period" in `optg_jax.studies.study` (a test holds them equal).
_PERIOD_MODIFIER = re.compile(r"every\d+|epoch|dt\d+")
EXIT_BAD_INPUT, EXIT_IO = 2, 4


class StudyError(ValueError):
  """A study's arguments or workdir are wrong; the message is one line.

  `code`: the exit code of `launch/study.py` (2 bad input, 4 I/O).
  """

  def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
    super().__init__(message)
    self.code = code



def aggregate(rows: Sequence[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
  """Mean and std (ddof 0) over seeds per (method, sparsity), done runs only.

  Returns:
    `{(method, sparsity): {"n", "accuracy_mean", "accuracy_std",
    "accuracy_min" (the worst run), "actual_sparsity", "sparse_macs",
    "training_macs" (None unless every run has it), "fatal_runs",
    "collapsed_runs", "wall_time_s"}}` in the order of `rows`.
  """
  groups: Dict[tuple, List[Dict[str, Any]]] = {}
  for row in rows:
    if "eval_accuracy" in row:
      groups.setdefault((row["method"], row["sparsity"]), []).append(row)
  out = {}
  for key, group in groups.items():
    acc = np.array([r["eval_accuracy"] for r in group], float)
    training = [r.get("training_macs") for r in group]
    out[key] = {
        "n": len(group),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std()),
        "accuracy_min": float(acc.min()),
        "training_macs": (None if any(t in (None, "") for t in training)
                          else float(np.mean([float(t) for t in training]))),
        "actual_sparsity": float(np.mean([r["actual_sparsity"]
                                          for r in group])),
        "sparse_macs": float(np.mean([r["sparse_macs"] for r in group])),
        "fatal_runs": sum(1 for r in group if r["fatal_collapse"]),
        "collapsed_runs": sum(1 for r in group if r["collapsed_layers"]),
        "wall_time_s": float(np.mean([r["wall_time_s"] for r in group])),
    }
  return out


def period_family(method: str) -> str:
  """The method without its refresh-period modifier: "optg+every8+floor1"
  -> "optg+floor1", "rigl+dt50" -> "rigl" (`parse_method` refuses a method
  with two)."""
  base, *modifiers = method.split("+")
  return "+".join([base] + [m for m in modifiers
                            if not _PERIOD_MODIFIER.fullmatch(m)])


def by_refresh_period(rows: Sequence[Dict[str, Any]]
                      ) -> Dict[tuple, Dict[int, Dict[str, Any]]]:
  """`{(family, sparsity): {period: aggregate stats}}` for the families
  (`period_family`) run at two or more refresh periods, periods ascending.
  """
  stats = aggregate(rows)
  periods = {}
  for row in rows:
    if row.get("refresh_period") and "eval_accuracy" in row:
      periods[row["method"]] = int(row["refresh_period"])
  out: Dict[tuple, Dict[int, Dict[str, Any]]] = {}
  for (method, sparsity), st in stats.items():
    if method in periods:
      out.setdefault((period_family(method), sparsity), {})[
          periods[method]] = st
  return {key: dict(sorted(value.items())) for key, value in out.items()
          if len(value) >= 2}


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
  dense_training = [st["training_macs"] for (m, _), st in stats.items()
                    if m == "dense" and st["training_macs"]]
  lines += ["", "Per method and sparsity: the worst run's accuracy, actual "
            "sparsity, sparse MACs per example, the run's training MACs "
            "(forward and backward passes of every step, all examples; "
            "`optg_jax/harness/cost.py`)"
            + (" and their share of the dense run's" if dense_training
               else "")
            + ", runs with a fatal collapse (a collapsed input layer or "
            "classifier, or a class without weights) and with a collapsed "
            "layer anywhere, and the mean wall time of a run.", "",
            "| method | sparsity | worst | actual | sparse MACs | training "
            "MACs | fatal | collapsed | wall s |",
            "|---|---|---|---|---|---|---|---|---|"]
  for (method, s), st in stats.items():
    training = st["training_macs"]
    cost = "—" if training is None else f"{training:.3g}"
    if training is not None and dense_training:
      cost += f" ({training / dense_training[0]:.2f}x)"
    lines.append(f"| {method} | {s:g} | {100 * st['accuracy_min']:.2f} | "
                 f"{st['actual_sparsity']:.4f} | "
                 f"{st['sparse_macs']:,.0f} | {cost} | "
                 f"{st['fatal_runs']}/{st['n']} | "
                 f"{st['collapsed_runs']}/{st['n']} | "
                 f"{st['wall_time_s']:.0f} |")
  grouped = by_refresh_period(rows)
  if grouped:
    periods = sorted({p for value in grouped.values() for p in value})
    lines += ["", "The same, by refresh period (steps between refreshes; "
              "`epoch` is a period of one epoch's steps):", "",
              "| method | sparsity | " + " | ".join(map(str, periods)) + " |",
              "|---|---" + "|---" * len(periods) + "|"]
    for (family, s), value in grouped.items():
      cells = [f"{100 * value[p]['accuracy_mean']:.2f} ± "
               f"{100 * value[p]['accuracy_std']:.2f}" if p in value else ""
               for p in periods]
      lines.append(f"| {family} | {s:g} | " + " | ".join(cells) + " |")
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


def _labelled(ax, title, xlabel, ylabel, legend_size=8):
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=legend_size)


def _training_macs_plot(plt, ax_title, stats, methods, sparsities, save):
  """Accuracy against the runs' training MACs: a colour per method, a
  marker per sparsity, the legend beside the axes."""
  fig, ax = plt.subplots(figsize=(8.4, 4.4))
  markers = "o^vD<>"
  for i, method in enumerate(methods):
    keys = [k for k in stats if k[0] == method and
            stats[k]["training_macs"] is not None]
    for k in keys:
      marker = ("s" if method == "dense" else
                markers[sparsities.index(k[1]) % len(markers)])
      ax.errorbar(stats[k]["training_macs"], stats[k]["accuracy_mean"],
                  yerr=stats[k]["accuracy_std"], capsize=3, marker=marker,
                  color=f"C{i % 10}", ls="none",
                  label=method if k == keys[0] else None)
  training = [st["training_macs"] for st in stats.values()
              if st["training_macs"] is not None]
  ax.set_xlim(min(training) / 1.5, max(training) * 1.5)
  ax.set_xscale("log")
  ax.set_xlabel("training MACs of the run (log scale); markers: " + ", ".join(
      f"{m} {s:g}" for m, s in zip(markers, sparsities)))
  ax.set_ylabel("eval accuracy (mean ± std over seeds)")
  ax.set_title(ax_title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  save(fig, "accuracy_vs_training_macs.png")


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
  _labelled(ax, title, "sparse MACs per example (log scale)",
            "eval accuracy (mean over seeds)")
  save(fig, "accuracy_vs_macs.png")

  training = [st["training_macs"] for st in stats.values()
              if st["training_macs"] is not None]
  if training:  # Runs from before the count have none.
    _training_macs_plot(plt, ax_title=title, stats=stats, methods=methods,
                        sparsities=sparsities, save=save)

  grouped = by_refresh_period(rows)
  if grouped:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # A colour per method, a line style per sparsity.
    families = list(dict.fromkeys(family for family, _ in grouped))
    levels = sorted({s for _, s in grouped})
    styles = ["-", "--", ":", "-."]
    for (family, s), value in grouped.items():
      periods = list(value)
      ax.errorbar(periods, [value[p]["accuracy_mean"] for p in periods],
                  yerr=[value[p]["accuracy_std"] for p in periods],
                  marker="o", capsize=3, label=f"{family} at {s:g}",
                  color=f"C{families.index(family) % 10}",
                  ls=styles[levels.index(s) % len(styles)])
    every = sorted({p for value in grouped.values() for p in value})
    ax.set_xlim(min(every) / 1.5, max(every) * 1.5)
    ax.set_xscale("log")
    ax.set_xticks(every)
    ax.set_xticklabels([str(p) for p in every])
    ax.minorticks_off()
    _labelled(ax, title, "refresh period (steps, log scale)",
              "eval accuracy (mean ± std over seeds)", legend_size=7)
    save(fig, "accuracy_vs_refresh_period.png")

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
    ax.set_ylim(0, 1.15 + 0.1 * -(-len(layers) // 4))  # Room for the legend.
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(f"{title}: layer sparsity at {layer_sparsity:g}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=min(len(layers), 4))
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
