"""Sparse model files (optg_jax/export.py) and launch/export.py."""

import collections
import fcntl
import functools
import json
import math
import os
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import optg_jax as optg
from optg_jax.harness import checkpoints
from optg_jax import export
from optg_jax import models
from optg_jax import nm
import runs


def random_mask(rng, shape, sparsity):
  """A mask keeping exactly `size - round(sparsity * size)` entries."""
  size = int(np.prod(shape))
  keep = size - round(sparsity * size)
  flat = np.zeros(size, bool)
  flat[rng.permutation(size)[:keep]] = True
  return flat.reshape(shape)


def small_tree(rng, dtype=np.float32):
  """A Flax-like params tree: convs, a dense head, biases, BatchNorm."""

  def normal(*shape):
    return rng.standard_normal(shape).astype(dtype)

  return {
      "conv_init": {"kernel": normal(3, 3, 3, 16)},
      "bn_init": {"scale": normal(16), "bias": normal(16)},
      "blocks": [{"conv": {"kernel": normal(3, 3, 16, 16)}},
                 {"conv": {"kernel": normal(1, 1, 16, 32)}}],
      "head": {"kernel": normal(32, 10), "bias": normal(10)},
  }


def unstructured_masks(rng, params, sparsity=0.9):
  return jax.tree.map(
      lambda x: random_mask(rng, x.shape, sparsity) if x.ndim >= 2 else None,
      params)


def manifest_of(path):
  with np.load(path, allow_pickle=False) as data:
    return json.loads(zlib.decompress(data["manifest"].tobytes()))


def layouts(path):
  """`{leaf path: layout}` of an exported file."""
  return {leaf["path"]: leaf["layout"]
          for leaf in manifest_of(path)["leaves"]}


def assert_round_trip(params, masks, loaded_params, loaded_masks):
  """Every loaded leaf is the masked param, bit for bit, in its dtype."""
  is_none = lambda x: x is None
  assert (jax.tree.structure(loaded_masks, is_leaf=is_none) ==
          jax.tree.structure(masks, is_leaf=is_none))
  assert jax.tree.structure(loaded_params) == jax.tree.structure(params)
  flat_masks = jax.tree.leaves(masks, is_leaf=is_none)
  flat_loaded_masks = jax.tree.leaves(loaded_masks, is_leaf=is_none)
  for param, mask, loaded, loaded_mask in zip(
      jax.tree.leaves(params), flat_masks, jax.tree.leaves(loaded_params),
      flat_loaded_masks, strict=True):
    param = np.asarray(param)
    assert isinstance(loaded, np.ndarray)
    assert loaded.dtype == param.dtype and loaded.shape == param.shape
    if mask is None:
      assert loaded_mask is None
      expected = param
    else:
      mask = np.asarray(mask)
      assert loaded_mask.dtype == bool
      np.testing.assert_array_equal(loaded_mask, mask)
      expected = np.where(mask, param, np.zeros_like(param))
    # Bit for bit: compare the raw bytes (NaN, -0.0 and bfloat16 included).
    np.testing.assert_array_equal(
        loaded.view(f"u{loaded.dtype.itemsize}"),
        expected.view(f"u{expected.dtype.itemsize}"))


def test_unstructured_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  params = small_tree(rng)
  params["head"]["kernel"][0, :3] = [np.nan, -0.0, np.inf]
  masks = unstructured_masks(rng, params)
  masks["head"]["kernel"][0, :3] = True
  path = tmp_path / "model.npz"
  size = optg.export_sparse(params, masks, path)
  assert size == os.path.getsize(path)
  assert_round_trip(params, masks, *optg.load_sparse(path))
  assert layouts(path) == {
      "conv_init/kernel": "bitmap", "bn_init/scale": "dense",
      "bn_init/bias": "dense", "blocks/0/conv/kernel": "bitmap",
      "blocks/1/conv/kernel": "bitmap", "head/kernel": "bitmap",
      "head/bias": "dense"}
  assert os.listdir(tmp_path) == ["model.npz"]  # No temporary left.


