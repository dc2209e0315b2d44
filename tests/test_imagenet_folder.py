"""Tests of the 'imagenet_folder' source (optg_jax/data/imagenet_folder.py):
a tree of real JPEGs made with PIL at ImageNet's sizes, with a CMYK JPEG, a
greyscale JPEG and a PNG named `.JPEG` as ILSVRC 2012 has; the listing, the
decoding, both recipes, determinism, resumption, sharding, evaluation, bad
trees and bad files, and runs through `launch/train.py`. Also
`benchmarks/input_pipeline.py` with small sizes."""

import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import imagenet as imagenet_config
from optg_jax import data
from optg_jax.data import common
from optg_jax.data import imagenet
from optg_jax.data import imagenet_folder
import runs

# ImageNet's commonest sizes, (height, width).
SIZES = ((375, 500), (500, 375), (333, 500))
# Synsets of ILSVRC 2012, made in an order that is not the sorted one.
CLASSES = ("n01484850", "n01440764", "n01443537")
SPECIAL = {"cmyk": "n01440764", "grey": "n01443537", "png": "n01484850"}
# The flat tree: example i is a flat grey image of level FIRST_LEVEL + STEP*i.
FIRST_LEVEL, STEP = 20, 7
FLAT_TRAIN, FLAT_VAL = 7, 3  # Files per class.


def photo(height, width, seed):
  """A smooth colour picture with a little noise, as a PIL image."""
  rng = np.random.default_rng(seed)
  y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width),
                     indexing="ij")
  phase = rng.uniform(0, 2 * np.pi, 2)
  pixels = np.stack([127 + 90 * np.sin(2 * np.pi * (1.3 * x + 0.6 * y)
                                       + phase[0]),
                     40 + 180 * x * y,
                     127 + 90 * np.cos(2 * np.pi * (0.7 * x - 1.1 * y)
                                       + phase[1])], -1)
  pixels += rng.normal(0, 4, pixels.shape)
  return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image, fmt="JPEG", **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def write(path, contents):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(contents)


def special_image(kind):
  """The PIL image written as `special_<kind>.JPEG`."""
  picture = photo(375, 500, seed={"cmyk": 1, "grey": 2, "png": 3}[kind])
  return picture.convert({"cmyk": "CMYK", "grey": "L", "png": "RGB"}[kind])


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
  """3 classes of JPEGs at quality 90 (4 training, 2 validation images
  each), plus a CMYK, a greyscale and a PNG-as-.JPEG training image."""
  root = tmp_path_factory.mktemp("photos")
  seed = 10
  for split, count in (("train", 4), ("val", 2)):
    for name in CLASSES:
      for i in range(count):
        seed += 1
        write(str(root / split / name / f"{name}_{i}.JPEG"),
              encode(photo(*SIZES[seed % 3], seed), quality=90))
  for kind, name in SPECIAL.items():
    fmt = "PNG" if kind == "png" else "JPEG"
    write(str(root / "train" / name / f"special_{kind}.JPEG"),
          encode(special_image(kind), fmt, quality=90))
  return root


def flat_level(index):
  return FIRST_LEVEL + STEP * index


def write_flat_tree(root):
  """Flat grey JPEGs, example i (train, then val) at `flat_level(i)`, so
  that any crop of an image tells which file it came from."""
  index = 0
  for split, count in (("train", FLAT_TRAIN), ("val", FLAT_VAL)):
    for name in CLASSES:
      for i in range(count):
        pixels = np.full(SIZES[index % 3] + (3,), flat_level(index), np.uint8)
        write(os.path.join(root, split, name, f"{i:02d}.JPEG"),
              encode(Image.fromarray(pixels), quality=90))
        index += 1
  return root


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
  return write_flat_tree(str(tmp_path_factory.mktemp("flat")))


def flat_ids(images):
  """The flat-tree indices of preprocessed images `[..., H, W, 3]`."""
  pixels = (images * np.array(imagenet.STDDEV_RGB)
            + np.array(imagenet.MEAN_RGB))
  level = pixels.reshape(-1, images.shape[-3] * images.shape[-2], 3).mean(1)
  assert np.ptp(level, axis=-1).max() < 1.5  # Grey: r = g = b.
  ids = (level[:, 0] - FIRST_LEVEL) / STEP
  np.testing.assert_allclose(ids, np.round(ids), atol=0.2)
  return np.round(ids).astype(int).tolist()


