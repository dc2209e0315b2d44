"""The paper's configs against the reference's hyper-parameters.

The reference values are those of ../shared/OPTG_SPEC.md ("Reference
hyper-parameters"), also tabulated in docs/RECIPES.md.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax as optg
from optg_jax import models
from optg_jax import train

# config module -> (model, epochs, batch, lr, weight decay, label smoothing,
# target sparsity)
PAPER = {
    "imagenet": ("resnet50", 100, 256, 0.1, 1e-4, 0.1, 0.9),
    "mobilenet_imagenet": ("mobilenet_v1", 180, 256, 0.05, 4e-5, 0.1, 0.8),
    "cifar10": ("vgg19_cifar", 160, 256, 0.1, 5e-4, 0.0, 0.9),
}
ALL_CONFIGS = ("default", "imagenet", "imagenet_every_step",
               "mobilenet_imagenet", "cifar10",
               "quickstart", "fashion_mnist", "fake_data_benchmark")


def get_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_has_the_reference_hyper_parameters(name):
  config = get_config(name)
  model, epochs, batch, lr, wd, smoothing, sparsity = PAPER[name]
  assert config.model == model
  assert (config.num_epochs, config.batch_size) == (epochs, batch)
  assert (config.learning_rate, config.weight_decay) == (lr, wd)
  assert config.label_smoothing == smoothing
  assert config.sparsity == sparsity
  assert (config.method, config.beta, config.mask_momentum) == (
      "optg", 1.0, 0.9)
  assert (config.momentum, config.nesterov) == (0.9, False)
  assert config.update_every_steps == 0  # once an epoch
  assert (config.score_normalization, config.min_kept_per_unit) == ("", 0)
  assert (config.lr_schedule, config.warmup_epochs) == (
      "epochwise_cosine", 5)
  assert config.eval_every_epochs == 1
  assert not config.half_precision
  if config.dataset == "imagenet2012":
    assert config.augmentation == "torchvision"
    assert config.image_size == 224


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_schedules_are_the_reference_ones(name):
  config = get_config(name)
  spe = 5005 if config.dataset == "imagenet2012" else 195
  schedules = train.create_schedules(config, spe, config.sparsity)
  reference = optg.epochwise_cosine_schedule(
      config.learning_rate, config.num_epochs, spe, 5)
  sparsity = optg.sigmoid_sparsity_schedule(config.sparsity,
                                            config.num_epochs, spe)
  steps = jnp.arange(0, config.num_epochs * spe, spe // 3)
  lr = jax.vmap(schedules.learning_rate)(steps)
  np.testing.assert_array_equal(lr, jax.vmap(reference)(steps))
  # The mask learning rate is lr(e) * sigmoid(beta * (e - E / 2)).
  e = np.asarray(steps) // spe
  want = np.asarray(lr, np.float64) / (
      1 + np.exp(-(e - config.num_epochs / 2)))
  np.testing.assert_allclose(jax.vmap(schedules.mask_learning_rate)(steps),
                             want, rtol=1e-5, atol=1e-12)
  np.testing.assert_array_equal(jax.vmap(schedules.sparsity)(steps),
                                jax.vmap(sparsity)(steps))


@pytest.mark.parametrize("name, model, kwargs", [
    ("imagenet", "resnet50", dict(kernel_init="kaiming_normal",
                                  zero_init_residual=False,
                                  head_bias=False, torch_padding=True)),
    ("mobilenet_imagenet", "mobilenet_v1",
     dict(kernel_init="torch_default", head_init="kaiming_normal",
          head_bias=False)),
    ("cifar10", "vgg19_cifar", dict(kernel_init="kaiming_normal")),
])
def test_paper_config_initialisation(name, model, kwargs):
  config = get_config(name)
  assert config.model == model
  assert config.model_kwargs.to_dict() == kwargs


def _kernels(net, shape):
  """The prunable leaves (`ndim >= 2`) of `net`'s params, as shapes."""
  shapes = jax.eval_shape(lambda: net.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(shape)), train=False))
  return [x for x in jax.tree.leaves(shapes["params"]) if len(x.shape) >= 2]


# Prunable weights (conv and dense kernels) of the paper's CIFAR-10 models.
# VGG-19: sixteen 3x3 convs 3-64-64-128-128-256x4-512x8, no bias, and a
# 512x10 classifier (20,035,018 params with BatchNorm and the head's bias).
# ResNet-56: a 3x3 stem to 16 channels, 27 blocks of two 3x3 convs over 16,
# 32 and 64 channels, two 1x1 projection shortcuts and a 64x10 classifier.
CIFAR10_KERNELS = {"vgg19_cifar": (17, 20_024_000),
                   "resnet50_cifar": (50, 3_006_560),
                   "resnet56_cifar": (58, 851_504)}


