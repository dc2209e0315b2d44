"""Sparse models to ship: a compact file of the kept weights and its masks.

`export_sparse(params, masks, path)` writes one `.npz` file (numpy's zip of
arrays, read without pickle) holding, for every masked leaf, only the kept
values and the mask's positions:

- unstructured masks: the kept values in row-major order and the mask as a
  bitmap (`np.packbits`, one bit per entry);
- N:M masks (`optg_jax.nm`) along the kernel's reduction axis: the `n`
  kept values of each group of `m` and their in-group indices, packed in
  `ceil(log2(m))` bits each (2 bits for m = 4, the kind of metadata sparse
  tensor cores read);
- masks that keep everything: the values alone.

Leaves without a mask (biases, BatchNorm) are stored as they are. Values
keep their dtype bit for bit; bfloat16 and the other `ml_dtypes` types are
stored as unsigned integers of the same width. The leaves share a few
arrays (all packed bits in one, the values of each stored dtype in
another), so a small leaf costs its bytes and a manifest entry, not a zip
entry of its own. The manifest, zlib-compressed JSON in the uint8 array
"manifest" (`json.loads(zlib.decompress(npz["manifest"].tobytes()))`),
records the tree (nested dicts, lists and tuples) and each leaf's path,
shape, dtype, layout and place in the shared arrays.

`load_sparse(path)` gives back `(params, masks)`: numpy arrays, the params
with the pruned entries zero and the masks bool (None for unmasked leaves).
Every leaf's content (path, dtype, shape, values and mask) has its SHA-256
in the manifest and the manifest a digest of itself, so a damaged or
altered file (truncated, bits flipped, values rewritten, leaves swapped or
moved) is a `ValueError` naming what is wrong; so are NaN or Inf values the
exporter did not record. `sparse_metadata(path)` reads the dict the
exporter attached (`launch/export.py`: the run, its step, whether it was
finished).
`to_bcoo(kernel, mask)` turns a masked 2-D kernel into a
`jax.experimental.sparse.BCOO` matrix.

A float32 ResNet-50 takes 13% of its dense size at 90% unstructured
sparsity (0.4 byte of values and 0.125 byte of bitmap a weight) and 53% at
2:4 (benchmarks/export_size.py).
"""

import hashlib
import json
import os
import uuid
import zipfile
import zlib
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from optg_jax import nm
from optg_jax.export_format import BlobReader
from optg_jax.export_format import BlobWriter
from optg_jax.export_format import bool_mask
from optg_jax.export_format import decode
from optg_jax.export_format import encode
from optg_jax.export_format import flatten
from optg_jax.export_format import leaf_digest  # pylint: disable=unused-import
from optg_jax.export_format import leaf_paths
from optg_jax.export_format import MANIFEST
from optg_jax.export_format import parse_structure
from optg_jax.export_format import unflatten

PyTree = Any
Structure = Union[str, nm.NM, None]

FORMAT = "optg_jax.sparse"
# 2: every leaf carries the SHA-256 of its content and its count of
# non-finite values, the manifest a digest of itself and a `metadata` dict.
# Files of version 1 (no digests) are refused: their runs also shipped the
# masks of a refresh after the last step, which no step trained with.
VERSION = 2
# ---------------------------------------------------------------------------
# The API.


def _manifest_digest(manifest: Dict[str, Any]) -> str:
  """SHA-256 of the manifest's content, but for this digest itself."""
  content = {k: v for k, v in manifest.items() if k != "digest"}
  return hashlib.sha256(json.dumps(content, sort_keys=True,
                                   separators=(",", ":")).encode()).hexdigest()


