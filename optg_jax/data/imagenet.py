"""ImageNet (ILSVRC 2012) from TFDS `imagenet2012`, which must be prepared.

Two preprocessing recipes, chosen by `config.augmentation` (one of
`AUGMENTATIONS`; "inception" when the field is absent):

"torchvision", the reference PyTorch recipe. Training:
`RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3/4, 4/3))` with
torchvision's window sampler (up to 10 draws of an area fraction in
[0.08, 1] and a log-uniform aspect ratio in [3/4, 4/3], sides rounded half
to even, the first draw that fits kept at a uniformly random position;
after 10 failures the whole image, or its central crop to the nearest
allowed aspect ratio), decoded straight from the JPEG bytes, resized
bilinearly (antialiased, as PIL does), then `RandomHorizontalFlip()`.
Evaluation: `Resize(256)` (the shorter side to 256, bilinear, antialiased)
then `CenterCrop(224)`, scaled to other sizes: the shorter side goes to
`round(image_size * 256 / 224)` and the central `image_size` square is kept.

"inception", the Inception-style recipe. Training: random-resized crop
(area in [0.08, 1] of the image, aspect ratio in [3/4, 4/3], covering at
least 10% of it; after 10 failed draws, the evaluation crop), decoded
straight from the JPEG bytes with `tf.image.decode_and_crop_jpeg`, resized
to `image_size` (bicubic), then a random horizontal flip. Evaluation: the
central square whose side is 224/256 of the shorter side (the same pixels as
resizing the shorter side to `256 / 224 * image_size` and taking the central
`image_size` crop), resized to `image_size` (bicubic).

Both recipes normalise with the ImageNet channel mean and standard deviation
(`MEAN_RGB`, `STDDEV_RGB` on [0, 255], the same as torchvision's `ToTensor`
and `Normalize` with mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
0.225) on [0, 1]). Training randomness is stateless and seeded per example:
the same bytes and seed give the same image, bit for bit.

The recipes take encoded bytes, also those of `imagenet_folder`: greyscale
and CMYK JPEGs come out RGB, and a PNG (or GIF, BMP), told from its first
bytes, is decoded whole and cut to the same window (`decode_window`).

Each process reads its own contiguous slice of the split. An epoch shuffles
the slice's files and then its records (shuffle buffer of
`config.shuffle_buffer_size`, default 16384 records) with seeds derived from
`(seed, epoch, process_index)`. Resuming inside an epoch skips the earlier
records before decoding them (the raw records are still read, so resuming
late in an epoch costs a pass over that part of the files). `config.cache`
has no effect here: the split does not fit in memory.
"""

import functools
import math
from typing import Tuple

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
# The preprocessing recipes (`config.augmentation`), and the default.
AUGMENTATIONS = ("torchvision", "inception")
DEFAULT_AUGMENTATION = "inception"
# torchvision's RandomResizedCrop defaults, and its number of draws.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
# torchvision's evaluation sizes at `image_size` 224: Resize(256),
# CenterCrop(224).
EVAL_RESIZE = 256
EVAL_CROP = 224

_HOW_TO_PREPARE = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into "
    "{data_dir}/downloads/manual and run "
    "`tfds build imagenet2012 --data_dir={data_dir}`")


def check_augmentation(augmentation) -> str:
  """Checks a preprocessing recipe's name (`config.augmentation`).

  Args:
    augmentation: the name to check.

  Returns:
    `augmentation`, one of `AUGMENTATIONS`.

  Raises:
    ValueError: if `augmentation` is not one of `AUGMENTATIONS`; the message
      names the valid values.
  """
  if not isinstance(augmentation, str) or augmentation not in AUGMENTATIONS:
    valid = ", ".join(repr(a) for a in AUGMENTATIONS)
    raise ValueError(f"unknown augmentation {augmentation!r}: expected one "
                     f"of {valid}")
  return augmentation


# ---------------------------------------------------------------------------
# Decoding: JPEG straight to the window, other formats through a full decode.


