"""The README and the guides under docs/ run as written and say what they show.

Which blocks run: every block fenced ```python in README.md and in the
Markdown files under docs/ (the guides; ALGORITHM.md, RESULTS.md and
RECIPES.md hold none today). Shell commands and output samples are fenced
```bash or a bare ``` and are not run. A Python block that is not meant to
run (a fragment, a sketch that needs a dataset) carries the HTML comment
`<!-- not run: REASON -->` on the line just above its fence, invisible on
GitHub and in the site: it is skipped, and the reason is required. A block
too slow for the default run carries `<!-- long -->` there instead and runs
under `-m long`. Each block runs in a fresh namespace, in the order of its
file, and what it prints is checked against what the text says.

Besides the blocks: the API reference (docs/api.md) names every name of
`optg_jax.__all__`, the relative links of the pages lead to files that
exist, the README stays short, and its test commands are CI's.
"""

import contextlib
import io
import pathlib
import re

from flax import nnx
import jax
import numpy as np
import pytest

import optg_jax as optg

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARK = re.compile(r"<!-- (not run: .+?|long) -->\s*$")


def pages():
  """README.md, then every Markdown page under docs/ (not the built site)."""
  found = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
  return [README] + found


def python_blocks(path):
  """`(heading, code, mark)` of every ```python block of `path`, in order;
  `mark` is the comment above the fence ("not run: ...", "long") or None."""
  blocks, heading, mark = [], None, None
  for part in re.split(r"(```python\n.*?```)", path.read_text(), flags=re.S):
    if part.startswith("```python\n"):
      blocks.append((heading, part[len("```python\n"):-3], mark))
    else:
      headings = re.findall(r"^#+ (.*)$", part, re.M)
      heading = headings[-1] if headings else heading
      found = MARK.search(part)
      mark = found.group(1) if found else None
  return blocks


def name(path):
  return str(path.relative_to(ROOT))


BLOCKS = [(name(p), heading, code, mark)
          for p in pages() for heading, code, mark in python_blocks(p)]


def run_block(code, filename):
  """Runs one block in a fresh namespace: `(namespace, stdout)`."""
  namespace, out = {"__name__": "readme"}, io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, filename, "exec"), namespace)  # pylint: disable=exec-used
  return namespace, out.getvalue()


def table_sparsity(printed):
  """The `all prunable` sparsity of a printed `sparsity_table`, a fraction."""
  row = re.search(r"^all prunable .* ([\d.]+)%$", printed, re.M)
  assert row, printed
  return float(row.group(1)) / 100


def table_row(printed, layer):
  """`(kept, total, dead, units)` of one layer's row of a `sparsity_table`."""
  row = re.search(rf"^{re.escape(layer)} +([\d,]+) +([\d,]+) +[\d.]+% +"
                  r"(\d+)/(\d+)$", printed, re.M)
  assert row, printed
  return tuple(int(g.replace(",", "")) for g in row.groups())


def number(text, pattern):
  """The number (commas allowed) of the first match of `pattern`'s group,
  in `text` with its line breaks as spaces."""
  found = re.search(pattern, " ".join(text.split()))
  assert found, pattern
  return float(found.group(1).replace(",", ""))


def test_the_pages_have_the_blocks_these_tests_check():
  found = [(f, h, m) for f, h, _, m in BLOCKS]
  assert found == [
      ("README.md", "The transform in an optax chain", None),
      ("docs/guides/dynamic.md", "In an optax chain", None),
      ("docs/guides/linen.md", "Flax linen: `TrainState`", None),
      ("docs/guides/nm.md", "N:M structured sparsity and sparse model files",
       None),
      ("docs/guides/nnx.md", "Flax NNX", None),
      ("docs/guides/optax.md", "With `optax.inject_hyperparams`", None),
      ("docs/guides/optax.md", "The refresh chosen on the host", None),
      ("docs/guides/sharding.md", "Sharded training (jit, shard_map)", None),
  ], found


def check_optax_chain(namespace, printed):
  """README: the sparse model at the target, and the figures its text
  quotes: the accuracy, the first layer's kept weights and dead units."""
  assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-4)
  accuracy = number(printed, r"test accuracy ([\d.]+)")
  assert accuracy > 0.85, printed
  params, opt_state = namespace["params"], namespace["opt_state"]
  masks = optg.trained_masks(opt_state)
  for layer in ("layers_0", "layers_2"):
    kernel = np.asarray(params[layer]["kernel"])
    np.testing.assert_array_equal(kernel != 0, masks[layer]["kernel"])
  # Dead units are the hidden units whose whole column of the first
  # kernel (64 inputs -> 256 units) the global top-k pruned.
  kept, total, dead, units = table_row(printed, "layers_0/kernel")
  first = np.asarray(masks["layers_0"]["kernel"])
  assert (kept, total, units) == (int(first.sum()), 16384, 256)
  assert dead == int(np.sum(~first.any(axis=0))) > 0
  text = README.read_text()
  assert accuracy == pytest.approx(
      number(text, r"sparse model \(([\d.]+) here\)"), abs=0.02)
  assert kept == pytest.approx(
      number(text, r"first layer keeps ([\d,]+) of its 16,384"), rel=0.05)
  assert dead == pytest.approx(
      number(text, r"and (\d+) of its 256 hidden units are dead"), abs=15)


def check_inject_hyperparams(namespace, printed):
  del namespace  # Unused.
  assert printed.strip() == "0.05"