@pytest.mark.parametrize("pattern, structure", [
    ("1:4", "auto"), ("2:4", "auto"), ("1:8", "auto"), ("4:8", "4:8")])
def test_nm_round_trip(tmp_path, pattern, structure):
  rng = np.random.default_rng(1)
  params = small_tree(rng)
  want = optg.NM.parse(pattern)
  scores = jax.tree.map(lambda x: x if x.ndim >= 2 else None, params)
  masks = jax.tree.map(
      lambda m: None if m is None else np.asarray(m),
      optg.nm_masks(scores, want.n, want.m, indivisible="dense"),
      is_leaf=lambda x: x is None)
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path, structure=structure)
  assert_round_trip(params, masks, *optg.load_sparse(path))
  found = layouts(path)
  assert found["conv_init/kernel"] == "all"  # 3 inputs: left dense.
  for leaf in ("blocks/0/conv/kernel", "blocks/1/conv/kernel",
               "head/kernel"):
    assert found[leaf] == "nm"
  head = [r for r in manifest_of(path)["leaves"]
          if r["path"] == "head/kernel"][0]
  assert (head["n"], head["m"], head["axis"]) == (want.n, want.m, 0)
  kept = 320 // want.m * want.n
  bits = {4: 2, 8: 3}[want.m]
  assert head["values"][0] == "values.float32" and head["values"][2] == kept
  assert head["bits"][0] == "bits"
  assert head["bits"][2] == math.ceil(kept * bits / 8)


def test_structure_argument(tmp_path):
  rng = np.random.default_rng(2)
  kernel = rng.standard_normal((64, 8)).astype(np.float32)
  mask = np.asarray(optg.nm_mask(kernel, 2, 4))
  params, masks = {"w": kernel}, {"w": mask}
  path = tmp_path / "model.npz"
  for structure, layout in [(None, "bitmap"), ("auto", "nm"),
                            (optg.NM(2, 4), "nm"), ("2:4", "nm"),
                            ("1:4", "bitmap"), (optg.NM(4, 8), "nm")]:
    optg.export_sparse(params, masks, path, structure=structure)
    assert layouts(path) == {"w": layout}, structure
    assert_round_trip(params, masks, *optg.load_sparse(path))
  # Found with m = 8: 1:8 and 2:8 as N:M; 4:8 (12 bits of indices for 8
  # entries) as a bitmap unless asked for; 3:4 likewise.
  for pattern, auto_layout in [("1:8", "nm"), ("2:8", "nm"),
                               ("4:8", "bitmap"), ("3:4", "bitmap")]:
    want = optg.NM.parse(pattern)
    mask = np.asarray(optg.nm_mask(kernel, want.n, want.m))
    if want.m == 8 and want.n > 1:  # Not also (n/2):4.
      assert not nm.is_nm(mask, want.n // 2, 4)
    masks = {"w": mask}
    for structure, layout in [("auto", auto_layout), (pattern, "nm")]:
      optg.export_sparse(params, masks, path, structure=structure)
      assert layouts(path) == {"w": layout}, (pattern, structure)
      assert_round_trip(params, masks, *optg.load_sparse(path))
      if layout == "nm":
        record = manifest_of(path)["leaves"][0]
        assert (record["n"], record["m"]) == (want.n, want.m)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16,
                                   np.float64])
def test_narrow_and_wide_dtypes(tmp_path, dtype):
  rng = np.random.default_rng(3)
  params = small_tree(rng, dtype)
  masks = unstructured_masks(rng, params)
  masks["blocks"][0] = {"conv": {"kernel": np.asarray(optg.nm_mask(
      params["blocks"][0]["conv"]["kernel"], 2, 4))}}
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path)
  assert layouts(path)["blocks/0/conv/kernel"] == "nm"
  loaded = optg.load_sparse(path)
  assert loaded[0]["head"]["kernel"].dtype == np.dtype(dtype)
  assert_round_trip(params, masks, *loaded)


