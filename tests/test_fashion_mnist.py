"""Fashion-MNIST source (generated IDX files), the validation hold-out, the
LeNets, and a short real run when the Debian package's files are there."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import fashion_mnist as fashion_config
from optg_jax import data
from optg_jax.data import common
from optg_jax.data import fashion_mnist
import idx_files
import runs


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("fmnist"))
  arrays = idx_files.make_dataset(directory)
  return directory, arrays


def config_for(directory, **overrides):
  config = fashion_config.get_config()
  config.data_dir = directory
  config.batch_size = 32
  config.eval_batch_size = 25
  for key, value in overrides.items():
    config[key] = value
  return config


def test_reads_idx_files_and_normalises(idx_dir):
  directory, (x_train, y_train, x_test, y_test) = idx_dir
  config = config_for(directory)
  info = data.dataset_info(config)
  assert info == common.DatasetInfo("fashion_mnist", 10, (28, 28, 1), 300, 60)
  train = fashion_mnist.load_split(config, "train")
  test = fashion_mnist.load_split(config, "test")
  assert train.images.shape == (300, 28, 28, 1)
  np.testing.assert_array_equal(train.labels, y_train)
  np.testing.assert_array_equal(test.labels, y_test)
  # Normalised with the training pixels' statistics.
  assert abs(train.images.mean()) < 1e-4
  assert abs(train.images.std() - 1) < 1e-4
  scaled = x_train / 255.0
  expected = (x_test[3] / 255.0 - scaled.mean()) / scaled.std()
  np.testing.assert_allclose(test.images[3, ..., 0], expected, atol=1e-5)


def test_train_and_eval_iterators(idx_dir):
  directory, (_, y_train, _, y_test) = idx_dir
  config = config_for(directory)
  assert data.steps_per_epoch(config) == 300 // 32
  batch = next(data.train_iterator(config, local_device_count=2))
  assert batch["image"].shape == (2, 16, 28, 28, 1)
  assert batch["label"].shape == (2, 16)
  # Resumes at any step: batch 11 of a fresh stream is batch 0 from step 11.
  fresh = data.train_iterator(config, local_device_count=1)
  for _ in range(11):
    next(fresh)
  np.testing.assert_array_equal(
      next(fresh)["image"],
      next(data.train_iterator(config, start_step=11,
                               local_device_count=1))["image"])
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in
                           data.eval_iterator(config, local_device_count=1)])
  np.testing.assert_array_equal(labels, y_test)


def test_validation_is_held_out_of_training_stratified(idx_dir):
  directory, (x_train, y_train, _, _) = idx_dir
  config = config_for(directory, validation_size=50)
  info = data.dataset_info(config)
  assert (info.num_train, info.num_eval) == (250, 50)
  train = fashion_mnist.load_split(config, "train")
  val = fashion_mnist.load_split(config, "test")
  # 5 of each of the 10 classes (30 each in the training split).
  assert np.bincount(val.labels, minlength=10).tolist() == [5] * 10
  # Disjoint and together the whole training split.
  rows = lambda a: {r.tobytes() for r in a.images.reshape(len(a.labels), -1)}
  assert not rows(train) & rows(val)
  assert len(rows(train) | rows(val)) == len({r.tobytes() for r in
                                              x_train.reshape(300, -1)})
  # The same split for every run, whatever its seed.
  config.seed = 7
  np.testing.assert_array_equal(
      fashion_mnist.load_split(config, "test").labels, val.labels)


def test_hold_out_rounds_to_exact_size():
  labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
  images = np.arange(15)
  (x, y), (xv, yv) = common.hold_out((images, labels), 4)
  assert len(yv) == 4 and len(y) == 11
  assert sorted(set(x) | set(xv)) == list(range(15))
  with pytest.raises(common.DatasetError, match="leaves no training"):
    common.hold_out((images, labels), 15)


def test_missing_files_error_names_directory_and_both_ways(tmp_path):
  config = config_for(str(tmp_path / "nowhere"))
  with pytest.raises(data.DatasetError) as info:
    data.dataset_info(config)
  message = str(info.value)
  assert str(tmp_path / "nowhere") in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


def test_malformed_idx_file_is_a_dataset_error(tmp_path):
  idx_files.make_dataset(str(tmp_path))
  path = tmp_path / fashion_mnist.FILES["train"][1]
  idx_files.write_idx(str(path), np.zeros((3, 2)), 2051)  # Wrong magic.
  with pytest.raises(data.DatasetError, match="magic number 2051"):
    data.dataset_info(config_for(str(tmp_path)))


def test_launch_missing_files_exit_2_nothing_written(tmp_path):
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, "launch/train.py", "--config=configs/fashion_mnist.py",
       f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'none'}"],
      cwd=runs.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "dataset-fashion-mnist" in errors[0]
  assert not workdir.exists()


@pytest.mark.slow
def test_short_real_run_on_installed_fashion_mnist(tmp_path):
  """One epoch of LeNet-300-100 on the real files (CI installs them)."""
  if not os.path.exists(os.path.join(fashion_mnist.DEFAULT_DIR,
                                     fashion_mnist.FILES["test"][0])):
    if os.environ.get("CI"):
      pytest.fail(f"CI must install dataset-fashion-mnist "
                  f"({fashion_mnist.DEFAULT_DIR} is empty)")
    pytest.skip("apt-get install dataset-fashion-mnist to run this test")
  from optg_jax import train  # pylint: disable=g-import-not-at-top
  config = fashion_config.get_config()
  config.model = "lenet_300_100"
  config.method = "dense"
  config.num_epochs = 1
  config.warmup_epochs = 0
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.log_every_steps = 50
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["eval_examples"] == 10000
  assert summary["steps"] == 60000 // 256
  # One epoch of a dense MLP on real Fashion-MNIST: far above chance.
  assert summary["eval_accuracy"] > 0.75
