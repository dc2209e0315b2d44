"""Every Python block of the README runs as written and shows what it says."""

import contextlib
import io
import pathlib
import re

from flax import nnx
import jax
import numpy as np
import pytest

import optg_jax as optg

README = pathlib.Path(__file__).parent.parent / "README.md"


def python_blocks():
  """`(heading, code)` of every ```python block, in order."""
  text = README.read_text()
  blocks, heading = [], None
  for part in re.split(r"(```python\n.*?```)", text, flags=re.S):
    if part.startswith("```python\n"):
      blocks.append((heading, part[len("```python\n"):-3]))
    else:
      headings = re.findall(r"^#+ (.*)$", part, re.M)
      heading = headings[-1] if headings else heading
  return blocks


def run_block(code):
  """Runs one block in a fresh namespace: `(namespace, stdout)`."""
  namespace, out = {"__name__": "readme"}, io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, str(README), "exec"), namespace)  # pylint: disable=exec-used
  return namespace, out.getvalue()


def table_sparsity(printed):
  """The `all prunable` sparsity of a printed `sparsity_table`, a fraction."""
  row = re.search(r"^all prunable .* ([\d.]+)%$", printed, re.M)
  assert row, printed
  return float(row.group(1)) / 100


BLOCKS = python_blocks()


def test_the_readme_has_the_blocks_these_tests_check():
  headings = [h for h, _ in BLOCKS]
  assert headings == [
      "The transform in an optax chain", "The transform in an optax chain",
      "The refresh chosen on the host",
      "N:M structured sparsity and sparse model files",
      "Flax linen: `TrainState`", "Flax NNX",
      "Sharded training (jit, shard_map)"], headings


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{i}" for i in range(len(BLOCKS))])
def test_block_runs_as_written(index):
  heading, code = BLOCKS[index]
  namespace, printed = run_block(code)
  if heading == "The transform in an optax chain" and "train_step" in code:
    # The first snippet trains and prints its table at the target, and
    # the params it ends with are the sparse network it trained.
    assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-4)
    accuracy = float(re.search(r"test accuracy ([\d.]+)", printed).group(1))
    assert accuracy > 0.85, printed
    params, opt_state = namespace["params"], namespace["opt_state"]
    masks = optg.trained_masks(opt_state)
    for name in ("layers_0", "layers_2"):
      kernel = np.asarray(params[name]["kernel"])
      np.testing.assert_array_equal(kernel != 0, masks[name]["kernel"])
  elif heading == "The transform in an optax chain":
    assert printed.strip() == "0.05"
  elif heading == "The refresh chosen on the host":
    # Refreshed after the 4th and the 8th step, at 0.5 of 2,048 weights.
    assert printed.strip() == "0.5"
    state = optg.get_optg_state(namespace["opt_state"])
    assert int(state.count) == 12
    assert int(np.sum(state.trained_masks["kernel"])) == 1024
  elif heading.startswith("N:M"):
    assert printed.split() == ["2", "True"]
  elif heading.startswith("Flax linen"):
    accuracies = [float(a) for a in re.findall(r"test accuracy ([\d.]+)",
                                               printed)]
    assert len(accuracies) == 12 and accuracies[-1] >= 0.85, printed
    assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-3)
  elif heading == "Flax NNX":
    masks = namespace["masks"]
    assert table_sparsity(printed) == pytest.approx(0.9, abs=1e-3)
    weights = nnx.as_pure(nnx.state(namespace["model"], nnx.Param))
    for layer in ("conv1", "conv2", "head"):
      kernel = np.asarray(weights[layer]["kernel"])
      np.testing.assert_array_equal(kernel != 0,
                                    np.asarray(masks[layer]["kernel"]))
    assert namespace["model"].bn1.use_running_average
  else:  # Sharded: the replicas stay identical, the masks drawn.
    params = namespace["params"]
    for leaf in jax.tree.leaves(params):
      assert leaf.sharding.is_fully_replicated
    assert "all prunable" in printed