def test_jax_arrays_and_bool_ints(tmp_path):
  rng = np.random.default_rng(4)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16),
                        small_tree(rng))
  masks = jax.tree.map(
      lambda m: None if m is None else jnp.asarray(m, jnp.int8),
      unstructured_masks(rng, params), is_leaf=lambda x: x is None)
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path)
  loaded_params, loaded_masks = optg.load_sparse(path)
  assert loaded_params["head"]["kernel"].dtype == ml_dtypes.bfloat16
  assert_round_trip(params, jax.tree.map(
      lambda m: None if m is None else np.asarray(m, bool), masks,
      is_leaf=lambda x: x is None), loaded_params, loaded_masks)


def test_unmasked_leaves_and_subtrees(tmp_path):
  rng = np.random.default_rng(5)
  params = small_tree(rng)
  masks = unstructured_masks(rng, params)
  masks["bn_init"] = None  # A None subtree: everything under it dense.
  masks["blocks"][1]["conv"]["kernel"] = None
  masks["head"]["kernel"] = np.ones((32, 10), bool)  # Keeps everything.
  masks["conv_init"]["kernel"] = np.zeros((3, 3, 3, 16), bool)  # Nothing.
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path)
  loaded_params, loaded_masks = optg.load_sparse(path)
  assert loaded_masks["bn_init"] == {"scale": None, "bias": None}
  masks["bn_init"] = {"scale": None, "bias": None}
  assert_round_trip(params, masks, loaded_params, loaded_masks)
  assert layouts(path)["head/kernel"] == "all"
  assert not np.any(loaded_params["conv_init"]["kernel"])
  # No masks at all: a dense export.
  optg.export_sparse(params, None, path)
  loaded_params, loaded_masks = optg.load_sparse(path)
  assert all(m is None for m in jax.tree.leaves(
      loaded_masks, is_leaf=lambda x: x is None))
  assert_round_trip(params, jax.tree.map(lambda _: None, params),
                    loaded_params, loaded_masks)


def test_containers_and_key_order_are_kept(tmp_path):
  params = {"z": (np.arange(4.0).reshape(2, 2), [np.float32(3.0)]),
            "a": {"b": np.ones((4, 4), np.int32)}}
  masks = {"z": (np.eye(2, dtype=bool), None), "a": None}
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path)
  loaded_params, loaded_masks = optg.load_sparse(path)
  assert list(loaded_params) == ["z", "a"]
  assert isinstance(loaded_params["z"], tuple)
  assert isinstance(loaded_params["z"][1], list)
  np.testing.assert_array_equal(loaded_params["z"][0], [[0.0, 0.0],
                                                        [0.0, 3.0]])
  assert loaded_params["z"][1][0] == 3.0
  assert loaded_params["z"][1][0].dtype == np.float32
  assert loaded_masks == {"z": (loaded_masks["z"][0], [None]),
                          "a": {"b": None}}


def test_atomic_write(tmp_path, monkeypatch):
  rng = np.random.default_rng(6)
  params = small_tree(rng)
  masks = unstructured_masks(rng, params)
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path)
  before = path.read_bytes()

  def broken_savez(*args, **kwargs):
    del args, kwargs
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(export.np, "savez", broken_savez)
  with pytest.raises(OSError, match="No space"):
    optg.export_sparse(params, None, path)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["model.npz"]
  monkeypatch.undo()
  with pytest.raises(FileNotFoundError):
    optg.export_sparse(params, masks, tmp_path / "missing" / "model.npz")
  assert os.listdir(tmp_path) == ["model.npz"]


