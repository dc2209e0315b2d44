"""scikit-learn's bundled handwritten digits: 1797 real 8x8 images.

A small real dataset that needs no download, for tests and quick runs. The
split is fixed whatever the run's seed: 297 test images drawn stratified by
class with `random_state=0`, the other 1500 for training. Pixels (0 to 16)
are scaled to [0, 1], then normalised with the mean and standard deviation
of all training pixels. There is no augmentation.
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


@functools.lru_cache(maxsize=1)
def _load():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = digits.images.astype(np.float32) / 16.0
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, labels, test_size=NUM_EVAL, random_state=SPLIT_SEED,
      stratify=labels)
  mean, std = x_train.mean(), x_train.std()
  out = {}
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    x = ((x - mean) / std).astype(np.float32)[..., None]
    x.setflags(write=False)
    y = np.ascontiguousarray(y)
    y.setflags(write=False)
    out[split] = common.ArrayData(images=x, labels=y,
                                  num_examples=int(y.shape[0]))
  return out


def load_split(split: str) -> common.ArrayData:
  """One split of the digits, normalised, `[n, 8, 8, 1]` float32 images.

  Args:
    split: 'train' (1500 images) or 'test' (297 images).

  Returns:
    The split as read-only `ArrayData`.
  """
  return _load()[split]


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of the digits."""
  del config
  return common.DatasetInfo(
      name=NAME, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE,
      num_train=load_split("train").num_examples,
      num_eval=load_split("test").num_examples)


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline: see `common.array_train_epoch_fn`."""
  return common.array_train_epoch_fn(
      load_split("train"), seed=int(config.seed),
      process_index=process_index, process_count=process_count, batch=batch)


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Test examples `start, ..., end - 1`, in order."""
  del config
  return common.array_eval_examples(load_split("test"), start, end)
