"""Sizes of the sparse files `export_sparse` writes for ResNet-50.

The params are those of `optg_jax.models.resnet50` for ImageNet (shapes
from `jax.eval_shape`, values random normal float32; random values do not
compress, and the format stores them uncompressed). Two masks over its
conv and dense kernels (biases and BatchNorm stay dense):

- unstructured: the given sparsity over all kernels together, an exact
  global count of kept weights at random positions;
- N:M (2:4 by default) on every kernel whose reduction axis (input
  channels) divides by M, chosen by `nm_masks` from random scores; the
  3-channel stem stays dense.

For each it prints the file's size, the dense size (`np.savez` of all params
in float32) and their ratio, and checks that `load_sparse` gives back the
masked params bit for bit.

  python benchmarks/export_size.py [--sparsity 0.9] [--nm 2:4]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import optg_jax as optg  # pylint: disable=g-import-not-at-top
from optg_jax import models  # pylint: disable=g-import-not-at-top
from optg_jax import topk  # pylint: disable=g-import-not-at-top


def resnet50_params(rng):
  model = models.create("resnet50", num_classes=1000)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))["params"]
  return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32),
                      shapes)


def unstructured_masks(params, sparsity, rng):
  """Random masks keeping exactly `num_to_keep(sparsity, N)` kernel weights."""
  kernels = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  sizes = [x.size for x in kernels]
  total = sum(sizes)
  flat = np.zeros(total, bool)
  flat[rng.permutation(total)[:topk.num_to_keep(sparsity, total)]] = True
  pieces = iter(np.split(flat, np.cumsum(sizes)[:-1]))
  return jax.tree.map(
      lambda x: next(pieces).reshape(x.shape) if x.ndim >= 2 else None,
      params)


def nm_masks(params, pattern, rng):
  scores = jax.tree.map(
      lambda x: rng.standard_normal(x.shape, np.float32) if x.ndim >= 2
      else None, params)
  masks = optg.nm_masks(scores, pattern.n, pattern.m, indivisible="dense")
  return jax.tree.map(lambda m: None if m is None else np.asarray(m), masks,
                      is_leaf=lambda x: x is None)


def check_round_trip(params, masks, path):
  loaded, loaded_masks = optg.load_sparse(path)
  is_none = lambda x: x is None
  for x, m, y, n in zip(jax.tree.leaves(params),
                        jax.tree.leaves(masks, is_leaf=is_none),
                        jax.tree.leaves(loaded),
                        jax.tree.leaves(loaded_masks, is_leaf=is_none),
                        strict=True):
    expected = x if m is None else np.where(m, x, 0)
    assert y.dtype == x.dtype and np.array_equal(
        y.view(np.uint32), expected.view(np.uint32))
    assert (m is None and n is None) or np.array_equal(m, n)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--nm", default="2:4")
  args = parser.parse_args()
  pattern = optg.NM.parse(args.nm)

  rng = np.random.default_rng(0)
  params = resnet50_params(rng)
  leaves = jax.tree.leaves(params)
  kernels = [x for x in leaves if x.ndim >= 2]
  entries = sum(x.size for x in leaves)
  with tempfile.TemporaryDirectory() as directory:
    dense_path = os.path.join(directory, "dense.npz")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    np.savez(dense_path, **{optg.path_to_str(p): x for p, x in flat})
    dense = os.path.getsize(dense_path)
    print(f"ResNet-50 (ImageNet): {entries:,} float32 params, "
          f"{sum(x.size for x in kernels):,} in {len(kernels)} conv and "
          "dense kernels")
    print(f"dense float32 (np.savez of all params): {dense:,} bytes")

    variants = [
        (f"{args.sparsity:.0%} unstructured",
         unstructured_masks(params, args.sparsity, rng)),
        (f"{pattern} (stem dense)", nm_masks(params, pattern, rng)),
    ]
    for name, masks in variants:
      path = os.path.join(directory, "sparse.npz")
      start = time.perf_counter()
      size = optg.export_sparse(params, masks, path)
      seconds = time.perf_counter() - start
      check_round_trip(params, masks, path)
      masked = [m for m in jax.tree.leaves(masks) if not m.all()]
      kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
      print(f"{name:>20}: {size:>12,} bytes, ratio {size / dense:.4f} "
            f"({len(masked)} kernels sparse, {kept:,} kernel weights kept; "
            f"written in {seconds:.1f} s, round trip exact)")


if __name__ == "__main__":
  main()