def test_bad_inputs(tmp_path):
  rng = np.random.default_rng(7)
  params = small_tree(rng)
  masks = unstructured_masks(rng, params)
  path = tmp_path / "model.npz"
  cases = []
  wrong_shape = unstructured_masks(rng, params)
  wrong_shape["head"]["kernel"] = np.ones((10, 32), bool)
  cases.append((wrong_shape, r"'head/kernel'.*shape \(10, 32\)"))
  missing = unstructured_masks(rng, params)
  del missing["head"]
  cases.append((missing, r"masks at '\(root\)' have keys"))
  extra = unstructured_masks(rng, params)
  extra["blocks"].append(None)
  cases.append((extra, r"masks at 'blocks'.*length 2"))
  as_dict = unstructured_masks(rng, params)
  as_dict["blocks"] = {"0": None, "1": None}
  cases.append((as_dict, r"masks at 'blocks'"))
  not_bool = unstructured_masks(rng, params)
  not_bool["head"]["kernel"] = rng.standard_normal((32, 10))
  cases.append((not_bool, r"mask of 'head/kernel' must be bool"))
  on_container = unstructured_masks(rng, params)
  on_container["head"] = np.ones((32, 10), bool)
  cases.append((on_container, r"masks at 'head' must be a dict"))
  for bad_masks, message in cases:
    with pytest.raises(ValueError, match=message):
      optg.export_sparse(params, bad_masks, path)
  with pytest.raises(ValueError, match=r"'head/kernel' is a str"):
    optg.export_sparse({"head": {"kernel": "weights"}}, None, path)
  with pytest.raises(ValueError, match="non-string key 3"):
    optg.export_sparse({3: np.ones(2)}, None, path)
  with pytest.raises(ValueError, match="'x' is a set"):
    optg.export_sparse({"x": {1, 2}}, None, path)
  point = collections.namedtuple("Point", "x y")
  with pytest.raises(ValueError, match="'x' is a Point"):
    optg.export_sparse({"x": point(np.ones(2), np.ones(2))}, None, path)
  with pytest.raises(ValueError, match="cannot be exported"):
    optg.export_sparse({"x": np.array(["a"])}, None, path)
  with pytest.raises(ValueError, match="like '2:4'"):
    optg.export_sparse(params, masks, path, structure="2/4")
  with pytest.raises(ValueError, match="structure must be"):
    optg.export_sparse(params, masks, path, structure=4)
  assert not os.listdir(tmp_path)
  # Files that are not sparse models.
  np.savez(tmp_path / "plain.npz", x=np.ones(3))
  with pytest.raises(ValueError, match="no manifest"):
    optg.load_sparse(tmp_path / "plain.npz")
  np.save(tmp_path / "array.npy", np.ones(3))
  with pytest.raises(ValueError, match="not an .npz archive"):
    optg.load_sparse(tmp_path / "array.npy")
  np.savez(tmp_path / "other.npz", manifest=np.frombuffer(
      zlib.compress(b'{"format": "other"}'), np.uint8))
  with pytest.raises(ValueError, match="not an optg_jax sparse file"):
    optg.load_sparse(tmp_path / "other.npz")
  optg.export_sparse(params, masks, path)
  with np.load(path) as data:
    arrays = dict(data)
  assert sorted(arrays) == ["bits", "manifest", "values.float32"]
  cut = {**arrays, "values.float32": arrays["values.float32"][:5]}
  np.savez(tmp_path / "cut.npz", **cut)
  with pytest.raises(ValueError, match="'conv_init/kernel' has .* expected"):
    optg.load_sparse(tmp_path / "cut.npz")
  cut = {**arrays, "bits": arrays["bits"].astype(np.int16)}
  np.savez(tmp_path / "cut.npz", **cut)
  with pytest.raises(ValueError, match="bits has dtype int16"):
    optg.load_sparse(tmp_path / "cut.npz")


def _rewritten(path, out, change_arrays=None, change_manifest=None,
               redigest=False):
  """`path` saved again as `out` with valid zip CRCs, after the changes."""
  with np.load(path) as data:
    arrays = dict(data)
  manifest = json.loads(zlib.decompress(arrays["manifest"].tobytes()))
  if change_arrays:
    change_arrays(arrays)
  if change_manifest:
    change_manifest(manifest)
    if redigest:  # A forger who recomputes the manifest's own digest.
      manifest["digest"] = export._manifest_digest(manifest)  # pylint: disable=protected-access
  arrays["manifest"] = np.frombuffer(zlib.compress(json.dumps(
      manifest).encode()), np.uint8)
  np.savez(out, **arrays)
  return out