def decode_window(image_bytes: tf.Tensor, window_fn) -> tf.Tensor:
  """Decodes one window of an encoded image as 3-channel RGB, uint8.

  A JPEG (RGB, greyscale or CMYK: libjpeg converts the last two) is decoded
  straight to the window with `tf.image.decode_and_crop_jpeg`, its size read
  from the header. Any other format that `tf.io.decode_image` reads (PNG,
  GIF, BMP: ImageNet's training set holds a PNG named `.JPEG`) is decoded
  whole (twice: for its size, then for its pixels) and then cut to the same
  window. The format is told from the first bytes, not from the file name.

  Args:
    image_bytes: a scalar string tensor, an encoded image.
    window_fn: `(height, width) -> [top, left, crop_height, crop_width]`,
      int32 tensors.

  Returns:
    The uint8 window `[crop_height, crop_width, 3]`.
  """
  is_jpeg = tf.io.is_jpeg(image_bytes)

  def decode_other():
    return tf.io.decode_image(image_bytes, channels=3,
                              expand_animations=False)

  # Only the format-specific ops sit in the branches: the window is computed
  # once, outside them (ops inside a branch run markedly slower in tf.data).
  shape = tf.cond(is_jpeg,
                  lambda: tf.image.extract_jpeg_shape(image_bytes)[:2],
                  lambda: tf.shape(decode_other())[:2])
  window = window_fn(shape[0], shape[1])

  def crop_other():
    top, left, height, width = tf.unstack(window)
    return decode_other()[top:top + height, left:left + width]

  return tf.cond(
      is_jpeg,
      lambda: tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
      crop_other)


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decodes a whole encoded image (as `decode_window`) to RGB, uint8."""
  # `decode_jpeg` reads PNG, GIF and BMP too, and converts greyscale and CMYK.
  return tf.io.decode_jpeg(image_bytes, channels=3)


# ---------------------------------------------------------------------------
# The Inception-style recipe.


def _central_crop_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  side = tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(height, width),
                                              tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  return tf.stack([offset_y, offset_x, side, side])


def _inception_crop_window(height: tf.Tensor, width: tf.Tensor,
                           seed: tf.Tensor) -> tf.Tensor:
  """The Inception crop's `[top, left, crop_height, crop_width]`."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([height, width, 3]),
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32,
                                 shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  crop_height, crop_width, _ = tf.unstack(size)
  # When every draw fails the whole image comes back: use the eval crop.
  failed = tf.logical_and(tf.equal(crop_height, height),
                          tf.equal(crop_width, width))
  return tf.where(failed, _central_crop_window(height, width),
                  tf.stack([offset_y, offset_x, crop_height, crop_width]))


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  image = tf.image.resize(image, [image_size, image_size],
                          method=tf.image.ResizeMethod.BICUBIC)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_train_inception(image_bytes: tf.Tensor, seed: tf.Tensor,
                               image_size: int = DEFAULT_IMAGE_SIZE
                               ) -> tf.Tensor:
  """Inception-style random-resized crop and flip of one JPEG, normalised.

  A pure function of its arguments: the same bytes and seed give the same
  image, bit for bit.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    seed: a stateless seed, an int32 or int64 tensor of shape [2].
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised with
    `MEAN_RGB` and `STDDEV_RGB`.
  """
  seed = tf.convert_to_tensor(seed)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = decode_window(
      image_bytes, functools.partial(_inception_crop_window, seed=crop_seed))
  image = _resize(image, image_size)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def preprocess_eval_inception(image_bytes: tf.Tensor,
                              image_size: int = DEFAULT_IMAGE_SIZE
                              ) -> tf.Tensor:
  """Inception-style central crop of one JPEG, resized and normalised.

  The crop is the central square of side `224 / 256` of the shorter side,
  resized to `image_size`: the usual "resize to 256, crop 224" scaled to any
  `image_size`.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised.
  """
  image = decode_window(image_bytes, _central_crop_window)
  image = _resize(image, image_size)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


# ---------------------------------------------------------------------------
# The reference (torchvision) recipe.


