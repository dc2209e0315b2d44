"""Images per second of the ImageNet input pipelines on this host's CPU.

Generates full-size JPEGs like ImageNet's (the sizes below, mean about
430x355; smooth colour fields with texture and grain, about 110 KB a file
at quality 90, ImageNet's mean), then times each pipeline over them, all in
this process:

- baseline: `tf.io.decode_jpeg` and `tf.image.resize` to the output size,
  no crop, no normalisation;
- for each recipe ("torchvision", "inception"), training and evaluation
  preprocessing (`optg_jax.data.imagenet`) fed two ways: encoded bytes held
  in memory, as TFDS's records hand them over ("bytes"), and the
  'imagenet_folder' source reading the files from a tree ("folder"; the
  files were just written, so they come from the page cache).

Each pipeline runs on one core (tf.data with one private thread, one
parallel call and one intra-op thread, no prefetch) and on all cores
(AUTOTUNE). A pass is timed from its first batch to its last, so the start
of a pipeline is left out. The script prints, per pipeline, the median over
`--repeats` passes (pipelines alternate within each repeat) of images per
second on one core, images per CPU second of the process on one core
(all its threads' CPU time: the work an image costs, whatever else runs on
the machine), images per second on all cores, and the cores that would feed
an accelerator taking `--accelerator_rate` images per second (its rate over
the images per CPU second).

  python benchmarks/input_pipeline.py [--num_images 512] [--repeats 5]
"""

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

# ImageNet's commonest sizes (height, width), 500x375 landscape the most.
SIZES = ((375, 500), (500, 375), (333, 500), (375, 500), (300, 400),
         (240, 320))
CLASSES = 4
RECIPES = ("torchvision", "inception")
# ResNet-50 training, batch 256, bf16, on one NVIDIA H200
# (docs/guides/benchmarks.md).
ACCELERATOR_RATE = 6780.0


class Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line and exit code 2."""

  def error(self, message):
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)


def parse_args(argv):
  parser = Parser(prog="input_pipeline.py",
                  description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=512,
                      help="JPEGs generated and read per pass")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224,
                      help="side of the output images")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed passes per pipeline (median)")
  parser.add_argument("--quality", type=int, default=90,
                      help="JPEG quality of the generated images")
  parser.add_argument("--accelerator_rate", type=float,
                      default=ACCELERATOR_RATE,
                      help="images/s an accelerator takes, for the cores "
                      "column")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for name in ("num_images", "batch_size", "image_size", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be positive, got {getattr(args, name)}")
  if args.num_images < 2 * args.batch_size:
    parser.error(f"--num_images must be at least twice --batch_size (a pass "
                 f"is timed from its first batch), got {args.num_images} "
                 f"images and batches of {args.batch_size}")
  if not 1 <= args.quality <= 100:
    parser.error(f"--quality must be in [1, 100], got {args.quality}")
  if not args.accelerator_rate > 0:
    parser.error(f"--accelerator_rate must be positive, got "
                 f"{args.accelerator_rate}")
  return args


def natural_image(rng, height, width) -> Image.Image:
  """A smooth colour field with mid-scale texture and fine grain."""
  field = Image.fromarray(rng.integers(0, 256, (5, 7, 3), np.uint8)).resize(
      (width, height), Image.BICUBIC)
  texture = Image.fromarray(np.clip(
      128 + rng.normal(0, 45, (height // 2, width // 2, 3)), 0, 255).astype(
          np.uint8)).resize((width, height), Image.BILINEAR)
  pixels = (np.asarray(field, np.float32)
            + np.asarray(texture, np.float32) - 128
            + rng.normal(0, 20, (height, width, 1)).astype(np.float32))
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_tree(root, num_images, quality, seed):
  """Writes `num_images` JPEGs to `root/train/CLASS/` (and links them in
  `root/val/CLASS/`); returns their bytes and their sizes."""
  rng = np.random.default_rng(seed)
  encoded, sizes = [], []
  for i in range(num_images):
    height, width = SIZES[i % len(SIZES)]
    buffer = io.BytesIO()
    natural_image(rng, height, width).save(buffer, "JPEG", quality=quality)
    encoded.append(buffer.getvalue())
    sizes.append((height, width))
    name = os.path.join(f"n{i % CLASSES:08d}", f"{i:06d}.JPEG")
    for split in ("train", "val"):
      os.makedirs(os.path.join(root, split, os.path.dirname(name)),
                  exist_ok=True)
    with open(os.path.join(root, "train", name), "wb") as f:
      f.write(encoded[-1])
    try:
      os.link(os.path.join(root, "train", name),
              os.path.join(root, "val", name))
    except OSError:  # A file system without hard links.
      shutil.copyfile(os.path.join(root, "train", name),
                      os.path.join(root, "val", name))
  return encoded, np.array(sizes)


def options(one_core: bool):
  """The pipelines' tf.data options, on one thread or on all cores."""
  from optg_jax.data import common  # pylint: disable=g-import-not-at-top
  opts = common.dataset_options()
  if one_core:
    opts.threading.private_threadpool_size = 1
    opts.threading.max_intra_op_parallelism = 1
  return opts