def test_damaged_or_altered_files_are_refused(tmp_path):
  rng = np.random.default_rng(5)
  params = {"params": small_tree(rng), "batch_stats": {
      "bn": {"mean": rng.standard_normal(8).astype(np.float32)}}}
  masks = {"params": unstructured_masks(rng, params["params"]),
           "batch_stats": None}
  path = tmp_path / "model.npz"
  optg.export_sparse(params, masks, path, metadata={"step": 7})
  assert optg.sparse_metadata(path) == {"step": 7}
  raw = path.read_bytes()
  cases = []
  # Truncated, and bits flipped in the middle of the archive.
  (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
  cases.append((tmp_path / "cut.npz", "is not an optg_jax sparse file or is "
                "damaged|is damaged"))
  for seed in range(3):
    flipped = bytearray(raw)
    for i in np.random.default_rng(seed).integers(200, len(raw) - 200, 16):
      flipped[i] ^= 0x5A
    name = tmp_path / f"flip{seed}.npz"
    name.write_bytes(bytes(flipped))
    cases.append((name, "damaged|does not match its SHA-256|not "
                  "zlib-compressed"))

  def nan(arrays):
    arrays["values.float32"] = arrays["values.float32"].copy()
    arrays["values.float32"][3] = np.nan

  def doubled(arrays):
    arrays["values.float32"] = 2 * arrays["values.float32"]

  cases.append((_rewritten(path, tmp_path / "nan.npz", nan),
                "does not match its SHA-256"))
  cases.append((_rewritten(path, tmp_path / "double.npz", doubled),
                "does not match its SHA-256"))

  def swap(manifest):
    leaves = manifest["leaves"]
    leaves[0]["values"], leaves[1]["values"] = (leaves[1]["values"],
                                                leaves[0]["values"])

  def moved(manifest):  # batch_stats/bn under params.
    tree = manifest["tree"]
    params_node, stats_node = tree["items"]
    params_node["keys"].append("bn")
    params_node["items"].append(stats_node["items"][0])
    stats_node["keys"], stats_node["items"] = [], []

  for change in (swap, moved):
    cases.append((_rewritten(path, tmp_path / f"{change.__name__}.npz",
                             change_manifest=change),
                  "the manifest does not match its SHA-256"))
  cases.append((_rewritten(path, tmp_path / "swap2.npz",
                           change_manifest=swap, redigest=True),
                "expected|bad reference|does not match its SHA-256"))
  cases.append((_rewritten(path, tmp_path / "moved2.npz",
                           change_manifest=moved, redigest=True),
                r"'batch_stats/bn/mean' sits at 'params/bn/mean' in the tree"))
  # NaN where the exporter recorded none, with a matching digest.

  def nan_redigested(arrays):
    nan(arrays)

  def fix_digest(manifest):
    leaf = manifest["leaves"][0]
    loaded, leaf_mask = params["params"]["conv_init"]["kernel"].copy(), (
        masks["params"]["conv_init"]["kernel"])
    stored = np.where(leaf_mask, loaded, 0).astype(np.float32)
    stored[np.unravel_index(np.flatnonzero(leaf_mask)[3],
                            stored.shape)] = np.nan
    leaf["sha256"] = export.leaf_digest(
        leaf["path"], "float32", stored, leaf_mask)

  cases.append((_rewritten(path, tmp_path / "nan2.npz", nan_redigested,
                           fix_digest, redigest=True),
                "holds 1 NaN or infinite values; the exporter recorded 0"))
  for name, message in cases:
    with pytest.raises(ValueError, match=message):
      optg.load_sparse(name)
  # Version 1 files (no digests) are refused, naming why.
  def old(manifest):
    manifest["version"] = 1
  with pytest.raises(ValueError, match="exported by an earlier release"):
    optg.load_sparse(_rewritten(path, tmp_path / "v1.npz",
                                change_manifest=old))
  # And the file itself loads.
  loaded, _ = optg.load_sparse(path)
  np.testing.assert_array_equal(loaded["batch_stats"]["bn"]["mean"],
                                params["batch_stats"]["bn"]["mean"])


def test_recorded_non_finite_values_load(tmp_path):
  params = {"w": np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)}
  path = tmp_path / "nan.npz"
  optg.export_sparse(params, {"w": np.array([[True, True], [True, False]])},
                     path)
  loaded, masks = optg.load_sparse(path)
  np.testing.assert_array_equal(loaded["w"], [[1.0, np.nan], [np.inf, 0.0]])


