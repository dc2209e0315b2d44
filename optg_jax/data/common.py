"""Pieces shared by the input pipelines: errors, batch arithmetic, seeds.

Every pipeline is built one epoch at a time. An epoch is a pure function of
`(seed, epoch)` and of the process's place in the job, so that a pipeline can
start at any step: the examples before that step are skipped *before* they are
decoded or augmented, and augmentation draws its randomness from stateless
ops seeded per example from `(seed, epoch, position of the example in the
epoch)`, never from a stateful generator whose state would depend on where
the pipeline started.

Sources that fit in memory (digits, CIFAR-10, fake data) share the helpers
at the end of this module: the epoch's order is a NumPy permutation of the
whole split, cut into global batches, and each process takes its slice of
every global batch. A training batch is therefore the same whatever the
number of processes or devices that share it.
"""

import logging as std_logging
from typing import Callable, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

# Tags that keep the seeds drawn for different purposes apart.
SHUFFLE_TAG = 1
AUGMENT_TAG = 2
FILES_TAG = 3
FAKE_TAG = 4

Preprocess = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class DatasetError(ValueError):
  """A dataset is unknown or not prepared; the message says how to fix it."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


class DatasetInfo(NamedTuple):
  """What the training harness needs to know about a dataset.

  Attributes:
    name: the dataset's name, as in `config.dataset`.
    num_classes: the number of labels.
    image_shape: `(height, width, channels)` of the model's input.
    num_train: the number of training examples.
    num_eval: the number of evaluation examples.
  """
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_train: int
  num_eval: int


class ArrayData(NamedTuple):
  """A split held in memory.

  Attributes:
    images: the stored images, `[M, ...]`.
    labels: int32 labels, `[M]`.
    num_examples: the split's size `N`; example `i` is stored example
      `i % M`, so a small pool can stand for a large split.
  """
  images: np.ndarray
  labels: np.ndarray
  num_examples: int


def derive_seed(*values: int) -> int:
  """Mixes integers into one seed in `[0, 2**31)`.

  Args:
    *values: integers (negative ones are taken modulo 2**64).

  Returns:
    A well-mixed non-negative int that fits in int32.
  """
  entropy = [int(v) % 2**64 for v in values]
  state = np.random.SeedSequence(entropy).generate_state(1, np.uint32)
  return int(state[0] >> 1)


def split_batch(global_batch: int, process_count: int,
                local_device_count: int, name: str) -> Tuple[int, int]:
  """Splits a global batch size over processes and local devices.

  Args:
    global_batch: the batch size summed over all processes.
    process_count: the number of processes.
    local_device_count: the number of devices of this process.
    name: the config field, for error messages.

  Returns:
    `(per_process_batch, per_device_batch)`.

  Raises:
    ValueError: if a size is not positive or does not divide evenly.
  """
  if (not isinstance(global_batch, (int, np.integer))
      or isinstance(global_batch, bool) or global_batch <= 0):
    raise ValueError(f"{name} must be a positive integer, got "
                     f"{global_batch!r}")
  if global_batch % process_count:
    raise ValueError(f"{name}={global_batch} is not divisible by the "
                     f"process count {process_count}")
  per_process = global_batch // process_count
  if per_process % local_device_count:
    raise ValueError(f"{name}={global_batch} gives {per_process} examples "
                     f"per process, which is not divisible by the local "
                     f"device count {local_device_count}")
  return int(per_process), int(per_process // local_device_count)


def check_process(process_index: int, process_count: int) -> None:
  """Raises ValueError unless `0 <= process_index < process_count`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count})")


def shard_bounds(num_examples: int, process_index: int,
                 process_count: int) -> Tuple[int, int]:
  """Contiguous, disjoint shards of `range(num_examples)`, sizes within one.

  Args:
    num_examples: the split's size.
    process_index: the shard to return.
    process_count: the number of shards.

  Returns:
    `(start, end)` of shard `process_index`.
  """
  start = process_index * num_examples // process_count
  end = (process_index + 1) * num_examples // process_count
  return start, end


def max_shard_size(num_examples: int, process_count: int) -> int:
  """The largest shard `shard_bounds` makes."""
  return max(e - s for s, e in (shard_bounds(num_examples, p, process_count)
                                for p in range(process_count)))