def pipelines(args, root, encoded):
  """`{name: make(num_parallel_calls) -> batched tf.data.Dataset}`."""
  # TensorFlow is imported once the flags are known good.
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from configs import imagenet as imagenet_config
  from optg_jax.data import common
  from optg_jax.data import imagenet
  from optg_jax.data import imagenet_folder

  size, batch, count = args.image_size, args.batch_size, len(encoded)
  steps = count // batch
  records = tf.data.Dataset.from_tensor_slices(
      (tf.constant(encoded), tf.range(count, dtype=tf.int64)))

  def baseline(calls):
    def one(image_bytes, position):
      del position
      image = tf.io.decode_jpeg(image_bytes, channels=3)
      return tf.image.resize(image, [size, size])
    return records.map(one, num_parallel_calls=calls).batch(batch)

  def from_bytes(recipe, train):
    def make(calls):
      def one(image_bytes, position):
        if train:
          return imagenet.preprocess_imagenet_train(
              image_bytes, common.example_seed(args.seed, position), size,
              augmentation=recipe)
        return imagenet.preprocess_imagenet_eval(image_bytes, size,
                                                 augmentation=recipe)
      return records.map(one, num_parallel_calls=calls).batch(batch)
    return make

  def from_folder(recipe, train):
    config = imagenet_config.get_config()
    config.dataset = imagenet_folder.NAME
    config.data_dir = root
    config.image_size = size
    config.augmentation = recipe
    config.seed = args.seed

    def make(calls):
      if train:
        return imagenet_folder.train_epoch_fn(
            config, process_index=0, process_count=1, batch=batch,
            num_parallel_calls=calls)(0, 0, steps)
      return imagenet_folder.eval_examples(
          config, 0, count, num_parallel_calls=calls).batch(batch)
    return make

  made = {"baseline: decode + resize": baseline}
  for recipe in RECIPES:
    for train in (True, False):
      stage = "train" if train else "eval"
      made[f"{recipe} {stage}, bytes"] = from_bytes(recipe, train)
      made[f"{recipe} {stage}, folder"] = from_folder(recipe, train)
  return made


def timed_pass(dataset):
  """`(images, seconds, CPU seconds)` from the first batch to the last."""
  iterator = iter(dataset)
  next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  images = 0
  for batch in iterator:
    images += int((batch["image"] if isinstance(batch, dict) else batch)
                  .shape[0])
  return images, time.perf_counter() - wall, time.process_time() - cpu


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def main(argv):
  args = parse_args(argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  cores = len(os.sched_getaffinity(0))
  root = tempfile.mkdtemp(prefix="input_pipeline_")
  try:
    encoded, sizes = write_tree(root, args.num_images, args.quality,
                                args.seed)
    kilobytes = np.mean([len(b) for b in encoded]) / 1000
    made = pipelines(args, root, encoded)
    modes = {"1 core": (1, True), "all cores": (tf.data.AUTOTUNE, False)}
    datasets = {}
    for name, make in made.items():
      for mode, (calls, one_core) in modes.items():
        ds = make(calls)
        if not one_core:
          ds = ds.prefetch(tf.data.AUTOTUNE)
        datasets[name, mode] = ds.with_options(options(one_core))
    rates = {key: [] for key in datasets}
    cpu_rates = {key: [] for key in datasets}
    for repeat in range(args.repeats + 1):  # The first pass warms up.
      for key, ds in datasets.items():
        images, seconds, cpu_seconds = timed_pass(ds)
        if repeat:
          rates[key].append(images / seconds)
          cpu_rates[key].append(images / max(cpu_seconds, 1e-9))
  finally:
    shutil.rmtree(root, ignore_errors=True)

  print(f"host: {cpu_model()}, {cores} cores; tensorflow {tf.__version__}")
  print(f"images: {args.num_images} generated JPEGs, mean "
        f"{sizes[:, 1].mean():.0f}x{sizes[:, 0].mean():.0f} (width x "
        f"height), {kilobytes:.0f} KB, quality {args.quality}; output "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}")
  print("1 core: num_parallel_calls=1, private_threadpool_size=1, "
        "max_intra_op_parallelism=1, no prefetch")
  print(f"all cores ({cores}): num_parallel_calls=AUTOTUNE, TensorFlow's "
        "thread pool, prefetch AUTOTUNE")
  print(f"medians of {args.repeats} passes, each from its first batch to its "
        f"last ({args.num_images - args.batch_size} images)")
  header = (f"  {'pipeline':<28}{'1 core img/s':>14}{'img/CPU-s':>11}"
            f"{'all cores img/s':>17}  cores for "
            f"{args.accelerator_rate:,.0f} img/s")
  print(header)
  for name in made:
    per_cpu_second = statistics.median(cpu_rates[name, "1 core"])
    print(f"  {name:<28}{statistics.median(rates[name, '1 core']):>14.1f}"
          f"{per_cpu_second:>11.1f}"
          f"{statistics.median(rates[name, 'all cores']):>17.1f}"
          f"{args.accelerator_rate / per_cpu_second:>11.1f}")


if __name__ == "__main__":
  main(sys.argv[1:])
