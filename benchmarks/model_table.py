"""Prints a Markdown table of the model zoo: size and cost of every model.

For each of `optg_jax.models.names()`: its usual input, its parameters
(BatchNorm scales and biases included, statistics not), and the
multiply-accumulates per image of its conv and dense layers
(`optg_jax.flops.count_macs`), dense and with a uniform mask that keeps the
same fraction of every conv and dense kernel. ImageNet models have 1000
classes, CIFAR models 10. Variables are taken with `jax.eval_shape`, so
nothing is initialised or run.

  python benchmarks/model_table.py [--sparsity 0.9]
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from optg_jax import flops  # pylint: disable=g-import-not-at-top
from optg_jax import models  # pylint: disable=g-import-not-at-top


def uniform_masks(params, sparsity):
  """Keeps round((1 - sparsity) * n) entries of every kernel (ndim >= 2)."""

  def one(leaf):
    if len(leaf.shape) < 2:
      return None
    n = int(np.prod(leaf.shape))
    return (np.arange(n) < round((1 - sparsity) * n)).reshape(leaf.shape)

  return jax.tree.map(one, params)


def human(count: int) -> str:
  if count >= 1e9:
    return f"{count / 1e9:.3f} G"
  if count < 1e6:
    return f"{count / 1e3:.1f} K"
  return f"{count / 1e6:.2f} M"


def table_order(name):
  """ImageNet models, CIFAR ones, LeNets; numbers compared as numbers."""
  parts = re.split(r"(\d+)", name)
  return (name.endswith("_cifar") + 2 * name.startswith("lenet"),
          [int(p) if p.isdigit() else p for p in parts])


def row(name, sparsity):
  num_classes = (10 if name.endswith("_cifar") or name.startswith("lenet")
                 else 1000)
  model = models.create(name, num_classes)
  shape = models.default_input_shape(name)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + shape), train=False))
  num_params = sum(int(np.prod(x.shape))
                   for x in jax.tree.leaves(variables["params"]))
  masks = uniform_masks(variables["params"], sparsity)
  macs = flops.count_macs(model, variables, (1,) + shape, masks)
  return (f"`{name}`", "x".join(map(str, shape)), str(num_classes),
          f"{num_params:,}", human(macs.dense), human(macs.sparse))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sparsity", type=float, default=0.9,
                      help="the uniform sparsity of the last column")
  args = parser.parse_args()
  header = ("Model", "Input", "Classes", "Parameters", "Dense MACs",
            f"MACs at {100 * args.sparsity:g}% uniform sparsity")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|")
  for name in sorted(models.names(), key=table_order):
    print("| " + " | ".join(row(name, args.sparsity)) + " |")


if __name__ == "__main__":
  main()
