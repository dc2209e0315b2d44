"""Tests of the ImageNet preprocessing recipes (optg_jax/data/imagenet.py):
torchvision's RandomResizedCrop window and fallback, bilinear resizing, the
Resize(256)/CenterCrop(224) evaluation, dispatch on `augmentation`,
determinism and the wiring into the pipelines."""

import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from optg_jax.data import common
from optg_jax.data import imagenet

crop_window = tf.function(imagenet.torchvision_crop_window)


def jpeg(height, width, seed=0, color=None, smooth=False):
  """An RGB JPEG made in memory: noise, a flat colour or a smooth image."""
  if color is not None:
    pixels = np.full((height, width, 3), color, np.uint8)
  elif smooth:
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width),
                       indexing="ij")
    channels = [127 + 100 * np.sin(2 * np.pi * (1.5 * x + 0.7 * y)),
                30 + 200 * x * y,
                127 + 100 * np.cos(2 * np.pi * (0.6 * x - 1.3 * y))]
    pixels = np.stack(channels, -1).round().astype(np.uint8)
  else:
    pixels = np.random.default_rng(seed).integers(
        0, 256, (height, width, 3), dtype=np.uint8)
  # Full-resolution chroma: cropping before or after decoding is the same.
  return tf.io.encode_jpeg(pixels, quality=100, chroma_downsampling=False)


def decode(image_bytes):
  return tf.io.decode_jpeg(image_bytes, channels=3).numpy().astype(np.float64)


def normalize(pixels):
  return ((pixels - np.array(imagenet.MEAN_RGB))
          / np.array(imagenet.STDDEV_RGB))


def pil_bilinear_weights(in_size, out_size):
  """PIL's BILINEAR resampling matrix `[out_size, in_size]`: a triangle
  filter widened by the scale factor when shrinking, weights normalised."""
  scale = in_size / out_size
  support = max(scale, 1.0)
  centers = (np.arange(out_size) + 0.5) * scale
  x = np.arange(in_size) + 0.5
  w = np.maximum(0.0, 1.0 - np.abs(x[None, :] - centers[:, None]) / support)
  return w / w.sum(axis=1, keepdims=True)


def numpy_bilinear(pixels, height, width):
  """A NumPy reference of PIL's bilinear resize of an `[H, W, C]` image."""
  rows = pil_bilinear_weights(pixels.shape[0], height)
  cols = pil_bilinear_weights(pixels.shape[1], width)
  return np.einsum("oh,hwc,pw->opc", rows, pixels, cols, optimize=True)


def sample_windows(height, width, num_seeds):
  return np.array([[int(v) for v in crop_window(height, width,
                                                tf.constant([7, s]))]
                   for s in range(num_seeds)])


def torchvision_get_params(height, width, scales, log_ratios, offsets):
  """torchvision's `RandomResizedCrop.get_params`, in plain Python, with its
  random draws given: `scales[k]`, `log_ratios[k]` for attempt `k` and
  `offsets(h, w) -> (i, j)` for the accepted window."""
  area = height * width
  for k in range(10):
    target_area = area * scales[k]
    aspect_ratio = math.exp(log_ratios[k])
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i, j = offsets(h, w)
      return i, j, h, w
  in_ratio = float(width) / float(height)
  if in_ratio < 3.0 / 4.0:
    w = width
    h = int(round(w / (3.0 / 4.0)))
  elif in_ratio > 4.0 / 3.0:
    h = height
    w = int(round(h * (4.0 / 3.0)))
  else:
    w = width
    h = height
  return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------------------
# The RandomResizedCrop window.


def test_crop_window_lies_inside_and_spans_scale_and_ratio():
  height, width = 300, 400
  windows = sample_windows(height, width, 600)
  top, left, h, w = windows.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (h >= 1).all() and (w >= 1).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  # The unrounded sides are within 0.5 of the rounded ones.
  assert ((h + 0.5) * (w + 0.5) >= 0.08 * height * width).all()
  assert ((h - 0.5) * (w - 0.5) <= height * width).all()
  assert ((w + 0.5) / (h - 0.5) >= 3.0 / 4.0).all()
  assert ((w - 0.5) / (h + 0.5) <= 4.0 / 3.0).all()
  # The draws span both ranges.
  area = h * w / (height * width)
  assert area.min() < 0.12 and area.max() > 0.9
  assert (area < 0.2).sum() > 30 and (area > 0.8).sum() > 10
  log_aspect = np.log(w / h)
  lo, hi = math.log(3.0 / 4.0), math.log(4.0 / 3.0)
  assert log_aspect.min() < lo + 0.03 and log_aspect.max() > hi - 0.03
  # Roughly log-uniform: each quarter of the range gets its share.
  counts, _ = np.histogram(log_aspect, bins=4, range=(lo - 0.01, hi + 0.01))
  assert counts.min() > 0.15 * len(log_aspect), counts
  # Positions are uniform over the free room: both ends are reached.
  room_top = top / np.maximum(height - h, 1)
  room_left = left / np.maximum(width - w, 1)
  for room in (room_top, room_left):
    assert room.min() < 0.05 and room.max() > 0.95
    assert 0.4 < room.mean() < 0.6


