"""ImageNet from folders of image files: `DIR/{train,val}/CLASS/*`.

  python launch/train.py --config=configs/imagenet.py --workdir=W \
      --config.dataset=imagenet_folder --config.data_dir=DIR

The classes are the sorted names of the sub-folders of `DIR/train` (label =
index in that list, so the synsets `n01440764`, ... of ILSVRC 2012 give the
usual labels); `DIR/val` must hold the same class folders (the flat
validation archive must first be sorted into them). A split's examples are
the files of its class folders, sorted by class and then by name; hidden
files (a name starting with '.'), sub-folders of class folders and files
beside the class folders are ignored. Any number of classes works (a subset
of ImageNet, Imagenette, ...).

The images are preprocessed exactly as those of `imagenet2012`: the recipe
`config.augmentation` of `optg_jax.data.imagenet`, the same per-process
shards (`common.shard_bounds` over the sorted training files), the same
seeds (`(seed, epoch, process_index)` with `common.SHUFFLE_TAG` and
`common.AUGMENT_TAG`, per example `common.example_seed`). An epoch visits
this process's shard in a full random permutation (the file list is in
memory, so no shuffle buffer is needed); resuming inside an epoch drops the
earlier files before they are read. The format is told from the bytes:
greyscale and CMYK JPEGs and ILSVRC's PNG named `.JPEG` all come out RGB.

The tree is listed once per process and run (`os.scandir`, one thread per
class folder; nothing is written anywhere), when `info` is first called:
the harness calls it before it writes to the workdir.

Bad trees and bad files, the choice made here:

- A missing `train/` or `val/`, no class folder, a class folder without
  files, or a class folder in one split and not the other raises one
  `DatasetError` up front, naming the path and the fix.
- Every file's first 16 bytes are read up front: listing and checking
  took 5 microseconds a file on a warm page cache (55,000 files on a 2-core
  VM), about 7 s for ImageNet's 1.33 million files; a cold disk or a
  network file system takes longer, which the 32 threads partly hide. A
  file that is empty or is not a JPEG, PNG, GIF or BMP by its first bytes
  raises one `DatasetError` up front, naming the files, to be deleted or
  replaced. Nothing is skipped: the split is what the tree holds.
- A file that passes that check but cannot be read or decoded (truncated,
  corrupt inside) is only found when the pipeline reaches it, and it does
  not stop the run. The pipeline raises at the batch that holds it; the
  registry (`optg_jax.data`) then builds that batch again with
  `careful=True`, where each example is a one-element dataset whose error
  is caught, and goes on with the next batch. The file becomes a blank
  image (zeros: the mean colour after normalisation) with its label, in
  its place, so the batches, their order and a resumed run are the same as
  ever; a warning names the file and `decode_failures()` lists the files
  met so far in this process. A blank evaluation image counts as an example
  (almost surely a wrong answer). Reading every example the careful way
  would cost 11-13% more CPU time an image (measured with both recipes),
  hence only for a failed batch.
"""

import concurrent.futures
import functools
import os
import threading
import time
from typing import List, NamedTuple, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from optg_jax.data import common
from optg_jax.data import imagenet

NAME = "imagenet_folder"
SPLITS = ("train", "val")
# The first bytes of the formats that `tf.io.decode_image` reads.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a",
              b"BM")
HEADER_BYTES = 16
LISTING_THREADS = 32
# Files named in an error message; the message gives the count of the rest.
NAMED_FILES = 3

# The registry (`optg_jax.data`) builds a batch whose pipeline raised again
# with `careful=True`: see the module docstring.
REBUILDS_FAILED_BATCHES = True

_LAYOUT = ("DIR/train/CLASS/IMAGE and DIR/val/CLASS/IMAGE, one sub-folder "
           "per class in each split")

_failures: List[str] = []
_failures_lock = threading.Lock()


class Split(NamedTuple):
  """A split's files, sorted by class, then by name.

  Attributes:
    root: the split's folder.
    files: `CLASS/NAME` of each file, relative to `root`, as bytes.
    labels: int32 labels, the index of `CLASS` among the classes.
  """
  root: str
  files: np.ndarray
  labels: np.ndarray


class Tree(NamedTuple):
  """A listed tree.

  Attributes:
    classes: the sorted class folder names.
    train: the training split.
    val: the validation split.
  """
  classes: Tuple[str, ...]
  train: Split
  val: Split


def data_dir(config) -> str:
  """`config.data_dir`, which must name the folder of `train/` and `val/`."""
  directory = config.get("data_dir", None)
  if not directory:
    raise common.DatasetError(
        f"dataset {NAME!r} needs --config.data_dir=DIR, the folder that "
        f"holds {_LAYOUT}")
  return os.path.abspath(os.path.expanduser(directory))


