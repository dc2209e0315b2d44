"""Tests of the input pipelines (optg_jax/data): shapes, normalisation,
determinism, resumption at any step, process sharding, eval padding, errors."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from configs import cifar10 as cifar10_config
from configs import default
from configs import quickstart
from optg_jax import data
from optg_jax.data import cifar10
from optg_jax.data import common
from optg_jax.data import digits
from optg_jax.data import imagenet
import runs


def digits_config(**overrides):
  config = quickstart.get_config()
  config.batch_size = 32
  config.eval_batch_size = 40
  for key, value in overrides.items():
    config[key] = value
  return config


# ---------------------------------------------------------------------------
# digits: real data through the in-memory path.


def test_digits_info_and_split_sizes():
  info = data.dataset_info(digits_config())
  assert info == data.DatasetInfo("digits", 10, (8, 8, 1), 1500, 297)
  assert data.steps_per_epoch(digits_config()) == 1500 // 32
  # The split is stratified: every class is in both splits.
  assert set(np.unique(digits.load_split("test").labels)) == set(range(10))


def test_digits_normalisation():
  train = digits.load_split("train").images
  assert train.dtype == np.float32 and train.shape == (1500, 8, 8, 1)
  np.testing.assert_allclose(train.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(train.std(), 1.0, atol=1e-5)


def test_train_batches_shapes_and_epoch_is_a_permutation():
  config = digits_config()
  steps = data.steps_per_epoch(config)
  batches = runs.take(data.train_iterator(config, local_device_count=4), steps)
  for b in batches:
    assert b["image"].shape == (4, 8, 8, 8, 1)
    assert b["image"].dtype == np.float32
    assert b["label"].shape == (4, 8) and b["label"].dtype == np.int32
  # One epoch visits distinct examples: no image is seen twice.
  images = np.concatenate([b["image"].reshape(32, -1) for b in batches])
  assert len({row.tobytes() for row in images}) == steps * 32
  labels = np.concatenate([b["label"].reshape(-1) for b in batches])
  assert np.bincount(labels, minlength=10).min() > 100


def test_train_iterator_is_deterministic_and_reshuffles_each_epoch():
  config = digits_config()
  steps = data.steps_per_epoch(config)
  a = runs.take(data.train_iterator(config, local_device_count=2), steps + 1)
  b = runs.take(data.train_iterator(config, local_device_count=2), steps + 1)
  for x, y in zip(a, b):
    runs.assert_batches_equal(x, y)
  assert not np.array_equal(a[0]["label"], a[steps]["label"])
  other_seed = runs.take(data.train_iterator(digits_config(seed=1),
                                        local_device_count=2), 1)[0]
  assert not np.array_equal(a[0]["label"], other_seed["label"])


@pytest.mark.parametrize("start_step", [1, 17, 46, 47, 100])
def test_train_iterator_resumes_at_any_step(start_step):
  config = digits_config()
  full = runs.take(data.train_iterator(config, local_device_count=2),
              start_step + 3)
  resumed = runs.take(data.train_iterator(config, start_step=start_step,
                                     local_device_count=2), 3)
  for x, y in zip(full[start_step:], resumed):
    runs.assert_batches_equal(x, y)


def test_processes_share_each_global_batch():
  config = digits_config()
  whole = runs.take(data.train_iterator(config, local_device_count=4), 3)
  parts = [runs.take(data.train_iterator(config, process_index=p,
                                         process_count=2,
                                         local_device_count=2), 3)
           for p in range(2)]
  for step in range(3):
    joined = np.concatenate([parts[p][step]["image"].reshape(16, 8, 8, 1)
                             for p in range(2)])
    np.testing.assert_array_equal(joined,
                                  whole[step]["image"].reshape(32, 8, 8, 1))


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_iterator_pads_and_counts_every_example_once(process_count):
  config = digits_config(eval_batch_size=24)
  seen = []
  num_batches = data.num_eval_steps(config, process_count)
  for p in range(process_count):
    batches = list(data.eval_iterator(config, process_index=p,
                                      process_count=process_count,
                                      local_device_count=2))
    assert len(batches) == num_batches
    for b in batches:
      per_device = 24 // process_count // 2
      assert b["image"].shape == (2, per_device, 8, 8, 1)
      assert b["mask"].shape == (2, per_device)
      keep = b["mask"].reshape(-1) > 0
      assert not b["image"].reshape(-1, 64)[~keep].any()
      seen.append(b["image"].reshape(-1, 64)[keep])
  seen = np.concatenate(seen)
  np.testing.assert_array_equal(
      seen, digits.load_split("test").images.reshape(-1, 64))


# ---------------------------------------------------------------------------
# fake data.


def test_fake_data_shapes_and_resumption():
  config = default.get_config()
  config.dataset = "fake"
  config.fake_num_train = 512
  config.fake_num_eval = 20
  config.fake_num_classes = 7
  config.fake_image_size = 16
  config.batch_size = 8
  config.eval_batch_size = 8
  info = data.dataset_info(config)
  assert info == data.DatasetInfo("fake", 7, (16, 16, 3), 512, 20)
  batches = runs.take(data.train_iterator(config, local_device_count=2), 6)
  assert batches[0]["image"].shape == (2, 4, 16, 16, 3)
  assert batches[0]["label"].max() < 7
  resumed = runs.take(data.train_iterator(config, start_step=3,
                                     local_device_count=2), 3)
  for x, y in zip(batches[3:], resumed):
    runs.assert_batches_equal(x, y)
  evals = list(data.eval_iterator(config, local_device_count=2))
  assert len(evals) == 3 and sum(b["mask"].sum() for b in evals) == 20


# ---------------------------------------------------------------------------
# CIFAR-10 and ImageNet preprocessing, on generated images.


def test_cifar10_augmentation_and_normalisation():
  image = tf.constant(np.full((32, 32, 3), [200, 60, 10], np.uint8))
  out = cifar10.preprocess_cifar10_train(image, tf.constant([3, 4]))
  assert out.shape == (32, 32, 3) and out.dtype == tf.float32
  expected = ((np.array([200, 60, 10]) - np.array(cifar10.MEAN_RGB))
              / np.array(cifar10.STDDEV_RGB))
  # Padding brings in zeros; the central pixels are the image's.
  np.testing.assert_allclose(out.numpy()[14:18, 14:18],
                             np.broadcast_to(expected, (4, 4, 3)), atol=1e-6)
  pad_value = -np.array(cifar10.MEAN_RGB) / np.array(cifar10.STDDEV_RGB)
  values = out.numpy().reshape(-1, 3)
  assert all(np.allclose(v, expected, atol=1e-6)
             or np.allclose(v, pad_value, atol=1e-6) for v in values)


def test_cifar10_crops_are_seeded_and_stateless():
  rng = np.random.default_rng(0)
  image = tf.constant(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
  outs = [cifar10.preprocess_cifar10_train(image, tf.constant([0, i])).numpy()
          for i in range(8)]
  again = cifar10.preprocess_cifar10_train(image, tf.constant([0, 5])).numpy()
  np.testing.assert_array_equal(outs[5], again)
  assert len({o.tobytes() for o in outs}) > 1
  eval_out = cifar10.preprocess_cifar10_eval(image).numpy()
  np.testing.assert_allclose(
      eval_out, (image.numpy() - np.array(cifar10.MEAN_RGB))
      / np.array(cifar10.STDDEV_RGB), rtol=1e-5, atol=1e-6)


def test_cifar10_pipeline_on_generated_split(monkeypatch):
  rng = np.random.default_rng(1)
  splits = {
      "train": common.ArrayData(
          rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 10, 40).astype(np.int32), 40),
      "test": common.ArrayData(
          rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 10, 10).astype(np.int32), 10)}
  monkeypatch.setattr(cifar10, "load_split",
                      lambda config, split: splits[split])
  monkeypatch.setattr(cifar10, "info", lambda config: data.DatasetInfo(
      "cifar10", 10, (32, 32, 3), 40, 10))
  config = cifar10_config.get_config()
  config.batch_size = 8
  config.eval_batch_size = 4
  batches = runs.take(data.train_iterator(config, local_device_count=2), 7)
  assert batches[0]["image"].shape == (2, 4, 32, 32, 3)
  resumed = runs.take(data.train_iterator(config, start_step=4,
                                     local_device_count=2), 3)
  for x, y in zip(batches[4:], resumed):
    runs.assert_batches_equal(x, y)
  evals = list(data.eval_iterator(config, local_device_count=2))
  assert len(evals) == 3
  images = np.concatenate([b["image"].reshape(-1, 32, 32, 3) for b in evals])
  np.testing.assert_allclose(
      images[:10], (splits["test"].images - np.array(cifar10.MEAN_RGB))
      / np.array(cifar10.STDDEV_RGB), rtol=1e-5, atol=1e-6)
  assert not images[10:].any()


def jpeg(height, width, seed=0, color=None):
  if color is None:
    pixels = np.random.default_rng(seed).integers(
        0, 256, (height, width, 3), dtype=np.uint8)
  else:
    pixels = np.full((height, width, 3), color, np.uint8)
  return tf.io.encode_jpeg(pixels, quality=100)


def test_imagenet_preprocessing_shapes_and_determinism():
  image = jpeg(180, 260)
  a = imagenet.preprocess_imagenet_train(image, tf.constant([1, 2]), 64)
  b = imagenet.preprocess_imagenet_train(image, tf.constant([1, 2]), 64)
  c = imagenet.preprocess_imagenet_train(image, tf.constant([1, 3]), 64)
  assert a.shape == (64, 64, 3) and a.dtype == tf.float32
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.array_equal(a.numpy(), c.numpy())
  assert imagenet.preprocess_imagenet_eval(image, 48).shape == (48, 48, 3)


def test_imagenet_normalisation_of_a_flat_image():
  color = [200, 100, 50]
  expected = ((np.array(color) - np.array(imagenet.MEAN_RGB))
              / np.array(imagenet.STDDEV_RGB))
  image = jpeg(120, 90, color=color)
  for out in (imagenet.preprocess_imagenet_eval(image, 32),
              imagenet.preprocess_imagenet_train(image, tf.constant([0, 0]),
                                                 32)):
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected,
                                                            (32, 32, 3)),
                               atol=0.05)


class FakeImagenetBuilder:
  """Stands for a prepared `imagenet2012` builder: JPEGs made in memory."""

  def __init__(self, num_train, num_eval):
    self.sizes = {"train": num_train, "validation": num_eval}
    self.info = type("Info", (), {"splits": {
        k: type("Split", (), {"num_examples": v})()
        for k, v in self.sizes.items()}})()

  def as_dataset(self, split, shuffle_files=False, read_config=None,
                 decoders=None):
    del shuffle_files, read_config, decoders
    name, bounds = split.rstrip("]").split("[")
    start, end = (int(x) for x in bounds.split(":"))
    offset = 0 if name == "train" else 10_000
    images = [jpeg(40 + i % 7, 50, seed=offset + i).numpy()
              for i in range(start, end)]
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(start, end) % 1000})


def test_imagenet_pipeline_resumes_inside_an_epoch(monkeypatch):
  builder = FakeImagenetBuilder(num_train=24, num_eval=6)
  monkeypatch.setattr(imagenet, "_builder", lambda config: builder)
  config = default.get_config()
  config.image_size = 32
  config.batch_size = 4
  config.eval_batch_size = 4
  config.shuffle_buffer_size = 8
  assert data.dataset_info(config) == data.DatasetInfo(
      "imagenet2012", 1000, (32, 32, 3), 24, 6)
  batches = runs.take(data.train_iterator(config, local_device_count=2), 8)
  assert batches[0]["image"].shape == (2, 2, 32, 32, 3)
  resumed = runs.take(data.train_iterator(config, start_step=3,
                                     local_device_count=2), 5)
  for x, y in zip(batches[3:], resumed):
    runs.assert_batches_equal(x, y)
  # The first epoch (6 steps) covers 24 distinct labels.
  labels = np.concatenate([b["label"].reshape(-1) for b in batches[:6]])
  assert sorted(labels) == list(range(24))
  evals = list(data.eval_iterator(config, local_device_count=2))
  assert len(evals) == 2 and sum(b["mask"].sum() for b in evals) == 6


# ---------------------------------------------------------------------------
# Errors.


def test_unprepared_tfds_dataset_is_one_clear_line(tmp_path, caplog):
  caplog.set_level(logging.DEBUG)
  config = cifar10_config.get_config()
  config.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetError) as err:
    data.dataset_info(config)
  message = str(err.value)
  assert "\n" not in message
  assert "cifar10" in message and "tfds build cifar10" in message
  assert str(tmp_path) in message
  config = default.get_config()
  config.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetError, match="downloads/manual"):
    data.dataset_info(config)
  assert not list(tmp_path.iterdir())  # Nothing was downloaded or written.
  # No TFDS warning about the missing folders before the error.
  warned = [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING]
  assert warned == []


def test_unknown_dataset_and_bad_batch_sizes():
  with pytest.raises(data.DatasetError, match="'digits'"):
    data.dataset_info(digits_config(dataset="mnist"))
  with pytest.raises(ValueError, match="local device count 3"):
    data.train_iterator(digits_config(), local_device_count=3)
  with pytest.raises(ValueError, match="process count 3"):
    data.train_iterator(digits_config(batch_size=32), process_count=3,
                        process_index=0, local_device_count=1)
  with pytest.raises(ValueError, match="larger than"):
    data.steps_per_epoch(digits_config(batch_size=2048))
  with pytest.raises(ValueError, match="start_step"):
    data.train_iterator(digits_config(), start_step=-1, local_device_count=1)


def test_digits_validation_is_held_out_of_training():
  config = quickstart.get_config()
  config.validation_size = 300
  info = data.dataset_info(config)
  assert (info.num_train, info.num_eval) == (1200, 300)
  train = digits.load_split("train", 300).images.reshape(1200, -1)
  val = digits.load_split("test", 300).images.reshape(300, -1)
  rows = lambda a: {r.tobytes() for r in a}
  assert not rows(train) & rows(val)
  # Stratified: 30 of each class (the 1500 training digits are ~150 each).
  counts = np.bincount(digits.load_split("test", 300).labels, minlength=10)
  assert counts.sum() == 300 and counts.min() >= 29 and counts.max() <= 31


def test_tiny_validation_splits_are_refused_or_warned(caplog):
  from optg_jax.data import common  # pylint: disable=g-import-not-at-top
  labels = np.repeat(np.arange(10), 100)
  split = (np.zeros((1000, 2, 2, 1), np.float32), labels)
  with pytest.raises(data.DatasetError, match="validation_size 1 holds out "
                     "fewer images than the 10 classes"):
    common.hold_out(split, 1)
  with caplog.at_level("WARNING"):
    (train, _), (images, held_out) = common.hold_out(split, 20)
  assert len(held_out) == 20 and len(train) == 980
  assert np.bincount(held_out, minlength=10).tolist() == [2] * 10
  assert "Evaluating on 20 held-out images: one image is 5 points" in (
      caplog.text)