def _round_to_int(x: tf.Tensor) -> tf.Tensor:
  """Python's `int(round(x))` of a float64 tensor: halves go to even."""
  return tf.cast(tf.round(x), tf.int32)


def _resize_bilinear(image: tf.Tensor, size) -> tf.Tensor:
  """PIL's bilinear resize (torchvision on PIL images), as float32.

  `tf.image.resize(method="bilinear", antialias=True)`: when it shrinks an
  image it widens the triangle kernel by the scale factor, as PIL's BILINEAR
  filter does, and agrees with PIL (on float images) up to float rounding;
  without `antialias`, TF would read only the 2x2 nearest pixels and alias.
  When it enlarges, the two are the same. Unlike PIL on 8-bit images, the
  result is not rounded to integers (a difference of at most 0.5 in [0, 255]).

  Args:
    image: an image `[height, width, channels]`.
    size: `[new_height, new_width]`.

  Returns:
    The resized float32 image.
  """
  return tf.image.resize(image, size, method=tf.image.ResizeMethod.BILINEAR,
                         antialias=True)


def torchvision_crop_window(height, width, seed
                            ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor,
                                       tf.Tensor]:
  """The window of torchvision's `RandomResizedCrop` in an image.

  torchvision's sampler with `scale=(0.08, 1.0)`, `ratio=(3/4, 4/3)`: up to
  10 draws of `target_area = height * width * U(0.08, 1)` and
  `aspect = exp(U(log(3/4), log(4/3)))`, giving
  `w = round(sqrt(target_area * aspect))`, `h = round(sqrt(target_area /
  aspect))` (rounded half to even, as Python's `round`); the first draw with
  `0 < w <= width` and `0 < h <= height` is kept, at top `randint(0, height -
  h)` and left `randint(0, width - w)` (inclusive). If none fits, the central
  window of the whole image cut to the nearest allowed aspect ratio:
  `h = round(width * 4 / 3)` if `width / height < 3/4`, `w = round(height *
  4 / 3)` if `width / height > 4/3`, else the whole image; top
  `(height - h) // 2`, left `(width - w) // 2`. There is no minimum overlap
  with the image's objects (unlike the Inception crop).

  The 10 draws are always made, in float64, with stateless ops: a pure
  function of `(height, width, seed)`.

  Args:
    height: the image's height, an integer scalar.
    width: the image's width, an integer scalar.
    seed: a stateless seed, an int32 or int64 tensor of shape [2].

  Returns:
    `(top, left, crop_height, crop_width)`, int32 scalar tensors.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.convert_to_tensor(seed),
                                             num=4))
  height_f = tf.cast(height, tf.float64)
  width_f = tf.cast(width, tf.float64)
  target_area = height_f * width_f * tf.random.stateless_uniform(
      [CROP_ATTEMPTS], area_seed, minval=CROP_SCALE[0], maxval=CROP_SCALE[1],
      dtype=tf.float64)
  aspect = tf.exp(tf.random.stateless_uniform(
      [CROP_ATTEMPTS], ratio_seed, minval=math.log(CROP_RATIO[0]),
      maxval=math.log(CROP_RATIO[1]), dtype=tf.float64))
  crop_w = _round_to_int(tf.sqrt(target_area * aspect))
  crop_h = _round_to_int(tf.sqrt(target_area / aspect))
  fits = ((crop_w > 0) & (crop_w <= width) & (crop_h > 0)
          & (crop_h <= height))
  found = tf.reduce_any(fits)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  # The fallback when no draw fits.
  in_ratio = width_f / height_f
  fallback_h = tf.where(in_ratio < CROP_RATIO[0],
                        _round_to_int(width_f / CROP_RATIO[0]), height)
  fallback_w = tf.where(in_ratio > CROP_RATIO[1],
                        _round_to_int(height_f * CROP_RATIO[1]), width)
  crop_h = tf.where(found, tf.gather(crop_h, first), fallback_h)
  crop_w = tf.where(found, tf.gather(crop_w, first), fallback_w)
  # Both windows fit, so the ranges below are never empty.
  top = tf.where(
      found,
      tf.random.stateless_uniform([], top_seed, minval=0,
                                  maxval=height - crop_h + 1, dtype=tf.int32),
      (height - crop_h) // 2)
  left = tf.where(
      found,
      tf.random.stateless_uniform([], left_seed, minval=0,
                                  maxval=width - crop_w + 1, dtype=tf.int32),
      (width - crop_w) // 2)
  return top, left, crop_h, crop_w


def _torchvision_window(height, width, seed) -> tf.Tensor:
  return tf.stack(torchvision_crop_window(height, width, seed))


def preprocess_train_torchvision(image_bytes: tf.Tensor, seed: tf.Tensor,
                                 image_size: int = DEFAULT_IMAGE_SIZE
                                 ) -> tf.Tensor:
  """torchvision's training preprocessing of one JPEG, normalised.

  `RandomResizedCrop(image_size)` (the window of `torchvision_crop_window`,
  decoded straight from the JPEG bytes, resized bilinearly with
  antialiasing, as PIL does: see `_resize_bilinear`), then
  `RandomHorizontalFlip()`. A pure function of its arguments: the same bytes
  and seed give the same image, bit for bit.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    seed: a stateless seed, an int32 or int64 tensor of shape [2].
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised with
    `MEAN_RGB` and `STDDEV_RGB`.
  """
  seed = tf.convert_to_tensor(seed)
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = decode_window(
      image_bytes, functools.partial(_torchvision_window, seed=crop_seed))
  image = _resize_bilinear(image, [image_size, image_size])
  image = tf.ensure_shape(image, [image_size, image_size, 3])
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


def torchvision_eval_resize_size(image_size: int) -> int:
  """The shorter side before the central crop: 256 at `image_size` 224.

  Args:
    image_size: the side of the evaluation crop.

  Returns:
    `round(image_size * 256 / 224)`.
  """
  return int(round(image_size * EVAL_RESIZE / EVAL_CROP))


def preprocess_eval_torchvision(image_bytes: tf.Tensor,
                                image_size: int = DEFAULT_IMAGE_SIZE
                                ) -> tf.Tensor:
  """torchvision's `Resize(256)`, `CenterCrop(224)` of one JPEG, normalised.

  The whole image is decoded and its shorter side resized to `resize =
  torchvision_eval_resize_size(image_size)` (256 at `image_size` 224; for
  other sizes both 256 and 224 are scaled by `image_size / 224`), keeping
  the aspect ratio with the longer side `int(resize * long / short)`
  (truncated, as torchvision), bilinearly with antialiasing (see
  `_resize_bilinear`). Then the central `image_size` square is kept, at
  torchvision's offsets `round((new_height - image_size) / 2)` and
  `round((new_width - image_size) / 2)` (halves to even). The resize comes
  before the crop, as in torchvision.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    image_size: the side of the output.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised.
  """
  resize = torchvision_eval_resize_size(image_size)
  image = decode_rgb(image_bytes)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  short = tf.cast(tf.minimum(height, width), tf.float64)
  long = tf.cast(tf.maximum(height, width), tf.float64)
  new_long = tf.cast(tf.floor(resize * long / short), tf.int32)
  portrait = width <= height
  new_height = tf.where(portrait, new_long, resize)
  new_width = tf.where(portrait, resize, new_long)
  image = _resize_bilinear(image, tf.stack([new_height, new_width]))
  top = _round_to_int(tf.cast(new_height - image_size, tf.float64) / 2.0)
  left = _round_to_int(tf.cast(new_width - image_size, tf.float64) / 2.0)
  image = image[top:top + image_size, left:left + image_size]
  image = tf.ensure_shape(image, [image_size, image_size, 3])
  return common.normalize(image, MEAN_RGB, STDDEV_RGB)


# ---------------------------------------------------------------------------
# Either recipe.

_TRAIN = {"torchvision": preprocess_train_torchvision,
          "inception": preprocess_train_inception}
_EVAL = {"torchvision": preprocess_eval_torchvision,
         "inception": preprocess_eval_inception}


def preprocess_imagenet_train(image_bytes: tf.Tensor, seed: tf.Tensor,
                              image_size: int = DEFAULT_IMAGE_SIZE, *,
                              augmentation: str = DEFAULT_AUGMENTATION
                              ) -> tf.Tensor:
  """Training preprocessing of one JPEG with either recipe, normalised.

  A pure function of its arguments: the same bytes and seed give the same
  image, bit for bit.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    seed: a stateless seed, an int32 or int64 tensor of shape [2].
    image_size: the side of the output.
    augmentation: the recipe, one of `AUGMENTATIONS`:
      `preprocess_train_torchvision` or `preprocess_train_inception`.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised with
    `MEAN_RGB` and `STDDEV_RGB`.

  Raises:
    ValueError: if `augmentation` is not one of `AUGMENTATIONS`.
  """
  return _TRAIN[check_augmentation(augmentation)](image_bytes, seed,
                                                  image_size)


def preprocess_imagenet_eval(image_bytes: tf.Tensor,
                             image_size: int = DEFAULT_IMAGE_SIZE, *,
                             augmentation: str = DEFAULT_AUGMENTATION
                             ) -> tf.Tensor:
  """Evaluation preprocessing of one JPEG with either recipe, normalised.

  Args:
    image_bytes: a scalar string tensor, an encoded image (see
      `decode_window`).
    image_size: the side of the output.
    augmentation: the recipe, one of `AUGMENTATIONS`:
      `preprocess_eval_torchvision` or `preprocess_eval_inception`.

  Returns:
    A float32 image `[image_size, image_size, 3]`, normalised.

  Raises:
    ValueError: if `augmentation` is not one of `AUGMENTATIONS`.
  """
  return _EVAL[check_augmentation(augmentation)](image_bytes, image_size)


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
      name=NAME, num_classes=NUM_CLASSES,
      image_shape=(image_size, image_size, 3),
      num_train=_split_size(builder, "train"),
      num_eval=_split_size(builder, "validation"))


def _read(builder, split: str, shuffle_seed=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False,
      options=common.dataset_options())
  return builder.as_dataset(
      split=split, shuffle_files=shuffle_seed is not None,
      read_config=read_config, decoders={"image": tfds.decode.SkipDecoding()})


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int):
  """The per-epoch training pipeline of this process.

  Examples are preprocessed with the recipe `config.augmentation` (see
  `preprocess_imagenet_train`; "inception" when the field is absent).

  Args:
    config: the run's config.
    process_index: this process.
    process_count: the number of processes.
    batch: the per-process batch size.

  Returns:
    `make_epoch(epoch, first_step, num_steps)`, a tf.data.Dataset of
    per-process batches for steps `first_step, ..., num_steps - 1` of the
    epoch.

  Raises:
    ValueError: if `config.augmentation` is not one of `AUGMENTATIONS`.
  """
  augmentation = check_augmentation(
      config.get("augmentation", DEFAULT_AUGMENTATION))
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
          image_size, augmentation=augmentation)
      return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    ds = tf.data.Dataset.zip((ds, positions))
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True)

  return make_epoch


def eval_examples(config, start: int, end: int) -> tf.data.Dataset:
  """Validation examples `start, ..., end - 1`, in order, preprocessed.

  Preprocessed with the recipe `config.augmentation` (see
  `preprocess_imagenet_eval`; "inception" when the field is absent).

  Raises:
    ValueError: if `config.augmentation` is not one of `AUGMENTATIONS`.
  """
  augmentation = check_augmentation(
      config.get("augmentation", DEFAULT_AUGMENTATION))
  builder = _builder(config)
  image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))
  ds = _read(builder, f"validation[{start}:{end}]")

  def one(example):
    return {"image": preprocess_imagenet_eval(example["image"], image_size,
                                              augmentation=augmentation),
            "label": tf.cast(example["label"], tf.int32)}

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
