"""ImageNet (ILSVRC 2012) from TFDS `imagenet2012`, which must be prepared.

Training: Inception-style random-resized crop (area in [0.08, 1] of the
image, aspect ratio in [3/4, 4/3], covering at least 10% of it; after 10
failed draws, the evaluation crop), decoded straight from the JPEG bytes with
`tf.image.decode_and_crop_jpeg`, resized to `image_size` (bicubic), then a
random horizontal flip. Evaluation: the central square whose side is
224/256 of the shorter side (the same pixels as resizing the shorter side to
`256 / 224 * image_size` and taking the central `image_size` crop), resized
to `image_size` (bicubic). Both normalise with the ImageNet channel mean and
standard deviation.

Each process reads its own contiguous slice of the split. An epoch shuffles
the slice's files and then its records (shuffle buffer of
`config.shuffle_buffer_size`, default 16384 records) with seeds derived from
`(seed, epoch, process_index)`. Resuming inside an epoch skips the earlier
records before decoding them (the raw records are still read, so resuming
late in an epoch costs a pass over that part of the files). `config.cache`
has no effect here: the split does not fit in memory.
"""

import tensorflow as tf

from optg_jax.data import common

NAME = "imagenet2012"
NUM_CLASSES = 1000
DEFAULT_IMAGE_SIZE = 224
DEFAULT_SHUFFLE_BUFFER = 16384
# Central crop fraction of the shorter side at evaluation: 224 of 256.
EVAL_CROP_FRACTION = 224.0 / 256.0
MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
STDDEV_RGB = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

_HOW_TO_PREPARE = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into "
    "{data_dir}/downloads/manual and run "
    "`tfds build imagenet2012 --data_dir={data_dir}`")


def _central_crop_window(image_bytes: tf.Tensor) -> tf.Tensor:
  shape = tf.image.extract_jpeg_shape(image_bytes)
  height, width = shape[0], shape[1]
  side = tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(height, width),
                                              tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  return tf.stack([offset_y, offset_x, side, side])


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  image = tf.image.resize(image, [image_size, image_size],
                          method=tf.image.ResizeMethod.BICUBIC)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_imagenet_train(image_bytes: tf.Tensor, seed: tf.Tensor,
                              image_size: int = DEFAULT_IMAGE_SIZE
                              ) -> tf.Tensor:
  """Random-resized crop and flip of one JPEG, normalised.

  A pure function of its arguments: the same bytes and seed give the same
  image, bit for bit.

  Args:
    image_bytes: a scalar string tensor, a JPEG-encoded RGB image.
    seed: a stateless seed, an int32 or int64 tensor of shape [2].
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised with
    `MEAN_RGB` and `STDDEV_RGB`.
  """
  seed = tf.convert_to_tensor(seed)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32,
                                 shape=[1, 1, 4]),
      seed=crop_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  window = tf.stack([offset_y, offset_x, height, width])
  # When every draw fails the whole image comes back: use the eval crop.
  failed = tf.logical_and(tf.equal(height, shape[0]),
                          tf.equal(width, shape[1]))
  window = tf.cond(failed, lambda: _central_crop_window(image_bytes),
                   lambda: window)
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = _resize(image, image_size)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def preprocess_imagenet_eval(image_bytes: tf.Tensor,
                             image_size: int = DEFAULT_IMAGE_SIZE
                             ) -> tf.Tensor:
  """Central crop of one JPEG, resized and normalised.

  The crop is the central square of side `224 / 256` of the shorter side,
  resized to `image_size`: the usual "resize to 256, crop 224" scaled to any
  `image_size`.

  Args:
    image_bytes: a scalar string tensor, a JPEG-encoded RGB image.
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised.
  """
  window = _central_crop_window(image_bytes)
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = _resize(image, image_size)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def _builder(config):
  return common.tfds_builder(NAME, config.get("data_dir", None),
                             _HOW_TO_PREPARE)


def _split_size(builder, split: str) -> int:
  return int(builder.info.splits[split].num_examples)


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of ImageNet; raises DatasetError if not prepared."""
  builder = _builder(config)
  image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))
  return common.DatasetInfo(
      name=NAME,
      num_classes=NUM_CLASSES,
      image_shape=(image_size, image_size, 3),
      num_train=_split_size(builder, "train"),
      num_eval=_split_size(builder, "validation"))


def _read(builder, split: str, shuffle_seed=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      shuffle_reshuffle_each_iteration=False,
      options=common.dataset_options())
  return builder.as_dataset(
      split=split,
      shuffle_files=shuffle_seed is not None,
      read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()})


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline of this process.

  Args:
    config: the run's config.
    process_index: this process.
    process_count: the number of processes.
    batch: the per-process batch size.

  Returns:
    `make_epoch(epoch, first_step, num_steps)`, a tf.data.Dataset of
    per-process batches for steps `first_step, ..., num_steps - 1` of the
    epoch.
  """
  builder = _builder(config)
  seed = int(config.seed)
  image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))
  buffer_size = int(config.get("shuffle_buffer_size", DEFAULT_SHUFFLE_BUFFER))
  start, end = common.shard_bounds(_split_size(builder, "train"),
                                   process_index, process_count)
  split = f"train[{start}:{end}]"

  def make_epoch(epoch: int, first_step: int, num_steps: int):
    ds = _read(builder, split, shuffle_seed=common.derive_seed(
        seed, epoch, process_index, common.FILES_TAG))
    ds = ds.shuffle(buffer_size,
                    seed=common.derive_seed(seed, epoch, process_index,
                                            common.SHUFFLE_TAG),
                    reshuffle_each_iteration=False)
    ds = ds.take(num_steps * batch).skip(first_step * batch)
    positions = tf.data.Dataset.range(first_step * batch, num_steps * batch)
    augment_seed = common.derive_seed(seed, epoch, process_index,
                                      common.AUGMENT_TAG)

    def one(example, position):
      image = preprocess_imagenet_train(
          example["image"], common.example_seed(augment_seed, position),
          image_size)
      return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    ds = tf.data.Dataset.zip((ds, positions))
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True)

  return make_epoch


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Validation examples `start, ..., end - 1`, in order, preprocessed."""
  builder = _builder(config)
  image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))
  ds = _read(builder, f"validation[{start}:{end}]")

  def one(example):
    return {"image": preprocess_imagenet_eval(example["image"], image_size),
            "label": tf.cast(example["label"], tf.int32)}

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
