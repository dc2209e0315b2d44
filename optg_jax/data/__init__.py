"""Input pipelines of the training harness (tf.data on the host).

    from optg_jax import data
    info = data.dataset_info(config)
    train = data.train_iterator(config, start_step, process_index,
                                process_count, local_device_count)
    batch = next(train)  # {'image': [D, B, H, W, C], 'label': [D, B]}
    for batch in data.eval_iterator(config, process_index, process_count,
                                    local_device_count):
      ...                # also 'mask': [D, B], 0 for padding

Datasets (`config.dataset`): 'imagenet2012' and 'cifar10' (TFDS, must be
prepared in `config.data_dir`; nothing is ever downloaded),
'imagenet_folder' (ImageNet as a tree of image files, `train/CLASS/*` and
`val/CLASS/*` in `config.data_dir`), 'digits'
(scikit-learn's bundled 8x8 digits), 'fashion_mnist' (the IDX files in
`config.data_dir`, by default where Debian's `dataset-fashion-mnist` puts
them) and 'fake' (seeded random data). For the in-memory datasets (digits,
Fashion-MNIST), `config.validation_size > 0` evaluates on that many
training examples held out of training, to choose recipes without the test
split.

Training batches are deterministic and resumable: the batches are a pure
function of `(config.seed, dataset, batch size, process_index,
process_count)` and of the step, so `train_iterator(config, start_step=s)`
yields exactly what a fresh iterator yields from its `s`-th batch on. Epoch
`e = s // steps_per_epoch` is rebuilt from seeds derived from
`(seed, e)`; the examples of its first `s % steps_per_epoch` steps are
skipped before decoding; random augmentation is stateless, seeded per example
from `(seed, e, position in the epoch)`. The last partial batch of every
epoch is dropped, so `steps_per_epoch` is exact on every process.

A source that reads image files one by one ('imagenet_folder') meets a file
it cannot decode only when it reaches it: the batch that holds it is then
built again example by example, the file standing as a blank image, so the
stream goes on unchanged (see `imagenet_folder`).

This package imports TensorFlow; `import optg_jax` does not import it.
"""

from optg_jax import extras

extras.require(extras.HARNESS, "optg_jax.data")

from typing import Dict, Iterator

from absl import logging
import numpy as np
import tensorflow as tf

from optg_jax.data import cifar10
from optg_jax.data import common
from optg_jax.data import digits
from optg_jax.data import fashion_mnist
from optg_jax.data import fake
from optg_jax.data import imagenet
from optg_jax.data import imagenet_folder
from optg_jax.data.cifar10 import preprocess_cifar10_eval
from optg_jax.data.cifar10 import preprocess_cifar10_train
from optg_jax.data.common import DatasetError
from optg_jax.data.common import DatasetInfo
from optg_jax.data.imagenet import preprocess_imagenet_eval
from optg_jax.data.imagenet import preprocess_imagenet_train

Batch = Dict[str, np.ndarray]

SOURCES = {
    imagenet.NAME: imagenet,
    imagenet_folder.NAME: imagenet_folder,
    cifar10.NAME: cifar10,
    digits.NAME: digits,
    fashion_mnist.NAME: fashion_mnist,
    fake.NAME: fake,
}
DATASETS = tuple(SOURCES)

__all__ = (
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "dataset_info",
    "eval_iterator",
    "num_eval_steps",
    "preprocess_cifar10_eval",
    "preprocess_cifar10_train",
    "preprocess_imagenet_eval",
    "preprocess_imagenet_train",
    "steps_per_epoch",
    "train_iterator",
)


def _source(config):
  name = config.get("dataset", None)
  if name not in SOURCES:
    raise DatasetError(f"unknown dataset {name!r}: config.dataset must be one "
                       f"of {', '.join(repr(n) for n in DATASETS)}")
  return SOURCES[name]


def _local_device_count(local_device_count):
  if local_device_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    local_device_count = jax.local_device_count()
  if local_device_count < 1:
    raise ValueError(f"local_device_count must be positive, got "
                     f"{local_device_count}")
  return int(local_device_count)


def _setup(config, batch_field: str, process_index: int, process_count: int,
           local_device_count):
  """Checks an iterator's arguments: `(source, per-process batch, devices)`."""
  source = _source(config)
  common.check_process(process_index, process_count)
  local_device_count = _local_device_count(local_device_count)
  batch, _ = common.split_batch(config[batch_field], process_count,
                                local_device_count, batch_field)
  return source, batch, local_device_count