def test_crop_window_is_deterministic_per_seed():
  a = sample_windows(300, 400, 20)
  np.testing.assert_array_equal(a, sample_windows(300, 400, 20))
  assert len({tuple(row) for row in a}) == 20
  # Eagerly as in a graph.
  one = imagenet.torchvision_crop_window(300, 400, tf.constant([7, 3]))
  np.testing.assert_array_equal([int(v) for v in one], a[3])


@pytest.mark.parametrize("height,width", [(300, 400), (500, 120), (37, 53),
                                          (100, 100)])
def test_crop_window_is_torchvisions_algorithm(height, width):
  # White box: the same draws as the implementation (the seed split into
  # area, log-ratio, top and left seeds), through torchvision's code.
  for s in range(25):
    seed = tf.constant([3, s])
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4))
    scales = tf.random.stateless_uniform(
        [10], area_seed, minval=0.08, maxval=1.0, dtype=tf.float64).numpy()
    log_ratios = tf.random.stateless_uniform(
        [10], ratio_seed, minval=math.log(3.0 / 4.0),
        maxval=math.log(4.0 / 3.0), dtype=tf.float64).numpy()

    def offsets(h, w, top_seed=top_seed, left_seed=left_seed):
      return (int(tf.random.stateless_uniform(
          [], top_seed, minval=0, maxval=height - h + 1, dtype=tf.int32)),
              int(tf.random.stateless_uniform(
                  [], left_seed, minval=0, maxval=width - w + 1,
                  dtype=tf.int32)))

    expected = torchvision_get_params(height, width, scales, log_ratios,
                                      offsets)
    got = tuple(int(v) for v in crop_window(height, width, seed))
    assert got == expected


@pytest.mark.parametrize("height,width,expected", [
    (10, 1000, (0, 493, 10, 13)),    # w = round(10 * 4 / 3), centred.
    (1000, 10, (493, 0, 13, 10)),    # h = round(10 / (3 / 4)), centred.
    (20, 1001, (0, 487, 20, 27)),    # w = round(26.67) = 27.
])
def test_crop_window_fallback_when_every_draw_fails(height, width, expected):
  for s in range(10):
    got = tuple(int(v) for v in crop_window(height, width,
                                            tf.constant([s, 1])))
    assert got == expected


# ---------------------------------------------------------------------------
# Training: bilinear resize, flip, determinism.


def test_full_window_at_input_size_gives_back_the_decoded_pixels(
    monkeypatch):
  monkeypatch.setattr(imagenet, "torchvision_crop_window",
                      lambda height, width, seed: (0, 0, height, width))
  image = jpeg(40, 40, seed=2)
  expected = normalize(decode(image))
  flips = []
  for s in range(12):
    out = imagenet.preprocess_imagenet_train(
        image, tf.constant([5, s]), 40, augmentation="torchvision").numpy()
    flipped = np.allclose(out, expected[:, ::-1], atol=1e-4)
    assert flipped or np.allclose(out, expected, atol=1e-4)
    flips.append(flipped)
  # RandomHorizontalFlip: both outcomes happen.
  assert any(flips) and not all(flips)


def test_training_resize_is_pils_bilinear_not_bicubic():
  image = jpeg(120, 160, smooth=True)
  pixels = decode(image)
  checked = 0
  for s in range(6):
    seed = tf.constant([11, s])
    crop_seed, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    top, left, h, w = (int(v) for v in crop_window(120, 160, crop_seed))
    window = pixels[top:top + h, left:left + w]
    out = imagenet.preprocess_imagenet_train(
        image, seed, 48, augmentation="torchvision").numpy()
    bilinear = normalize(numpy_bilinear(window, 48, 48))
    bicubic = normalize(tf.image.resize(window, [48, 48], method="bicubic",
                                        antialias=True).numpy())
    no_antialias = normalize(tf.image.resize(window, [48, 48],
                                             method="bilinear").numpy())
    errors = [min(np.abs(out - ref).max(), np.abs(out - ref[:, ::-1]).max())
              for ref in (bilinear, bicubic, no_antialias)]
    assert errors[0] < 1e-3, errors
    assert errors[1] > 0.01, errors
    if h > 2 * 48 or w > 2 * 48:
      # Shrinking by more than 2: the kernel must be widened.
      assert errors[2] > 0.02, errors
      checked += 1
  assert checked


