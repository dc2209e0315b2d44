"""Tests of the model zoo: parameter counts, output shapes, BatchNorm, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optg_jax import models


def abstract_variables(model, input_shape):
  """The model's variables as shapes only (nothing is allocated)."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)), train=False))


def num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def bn(c):
  return 2 * c  # scale and bias; the statistics are not parameters


def cifar_resnet_params(n, num_classes=10):
  """He et al.'s CIFAR ResNet with 1x1 projection shortcuts, by hand."""
  total = 3 * 3 * 3 * 16 + bn(16)
  in_c = 16
  for width in (16, 32, 64):
    for j in range(n):
      total += 9 * in_c * width + bn(width) + 9 * width * width + bn(width)
      if in_c != width:
        total += in_c * width + bn(width)
      in_c = width
      del j
  return total + 64 * num_classes + num_classes


def vgg19_params(num_classes=10):
  widths = [64, 64, 128, 128] + [256] * 4 + [512] * 8
  total, in_c = 0, 3
  for w in widths:
    total += 9 * in_c * w + bn(w)
    in_c = w
  return total + 512 * num_classes + num_classes


@pytest.mark.parametrize("name, expected", [
    # torchvision's counts for 1000 classes.
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
    ("mobilenet_v1", 4_231_976),
    ("mobilenet_v2", 3_504_872),
])
def test_imagenet_parameter_counts(name, expected):
  model = models.create(name, 1000)
  variables = abstract_variables(model, (224, 224, 3))
  assert num_params(variables["params"]) == expected
  assert "batch_stats" in variables


@pytest.mark.parametrize("name, expected", [
    ("resnet20_cifar", cifar_resnet_params(3)),
    ("resnet32_cifar", cifar_resnet_params(5)),
    ("resnet56_cifar", cifar_resnet_params(9)),
    ("vgg19_cifar", vgg19_params()),
])
def test_cifar_parameter_counts(name, expected):
  variables = abstract_variables(models.create(name, 10), (32, 32, 3))
  assert num_params(variables["params"]) == expected


def test_cifar_reference_sizes():
  # The usual quoted sizes: ResNet-56 0.86M, VGG-19 (BN) 20.0M.
  assert cifar_resnet_params(9) == 855_770
  assert vgg19_params() == 20_035_018


def test_mobilenet_width_multiplier():
  half = abstract_variables(models.create("mobilenet_v1", 1000, width=0.5),
                            (224, 224, 3))
  kernel = half["params"]["block13_pointwise"]["Conv_0"]["kernel"]
  assert kernel.shape == (1, 1, 512, 512)
  assert half["params"]["head"]["kernel"].shape == (512, 1000)
  v2 = abstract_variables(models.create("mobilenet_v2", 1000, width=0.5),
                          (224, 224, 3))
  assert v2["params"]["head"]["kernel"].shape == (1280, 1000)


def test_depthwise_kernels_have_one_input_channel():
  variables = abstract_variables(models.create("mobilenet_v1", 1000),
                                 (224, 224, 3))
  kernel = variables["params"]["block1_depthwise"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 1, 32)


def test_resnet50_is_v1_5():
  """The stride of a downsampling bottleneck is on its 3x3 conv."""
  model = models.create("resnet50", 1000)
  variables = abstract_variables(model, (224, 224, 3))
  block = variables["params"]["stage2_block1"]
  assert block["Conv_0"]["kernel"].shape == (1, 1, 256, 128)
  assert block["Conv_1"]["kernel"].shape == (3, 3, 128, 128)
  shapes = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      shapes["/".join(context.module.path)] = (args[0].shape, out.shape)
    return out

  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3)),
                                         train=False), variables)
  # 56x56 in; the 1x1 keeps 56x56, the 3x3 halves it.
  assert shapes["stage2_block1/Conv_0"][1][1:3] == (56, 56)
  assert shapes["stage2_block1/Conv_1"][1][1:3] == (28, 28)


@pytest.mark.parametrize("name", models.names())
def test_output_shapes(name):
  model = models.create(name, 7)
  shape = models.default_input_shape(name)
  variables = abstract_variables(model, shape)
  out = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((3,) + shape), train=False),
      variables)
  assert out.shape == (3, 7) and out.dtype == jnp.float32


def test_train_mode_updates_batch_stats_and_small_inputs_work():
  model = models.create("resnet20_cifar", 10)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=["batch_stats"])
  assert logits.shape == (4, 10)
  old = variables["batch_stats"]["bn_init"]["mean"]
  new = updates["batch_stats"]["bn_init"]["mean"]
  assert not np.allclose(old, new)
  # Evaluation does not touch the statistics and needs no mutable state.
  eval_logits = model.apply(variables, x, train=False)
  assert eval_logits.shape == (4, 10)


def test_bfloat16_forward_keeps_float32_params():
  model = models.create("resnet20_cifar", 10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree.leaves(variables["params"]))
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  full = models.create("resnet20_cifar", 10).apply(variables, x, train=False)
  low = model.apply(variables, x, train=False)
  np.testing.assert_allclose(low, full, atol=0.1 * float(jnp.abs(full).max())
                             + 1e-2)


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet50"):
    models.create("resnet9", 10)
  assert models.names() == sorted(models.names())
  assert len(models.names()) == 13
  assert {"lenet5", "lenet_300_100"} <= set(models.names())


def test_default_input_shapes():
  assert models.default_input_shape("resnet50") == (224, 224, 3)
  assert models.default_input_shape("mobilenet_v2") == (224, 224, 3)
  assert models.default_input_shape("resnet20_cifar") == (32, 32, 3)
  assert models.default_input_shape("vgg19_cifar") == (32, 32, 3)
  with pytest.raises(ValueError, match="valid models"):
    models.default_input_shape("lenet")


def test_training_needs_no_dropout_rng_by_default():
  model = models.create("mobilenet_v2", 10)
  variables = abstract_variables(model, (32, 32, 3))
  logits, updates = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=True,
                            mutable=["batch_stats"]), variables)
  assert logits.shape == (2, 10)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])


@pytest.mark.parametrize("name, kernels, macs", [
    ("lenet_300_100", 784 * 300 + 300 * 100 + 100 * 10, 266_200),
    # conv1 24x24x(5x5x1x20), conv2 8x8x(5x5x20x50), 800x500, 500x10.
    ("lenet5", 500 + 25_000 + 400_000 + 5_000,
     576 * 500 + 64 * 25_000 + 400_000 + 5_000),
])
def test_lenets_counts_and_macs(name, kernels, macs):
  from optg_jax import flops  # pylint: disable=g-import-not-at-top
  model = models.create(name, num_classes=10)
  assert models.default_input_shape(name) == (28, 28, 1)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)),
                         train=False)
  prunable = [x for x in jax.tree.leaves(variables) if x.ndim >= 2]
  assert sum(x.size for x in prunable) == kernels
  count = flops.count_macs(model, variables, (1, 28, 28, 1))
  assert count.dense == macs
  assert [l.path for l in count.per_layer][-1] == "head/kernel"
  logits = model.apply(variables, jnp.ones((3, 28, 28, 1)), train=True)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