def dataset_info(config) -> DatasetInfo:
  """Describes the dataset that `config.dataset` names.

  For TFDS datasets this checks that the dataset is prepared in
  `config.data_dir` (it reads the prepared metadata), so calling it first
  makes a run fail fast with a clear message.

  Args:
    config: the run's config (`dataset`, `data_dir`, `image_size`,
      `fake_*`).

  Returns:
    A `DatasetInfo(name, num_classes, image_shape, num_train, num_eval)`;
    `image_shape` is the model input's `(height, width, channels)`.

  Raises:
    DatasetError: if the dataset is unknown or not prepared.
  """
  return _source(config).info(config)


def steps_per_epoch(config, process_count: int = 1) -> int:
  """Training steps per epoch: `num_train // config.batch_size`.

  The last partial global batch of every epoch is dropped.

  Args:
    config: the run's config; `batch_size` is the global batch size.
    process_count: the number of processes.

  Returns:
    The number of steps per epoch (at least 1).

  Raises:
    ValueError: if `batch_size` is not divisible by `process_count` or is
      larger than the training split.
    DatasetError: if the dataset is unknown or not prepared.
  """
  common.split_batch(config.batch_size, process_count, 1, "batch_size")
  num_train = dataset_info(config).num_train
  steps = num_train // config.batch_size
  if steps < 1:
    raise ValueError(f"batch_size={config.batch_size} is larger than the "
                     f"{num_train} training examples of {config.dataset!r}")
  return int(steps)


def num_eval_steps(config, process_count: int = 1) -> int:
  """The number of batches `eval_iterator` yields, the same on every process.

  Args:
    config: the run's config; `eval_batch_size` is the global batch size.
    process_count: the number of processes.

  Returns:
    `ceil(largest per-process shard / per-process eval batch size)`.
  """
  per_process, _ = common.split_batch(config.eval_batch_size, process_count, 1,
                                      "eval_batch_size")
  num_eval = dataset_info(config).num_eval
  return common.ceil_div(common.max_shard_size(num_eval, process_count),
                         per_process)


def _split_devices(batch, local_device_count):
  return {k: tf.reshape(v, [local_device_count, -1] + v.shape.as_list()[1:])
          for k, v in batch.items()}