def test_bilinear_resize_matches_pil():
  pil = pytest.importorskip("PIL.Image")
  pixels = np.random.default_rng(3).uniform(0, 255, (37, 53, 3))
  for height, width in [(16, 20), (60, 90), (20, 70), (37, 53)]:
    ours = imagenet._resize_bilinear(  # pylint: disable=protected-access
        tf.constant(pixels, tf.float32), [height, width]).numpy()
    for c in range(3):
      reference = np.asarray(pil.fromarray(
          pixels[..., c].astype(np.float32), mode="F").resize(
              (width, height), pil.BILINEAR))
      np.testing.assert_allclose(ours[..., c], reference, atol=2e-3)
    np.testing.assert_allclose(ours, numpy_bilinear(pixels, height, width),
                               atol=2e-3)


def test_training_is_deterministic_per_seed():
  image = jpeg(180, 260, seed=4)
  for augmentation in imagenet.AUGMENTATIONS:
    a = imagenet.preprocess_imagenet_train(image, tf.constant([1, 2]), 64,
                                           augmentation=augmentation)
    b = imagenet.preprocess_imagenet_train(image, tf.constant([1, 2]), 64,
                                           augmentation=augmentation)
    c = imagenet.preprocess_imagenet_train(image, tf.constant([1, 3]), 64,
                                           augmentation=augmentation)
    assert a.shape == (64, 64, 3) and a.dtype == tf.float32
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not np.array_equal(a.numpy(), c.numpy())


def test_flat_image_normalisation():
  color = [200, 100, 50]
  image = jpeg(120, 90, color=color)
  expected = np.broadcast_to(normalize(np.array(color, np.float64)),
                             (32, 32, 3))
  for out in (imagenet.preprocess_train_torchvision(image, tf.constant([0, 1]),
                                                    32),
              imagenet.preprocess_eval_torchvision(image, 32)):
    np.testing.assert_allclose(out.numpy(), expected, atol=0.05)


# ---------------------------------------------------------------------------
# Evaluation: Resize(256), CenterCrop(224).


def test_eval_resize_size():
  assert imagenet.torchvision_eval_resize_size(224) == 256
  assert imagenet.torchvision_eval_resize_size(64) == 73
  assert imagenet.torchvision_eval_resize_size(128) == 146
  assert imagenet.torchvision_eval_resize_size(32) == 37


@pytest.mark.parametrize(
    "height,width,image_size,resized,offsets",
    [(300, 400, 224, (256, 341), (16, 58)),   # 58.5 rounds to even.
     (300, 500, 224, (256, 426), (16, 101)),  # 426.67 truncates.
     (400, 300, 224, (341, 256), (58, 16)),
     (402, 300, 224, (343, 256), (60, 16)),   # 59.5 rounds to even.
     (256, 256, 224, (256, 256), (16, 16)),
     (300, 400, 64, (73, 97), (4, 16))])      # 4.5 and 16.5 round to even.
def test_eval_is_resize_then_centre_crop(height, width, image_size, resized,
                                         offsets):
  image = jpeg(height, width, seed=5)
  out = imagenet.preprocess_imagenet_eval(image, image_size,
                                          augmentation="torchvision").numpy()
  assert out.shape == (image_size, image_size, 3) and out.dtype == np.float32
  pixels = tf.io.decode_jpeg(image, channels=3)
  top, left = offsets

  def reference(size, top, left):
    full = tf.image.resize(pixels, size, method="bilinear",
                           antialias=True).numpy()
    return normalize(full[top:top + image_size, left:left + image_size])

  np.testing.assert_allclose(out, reference(resized, top, left), atol=1e-4)
  np.testing.assert_allclose(
      out, normalize(numpy_bilinear(pixels.numpy().astype(np.float64),
                                    *resized)
                     [top:top + image_size, left:left + image_size]),
      atol=2e-3)
  # One pixel off in the crop, or in the resized size, shows.
  assert np.abs(out - reference(resized, top, left + 1)).max() > 0.1
  assert np.abs(out - reference(resized, top + 1, left)).max() > 0.1
  other = (resized[0], resized[1] + 1)
  assert np.abs(out - reference(other, top, left)).max() > 0.1


# ---------------------------------------------------------------------------
# Dispatch and the pipelines.