def test_bcoo_product_equals_the_masked_dense_product():
  from jax.experimental import sparse  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(8)
  x = jnp.asarray(rng.standard_normal((5, 64)), jnp.float32)
  kernel = rng.standard_normal((64, 32)).astype(np.float32)
  for mask in (random_mask(rng, kernel.shape, 0.9),
               np.asarray(optg.nm_mask(kernel, 2, 4))):
    kernel[mask & (rng.random(kernel.shape) < 0.1)] = 0.0  # Kept zeros.
    matrix = optg.to_bcoo(kernel, mask)
    assert isinstance(matrix, sparse.BCOO)
    assert matrix.shape == (64, 32) and matrix.dtype == jnp.float32
    assert matrix.nse == mask.sum()
    np.testing.assert_array_equal(matrix.todense(),
                                  np.where(mask, kernel, 0))
    dense = np.asarray(x) @ (kernel * mask)
    product = x @ matrix
    assert isinstance(product, jax.Array) and product.shape == (5, 32)
    np.testing.assert_allclose(product, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sparse.bcoo_dot_general(matrix, x.T,
                                dimension_numbers=(([0], [0]), ([], []))).T,
        dense, rtol=1e-5, atol=1e-5)
  # A conv kernel as an im2col matrix.
  conv = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
  conv_mask = random_mask(rng, conv.shape, 0.8)
  matrix = optg.to_bcoo(conv.reshape(-1, 16), conv_mask.reshape(-1, 16))
  np.testing.assert_array_equal(matrix.todense(),
                                np.where(conv_mask, conv, 0).reshape(-1, 16))
  with pytest.raises(ValueError, match="2-D kernel"):
    optg.to_bcoo(conv, conv_mask)
  with pytest.raises(ValueError, match=r"shape \(32, 64\)"):
    optg.to_bcoo(kernel, np.ones((32, 64), bool))


@pytest.fixture(scope="module")
def resnet50_params():
  """ResNet-50 (ImageNet) params of random values, shapes from the model."""
  model = models.create("resnet50", 1000)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))["params"]
  rng = np.random.default_rng(9)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape, np.float32), shapes)


@pytest.mark.long
def test_resnet50_file_sizes(tmp_path, resnet50_params):
  params = resnet50_params
  leaves = jax.tree.leaves(params)
  dense_bytes = 4 * sum(x.size for x in leaves)
  assert sum(x.size for x in leaves) > 25_000_000
  # 90% unstructured over the kernels, the exact global count.
  kernels = [x for x in leaves if x.ndim >= 2]
  rng = np.random.default_rng(10)
  flat = random_mask(rng, (sum(x.size for x in kernels),), 0.9)
  pieces = iter(np.split(flat, np.cumsum([x.size for x in kernels])[:-1]))
  masks = jax.tree.map(
      lambda x: next(pieces).reshape(x.shape) if x.ndim >= 2 else None, params)
  path = tmp_path / "unstructured.npz"
  size = optg.export_sparse(params, masks, path)
  assert size <= 0.20 * dense_bytes, size / dense_bytes
  # 2:4 on every kernel whose inputs divide by 4 (the stem stays dense).
  scores = jax.tree.map(lambda x: x if x.ndim >= 2 else None, params)
  masks = optg.nm_masks(scores, 2, 4, indivisible="dense")
  masks = jax.tree.map(lambda m: None if m is None else np.asarray(m), masks,
                       is_leaf=lambda x: x is None)
  path = tmp_path / "nm.npz"
  size = optg.export_sparse(params, masks, path)
  found = layouts(path)
  assert found["conv_init/kernel"] == "all"
  bound = 0
  for (key_path, x), m in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(masks, is_leaf=lambda x: x is None), strict=True):
    name = optg.path_to_str(key_path)
    if m is not None and not m.all():
      assert found[name] == "nm", name
      bound += x.size * (0.5 * 4 + 0.25)  # 2 values and 2 x 2 bits per 4.
    else:
      bound += x.size * 4
  assert size <= bound + 64 * 1024, (size, bound)
  loaded_params, loaded_masks = optg.load_sparse(path)
  assert_round_trip(params, masks, loaded_params, loaded_masks)