def dataset_options() -> tf.data.Options:
  """tf.data options of every pipeline: deterministic element order."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """`(image - mean) / std` per channel, as float32.

  Args:
    image: an image `[..., C]` of any real dtype.
    mean: `C` channel means, in the image's units.
    std: `C` channel standard deviations, in the image's units.

  Returns:
    The normalised float32 image.
  """
  image = tf.cast(image, tf.float32)
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (image - mean) / std


def example_seed(base_seed: int, position: tf.Tensor) -> tf.Tensor:
  """The stateless seed of one example: `[base_seed, position]`, int64."""
  return tf.stack([tf.constant(base_seed, tf.int64),
                   tf.cast(position, tf.int64)])


def to_tensor(array: np.ndarray) -> tf.Tensor:
  """Copies an array into a host (CPU) tensor."""
  with tf.device("/cpu:0"):
    return tf.constant(array)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of a split's examples in one epoch (for in-memory splits)."""
  rng = np.random.default_rng(derive_seed(seed, epoch, SHUFFLE_TAG))
  return rng.permutation(num_examples)


def array_train_epoch_fn(data: ArrayData, *, seed: int, process_index: int,
                         process_count: int, batch: int,
                         preprocess: Optional[Preprocess] = None):
  """Builds the per-epoch training pipeline of an in-memory split.

  Epoch `e` visits the split in the order `epoch_permutation(seed, e, N)`,
  cut into global batches of `batch * process_count` examples (the last,
  partial one dropped); process `p` gets rows `[p * batch, (p + 1) * batch)`
  of each global batch. The example at position `q` of the epoch is
  augmented with the stateless seed `[derive_seed(seed, e, AUGMENT_TAG), q]`.

  Args:
    data: the split.
    seed: the run's seed.
    process_index: this process.
    process_count: the number of processes.
    batch: the per-process batch size.
    preprocess: `(stored_image, seed) -> image`, applied per example; when
      None, stored images are used as they are and gathered a whole batch at
      a time.

  Returns:
    `make_epoch(epoch, first_step, num_steps)`, a tf.data.Dataset of
    per-process batches `{'image': [batch, ...], 'label': [batch]}` for the
    steps `first_step, ..., num_steps - 1` of epoch `epoch`.
  """
  images = to_tensor(data.images)
  labels = to_tensor(data.labels.astype(np.int32))
  pool = int(data.images.shape[0])
  global_batch = batch * process_count

  def make_epoch(epoch: int, first_step: int, num_steps: int):
    order = epoch_permutation(seed, epoch, data.num_examples)
    order = order[:num_steps * global_batch].reshape(
        num_steps, process_count, batch)[first_step:, process_index]
    order = (order % pool).astype(np.int64)
    if preprocess is None:
      ds = tf.data.Dataset.from_tensor_slices(order)
      ds = ds.map(lambda idx: {"image": tf.gather(images, idx),
                               "label": tf.gather(labels, idx)},
                  num_parallel_calls=tf.data.AUTOTUNE)
      return ds

    steps = np.arange(first_step, num_steps, dtype=np.int64)[:, None]
    positions = (steps * global_batch + process_index * batch
                 + np.arange(batch, dtype=np.int64)[None, :])
    augment_seed = derive_seed(seed, epoch, AUGMENT_TAG)

    def one(idx, position):
      image = preprocess(tf.gather(images, idx),
                         example_seed(augment_seed, position))
      return {"image": image, "label": tf.gather(labels, idx)}

    ds = tf.data.Dataset.from_tensor_slices(
        (order.reshape(-1), positions.reshape(-1)))
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True)

  return make_epoch


def array_eval_examples(data: ArrayData, start: int, end: int,
                        preprocess: Optional[Callable[[tf.Tensor], tf.Tensor]]
                        = None) -> tf.data.Dataset:
  """Examples `start, ..., end - 1` of an in-memory split, in order.

  Args:
    data: the split.
    start: the first example.
    end: one past the last example.
    preprocess: `stored_image -> image`, or None to keep stored images.

  Returns:
    A tf.data.Dataset of `{'image', 'label'}` examples.
  """
  images = to_tensor(data.images)
  labels = to_tensor(data.labels.astype(np.int32))
  idx = np.arange(start, end, dtype=np.int64) % int(data.images.shape[0])

  def one(i):
    image = tf.gather(images, i)
    if preprocess is not None:
      image = preprocess(image)
    return {"image": image, "label": tf.gather(labels, i)}

  ds = tf.data.Dataset.from_tensor_slices(idx)
  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)