def _finish(ds: tf.data.Dataset, local_device_count: int) -> tf.data.Dataset:
  ds = ds.map(lambda b: _split_devices(b, local_device_count),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(common.dataset_options())


def _recovering(build, rebuild, first: int, count: int) -> Iterator[Batch]:
  """Batches `first, ..., count - 1`, built again where a pipeline fails.

  Args:
    build: `first -> iterator` of the batches `first, ..., count - 1`.
    rebuild: `index -> iterator` whose first batch is batch `index`, built
      so that it cannot fail (see `imagenet_folder`); or None, and a
      failure propagates.
    first: the first batch.
    count: one past the last batch.

  Yields:
    The batches; where `build` raises a `tf.errors.OpError` at batch `i`
    (a file that cannot be read or decoded), batch `i` of `rebuild(i)`,
    then those of `build(i + 1)`.
  """
  batches = build(first)
  while first < count:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      if rebuild is None:
        raise
      logging.warning("Batch %d: %s; building it again example by example",
                      first, " ".join(str(e).split())[:300])
      batch = next(rebuild(first))
      batches = build(first + 1)
    yield batch
    first += 1


def _rebuilds(source) -> bool:
  return getattr(source, "REBUILDS_FAILED_BATCHES", False)


def _train_batches(make_epoch, steps: int, start_step: int,
                   local_device_count: int,
                   rebuilds: bool) -> Iterator[Batch]:
  epoch, first_step = divmod(start_step, steps)
  while True:

    def build(first, epoch=epoch):
      ds = make_epoch(epoch, first, steps)
      return _finish(ds, local_device_count).as_numpy_iterator()

    def rebuild(step, epoch=epoch):
      ds = make_epoch(epoch, step, step + 1, careful=True)
      return _finish(ds, local_device_count).as_numpy_iterator()

    yield from _recovering(build, rebuild if rebuilds else None, first_step,
                           steps)
    epoch += 1
    first_step = 0


def train_iterator(config, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1,
                   local_device_count: int = None) -> Iterator[Batch]:
  """The endless stream of this process's training batches.

  Batch `t` of the stream is the batch of step `start_step + t`; it depends
  only on the seed, the dataset, the batch size, the process's index and the
  process count, so a run resumed at step `s` sees the batches it would have
  seen. Each epoch is reshuffled; processes read disjoint examples.

  Args:
    config: the run's config (`dataset`, `data_dir`, `batch_size` (global),
      `seed`, `image_size`, `cache`, `fake_*`).
    start_step: the step of the first batch.
    process_index: this process (`jax.process_index()`).
    process_count: the number of processes (`jax.process_count()`).
    local_device_count: devices of this process; by default
      `jax.local_device_count()`.

  Returns:
    An iterator of dicts: 'image', float32 `[local_device_count,
    per_device_batch, H, W, C]`, and 'label', int32 `[local_device_count,
    per_device_batch]`.

  Raises:
    ValueError: if the batch size does not divide over processes and
      devices, or `start_step` is negative.
    DatasetError: if the dataset is unknown or not prepared.
  """
  source, batch, local_device_count = _setup(
      config, "batch_size", process_index, process_count, local_device_count)
  if start_step < 0:
    raise ValueError(f"start_step must be non-negative, got {start_step}")
  steps = steps_per_epoch(config, process_count)
  if hasattr(source, "train_batches"):
    return source.train_batches(
        config, start_step=int(start_step), process_index=process_index,
        process_count=process_count, batch=batch,
        local_device_count=local_device_count)
  make_epoch = source.train_epoch_fn(
      config, process_index=process_index, process_count=process_count,
      batch=batch)
  return _train_batches(make_epoch, steps, int(start_step),
                        local_device_count, _rebuilds(source))


def eval_iterator(config, process_index: int = 0, process_count: int = 1,
                  local_device_count: int = None) -> Iterator[Batch]:
  """One pass over this process's share of the evaluation split.

  Process `p` gets the `p`-th of `process_count` contiguous shards (sizes
  within one of each other), in order. The last batches are padded with
  zero images whose 'mask' is 0, so that every batch has the full shape and
  every process yields `num_eval_steps(config, process_count)` batches:
  summing 'mask' over all processes counts each example exactly once.

  Args:
    config: the run's config (`eval_batch_size` is global).
    process_index: this process.
    process_count: the number of processes.
    local_device_count: devices of this process; by default
      `jax.local_device_count()`.

  Returns:
    An iterator of dicts: 'image' float32 `[local_device_count,
    per_device_batch, H, W, C]`, 'label' int32 and 'mask' float32
    `[local_device_count, per_device_batch]`.

  Raises:
    ValueError: if the eval batch size does not divide over processes and
      devices.
    DatasetError: if the dataset is unknown or not prepared.
  """
  source, batch, local_device_count = _setup(
      config, "eval_batch_size", process_index, process_count,
      local_device_count)
  info = source.info(config)
  start, end = common.shard_bounds(info.num_eval, process_index,
                                   process_count)
  num_batches = num_eval_steps(config, process_count)

  blank = {"image": np.zeros(info.image_shape, np.float32),
           "label": np.zeros([], np.int32),
           "mask": np.zeros([], np.float32)}

  def batches(first: int, last: int, careful: bool = False):
    """This process's evaluation batches `first, ..., last - 1`."""
    low, high = (min(start + i * batch, end) for i in (first, last))
    pad = tf.data.Dataset.from_tensors(blank).repeat(
        (last - first) * batch - (high - low))
    ds = pad
    if high > low:
      examples = (source.eval_examples(config, low, high, careful=True)
                  if careful else source.eval_examples(config, low, high))
      ds = examples.map(
          lambda ex: {"image": tf.cast(ex["image"], tf.float32),
                      "label": tf.cast(ex["label"], tf.int32),
                      "mask": tf.ones([], tf.float32)}).concatenate(pad)
    ds = ds.batch(batch, drop_remainder=True)
    return _finish(ds, local_device_count).as_numpy_iterator()

  def build(first):
    return batches(first, num_batches)

  def rebuild(index):
    return batches(index, index + 1, careful=True)

  return _recovering(build, rebuild if _rebuilds(source) else None, 0,
                     num_batches)