def expected_flat_ids(split):
  """The flat-tree indices of a split's examples in sorted order."""
  per_class, offset = ((FLAT_TRAIN, 0) if split == "train" else
                       (FLAT_VAL, FLAT_TRAIN * len(CLASSES)))
  order = sorted(range(len(CLASSES)), key=lambda c: CLASSES[c])
  return [offset + c * per_class + i for c in order for i in range(per_class)]


def folder_config(root, **overrides):
  config = imagenet_config.get_config()
  config.dataset = "imagenet_folder"
  config.data_dir = str(root)
  config.image_size = 32
  config.batch_size = 4
  config.eval_batch_size = 4
  for key, value in overrides.items():
    config[key] = value
  return config


# ---------------------------------------------------------------------------
# Listing and decoding.


def test_info_lists_sorted_classes_and_every_file(flat_tree):
  assert "imagenet_folder" in data.DATASETS
  config = folder_config(flat_tree)
  assert data.dataset_info(config) == data.DatasetInfo(
      "imagenet_folder", 3, (32, 32, 3), 21, 9)
  tree = imagenet_folder.read_tree(flat_tree)
  assert tree.classes == tuple(sorted(CLASSES))
  assert tree.train.files[:2].tolist() == [b"n01440764/00.JPEG",
                                           b"n01440764/01.JPEG"]
  np.testing.assert_array_equal(tree.train.labels, np.repeat([0, 1, 2], 7))
  np.testing.assert_array_equal(tree.val.labels, np.repeat([0, 1, 2], 3))
  assert tree.val.files[-1] == b"n01484850/02.JPEG"


