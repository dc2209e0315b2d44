"""The pieces of a sparse-model file (`optg_jax.export`): stored dtypes,
the flattened tree, packed bitmaps and N:M indices, the blobs, and each
leaf's record with its SHA-256 and count of non-finite values."""

import hashlib
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

from optg_jax import nm

PyTree = Any
Structure = Union[str, nm.NM, None]

# The group sizes `structure="auto"` recognises, tried in this order (a 2:4
# mask is also 4:8, and its 2-bit indices are the smaller). Of the patterns
# found, those whose indices are smaller than a bitmap (n * ceil(log2(m))
# <= m bits a group: 1:4, 2:4, 1:8, 2:8) are stored as N:M; 3:4 and 4:8
# masks take fewer bytes as bitmaps.
AUTO_GROUP_SIZES = (4, 8)

MANIFEST = "manifest"
_BITS = "bits"  # The packed bitmaps and N:M indices of all leaves.
_VALUES = "values."  # + the stored dtype: the values of all leaves.
# Storage layouts of a leaf.
_DENSE = "dense"  # No mask: the array as is.
_ALL = "all"  # A mask that keeps every entry: the array as is.
_BITMAP = "bitmap"  # Kept values (row-major) and the packed mask.
_NM = "nm"  # n values and n packed indices per group of m.
_LAYOUTS = (_DENSE, _ALL, _BITMAP, _NM)


# ---------------------------------------------------------------------------
# Dtypes.


def _storable(array: np.ndarray) -> Tuple[np.ndarray, str]:
  """The array in a dtype numpy saves natively, and its real dtype's name.

  Numeric dtypes are kept; `ml_dtypes` types (bfloat16, float8_*) are viewed
  as unsigned integers of the same width.
  """
  dtype = array.dtype
  if dtype.kind in "biufc":
    return array, dtype.name
  if _ml_dtype(dtype.name) == dtype:
    return array.view(np.dtype(f"uint{8 * dtype.itemsize}")), dtype.name
  raise ValueError(f"dtype {dtype} cannot be exported (numeric arrays only)")


def _ml_dtype(name: str) -> Optional[np.dtype]:
  """The `ml_dtypes` dtype called `name`, or None."""
  candidate = getattr(ml_dtypes, name, None)
  if not isinstance(candidate, type):
    return None
  try:
    return np.dtype(candidate)
  except TypeError:
    return None


def _dtype_named(name: str) -> np.dtype:
  """The dtype a manifest names (numeric or `ml_dtypes`)."""
  dtype = _ml_dtype(name) if isinstance(name, str) else None
  if dtype is None:
    try:
      dtype = np.dtype(name)
    except (TypeError, ValueError):
      dtype = None
    if dtype is None or dtype.kind not in "biufc":
      raise ValueError(f"sparse file: unknown dtype {name!r}")
  return dtype


def _restored(stored: np.ndarray, name: str) -> np.ndarray:
  """Undoes `_storable`."""
  dtype = _dtype_named(name)
  if stored.dtype == dtype:
    return stored
  if stored.dtype.itemsize != dtype.itemsize or stored.dtype.kind != "u":
    raise ValueError(f"sparse file: values stored as {stored.dtype} for "
                     f"dtype {name}")
  return stored.view(dtype)


# ---------------------------------------------------------------------------
# The tree.


def _is_array(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic)) or (
      hasattr(x, "__array__") and hasattr(x, "shape") and
      hasattr(x, "dtype"))


def _shown(path: List[str]) -> str:
  return "/".join(path) or "(root)"


def flatten(params: PyTree, masks: PyTree, path: List[str],
             leaves: List[Tuple[str, np.ndarray, Optional[np.ndarray]]]):
  """The manifest node of `params`; appends `(path, array, mask)` leaves.

  A `None` mask over a container leaves every array under it unmasked.
  """
  where = _shown(path)
  if isinstance(params, Mapping):
    if masks is not None and not isinstance(masks, Mapping):
      raise ValueError(f"masks at '{where}' must be a dict or None like the "
                       f"params, got {type(masks).__name__}")
    for key in params:
      if not isinstance(key, str):
        raise ValueError(f"params at '{where}' have a non-string key {key!r}")
    if masks is not None and set(masks) != set(params):
      raise ValueError(f"masks at '{where}' have keys "
                       f"{sorted(map(str, masks))}, the params "
                       f"{sorted(params)}")
    items = [flatten(value, None if masks is None else masks[key],
                      path + [key], leaves)
             for key, value in params.items()]
    return {"kind": "dict", "keys": list(params), "items": items}
  if type(params) in (list, tuple):  # Not a NamedTuple: it would be lost.
    kind = type(params).__name__
    if masks is not None and (not isinstance(masks, (list, tuple)) or
                              len(masks) != len(params)):
      raise ValueError(f"masks at '{where}' must be None or a sequence of "
                       f"length {len(params)} like the params")
    items = [flatten(value, None if masks is None else masks[i],
                      path + [str(i)], leaves)
             for i, value in enumerate(params)]
    return {"kind": kind, "items": items}
  if params is None:
    if masks is not None:
      raise ValueError(f"masks at '{where}': a mask for a None param")
    return {"kind": "none"}
  if not _is_array(params):
    raise ValueError(f"params at '{where}' is a {type(params).__name__}; "
                     "only nested dicts, lists and tuples of arrays can be "
                     "exported")
  if masks is not None and not _is_array(masks):
    raise ValueError(f"mask of '{where}' is a {type(masks).__name__}, not an "
                     "array or None")
  leaves.append((where, np.asarray(params),
                 None if masks is None else np.asarray(masks)))
  return {"kind": "leaf", "id": len(leaves) - 1}