def export_sparse(params: PyTree, masks: PyTree, path: Union[str, os.PathLike],
                  structure: Structure = "auto",
                  metadata: Optional[Mapping[str, Any]] = None) -> int:
  """Writes the masked params to one compact `.npz` file.

  For each leaf with a mask the file holds only the kept values (in their
  dtype, bit for bit) and the mask's positions: a bitmap, or for an N:M
  mask the in-group indices of the kept entries; leaves without a mask are
  stored whole. The file is written to a temporary file in the same
  directory and renamed onto `path`, so `path` is either the old file or
  the complete new one. `path` is used as given (no `.npz` is appended).
  Nothing is pickled.

  Args:
    params: nested dicts (str keys), lists and tuples of arrays (numpy or
      JAX, any numeric dtype including bfloat16), e.g. Flax params.
    masks: the params' structure with a bool (or 0/1) mask or `None` at each
      leaf; a `None` in place of a subtree leaves all of it unmasked, and
      `masks=None` exports the params dense. `optg.get_masks(opt_state)`
      gives this structure.
    path: the file to write.
    structure: how N:M masks are recognised: "auto" (default) stores a mask
      as N:M when every group of 4 (or else 8) entries along its kernel's
      `nm.reduction_axis` keeps the same number `n` and the indices take no
      more bits than a bitmap (1:4, 2:4, 1:8, 2:8; a 4:8 mask is smaller as
      a bitmap); an `nm.NM` (or an "N:M" string) stores the masks that have
      that pattern as N:M, whatever their size; None stores every mask as
      a bitmap.
    metadata: a dict of JSON values stored with the model (what it is, where
      it comes from); `sparse_metadata(path)` reads it back.

  Returns:
    The size of the file written, in bytes.

  Raises:
    ValueError: for a container other than dict, list or tuple, a masks
      tree that does not match the params, a mask whose shape differs from
      its leaf's or that is not bool (or 0/1), a non-numeric dtype, or a bad
      `structure`; the message names the leaf.
    OSError: the file cannot be written (nothing is left behind).
  """
  structure = parse_structure(structure)
  leaves = []
  tree = flatten(params, masks, [], leaves)
  blobs = BlobWriter()
  records = [encode(where, array, mask, structure, blobs)
             for where, array, mask in leaves]
  try:
    metadata = json.loads(json.dumps(dict(metadata or {})))
  except (TypeError, ValueError) as e:
    raise ValueError(f"metadata must hold JSON values: {e}") from None
  manifest = {"format": FORMAT, "version": VERSION, "tree": tree,
              "leaves": records, "metadata": metadata}
  manifest["digest"] = _manifest_digest(manifest)
  arrays = blobs.arrays()
  arrays[MANIFEST] = np.frombuffer(zlib.compress(
      json.dumps(manifest, separators=(",", ":")).encode(), 9), np.uint8)

  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(directory,
                           f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise
  return os.path.getsize(path)


def _read_manifest(data, where: str) -> Dict[str, Any]:
  """The checked manifest of an open `.npz`."""
  if MANIFEST not in data.files:
    raise ValueError(f"{where} is not an optg_jax sparse file (no manifest)")
  try:
    manifest = json.loads(zlib.decompress(data[MANIFEST].tobytes()))
  except (ValueError, zlib.error):
    raise ValueError(f"{where}: the manifest is not zlib-compressed "
                     "JSON") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(f"{where} is not an optg_jax sparse file")
  if manifest.get("version") == 1:
    raise ValueError(f"{where} was exported by an earlier release of "
                     "optg_jax (format version 1: no digests, and the masks "
                     "of a refresh after the run's last step, which no step "
                     "trained with); export the run again with this release")
  if manifest.get("version") != VERSION:
    raise ValueError(f"{where}: format version {manifest.get('version')!r}, "
                     f"this reader knows {VERSION}")
  if manifest.get("digest") != _manifest_digest(manifest):
    raise ValueError(f"{where}: the manifest does not match its SHA-256 "
                     "(the tree, a leaf's record or the metadata were "
                     "altered)")
  return manifest


def _opened(path: Union[str, os.PathLike]):
  """`np.load` of a sparse file; a file that is no zip is a ValueError."""
  where = os.fspath(path)
  try:
    data = np.load(where, allow_pickle=False)
  except (zipfile.BadZipFile, EOFError, ValueError) as e:
    raise ValueError(f"{where} is not an optg_jax sparse file or is "
                     f"damaged ({type(e).__name__}: {e})") from None
  if not hasattr(data, "files"):
    raise ValueError(f"{where} is not an optg_jax sparse file (not an .npz "
                     "archive)")
  return data


# What reading a damaged zip member raises, besides ValueError.
_DAMAGE = (zipfile.BadZipFile, EOFError, zlib.error, KeyError, TypeError,
           IndexError)


def load_sparse(path: Union[str, os.PathLike]) -> Tuple[PyTree, PyTree]:
  """Reads a file written by `export_sparse`, verified.

  Args:
    path: the file.

  Returns:
    `(params, masks)` as numpy arrays in the exported tree (dicts, lists,
    tuples): the params in their exported dtypes, kept entries bit for bit
    as exported and pruned entries zero; the masks bool, `None` where the
    export had no mask. `jax.device_put(params)` puts them on a device.

  Raises:
    ValueError: the file is not an `optg_jax` sparse file, or is damaged or
      altered: a truncated or corrupted archive, a leaf or manifest that
      does not match its SHA-256, NaN or infinite values the exporter did
      not record, a version this reader does not know (the message says
      which).
    OSError: the file cannot be read (missing, no permission).
  """
  where = os.fspath(path)
  data = _opened(path)
  try:
    with data:
      manifest = _read_manifest(data, where)
      records = manifest.get("leaves")
      if (not isinstance(records, list) or
          not all(isinstance(r, dict) for r in records)):
        raise ValueError(f"{where}: the manifest has no leaf list")
      blobs = BlobReader(data)
      decoded = [decode(record, blobs) for record in records]
      placed = leaf_paths(manifest.get("tree"), [], {})
      for i, record in enumerate(records):
        if placed.get(i) != record.get("path"):
          raise ValueError(f"{where}: leaf '{record.get('path')}' sits at "
                           f"'{placed.get(i)}' in the tree (moved)")
      params = unflatten(manifest.get("tree"), [p for p, _ in decoded])
      masks = unflatten(manifest.get("tree"), [m for _, m in decoded])
  except _DAMAGE as e:
    raise ValueError(f"{where} is damaged ({type(e).__name__}: "
                     f"{str(e)[:200]})") from None
  except ValueError as e:
    message = str(e)
    if message.startswith("sparse file:"):
      message = f"{where}:" + message[len("sparse file:"):]
    raise ValueError(message) from None
  return params, masks


def sparse_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
  """The `metadata` dict `export_sparse` stored in a file (verified).

  Raises:
    ValueError, OSError: as `load_sparse`.
  """
  where = os.fspath(path)
  data = _opened(path)
  try:
    with data:
      return dict(_read_manifest(data, where).get("metadata") or {})
  except _DAMAGE as e:
    raise ValueError(f"{where} is damaged ({type(e).__name__}: "
                     f"{str(e)[:200]})") from None


def to_bcoo(kernel, mask):
  """The masked 2-D kernel as a `jax.experimental.sparse.BCOO` matrix.

  The matrix stores exactly the kept entries (a kept weight that happens to
  be zero too), in row-major order, so `x @ to_bcoo(w, m)` equals
  `x @ (w * m)`. A conv kernel (H, W, I, O) becomes a matrix for an im2col
  product when reshaped, with its mask, to (H * W * I, O). Runs on concrete
  arrays (the number of entries depends on the mask), not under `jax.jit`.

  Args:
    kernel: a 2-D array (n_in, n_out).
    mask: a bool (or 0/1) array of the same shape.

  Returns:
    A BCOO matrix of shape (n_in, n_out) and the kernel's dtype.

  Raises:
    ValueError: if `kernel` is not 2-D or `mask` has another shape or is
      not bool (or 0/1).
  """
  from jax.experimental import sparse  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  kernel, mask = np.asarray(kernel), np.asarray(mask)
  if kernel.ndim != 2:
    raise ValueError(f"to_bcoo needs a 2-D kernel, got shape {kernel.shape}; "
                     "reshape a conv kernel to (H * W * I, O)")
  mask = bool_mask("kernel", kernel, mask)
  indices = np.argwhere(mask).astype(np.int32)
  return sparse.BCOO((jnp.asarray(kernel[mask]), jnp.asarray(indices)),
                     shape=kernel.shape, indices_sorted=True,
                     unique_indices=True)