def test_dispatch_between_recipes():
  image = jpeg(180, 260, seed=6)
  seed = tf.constant([4, 4])
  inception = imagenet.preprocess_imagenet_train(image, seed, 64,
                                                 augmentation="inception")
  torchvision = imagenet.preprocess_imagenet_train(image, seed, 64,
                                                   augmentation="torchvision")
  assert not np.allclose(inception.numpy(), torchvision.numpy(), atol=0.1)
  # The default is the Inception-style recipe.
  np.testing.assert_array_equal(
      imagenet.preprocess_imagenet_train(image, seed, 64).numpy(),
      inception.numpy())
  np.testing.assert_array_equal(
      torchvision.numpy(),
      imagenet.preprocess_train_torchvision(image, seed, 64).numpy())
  eval_inception = imagenet.preprocess_imagenet_eval(image, 64)
  eval_torchvision = imagenet.preprocess_imagenet_eval(
      image, 64, augmentation="torchvision")
  np.testing.assert_array_equal(
      eval_inception.numpy(),
      imagenet.preprocess_eval_inception(image, 64).numpy())
  assert not np.allclose(eval_inception.numpy(), eval_torchvision.numpy(),
                         atol=0.1)
  assert imagenet.AUGMENTATIONS == ("torchvision", "inception")


@pytest.mark.parametrize("name", ["pytorch", "Torchvision", "", None])
def test_unknown_augmentation_is_refused(name):
  image = jpeg(40, 40)
  pattern = r"'torchvision', 'inception'"
  with pytest.raises(ValueError, match=pattern):
    imagenet.preprocess_imagenet_train(image, tf.constant([0, 0]), 32,
                                       augmentation=name)
  with pytest.raises(ValueError, match=pattern):
    imagenet.preprocess_imagenet_eval(image, 32, augmentation=name)
  with pytest.raises(ValueError, match=pattern):
    imagenet.check_augmentation(name)


class FakeBuilder:
  """Stands for a prepared `imagenet2012` builder: JPEGs made in memory."""

  def __init__(self, num_train, num_eval):
    self.info = type("Info", (), {"splits": {
        "train": type("Split", (), {"num_examples": num_train})(),
        "validation": type("Split", (), {"num_examples": num_eval})()}})()

  @staticmethod
  def image(name, index):
    return jpeg(40 + index % 5, 52, seed=(name == "validation") * 1000 + index)

  def as_dataset(self, split, shuffle_files=False, read_config=None,
                 decoders=None):
    del shuffle_files, read_config, decoders
    name, bounds = split.rstrip("]").split("[")
    start, end = (int(x) for x in bounds.split(":"))
    images = [self.image(name, i).numpy() for i in range(start, end)]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(start, end)})


def pipeline_config(**fields):
  config = ml_collections.ConfigDict(dict(seed=3, image_size=24,
                                          shuffle_buffer_size=8))
  for key, value in fields.items():
    config[key] = value
  return config


def test_pipelines_use_config_augmentation(monkeypatch):
  builder = FakeBuilder(num_train=12, num_eval=3)
  monkeypatch.setattr(imagenet, "_builder", lambda config: builder)
  batch = 4
  outputs = {}
  for augmentation in ("torchvision", "inception", None):
    config = (pipeline_config() if augmentation is None
              else pipeline_config(augmentation=augmentation))
    make_epoch = imagenet.train_epoch_fn(config, process_index=0,
                                         process_count=1, batch=batch)
    batches = list(make_epoch(1, 0, 3).as_numpy_iterator())
    resumed = list(make_epoch(1, 1, 3).as_numpy_iterator())
    for x, y in zip(batches[1:], resumed):
      assert x["image"].tobytes() == y["image"].tobytes()
      np.testing.assert_array_equal(x["label"], y["label"])
    # Each example is preprocessed with its own seed and the chosen recipe.
    augment_seed = common.derive_seed(3, 1, 0, common.AUGMENT_TAG)
    name = augmentation or "inception"
    for step, b in enumerate(batches):
      for k in range(batch):
        expected = imagenet.preprocess_imagenet_train(
            FakeBuilder.image("train", int(b["label"][k])),
            common.example_seed(augment_seed, step * batch + k), 24,
            augmentation=name)
        np.testing.assert_array_equal(b["image"][k], expected.numpy())
    evals = list(imagenet.eval_examples(config, 0, 3).as_numpy_iterator())
    for i, example in enumerate(evals):
      expected = imagenet.preprocess_imagenet_eval(
          FakeBuilder.image("validation", i), 24, augmentation=name)
      np.testing.assert_array_equal(example["image"], expected.numpy())
    outputs[augmentation] = batches[0]["image"]
  assert not np.allclose(outputs["torchvision"], outputs["inception"])
  np.testing.assert_array_equal(outputs[None], outputs["inception"])


def test_pipelines_refuse_an_unknown_augmentation(monkeypatch):
  def no_builder(config):
    raise AssertionError("the augmentation is checked first")

  monkeypatch.setattr(imagenet, "_builder", no_builder)
  config = pipeline_config(augmentation="autoaugment")
  with pytest.raises(ValueError, match="'torchvision', 'inception'"):
    imagenet.train_epoch_fn(config, process_index=0, process_count=1,
                            batch=4)
  with pytest.raises(ValueError, match="'torchvision', 'inception'"):
    imagenet.eval_examples(config, 0, 3)
