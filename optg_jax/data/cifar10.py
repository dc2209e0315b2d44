"""CIFAR-10 from TFDS `cifar10`, which must be prepared; held in memory.

Training: zero-pad 4 pixels on each side, random 32x32 crop, random
horizontal flip. Evaluation: none. Both normalise with the reference's
constants: the CIFAR-10 channel means and the "standard deviations"
(0.2023, 0.1994, 0.2010) that the reference (and many CIFAR codebases)
use; the pixels' actual per-channel deviations are about (0.247, 0.243,
0.262), so inputs come out about 1.25 times wider than unit variance. A split (150 MB for training) is read into
memory whenever a pipeline is built, or once per process when `config.cache`
is true; the in-memory order, sharding and seeding are those of
`common.array_train_epoch_fn`.
"""

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from optg_jax.data import common

NAME = "cifar10"
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
PADDING = 4
MEAN_RGB = (0.4914 * 255.0, 0.4822 * 255.0, 0.4465 * 255.0)
STDDEV_RGB = (0.2023 * 255.0, 0.1994 * 255.0, 0.2010 * 255.0)

_HOW_TO_PREPARE = (
    "run `tfds build cifar10 --data_dir={data_dir}` on a machine with "
    "network access and copy {data_dir}/cifar10 here")

_CACHE: Dict[Tuple[str, str], common.ArrayData] = {}


def preprocess_cifar10_train(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Pad-and-crop and flip of one image, normalised.

  A pure function of its arguments.

  Args:
    image: a uint8 image `[32, 32, 3]`.
    seed: a stateless seed, an int32 or int64 tensor of shape [2].

  Returns:
    A float32 image `[32, 32, 3]`, normalised with `MEAN_RGB`, `STDDEV_RGB`.
  """
  seed = tf.convert_to_tensor(seed)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = tf.pad(image, [[PADDING, PADDING], [PADDING, PADDING], [0, 0]])
  image = tf.image.stateless_random_crop(image, IMAGE_SHAPE, seed=crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def preprocess_cifar10_eval(image: tf.Tensor) -> tf.Tensor:
  """Normalises one uint8 image `[32, 32, 3]` to float32."""
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def _builder(config):
  return common.tfds_builder(NAME, config.get("data_dir", None),
                             _HOW_TO_PREPARE)


def load_split(config, split: str) -> common.ArrayData:
  """Reads a split into memory (from the cache if `config.cache`).

  Args:
    config: the run's config (`data_dir`, `cache`).
    split: 'train' or 'test'.

  Returns:
    The split as `ArrayData` with uint8 images, in TFDS's order.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  key = (str(config.get("data_dir", None)), split)
  if key in _CACHE:
    return _CACHE[key]
  builder = _builder(config)
  ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1,
                          read_config=tfds.ReadConfig(
                              options=common.dataset_options(),
                              try_autocache=False))
  arrays = tfds.as_numpy(ds)
  data = common.ArrayData(
      images=np.asarray(arrays["image"], np.uint8),
      labels=np.asarray(arrays["label"], np.int32),
      num_examples=int(arrays["label"].shape[0]))
  if config.get("cache", False):
    _CACHE[key] = data
  return data


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of CIFAR-10; raises DatasetError if not prepared."""
  builder = _builder(config)
  return common.DatasetInfo(
      name=NAME, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE,
      num_train=int(builder.info.splits["train"].num_examples),
      num_eval=int(builder.info.splits["test"].num_examples))


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline: see `common.array_train_epoch_fn`."""
  return common.array_train_epoch_fn(
      load_split(config, "train"), seed=int(config.seed),
      process_index=process_index, process_count=process_count, batch=batch,
      preprocess=preprocess_cifar10_train)


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Test examples `start, ..., end - 1`, in order, normalised."""
  return common.array_eval_examples(load_split(config, "test"), start, end,
                                    preprocess_cifar10_eval)