@pytest.mark.parametrize("kind", ["cmyk", "grey", "png"])
def test_cmyk_grey_and_png_files_decode_to_rgb(photo_tree, kind):
  path = photo_tree / "train" / SPECIAL[kind] / f"special_{kind}.JPEG"
  image_bytes = tf.constant(path.read_bytes())
  expected = np.asarray(Image.open(path).convert("RGB"), np.float64)
  whole = imagenet.decode_rgb(image_bytes).numpy()
  assert whole.shape == (375, 500, 3) and whole.dtype == np.uint8
  tolerance = 0 if kind == "png" else 2  # libjpeg against PIL's libjpeg.
  assert np.abs(whole - expected).max() <= tolerance
  window = imagenet.decode_window(
      image_bytes, lambda height, width: tf.stack([30, 41, height // 2, 150]))
  assert window.shape == (187, 150, 3)
  assert np.abs(window.numpy() - expected[30:217, 41:191]).max() <= tolerance
  if kind != "grey":  # The colours are not grey.
    assert np.abs(whole[..., 0] - whole[..., 2].astype(float)).mean() > 20


@pytest.mark.parametrize("augmentation", imagenet.AUGMENTATIONS)
def test_both_recipes_read_cmyk_grey_and_png_files(photo_tree, augmentation):
  """Each special file gives what the same pixels give in the other format
  (the PNG against a JPEG, the JPEGs against PNGs of PIL's RGB): the same
  crop window and the same colours."""
  for kind, name in SPECIAL.items():
    path = photo_tree / "train" / name / f"special_{kind}.JPEG"
    rgb = Image.open(path).convert("RGB")
    reference = (encode(rgb, quality=100, subsampling=0) if kind == "png"
                 else encode(rgb, "PNG"))
    for image_bytes in (path.read_bytes(), reference):
      assert imagenet_folder.is_image_header(image_bytes[:16])
    outputs = []
    for image_bytes in (path.read_bytes(), reference):
      image_bytes = tf.constant(image_bytes)
      outputs.append([
          imagenet.preprocess_imagenet_train(
              image_bytes, tf.constant([5, seed]), 64,
              augmentation=augmentation).numpy() for seed in range(3)]
          + [imagenet.preprocess_imagenet_eval(
              image_bytes, 64, augmentation=augmentation).numpy()])
    for ours, theirs in zip(*outputs):
      assert ours.shape == (64, 64, 3) and ours.dtype == np.float32
      # 0.05 is 3 levels of [0, 255]; a JPEG at quality 100 is 8 levels off
      # the PNG's noisy pixels at worst. A window one pixel off would be
      # 0.08 off on average.
      assert np.abs(ours - theirs).mean() < 0.03
      assert np.abs(ours - theirs).max() < (0.15 if kind == "png" else 0.05)


@pytest.mark.parametrize("augmentation", imagenet.AUGMENTATIONS)
def test_pipelines_of_both_recipes(photo_tree, augmentation):
  config = folder_config(photo_tree, augmentation=augmentation)
  train = next(data.train_iterator(config, local_device_count=2))
  assert train["image"].shape == (2, 2, 32, 32, 3)
  assert train["image"].dtype == np.float32
  assert train["label"].shape == (2, 2)
  evals = list(data.eval_iterator(config, local_device_count=2))
  assert len(evals) == 2 and sum(b["mask"].sum() for b in evals) == 6
  labels = np.concatenate([b["label"].reshape(-1) for b in evals])
  np.testing.assert_array_equal(labels[:6], [0, 0, 1, 1, 2, 2])
  # Normalised images: about zero mean, about unit deviation.
  images = train["image"]
  assert abs(images.mean()) < 1.0 and 0.2 < images.std() < 2.0


# ---------------------------------------------------------------------------
# Order, resumption, sharding, evaluation.


def test_training_is_deterministic_resumable_and_reshuffled(flat_tree):
  config = folder_config(flat_tree)
  assert data.steps_per_epoch(config) == 5  # 21 // 4
  batches = runs.take(data.train_iterator(config, local_device_count=2), 12)
  ids = [flat_ids(b["image"]) for b in batches]
  train_ids = expected_flat_ids("train")
  labels = {i: train_ids.index(i) // FLAT_TRAIN for i in train_ids}
  for b, batch_ids in zip(batches, ids):
    assert b["label"].reshape(-1).tolist() == [labels[i] for i in batch_ids]
  epochs = [sum(ids[5 * e:5 * e + 5], []) for e in (0, 1)]
  for epoch in epochs:
    assert len(set(epoch)) == 20 and set(epoch) <= set(train_ids)
  assert epochs[0] != epochs[1]
  for start_step in (3, 5, 9):
    resumed = runs.take(data.train_iterator(config, start_step=start_step,
                                       local_device_count=2),
                   12 - start_step)
    for x, y in zip(batches[start_step:], resumed):
      runs.assert_batches_equal(x, y)
  again = runs.take(data.train_iterator(config, local_device_count=1), 12)
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["image"].reshape(y["image"].shape),
                                  y["image"])
  other_seed = runs.take(data.train_iterator(folder_config(flat_tree, seed=1),
                                        local_device_count=2), 5)
  assert sum([flat_ids(b["image"]) for b in other_seed], []) != epochs[0]


def test_two_processes_read_disjoint_shards_that_cover_the_split(flat_tree):
  config = folder_config(flat_tree)
  train_ids = expected_flat_ids("train")
  seen = []
  for process in range(2):
    start, end = common.shard_bounds(21, process, 2)
    shard = set(train_ids[start:end])
    batches = runs.take(data.train_iterator(config, process_index=process,
                                       process_count=2,
                                       local_device_count=1), 10)
    assert batches[0]["image"].shape == (1, 2, 32, 32, 3)
    for epoch in (batches[:5], batches[5:]):
      ids = sum([flat_ids(b["image"]) for b in epoch], [])
      assert len(set(ids)) == 10 and set(ids) <= shard
    seen.append(shard)
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(train_ids)


@pytest.mark.parametrize("process_count", [1, 2])
def test_evaluation_reads_every_file_once_in_order(flat_tree, process_count):
  config = folder_config(flat_tree)
  ids = []
  for process in range(process_count):
    batches = list(data.eval_iterator(config, process_index=process,
                                      process_count=process_count,
                                      local_device_count=2))
    assert len(batches) == data.num_eval_steps(config, process_count)
    images = np.concatenate([b["image"].reshape(-1, 32, 32, 3)
                             for b in batches])
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    assert (images[mask == 0] == 0).all()
    ids += flat_ids(images[mask == 1])
  assert ids == expected_flat_ids("val")


# ---------------------------------------------------------------------------
# Bad trees and bad files.


def _no_val(root):
  shutil.rmtree(os.path.join(root, "val"))


def _empty_class(root):
  os.remove(os.path.join(root, "val", "c", "0.JPEG"))


def _class_only_in_train(root):
  os.makedirs(os.path.join(root, "train", "d"))
  write(os.path.join(root, "train", "d", "0.JPEG"), encode(photo(8, 8, 0)))


def _class_only_in_val(root):
  write(os.path.join(root, "val", "e", "0.JPEG"), encode(photo(8, 8, 0)))


def _no_classes(root):
  for split in ("train", "val"):
    shutil.rmtree(os.path.join(root, split))
    os.makedirs(os.path.join(root, split))
  write(os.path.join(root, "train", "loose.JPEG"), encode(photo(8, 8, 0)))


def _empty_file(root):
  write(os.path.join(root, "train", "c", "empty.JPEG"), b"")


def _garbage_file(root):
  write(os.path.join(root, "val", "c", "notes.JPEG"), b"not an image\n")


BAD_TREES = {
    "no train": (lambda root: shutil.rmtree(os.path.join(root, "train")),
                 "{root}/train is not a folder", "holds train/ and val/"),
    "no val": (_no_val, "{root}/val is not a folder",
               "--config.data_dir"),
    "no classes": (_no_classes, "{root}/train holds no class folder",
                   "one sub-folder per class"),
    "empty class": (_empty_class, "empty class folders: {root}/val/c;",
                    "fill them, or remove the class"),
    "class only in train": (_class_only_in_train,
                            "class folders in {root}/train but not in "
                            "{root}/val: d;", "add them to {root}/val"),
    "class only in val": (_class_only_in_val,
                          "class folders in {root}/val but not in "
                          "{root}/train: e;", "add them to {root}/train"),
    "empty file": (_empty_file, "empty or non-image files",
                   ": {root}/train/c/empty.JPEG; delete or replace them"),
    "garbage file": (_garbage_file, "empty or non-image files",
                     ": {root}/val/c/notes.JPEG; delete or replace them"),
}


def small_tree(root):
  """Two classes, one JPEG each in both splits."""
  for split in ("train", "val"):
    for name in ("b", "c"):
      write(os.path.join(root, split, name, "0.JPEG"),
            encode(photo(12, 16, 0)))
  return root


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_trees_raise_one_clear_error(tmp_path, case):
  root = small_tree(str(tmp_path / case.replace(" ", "_")))
  assert data.dataset_info(folder_config(root)).num_classes == 2
  root = small_tree(str(tmp_path / "bad"))
  spoil, *fragments = BAD_TREES[case]
  spoil(root)
  with pytest.raises(data.DatasetError) as raised:
    data.dataset_info(folder_config(root))
  message = str(raised.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment.format(root=root) in message, message


def test_unset_data_dir_and_many_bad_files_are_named(tmp_path):
  with pytest.raises(data.DatasetError, match="needs --config.data_dir=DIR"):
    data.dataset_info(folder_config(""))
  root = small_tree(str(tmp_path / "tree"))
  for i in range(5):
    write(os.path.join(root, "train", "b", f"{i}.txt"), b"x" * i)
  with pytest.raises(data.DatasetError) as raised:
    data.dataset_info(folder_config(root))
  assert str(raised.value) == (
      f"empty or non-image files (neither JPEG, PNG, GIF nor BMP by their "
      f"first bytes): {root}/train/b/0.txt, {root}/train/b/1.txt, "
      f"{root}/train/b/2.txt and 2 more; delete or replace them")


def corrupt(path):
  """Keeps a JPEG's first 16 bytes and replaces the rest with noise."""
  with open(path, "rb") as f:
    header = f.read(16)
  noise = np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes()
  write(path, header + noise)


def test_a_file_that_cannot_be_decoded_stands_as_a_blank_image(
    flat_tree, tmp_path):
  root = str(tmp_path / "corrupt")
  shutil.copytree(flat_tree, root)
  bad_train = os.path.join(root, "train", "n01443537", "03.JPEG")
  bad_val = os.path.join(root, "val", "n01440764", "01.JPEG")
  for path in (bad_train, bad_val):
    corrupt(path)
    with open(path, "rb") as f:
      with pytest.raises(tf.errors.InvalidArgumentError):
        imagenet.preprocess_imagenet_eval(tf.constant(f.read()))
  good, bad = folder_config(flat_tree), folder_config(root)
  assert data.dataset_info(bad)[1:] == (3, (32, 32, 3), 21, 9)
  before = len(imagenet_folder.decode_failures())
  expected = runs.take(data.train_iterator(good, local_device_count=2), 10)
  batches = runs.take(data.train_iterator(bad, local_device_count=2), 10)
  blank_id = expected_flat_ids("train")[FLAT_TRAIN + 3]
  blanks = 0
  occurrences = sum(flat_ids(x["image"]).count(blank_id) for x in expected)
  assert occurrences >= 1
  for x, y in zip(expected, batches):
    np.testing.assert_array_equal(x["label"], y["label"])
    ids = flat_ids(x["image"])
    for i, ours, theirs in zip(ids, y["image"].reshape(-1, 32, 32, 3),
                               x["image"].reshape(-1, 32, 32, 3)):
      if i == blank_id:
        assert (ours == 0).all()
        blanks += 1
      else:
        np.testing.assert_array_equal(ours, theirs)
  assert blanks == occurrences
  assert imagenet_folder.decode_failures()[before:] == [bad_train] * blanks
  # Resumed at the failing batch and after it: the same stream.
  step = next(i for i, x in enumerate(expected)
              if blank_id in flat_ids(x["image"]))
  for start_step in (step, step + 1):
    resumed = runs.take(data.train_iterator(bad, start_step=start_step,
                                       local_device_count=2), 10 - start_step)
    for x, y in zip(batches[start_step:], resumed):
      runs.assert_batches_equal(x, y)
  evals = list(data.eval_iterator(bad, local_device_count=2))
  images = np.concatenate([b["image"].reshape(-1, 32, 32, 3) for b in evals])
  mask = np.concatenate([b["mask"].reshape(-1) for b in evals])
  assert mask.sum() == 9 and (images[1] == 0).all()
  assert flat_ids(np.delete(images[:9], 1, axis=0)) == [
      i for k, i in enumerate(expected_flat_ids("val")) if k != 1]
  assert imagenet_folder.decode_failures()[-1] == bad_val


# ---------------------------------------------------------------------------
# Runs.


def launch_command(root, workdir, *overrides):
  return [sys.executable, os.path.join(runs.ROOT, "launch", "train.py"),
          "--config=" + os.path.join(runs.ROOT, "configs", "imagenet.py"),
          "--config.dataset=imagenet_folder", f"--config.data_dir={root}",
          f"--workdir={workdir}", *overrides]


@pytest.mark.long
def test_launch_trains_and_evaluates_from_a_tree(photo_tree, tmp_path):
  """The ImageNet config from the tree, shrunk: ResNet-20 at 32x32."""
  workdir = tmp_path / "run"
  result = subprocess.run(
      launch_command(photo_tree, workdir, "--config.model=resnet20_cifar",
                     "--config.image_size=32", "--config.batch_size=4",
                     "--config.eval_batch_size=4",
                     "--config.num_train_steps=2"),
      cwd=runs.ROOT, env=runs.device_env(1), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = runs.read_summary(workdir)
  assert summary["steps"] == 2 and summary["eval_examples"] == 6
  assert 0.0 <= summary["eval_accuracy"] <= 1.0
  assert "imagenet_folder: 3 classes, 15 training and 6 validation files" in (
      result.stdout + result.stderr)


@pytest.mark.slow
def test_launch_refuses_a_bad_tree_in_one_line_and_writes_nothing(tmp_path):
  root = small_tree(str(tmp_path / "tree"))
  _empty_file(root)
  workdir = tmp_path / "run"
  result = subprocess.run(launch_command(root, workdir), cwd=runs.ROOT,
                          env=runs.device_env(1), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert lines == [f"error: empty or non-image files (neither JPEG, PNG, GIF "
                   f"nor BMP by their first bytes): "
                   f"{root}/train/c/empty.JPEG; delete or replace them"]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# benchmarks/input_pipeline.py


BENCHMARK = os.path.join(runs.ROOT, "benchmarks", "input_pipeline.py")
PIPELINES = ["baseline: decode + resize"] + [
    f"{recipe} {stage}, {source}" for recipe in imagenet.AUGMENTATIONS
    for stage in ("train", "eval") for source in ("bytes", "folder")]


@pytest.mark.long
def test_input_pipeline_benchmark_prints_every_row():
  result = subprocess.run(
      [sys.executable, BENCHMARK, "--num_images=12", "--batch_size=4",
       "--image_size=32", "--repeats=1", "--accelerator_rate=1000"],
      capture_output=True, text=True, timeout=600, env=runs.device_env(1))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "images: 12 generated JPEGs" in out and "batch 4" in out, out
  assert "1 core: num_parallel_calls=1, private_threadpool_size=1" in out
  rows = re.findall(r"^  (\S.*?) +([0-9.]+) +([0-9.]+) +([0-9.]+) +"
                    r"([0-9.]+)$", out, re.M)
  assert [row[0] for row in rows] == PIPELINES, out
  for name, one_core, per_cpu_second, all_cores, cores in rows:
    assert min(map(float, (one_core, per_cpu_second, all_cores))) > 0, name
    assert float(cores) == pytest.approx(1000 / float(per_cpu_second),
                                         rel=0.01, abs=0.051), name


@pytest.mark.parametrize("flag", ["--num_images=4", "--repeats=0",
                                  "--quality=101", "--image_size=x"])
def test_input_pipeline_benchmark_refuses_bad_flags(flag):
  result = subprocess.run([sys.executable, BENCHMARK, flag],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith("input_pipeline.py: error: "), (
      result.stderr)
  assert flag.split("=")[0] in result.stderr