def leaf_paths(node: Dict[str, Any], path: List[str],
                out: Dict[int, str]) -> Dict[int, str]:
  """`{leaf id: the path its place in the tree gives it}`."""
  kind = node.get("kind") if isinstance(node, dict) else None
  if kind == "dict":
    for key, item in zip(node["keys"], node["items"], strict=True):
      leaf_paths(item, path + [str(key)], out)
  elif kind in ("list", "tuple"):
    for i, item in enumerate(node["items"]):
      leaf_paths(item, path + [str(i)], out)
  elif kind == "leaf":
    out[node.get("id")] = _shown(path)
  return out


def unflatten(node: Dict[str, Any], leaves: List[Any]) -> PyTree:
  """Rebuilds the tree of a manifest node from the leaves."""
  kind = node.get("kind") if isinstance(node, dict) else None
  if kind == "dict":
    return {key: unflatten(item, leaves)
            for key, item in zip(node["keys"], node["items"], strict=True)}
  if kind in ("list", "tuple"):
    items = [unflatten(item, leaves) for item in node["items"]]
    return items if kind == "list" else tuple(items)
  if kind == "none":
    return None
  if kind == "leaf" and node.get("id") in range(len(leaves)):
    return leaves[node["id"]]
  raise ValueError(f"sparse file: bad tree node {node!r:.100}")


# ---------------------------------------------------------------------------
# Masks.


