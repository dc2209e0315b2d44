"""Fashion-MNIST: 70,000 real 28x28 greyscale images of clothing, 10 classes.

Read from the four gzipped IDX files of the dataset's public release
(`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) in
`config.data_dir`, by default `/usr/share/datasets/fashion-mnist`, where
Debian's and Ubuntu's package `dataset-fashion-mnist` puts them. Nothing is
downloaded. 60,000 training and 10,000 test images; pixels are scaled to
[0, 1] and normalised with the mean and standard deviation of all training
pixels. There is no augmentation.

`config.validation_size > 0` holds that many training images out (see
`common.hold_out`) and evaluates on them instead of the test split, for
choosing a recipe without looking at the test split.
"""

import functools
import gzip
import os
from typing import Tuple

import numpy as np
import tensorflow as tf

from optg_jax.data import common

NAME = "fashion_mnist"
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def data_dir(config) -> str:
  """The directory of the IDX files: `config.data_dir` or the default."""
  return config.get("data_dir", None) or DEFAULT_DIR


def _missing_error(directory: str, missing) -> common.DatasetError:
  return common.DatasetError(
      f"Fashion-MNIST is not in {directory} (missing: {', '.join(missing)}): "
      "install it with 'apt-get install dataset-fashion-mnist' (files in "
      f"{DEFAULT_DIR}), or put the four files "
      f"{', '.join(FILES['train'] + FILES['test'])} of the dataset's public "
      "release (zalandoresearch/fashion-mnist) in a directory and pass it as "
      "--config.data_dir")


def check_files(directory: str) -> None:
  """Raises DatasetError naming the files missing from `directory`."""
  names = FILES["train"] + FILES["test"]
  missing = [n for n in names
             if not os.path.isfile(os.path.join(directory, n))]
  if missing:
    raise _missing_error(directory, missing)


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes into an array.

  Args:
    path: the `.gz` file.
    magic: the expected magic number (2051 for images, 2049 for labels).

  Returns:
    A uint8 array of the shape the header gives.

  Raises:
    DatasetError: if the file is not a well-formed IDX file of that kind.
  """
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise common.DatasetError(f"cannot read {path}: {e}") from e
  if len(raw) < 8:
    raise common.DatasetError(f"{path} is not an IDX file (too short)")
  found = int.from_bytes(raw[:4], "big")
  if found != magic:
    raise common.DatasetError(f"{path} has IDX magic number {found}, "
                              f"expected {magic}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  if len(raw) != header + int(np.prod(shape)):
    raise common.DatasetError(f"{path} holds {len(raw) - header} bytes of "
                              f"data, its header says shape {shape}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_split(directory: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  images_file, labels_file = FILES[split]
  images = read_idx(os.path.join(directory, images_file), _IMAGES_MAGIC)
  labels = read_idx(os.path.join(directory, labels_file), _LABELS_MAGIC)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise common.DatasetError(
        f"{split} files in {directory} do not match: images "
        f"{images.shape}, labels {labels.shape}")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise common.DatasetError(f"{split} labels in {directory} exceed "
                              f"{NUM_CLASSES - 1}")
  return images, labels


@functools.lru_cache(maxsize=4)
def _load(directory: str, validation_size: int):
  check_files(directory)
  x_train, y_train = _read_split(directory, "train")
  x_test, y_test = _read_split(directory, "test")
  train = (x_train.astype(np.float32) / 255.0, y_train.astype(np.int32))
  test = (x_test.astype(np.float32) / 255.0, y_test.astype(np.int32))
  train, held_out = common.hold_out(train, validation_size)
  if held_out is not None:
    test = held_out
  mean, std = float(train[0].mean()), float(train[0].std())
  return {split: common.normalized_array_data(x, y, mean, std)
          for split, (x, y) in (("train", train), ("test", test))}


def load_split(config, split: str) -> common.ArrayData:
  """One split, normalised `[n, 28, 28, 1]` float32 images.

  Args:
    config: the run's config (`data_dir`, `validation_size`).
    split: 'train', or 'test' (the held-out validation images when
      `config.validation_size > 0`).

  Returns:
    The split as read-only `ArrayData`.

  Raises:
    DatasetError: if the files are missing or malformed.
  """
  return _load(data_dir(config), common.validation_size(config))[split]


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of Fashion-MNIST; checks that the files are there."""
  check_files(data_dir(config))
  return common.DatasetInfo(
      name=NAME, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE,
      num_train=load_split(config, "train").num_examples,
      num_eval=load_split(config, "test").num_examples)


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline: see `common.array_train_epoch_fn`."""
  return common.array_train_epoch_fn(
      load_split(config, "train"), seed=int(config.seed),
      process_index=process_index, process_count=process_count, batch=batch)


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Evaluation examples `start, ..., end - 1`, in order."""
  return common.array_eval_examples(load_split(config, "test"), start, end)