# The seed of the held-out validation split: fixed, whatever the run's seed,
# so that every run of a study is validated on the same images.
HOLD_OUT_SEED = 20260

Split = Tuple[np.ndarray, np.ndarray]


# Fewer held-out images than this get a warning: one image is over 0.2 points.
SMALL_VALIDATION = 500


def validation_size(config) -> int:
  """`config.validation_size` (0 when the field is absent), checked."""
  size = config.get("validation_size", 0) or 0
  if (not isinstance(size, (int, np.integer)) or isinstance(size, bool)
      or size < 0):
    raise DatasetError(f"validation_size must be a non-negative integer, got "
                       f"{size!r}")
  return int(size)


def hold_out(train: Split, size: int) -> Tuple[Split, Optional[Split]]:
  """Holds `size` training examples out as a validation split.

  The held-out examples are drawn stratified by label (each class gives its
  share, rounded, and the remainder goes to the largest classes) with a fixed
  seed, so the split is the same for every run and the training split never
  sees them.

  Args:
    train: `(images, labels)` of the training split.
    size: the number of examples to hold out; 0 holds none out.

  Returns:
    `((images, labels) left for training, (images, labels) held out)`, the
    second None when `size` is 0.

  Raises:
    DatasetError: if `size` leaves no training example.
  """
  images, labels = train
  if size == 0:
    return train, None
  if size >= len(labels):
    raise DatasetError(f"validation_size {size} leaves no training example "
                       f"of the {len(labels)}")
  rng = np.random.default_rng(HOLD_OUT_SEED)
  classes, counts = np.unique(labels, return_counts=True)
  if size < len(classes):
    raise DatasetError(
        f"validation_size {size} holds out fewer images than the "
        f"{len(classes)} classes (every class needs one); hold out at least "
        f"{len(classes)}, and a few hundred to tell results a point apart")
  if size < SMALL_VALIDATION:
    logging.warning("Evaluating on %d held-out images: one image is %.2g "
                    "points of accuracy", size, 100 / size)
  quota = np.floor(counts * size / len(labels)).astype(int)
  for i in np.argsort(-counts, kind="stable")[:size - quota.sum()]:
    quota[i] += 1
  held = np.concatenate([
      rng.permutation(np.flatnonzero(labels == c))[:q]
      for c, q in zip(classes, quota)])
  held = np.sort(held)
  keep = np.setdiff1d(np.arange(len(labels)), held)
  return (images[keep], labels[keep]), (images[held], labels[held])


def normalized_array_data(images: np.ndarray, labels: np.ndarray, mean: float,
                          std: float) -> ArrayData:
  """`(images - mean) / std` with a channel axis, as read-only ArrayData."""
  x = ((images - mean) / std).astype(np.float32)[..., None]
  x.setflags(write=False)
  y = np.ascontiguousarray(labels, np.int32)
  y.setflags(write=False)
  return ArrayData(images=x, labels=y, num_examples=int(y.shape[0]))


def ceil_div(a: int, b: int) -> int:
  """`ceil(a / b)` for a non-negative `a` and a positive `b`."""
  return -(-a // b)


def tfds_builder(name: str, data_dir: Optional[str], how_to_prepare: str):
  """Returns the TFDS builder of a prepared dataset; never downloads.

  Args:
    name: the TFDS name.
    data_dir: the TFDS data directory, or None for TFDS's default.
    how_to_prepare: what to do if the dataset is not there; `{data_dir}` is
      replaced with the data directory.

  Returns:
    The `tfds.core.DatasetBuilder`.

  Raises:
    DatasetError: if the dataset is not prepared in `data_dir`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # TFDS warns of a version folder without dataset_info.json (as when the
  # dataset is not there at all) before our error says what to do.
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    is_prepared = getattr(builder, "is_prepared", None)
    if is_prepared is not None:
      prepared = is_prepared()
    else:
      prepared = tf.io.gfile.exists(builder.data_dir + "/dataset_info.json")
  finally:
    absl_logger.setLevel(level)
  if not prepared:
    root = str(builder.data_dir_root)
    raise DatasetError(
        f"dataset '{name}' is not prepared in {root}: "
        + how_to_prepare.format(data_dir=root))
  return builder