def bool_mask(where: str, array: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The mask as bool, checked against its leaf."""
  if mask.shape != array.shape:
    raise ValueError(f"mask of '{where}' has shape {mask.shape}, the param "
                     f"{array.shape}")
  if mask.dtype == bool:
    return mask
  if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
    raise ValueError(f"mask of '{where}' must be bool (or 0/1), got dtype "
                     f"{mask.dtype}")
  return mask.astype(bool)


def parse_structure(structure: Structure) -> Union[str, nm.NM, None]:
  if structure is None or isinstance(structure, nm.NM):
    return structure
  if structure == "auto":
    return "auto"
  if isinstance(structure, str):
    return nm.NM.parse(structure)
  raise ValueError(f"structure must be 'auto', None, an NM or an 'N:M' "
                   f"string, got {structure!r}")


def _detected(mask: np.ndarray, structure) -> Optional[Tuple[nm.NM, int]]:
  """The N:M pattern to store `mask` with, and its axis; None: a bitmap."""
  if structure is None or mask.ndim not in (2, 3, 4):
    return None
  axis = nm.reduction_axis(mask.shape)
  if isinstance(structure, nm.NM):
    if nm.is_nm(mask, structure.n, structure.m, axis):
      return structure, axis
    return None
  for m in AUTO_GROUP_SIZES:
    if mask.shape[axis] % m or not mask.size:
      continue
    counts = nm.group_counts(mask, m, axis)
    n = int(counts.flat[0])
    if 0 < n < m and np.all(counts == n):
      if n * _index_bits(m) <= m:
        return nm.NM(n, m), axis
      return None
  return None


def _index_bits(m: int) -> int:
  """Bits of an in-group index: `ceil(log2(m))`."""
  return max(1, (m - 1).bit_length())


def _pack_indices(indices: np.ndarray, m: int) -> np.ndarray:
  """Packs indices in [0, m) into `_index_bits(m)` bits each, big-endian."""
  bits = _index_bits(m)
  shifts = np.arange(bits - 1, -1, -1)
  flat = indices.reshape(-1, 1).astype(np.int64)
  return np.packbits(((flat >> shifts) & 1).astype(np.uint8).reshape(-1))


def _unpack_indices(packed: np.ndarray, count: int, m: int) -> np.ndarray:
  bits = _index_bits(m)
  unpacked = np.unpackbits(packed, count=count * bits).reshape(count, bits)
  weights = np.int64(1) << np.arange(bits - 1, -1, -1)
  return unpacked.astype(np.int64) @ weights


def _grouped(array: np.ndarray, axis: int, m: int) -> np.ndarray:
  """`array` with `axis` last, split into groups: (..., groups, m)."""
  moved = np.moveaxis(array, axis, -1)
  return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def _ungrouped(grouped: np.ndarray, axis: int) -> np.ndarray:
  flat = grouped.reshape(grouped.shape[:-2] + (-1,))
  return np.moveaxis(flat, -1, axis)


# ---------------------------------------------------------------------------
# Blobs: the leaves' arrays concatenated, a few zip entries in all.


class BlobWriter:
  """Concatenates 1-D arrays by kind and dtype; hands out references.

  A zip entry and its `.npy` header cost some 300 bytes, more than a small
  leaf itself, so the leaves share a few arrays: the packed bits ("bits")
  and one array of values per stored dtype ("values.float32", ...). A leaf
  refers to its part as `[name, offset, count]`.
  """

  def __init__(self):
    self._parts = {}
    self._sizes = {}

  def add(self, array: np.ndarray, bits: bool = False) -> list:
    flat = np.ascontiguousarray(array).reshape(-1)
    name = _BITS if bits else f"{_VALUES}{flat.dtype.name}"
    offset = self._sizes.get(name, 0)
    self._parts.setdefault(name, []).append(flat)
    self._sizes[name] = offset + flat.size
    return [name, offset, int(flat.size)]

  def arrays(self) -> Dict[str, np.ndarray]:
    return {name: np.concatenate(parts) for name, parts in self._parts.items()}


class BlobReader:
  """Resolves the references of `BlobWriter` in an open `.npz`."""

  def __init__(self, data):
    self._data = data
    self._loaded = {}

  def get(self, reference, where: str, what: str, count: int) -> np.ndarray:
    """The `count` entries `reference` points at, checked."""
    valid = (isinstance(reference, list) and len(reference) == 3 and
             isinstance(reference[0], str) and
             all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                 for x in reference[1:]))
    if not valid or reference[0] not in self._data.files or (
        reference[0] == _BITS) != (what == "bits"):
      raise ValueError(f"sparse file: leaf '{where}' has a bad reference to "
                       f"its {what}")
    name, offset, size = reference
    if name not in self._loaded:
      self._loaded[name] = self._data[name]
    blob = self._loaded[name]
    if blob.ndim != 1 or offset + size > blob.size or size != count:
      raise ValueError(f"sparse file: leaf '{where}' has {size} {what} at "
                       f"{offset} of {name} ({blob.size} in all), expected "
                       f"{count}")
    if what == "bits" and blob.dtype != np.uint8:
      raise ValueError(f"sparse file: {name} has dtype {blob.dtype}")
    return blob[offset:offset + size]


# ---------------------------------------------------------------------------
# Encoding and decoding one leaf.


def leaf_digest(where: str, dtype_name: str, stored: np.ndarray,
                 mask: Optional[np.ndarray]) -> str:
  """SHA-256 of a leaf as it loads: path, dtype, shape, the stored bytes of
  the param (pruned entries zero) and the mask."""
  h = hashlib.sha256()
  h.update(json.dumps([where, dtype_name, list(stored.shape),
                       mask is not None]).encode())
  h.update(np.ascontiguousarray(stored).tobytes())
  if mask is not None:
    h.update(np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes())
  return h.hexdigest()


def _non_finite(param: np.ndarray) -> int:
  """How many entries of a floating-point array are NaN or infinite."""
  if param.dtype.kind in "iub":
    return 0
  return int(np.count_nonzero(~np.isfinite(param.astype(np.float64))))


def encode(where: str, array: np.ndarray, mask, structure,
            blobs: BlobWriter) -> Dict[str, Any]:
  """Adds the leaf's arrays to `blobs`; returns its manifest record."""
  record = _encode_layout(where, array, mask, structure, blobs)
  stored, dtype_name = _storable(array)
  if mask is not None:
    mask = bool_mask(where, array, mask)
    stored = np.where(mask, stored, np.zeros((), stored.dtype))
    kept = array[mask]
  else:
    kept = array
  record["non_finite"] = _non_finite(kept)
  record["sha256"] = leaf_digest(where, dtype_name, stored, mask)
  return record


def _encode_layout(where: str, array: np.ndarray, mask, structure,
                   blobs: BlobWriter) -> Dict[str, Any]:
  """Adds the leaf's arrays to `blobs`; returns its layout record."""
  stored, dtype_name = _storable(array)
  record = {"path": where, "shape": list(array.shape), "dtype": dtype_name}
  if mask is None:
    record.update(layout=_DENSE, values=blobs.add(stored))
    return record
  mask = bool_mask(where, array, mask)
  if mask.all():
    record.update(layout=_ALL, values=blobs.add(stored))
    return record
  found = _detected(mask, structure)
  if found is None:
    record.update(layout=_BITMAP, values=blobs.add(stored[mask]),
                  bits=blobs.add(np.packbits(mask.reshape(-1)), bits=True))
    return record
  pattern, axis = found
  grouped_mask = _grouped(mask, axis, pattern.m)
  # The kept positions of each group, ascending (False sorts first in ~mask).
  indices = np.argsort(~grouped_mask, axis=-1, kind="stable")[
      ..., :pattern.n]
  values = np.take_along_axis(_grouped(stored, axis, pattern.m), indices,
                              axis=-1)
  record.update(layout=_NM, n=pattern.n, m=pattern.m, axis=axis,
                values=blobs.add(values),
                bits=blobs.add(_pack_indices(indices, pattern.m), bits=True))
  return record


def _field(record, key, kind=int):
  value = record.get(key)
  if not isinstance(value, kind) or isinstance(value, bool):
    raise ValueError(f"sparse file: leaf '{record.get('path')}' has a bad "
                     f"{key!r}")
  return value


def decode(record: Dict[str, Any], blobs: BlobReader
            ) -> Tuple[np.ndarray, Any]:
  """The `(param, mask)` of a leaf, checked against its digest."""
  param, mask = _decode_layout(record, blobs)
  where = record.get("path")
  stored, dtype_name = _storable(param)
  if leaf_digest(where, dtype_name, stored, mask) != record.get("sha256"):
    raise ValueError(f"sparse file: leaf '{where}' does not match its "
                     "SHA-256 (its values, mask, shape, dtype or path were "
                     "altered)")
  found = _non_finite(param if mask is None else param[mask])
  if found != record.get("non_finite"):
    raise ValueError(f"sparse file: leaf '{where}' holds {found} NaN or "
                     f"infinite values; the exporter recorded "
                     f"{record.get('non_finite')!r}")
  return param, mask


def _decode_layout(record: Dict[str, Any], blobs: BlobReader
                   ) -> Tuple[np.ndarray, Any]:
  """The `(param, mask)` a leaf's layout record describes."""
  where = record.get("path")
  shape = tuple(_field(record, "shape", list))
  if not all(isinstance(d, int) and d >= 0 for d in shape):
    raise ValueError(f"sparse file: leaf '{where}' has a bad shape")
  layout = record.get("layout")
  if layout not in _LAYOUTS:
    raise ValueError(f"sparse file: leaf '{where}' has an unknown layout "
                     f"{layout!r}")
  size = math.prod(shape)
  dtype = record.get("dtype")
  if layout in (_DENSE, _ALL):
    values = blobs.get(record.get("values"), where, "values", size)
    param = _restored(values, dtype).reshape(shape).copy()
    return param, (None if layout == _DENSE else np.ones(shape, bool))
  if layout == _BITMAP:
    bitmap = blobs.get(record.get("bits"), where, "bits", (size + 7) // 8)
    mask = np.unpackbits(bitmap, count=size).astype(bool).reshape(shape)
    kept = int(mask.sum())
    values = _restored(blobs.get(record.get("values"), where, "values",
                                 kept), dtype)
    param = np.zeros(shape, values.dtype)
    param[mask] = values
    return param, mask
  n, m, axis = (_field(record, "n"), _field(record, "m"),
                _field(record, "axis"))
  if not 0 < n < m or not 0 <= axis < len(shape) or shape[axis] % m:
    raise ValueError(f"sparse file: leaf '{where}' has a bad N:M record")
  kept = size // m * n
  packed = blobs.get(record.get("bits"), where, "bits",
                     (kept * _index_bits(m) + 7) // 8)
  values = _restored(blobs.get(record.get("values"), where, "values", kept),
                     dtype)
  grouped_shape = _grouped(np.empty(shape, bool), axis, m).shape
  indices = _unpack_indices(packed, kept, m).reshape(
      grouped_shape[:-1] + (n,))
  if np.any(indices >= m) or np.any(np.diff(indices, axis=-1) <= 0):
    raise ValueError(f"sparse file: leaf '{where}' has bad N:M indices")
  grouped_param = np.zeros(grouped_shape, values.dtype)
  np.put_along_axis(grouped_param, indices,
                    values.reshape(grouped_shape[:-1] + (n,)), axis=-1)
  grouped_mask = np.zeros(grouped_shape, bool)
  np.put_along_axis(grouped_mask, indices, True, axis=-1)
  return _ungrouped(grouped_param, axis), _ungrouped(grouped_mask, axis)