def _class_folders(root: str) -> List[str]:
  if not os.path.isdir(root):
    raise common.DatasetError(
        f"{root} is not a folder: dataset {NAME!r} reads {_LAYOUT}; pass "
        "the folder that holds train/ and val/ as --config.data_dir")
  with os.scandir(root) as entries:
    names = sorted(e.name for e in entries
                   if not e.name.startswith(".") and e.is_dir())
  if not names:
    raise common.DatasetError(
        f"{root} holds no class folder: dataset {NAME!r} reads {_LAYOUT}")
  return names


def is_image_header(header: bytes) -> bool:
  """Whether a file's first bytes are those of a format we can decode."""
  return header.startswith(SIGNATURES)


def _list_class(folder: str) -> Tuple[List[str], List[str]]:
  """`(sorted file names, names of the files that are no image)`."""
  with os.scandir(folder) as entries:
    names = sorted(e.name for e in entries
                   if not e.name.startswith(".") and e.is_file())
  bad = []
  for name in names:
    fd = os.open(os.path.join(folder, name), os.O_RDONLY)  # Faster than open.
    try:
      if not is_image_header(os.read(fd, HEADER_BYTES)):
        bad.append(name)
    finally:
      os.close(fd)
  return names, bad


def _names(paths, limit=NAMED_FILES) -> str:
  named = ", ".join(paths[:limit])
  if len(paths) > limit:
    named += f" and {len(paths) - limit} more"
  return named


@functools.lru_cache(maxsize=4)
def read_tree(directory: str) -> Tree:
  """Lists and checks the tree in `directory` (once per process).

  Args:
    directory: the folder that holds `train/` and `val/`.

  Returns:
    The `Tree`.

  Raises:
    DatasetError: if the tree is not a tree of classes, a class folder is
      empty or in one split only, or a file is empty or no image by its
      first bytes; the message names the paths and the fix.
  """
  begin = time.time()
  roots = {split: os.path.join(directory, split) for split in SPLITS}
  folders = {split: _class_folders(root) for split, root in roots.items()}
  classes = folders["train"]
  for split, other in (("train", "val"), ("val", "train")):
    alone = sorted(set(folders[split]) - set(folders[other]))
    if alone:
      raise common.DatasetError(
          f"class folders in {roots[split]} but not in {roots[other]}: "
          f"{_names(alone)}; both splits need the same classes: add them "
          f"to {roots[other]} or remove them from {roots[split]}")
  jobs = [(split, c) for split in SPLITS for c in classes]
  with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
    listings = list(pool.map(
        lambda job: _list_class(os.path.join(roots[job[0]], job[1])), jobs))
  empty = [os.path.join(roots[s], c)
           for (s, c), (names, _) in zip(jobs, listings) if not names]
  if empty:
    raise common.DatasetError(
        f"empty class folders: {_names(empty)}; fill them, or remove the "
        "class from both train/ and val/")
  bad = [os.path.join(roots[s], c, n)
         for (s, c), (_, bad_names) in zip(jobs, listings) for n in bad_names]
  if bad:
    raise common.DatasetError(
        "empty or non-image files (neither JPEG, PNG, GIF nor BMP by their "
        f"first bytes): {_names(bad)}; delete or replace them")
  label = {c: i for i, c in enumerate(classes)}
  splits = {}
  for split in SPLITS:
    files, labels = [], []
    for (s, c), (names, _) in zip(jobs, listings):
      if s == split:
        files += [os.fsencode(os.path.join(c, n)) for n in names]
        labels += [label[c]] * len(names)
    splits[split] = Split(root=roots[split], files=np.array(files),
                          labels=np.array(labels, np.int32))
  logging.info("%s: %d classes, %d training and %d validation files in %s, "
               "listed in %.1f s", NAME, len(classes),
               len(splits["train"].labels), len(splits["val"].labels),
               directory, time.time() - begin)
  return Tree(classes=tuple(classes), **splits)


def info(config) -> common.DatasetInfo:
  """The DatasetInfo of the tree; raises DatasetError for a bad tree."""
  tree = read_tree(data_dir(config))
  image_size = int(config.get("image_size", imagenet.DEFAULT_IMAGE_SIZE))
  return common.DatasetInfo(
      name=NAME, num_classes=len(tree.classes),
      image_shape=(image_size, image_size, 3),
      num_train=len(tree.train.labels), num_eval=len(tree.val.labels))


def decode_failures() -> List[str]:
  """The files this process could not read or decode so far, in order."""
  with _failures_lock:
    return list(_failures)


def _blank_for(path, image_shape):
  """Notes a file that failed; returns the blank image that stands for it."""
  path = os.fsdecode(path.numpy())
  with _failures_lock:
    _failures.append(path)
    count = len(_failures)
  logging.warning("%s: cannot read or decode %s (%d such files so far): it "
                  "stands as a blank image with its label; replace or delete "
                  "it", NAME, path, count)
  return np.zeros(image_shape, np.float32)


