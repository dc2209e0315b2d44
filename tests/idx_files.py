"""Writes small Fashion-MNIST-format IDX files for the tests."""

import gzip
import os

import numpy as np

from optg_jax.data import fashion_mnist


def write_idx(path, array, magic):
  array = np.asarray(array, np.uint8)
  header = magic.to_bytes(4, "big") + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def make_dataset(directory, num_train=300, num_test=60, seed=0):
  """Four IDX files of learnable 28x28 images: class c lights row band c.

  Returns `(train_images, train_labels, test_images, test_labels)` as uint8.
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  out = []
  for n in (num_train, num_test):
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(labels):
      images[i, 2 * c + 4:2 * c + 6, :] += 150
    out += [images.astype(np.uint8), labels.astype(np.uint8)]
  names = fashion_mnist.FILES["train"] + fashion_mnist.FILES["test"]
  for name, array in zip(names, [out[0], out[1], out[2], out[3]]):
    magic = 2051 if array.ndim == 3 else 2049
    write_idx(os.path.join(directory, name), array, magic)
  return tuple(out)