# ---------------------------------------------------------------------------
# launch/export.py


def run_export(*args):
  return subprocess.run(
      [sys.executable, os.path.join(runs.ROOT, "launch", "export.py"), *args],
      cwd=runs.ROOT, env=runs.device_env(), capture_output=True, text=True,
      timeout=300)


def test_launch_export_refuses_a_workdir_without_a_run(tmp_path):
  output = tmp_path / "out.npz"
  result = run_export(f"--workdir={tmp_path / 'nothing'}",
                      f"--output={output}")
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      f"error: {tmp_path / 'nothing'} has no config.json: not the workdir "
      "of a run"]
  workdir = tmp_path / "empty"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(
      runs.tiny_config().to_dict()))
  result = run_export(f"--workdir={workdir}", f"--output={output}")
  assert result.returncode == 2, result.stderr
  assert len(result.stderr.splitlines()) == 1
  assert result.stderr.startswith(f"error: {workdir} has no checkpoint")
  assert sorted(os.listdir(tmp_path)) == ["empty"]
  assert os.listdir(workdir) == ["config.json"]
  # A run holding the workdir: refused before anything is read.
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  with open(workdir / checkpoints.LOCK_FILE, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("host h, pid 1\n")
    lock.flush()
    result = run_export(f"--workdir={workdir}", f"--output={output}")
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      f"error: workdir {workdir} is in use by a run (host h, pid 1); "
      "export it when the run has ended"]
  # Bad outputs and structures.
  for args, message in [
      ([f"--output={tmp_path}"], "is a directory"),
      ([f"--output={tmp_path / 'no' / 'out.npz'}"], "does not exist"),
      ([f"--output={output}", "--structure=2-4"], "--structure: N:M")]:
    result = run_export(f"--workdir={workdir}", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == ["empty"]


def exported_matches_checkpoint(config, workdir, output):
  """The file holds the run's latest variables with the masks its last step
  trained with (what the library's `trained_params` gives), and their
  logits."""
  from optg_jax import train  # pylint: disable=g-import-not-at-top
  variables, masks = optg.load_sparse(output)
  run = train.Run(config)
  state = jax.device_get(train.restore_latest(
      train.checkpoint_manager(workdir, config), run.initial_state()))
  dense = config.method == "dense"
  trained_masks = None if dense else optg.trained_masks(state.opt_state)
  expected = {"params": state.params if dense else optg.trained_params(
      state.params, state.opt_state)}
  expected_masks = {"params": trained_masks}
  if state.batch_stats:
    expected["batch_stats"] = state.batch_stats
    expected_masks["batch_stats"] = jax.tree.map(lambda _: None,
                                                 state.batch_stats)
  if trained_masks is None:
    expected_masks = jax.tree.map(lambda _: None, expected)
  assert_round_trip(expected, expected_masks, variables, masks)
  # The file is a model: its logits are those of the masked run.
  images = np.random.default_rng(11).random((4, 8, 8, 1), np.float32)
  apply = jax.jit(functools.partial(run.model.apply, train=False))
  np.testing.assert_array_equal(apply(variables, images),
                                apply(expected, images))
  return state, trained_masks


@pytest.mark.long
def test_launch_export_of_a_run(tmp_path):
  """A whole run with a refresh once an epoch (an MLP: quick to compile),
  then the export: the masks the last epoch trained with, those the refresh
  after step 46 drew, as `trained_params` gives them."""
  from optg_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = runs.tiny_config(model="lenet_300_100", update_every_steps=0,
                            checkpoint_every_steps=23)
  summary = train.train_and_evaluate(config, workdir)
  output = tmp_path / "model.npz"
  result = run_export(f"--workdir={workdir}", f"--output={output}")
  assert result.returncode == 0, result.stderr
  size = os.path.getsize(output)
  lines = result.stdout.splitlines()
  assert lines[0] == f"Exported step 69 of {workdir} to {output}"
  assert lines[1].split() == ["file:", f"{size:,}", "bytes"]
  assert "dense float32:" in lines[2] and "ratio:" in lines[3]
  assert "orbax" not in result.stderr  # Libraries' INFO lines are off.
  assert result.stderr.strip() == ""  # Nor TensorFlow's native lines.
  state, masks = exported_matches_checkpoint(config, workdir, output)
  assert int(state.step) == 69
  manager = train.checkpoint_manager(workdir, config)
  drawn_after_46 = optg.get_masks(checkpoints.restore(
      manager, 46, train.Run(config).initial_state()).opt_state)
  for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(drawn_after_46)):
    np.testing.assert_array_equal(a, b)
  kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
  assert kept == summary["kept_params"]
  assert summary["sparsity"] == pytest.approx(0.7993, abs=1e-4)
  assert optg.sparse_metadata(output) == {
      "workdir": workdir, "step": 69, "total_steps": 69, "finished": True,
      "masks": "trained"}

  # An existing output is refused unless --overwrite; it stays as it was.
  before = output.read_bytes()
  result = run_export(f"--workdir={workdir}", f"--output={output}")
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      f"error: --output {output} exists; pass --overwrite to replace it, or "
      "name another file"]
  assert output.read_bytes() == before
  result = run_export(f"--workdir={workdir}", f"--output={output}",
                      "--overwrite")
  assert result.returncode == 0, result.stderr
  # An edited config.json is named as such, not blamed on the checkpoint.
  record = json.load(open(os.path.join(workdir, "config.json")))
  record["learning_rate"] = 0.5
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(record, f)
  other = tmp_path / "other.npz"
  result = run_export(f"--workdir={workdir}", f"--output={other}")
  assert result.returncode == 2
  assert len(result.stderr.splitlines()) == 1
  assert "learning_rate" in result.stderr
  assert "config.json edited after the run?" in result.stderr
  assert not other.exists()