def read_images(examples: tf.data.Dataset, make_image, image_shape,
                num_parallel_calls=tf.data.AUTOTUNE,
                careful: bool = False) -> tf.data.Dataset:
  """Reads and preprocesses each example's file, in order.

  Args:
    examples: a dataset of dicts with 'path' (a string) and 'label'.
    make_image: `(image_bytes, example) -> float32 image of image_shape`.
    image_shape: the output image's shape.
    num_parallel_calls: the number of files read and decoded at once.
    careful: False: a file that cannot be read or decoded raises a
      `tf.errors.OpError` when its element is reached. True: it gives a
      blank image instead, logged and listed in `decode_failures()`; 11-13%
      more CPU time an image (each example is a small dataset of its own).

  Returns:
    A dataset of `{'image', 'label'}`, one per example and in the same
    order.
  """

  def read(example):
    return {"image": make_image(tf.io.read_file(example["path"]), example),
            "label": example["label"]}

  if not careful:
    return examples.map(read, num_parallel_calls=num_parallel_calls)

  def blank(example):
    image = tf.py_function(lambda p: _blank_for(p, image_shape),
                           [example["path"]], tf.float32)
    return {"image": tf.ensure_shape(image, image_shape),
            "label": example["label"]}

  def one(example):
    example = tf.data.Dataset.from_tensors(example)
    decoded = example.map(read).ignore_errors()
    return decoded.concatenate(example.map(blank)).take(1)

  # Each example is a dataset of one element: the interleave keeps the order.
  return examples.interleave(one, block_length=1,
                             num_parallel_calls=num_parallel_calls,
                             deterministic=True)


def _example_paths(split: Split):
  root = common.to_tensor(np.array(os.fsencode(split.root + os.sep)))
  files = common.to_tensor(split.files)
  labels = common.to_tensor(split.labels)

  def example(index):
    return {"path": tf.strings.join([root, tf.gather(files, index)]),
            "label": tf.gather(labels, index)}

  return example


def _settings(config):
  augmentation = imagenet.check_augmentation(
      config.get("augmentation", imagenet.DEFAULT_AUGMENTATION))
  image_size = int(config.get("image_size", imagenet.DEFAULT_IMAGE_SIZE))
  return read_tree(data_dir(config)), augmentation, image_size


def train_epoch_fn(config, *, process_index: int, process_count: int,
                   batch: int, num_parallel_calls=tf.data.AUTOTUNE):
  """The per-epoch training pipeline of this process.

  Args:
    config: the run's config (`data_dir`, `seed`, `image_size`,
      `augmentation`).
    process_index: this process.
    process_count: the number of processes.
    batch: the per-process batch size.
    num_parallel_calls: the number of files decoded at once.

  Returns:
    `make_epoch(epoch, first_step, num_steps, careful=False)`, a
    tf.data.Dataset of per-process batches for steps `first_step, ...,
    num_steps - 1` of the epoch (`careful` as in `read_images`).

  Raises:
    DatasetError: for a bad tree.
    ValueError: if `config.augmentation` is not one of
      `imagenet.AUGMENTATIONS`.
  """
  tree, augmentation, image_size = _settings(config)
  seed = int(config.seed)
  start, end = common.shard_bounds(len(tree.train.labels), process_index,
                                   process_count)
  example = _example_paths(tree.train)
  image_shape = (image_size, image_size, 3)

  def make_image(image_bytes, ex):
    return imagenet.preprocess_imagenet_train(
        image_bytes, ex["seed"], image_size, augmentation=augmentation)

  def make_epoch(epoch: int, first_step: int, num_steps: int,
                 careful: bool = False):
    rng = np.random.default_rng(common.derive_seed(
        seed, epoch, process_index, common.SHUFFLE_TAG))
    order = start + rng.permutation(end - start)
    first, last = first_step * batch, num_steps * batch
    augment_seed = common.derive_seed(seed, epoch, process_index,
                                      common.AUGMENT_TAG)

    def with_seed(index, position):
      return {**example(index),
              "seed": common.example_seed(augment_seed, position)}

    ds = tf.data.Dataset.from_tensor_slices(
        (order[first:last].astype(np.int64),
         np.arange(first, last, dtype=np.int64)))
    ds = ds.map(with_seed)
    ds = read_images(ds, make_image, image_shape, num_parallel_calls,
                     careful)
    return ds.batch(batch, drop_remainder=True)

  return make_epoch


def eval_examples(config, start: int, end: int, careful: bool = False,
                  num_parallel_calls=tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Validation files `start, ..., end - 1`, in order, preprocessed.

  `careful` as in `read_images`.

  Raises:
    DatasetError: for a bad tree.
    ValueError: if `config.augmentation` is not one of
      `imagenet.AUGMENTATIONS`.
  """
  tree, augmentation, image_size = _settings(config)

  def make_image(image_bytes, ex):
    del ex
    return imagenet.preprocess_imagenet_eval(image_bytes, image_size,
                                             augmentation=augmentation)

  ds = tf.data.Dataset.range(start, end).map(_example_paths(tree.val))
  return read_images(ds, make_image, (image_size, image_size, 3),
                     num_parallel_calls, careful)
