"""scikit-learn's bundled handwritten digits: 1797 real 8x8 images.

A small real dataset that needs no download, for tests and quick runs. The
split is fixed whatever the run's seed: 297 test images drawn stratified by
class with `random_state=0`, the other 1500 for training. Pixels (0 to 16)
are scaled to [0, 1], then normalised with the mean and standard deviation
of all training pixels. There is no augmentation. `config.validation_size`
> 0 evaluates on that many training images held out instead (see
`common.hold_out`).
"""

import functools

import numpy as np
import tensorflow as tf

from optg_jax.data import common

NAME = "digits"
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_EVAL = 297
SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)
def _load(validation_size: int = 0):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = digits.images.astype(np.float32) / 16.0
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=NUM_EVAL, random_state=SPLIT_SEED,
      stratify=labels)
  (x_train, y_train), held_out = common.hold_out((x_train, y_train),
                                                 validation_size)
  if held_out is not None:
    x_test, y_test = held_out
  mean, std = float(x_train.mean()), float(x_train.std())
  return {split: common.normalized_array_data(x, y, mean, std)
          for split, x, y in (("train", x_train, y_train),
                              ("test", x_test, y_test))}


def load_split(split: str, validation_size: int = 0) -> common.ArrayData:
  """One split of the digits, normalised, `[n, 8, 8, 1]` float32 images.

  Args:
    split: 'train' (1500 images) or 'test' (297 images).
    validation_size: when positive, that many of the 1500 training images
      are held out (`common.hold_out`) and 'test' returns them instead of
      the test images.

  Returns:
    The split as read-only `ArrayData`.
  """
  return _load(validation_size)[split]


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of the digits."""
  size = common.validation_size(config)
  return common.DatasetInfo(
      name=NAME, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE,
      num_train=load_split("train", size).num_examples,
      num_eval=load_split("test", size).num_examples)


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline: see `common.array_train_epoch_fn`."""
  return common.array_train_epoch_fn(
      load_split("train", common.validation_size(config)),
      seed=int(config.seed),
      process_index=process_index, process_count=process_count, batch=batch)


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Test examples `start, ..., end - 1`, in order."""
  return common.array_eval_examples(
      load_split("test", common.validation_size(config)), start, end)