@pytest.mark.long
def test_launch_export_keeps_batch_statistics(tmp_path):
  """A checkpoint of ResNet-20 (BatchNorm), saved without training."""
  from optg_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = runs.tiny_config(method="dense")
  run = train.Run(config)
  checkpoints.save(train.checkpoint_manager(workdir, config),
                   jax.device_get(run.initial_state()))
  checkpoints.write_config_record(workdir, config)
  output = tmp_path / "model.npz"
  # Step 0 of 69: an unfinished run, exported only when asked for.
  result = run_export(f"--workdir={workdir}", f"--output={output}",
                      "--structure=2:4")
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      f"error: the run in {workdir} is unfinished: its latest checkpoint is "
      "step 0 of 69; finish it (run its training command again), or pass "
      "--allow_unfinished to export step 0, labelled unfinished in the file"]
  assert not output.exists()
  result = run_export(f"--workdir={workdir}", f"--output={output}",
                      "--structure=2:4", "--allow_unfinished")
  assert result.returncode == 0, result.stderr
  assert "Exported step 0" in result.stdout
  assert optg.sparse_metadata(output)["finished"] is False
  exported_matches_checkpoint(config, workdir, output)
  assert set(layouts(output).values()) == {"dense"}
  assert manifest_of(output)["tree"]["keys"] == ["params", "batch_stats"]
