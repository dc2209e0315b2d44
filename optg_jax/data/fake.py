"""Random images and labels, for throughput benchmarks.

A pool of at most `POOL_SIZE` standard-normal float32 images
`[fake_image_size, fake_image_size, 3]` and uniform labels in
`[0, fake_num_classes)` is drawn from the run's seed.

Training costs the host nothing per step: a few distinct per-process
batches (at most `MAX_BATCHES`, and about `BATCH_POOL_BYTES` in all) are
assembled from the pool when the iterator is made, and step `s` yields
batch `s % num_batches`, the same read-only NumPy arrays every time.
Processes draw their batches with different seeds.

Evaluation goes through the in-memory path of `common`: example `i` of the
`fake_num_eval` examples is pool entry `i % POOL_SIZE`.
"""

from typing import Dict, Iterator

import numpy as np
import tensorflow as tf

from optg_jax.data import common

NAME = "fake"
POOL_SIZE = 64
MAX_BATCHES = 4
BATCH_POOL_BYTES = 1 << 29
DEFAULT_NUM_TRAIN = 10000
DEFAULT_NUM_EVAL = 1000
DEFAULT_NUM_CLASSES = 1000
DEFAULT_IMAGE_SIZE = 224


def _settings(config):
  return (int(config.get("fake_num_train", DEFAULT_NUM_TRAIN)),
          int(config.get("fake_num_eval", DEFAULT_NUM_EVAL)),
          int(config.get("fake_num_classes", DEFAULT_NUM_CLASSES)),
          int(config.get("fake_image_size", DEFAULT_IMAGE_SIZE)))


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of the fake data, from the `fake_*` config fields."""
  num_train, num_eval, num_classes, size = _settings(config)
  if min(num_train, num_eval, num_classes, size) <= 0:
    raise ValueError("fake_num_train, fake_num_eval, fake_num_classes and "
                     "fake_image_size must be positive")
  return common.DatasetInfo(name=NAME, num_classes=num_classes,
                            image_shape=(size, size, 3),
                            num_train=num_train, num_eval=num_eval)


def make_split(config, split: str) -> common.ArrayData:
  """The fake split: a seeded pool standing for `num_examples` examples.

  Args:
    config: the run's config (`seed` and the `fake_*` fields).
    split: 'train' or 'test'.

  Returns:
    The split as `ArrayData`.
  """
  num_train, num_eval, num_classes, size = _settings(config)
  num_examples = num_train if split == "train" else num_eval
  pool = min(POOL_SIZE, num_examples)
  rng = np.random.default_rng(
      common.derive_seed(int(config.seed), common.FAKE_TAG))
  images = rng.standard_normal((pool, size, size, 3), dtype=np.float32)
  labels = rng.integers(0, num_classes, size=pool).astype(np.int32)
  return common.ArrayData(images=images, labels=labels,
                          num_examples=num_examples)


def train_batches(config, *, start_step: int, process_index: int,
                  process_count: int, batch: int,
                  local_device_count: int) -> Iterator[Dict[str, np.ndarray]]:
  """The endless stream of fake training batches, from step `start_step`.

  Args:
    config: the run's config (`seed` and the `fake_*` fields).
    start_step: the step of the first batch.
    process_index: this process.
    process_count: the number of processes.
    batch: the per-process batch size.
    local_device_count: devices of this process.

  Returns:
    An iterator of dicts of read-only arrays: 'image', float32
    `[local_device_count, batch // local_device_count, S, S, 3]`, and
    'label', int32 `[local_device_count, batch // local_device_count]`.
  """
  del process_count
  data = make_split(config, "train")
  pool = data.images.shape[0]
  batch_bytes = max(1, data.images[0].nbytes * batch)
  num_batches = int(max(1, min(MAX_BATCHES, BATCH_POOL_BYTES // batch_bytes)))
  rng = np.random.default_rng(common.derive_seed(
      int(config.seed), process_index, common.FAKE_TAG, common.SHUFFLE_TAG))
  batches = []
  for _ in range(num_batches):
    idx = rng.integers(0, pool, size=batch)
    out = {"image": data.images[idx], "label": data.labels[idx]}
    for key, value in out.items():
      value = value.reshape((local_device_count, -1) + value.shape[1:])
      value.setflags(write=False)
      out[key] = value
    batches.append(out)

  def stream():
    step = start_step
    while True:
      yield batches[step % num_batches]
      step += 1

  return stream()


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Fake evaluation examples `start, ..., end - 1`."""
  return common.array_eval_examples(make_split(config, "test"), start, end)