def check_refresh_on_the_host(namespace, printed):
  # Refreshed after the 4th and the 8th step, at 0.5 of 2,048 weights.
  assert printed.strip() == "0.5"
  state = optg.get_optg_state(namespace["opt_state"])
  assert int(state.count) == 12
  assert int(np.sum(state.trained_masks["kernel"])) == 1024


def check_nm(namespace, printed):
  del namespace  # Unused.
  assert printed.split() == ["2", "True"]


def check_linen(namespace, printed):
  """12 epochs, the last at least 0.85 (0.877 as the guide says), the
  table at the target and the params the sparse network."""
  accuracies = [float(a) for a in re.findall(r"test accuracy ([\d.]+)",
                                             printed)]
  assert len(accuracies) == 12 and accuracies[-1] >= 0.85, printed
  assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-3)
  state = namespace["state"]
  masks = optg.trained_masks(state.opt_state)
  kernel = np.asarray(state.params["Dense_0"]["kernel"])
  np.testing.assert_array_equal(kernel != 0, masks["Dense_0"]["kernel"])


def check_nnx(namespace, printed):
  masks = namespace["masks"]
  assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-3)
  weights = nnx.as_pure(nnx.state(namespace["model"], nnx.Param))
  for layer in ("conv1", "conv2", "head"):
    kernel = np.asarray(weights[layer]["kernel"])
    np.testing.assert_array_equal(kernel != 0,
                                  np.asarray(masks[layer]["kernel"]))
  assert namespace["model"].bn1.use_running_average


def check_sharded(namespace, printed):
  """The replicas stay identical; the masks drawn at the target."""
  for leaf in jax.tree.leaves(namespace["params"]):
    assert leaf.sharding.is_fully_replicated
  assert "all prunable     10,163  50,816    80.00%" in printed, printed


def check_dynamic(namespace, printed):
  """RigL's ERK budget held at every step (the block asserts it), masks
  that moved (growth from the gradient at the masked weights) and the
  figures the guide quotes."""
  assert printed.split()[:3] == ["[165,", "73]", "0.8994932432432432"], (
      printed)
  moved = int(printed.split()[3])
  masks = optg.get_masks(namespace["opt_state"])
  assert [int(m.sum()) for m in jax.tree.leaves(masks)] == [165, 73]
  text = " ".join((DOCS / "guides" / "dynamic.md").read_text().split())
  assert "238 of 2,368 weights" in text
  assert 0 < moved == pytest.approx(
      number(text, r"not at the start \((\d+) here;"), abs=15)


CHECKS = {
    ("docs/guides/dynamic.md", "In an optax chain"): check_dynamic,
    ("README.md", "The transform in an optax chain"): check_optax_chain,
    ("docs/guides/optax.md", "With `optax.inject_hyperparams`"):
        check_inject_hyperparams,
    ("docs/guides/optax.md", "The refresh chosen on the host"):
        check_refresh_on_the_host,
    ("docs/guides/nm.md", "N:M structured sparsity and sparse model files"):
        check_nm,
    ("docs/guides/linen.md", "Flax linen: `TrainState`"): check_linen,
    ("docs/guides/nnx.md", "Flax NNX"): check_nnx,
    ("docs/guides/sharding.md", "Sharded training (jit, shard_map)"):
        check_sharded,
}


def block_params():
  params = []
  for filename, heading, code, mark in BLOCKS:
    marks = [pytest.mark.long] if mark == "long" else []
    if mark and mark.startswith("not run"):
      marks.append(pytest.mark.skip(reason=mark))
    params.append(pytest.param(filename, heading, code, marks=marks,
                               id=f"{filename}:{heading}"))
  return params


@pytest.mark.parametrize("filename, heading, code", block_params())
def test_block_runs_as_written(filename, heading, code):
  namespace, printed = run_block(code, filename)
  CHECKS[(filename, heading)](namespace, printed)


def test_not_run_marks_give_a_reason():
  for filename, heading, _, mark in BLOCKS:
    if mark and mark.startswith("not run"):
      assert mark[len("not run:"):].strip(), (filename, heading)


def documented_names(text):
  """The objects an autodoc directive of `text` documents."""
  return set(re.findall(r"^\.\. auto(?:function|class|data|exception)::"
                        r" (\S+)$", text, re.M))


def test_the_api_reference_names_every_public_name():
  documented = documented_names((DOCS / "api.md").read_text())
  missing = {f"optg_jax.{n}" for n in optg.__all__} - documented
  assert missing == set()
  assert "optg_jax.train.train_and_evaluate" in documented
  # Every name documented at the top level is a public name.
  top = {n.split(".", 1)[1] for n in documented if n.count(".") == 1}
  assert top - set(optg.__all__) == set()


def test_relative_links_lead_to_files():
  for page in pages():
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      path = (page.parent / target.split("#")[0]).resolve()
      assert path.exists(), (name(page), target)


def test_the_readme_is_short_and_quotes_the_ci_test_commands():
  text = README.read_text()
  assert len(text.splitlines()) <= 200
  ci = (ROOT / ".ci" / "run").read_text()
  ci_commands = re.findall(r"^python -m pytest.*$", ci, re.M)
  readme_commands = [line.split("#")[0].strip() for line in
                     re.findall(r"^python -m pytest.*$", text, re.M)]
  assert ci_commands == ["python -m pytest -q", "python -m pytest -q -m long"]
  assert readme_commands == ci_commands