@pytest.mark.parametrize("model", sorted(CIFAR10_KERNELS))
def test_cifar10_config_builds_each_paper_model(model):
  config = get_config("cifar10")
  config.model = model
  train.validate_config(config, 1)
  kernels = _kernels(train.create_model(config, 10), (32, 32, 3))
  assert (len(kernels), sum(int(np.prod(x.shape)) for x in kernels)) == (
      CIFAR10_KERNELS[model])


# Training examples per dataset (the split each config trains on).
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "cifar10": 50_000,
                  "digits": 1_500, "fashion_mnist": 60_000}


def _steps_per_epoch(config):
  examples = TRAIN_EXAMPLES.get(config.dataset, config.get("fake_num_train"))
  return examples // config.batch_size


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_builds_its_schedules_and_chain(name):
  """Each recipe passes the harness's checks and the library's (its
  schedules and optax chain build), its sparsity schedule is that of its
  run, and its chain masks exactly its model's kernels."""
  config = get_config(name)
  train.validate_config(config, 1)
  spe = _steps_per_epoch(config)
  structure = train.structure_of(config)
  target = train.target_sparsity(config, structure)
  schedules = train.create_schedules(config, spe, target)
  assert (schedules.sparsity.target, schedules.sparsity.total_steps) == (
      config.sparsity, config.num_epochs * spe)
  tx = train.create_optimizer(config, schedules,
                              train.update_every_steps(config, spe),
                              config.num_epochs * spe, structure)
  shape = models.default_input_shape(config.model)
  if config.dataset in ("digits",):
    shape = (8, 8, 1)
  net = train.create_model(config, 10)
  params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(
      (1,) + tuple(shape)), train=False))["params"]
  masks = jax.tree.leaves(optg.get_masks(jax.eval_shape(tx.init, params)))
  assert [m.shape for m in masks] == [k.shape for k in _kernels(net, shape)]
  assert all(m.dtype == jnp.bool_ for m in masks)


def test_nm_structure_with_a_unit_floor_is_the_library_refusal():
  """N:M keeps n of every m inputs of each unit, and `mask_transform`
  refuses a `min_kept_per_unit` beside it: the harness hands that refusal
  on, naming the field (the quick start's floor of 1 included)."""
  config = get_config("quickstart")
  config.structure = "2:4"
  assert config.min_kept_per_unit == 1
  with pytest.raises(ValueError, match="min_kept_per_unit is not supported "
                     "with an N:M structure") as library:
    optg.mask_transform(0.5, 0.1, min_kept_per_unit=1, structure="2:4")
  with pytest.raises(train.ConfigError) as harness:
    train.Run(config)
  assert str(harness.value) == f"config.min_kept_per_unit: {library.value}"
  config.min_kept_per_unit = 0
  run = train.Run(config)
  assert (run.target, str(run.structure)) == (0.5, "2:4")


def test_other_recipes_keep_the_per_step_schedule():
  for name in ("quickstart", "fashion_mnist"):
    config = get_config(name)
    assert config.lr_schedule == "warmup_cosine"
    assert config.model_kwargs.to_dict() == {}


def test_cifar10_is_normalised_with_the_reference_constants():
  from optg_jax.data import cifar10  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(np.array(cifar10.MEAN_RGB) / 255,
                             [0.4914, 0.4822, 0.4465])
  np.testing.assert_allclose(np.array(cifar10.STDDEV_RGB) / 255,
                             [0.2023, 0.1994, 0.2010])


def _check_target(config, steps_per_epoch, prunable):
  """`train.check_target` with the run's schedule, as `train.Run` has it."""
  schedules = train.create_schedules(config, steps_per_epoch, config.sparsity)
  train.check_target(config, schedules.sparsity,
                     train.update_every_steps(config, steps_per_epoch),
                     prunable)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_reaches_its_target(name):
  """Each recipe's last mask refresh is within 1e-3 of its target: the
  harness would refuse it otherwise (train.check_target)."""
  config = get_config(name)
  steps_per_epoch = _steps_per_epoch(config)
  prunable = [jax.ShapeDtypeStruct((1000, 1000), jnp.float32)]
  _check_target(config, steps_per_epoch, prunable)  # Does not raise.
  # And the same recipe cut to two epochs does.
  config.num_epochs, config.warmup_epochs = 2, 0
  with pytest.raises(train.ConfigError, match="short of the target"):
    _check_target(config, steps_per_epoch, prunable)


def test_imagenet_every_step_is_the_paper_recipe_with_the_rule():
  paper = get_config("imagenet").to_dict()
  variant = get_config("imagenet_every_step").to_dict()
  changed = {k for k in paper if paper[k] != variant[k]}
  assert changed == {"update_every_steps", "sparsity_granularity",
                     "topk_layout"}
  assert (variant["update_every_steps"], variant["sparsity_granularity"],
          variant["topk_layout"]) == (1, "step", "flat")
  assert set(variant) == set(paper)
