"""Tests of the model zoo: parameter counts, output shapes, BatchNorm, bf16."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optg_jax import flops
from optg_jax import models
from optg_jax.models import initializers
from optg_jax.models import resnet


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
  assert len(models.names()) == 14
  assert {"lenet5", "lenet_300_100"} <= set(models.names())


def test_default_input_shapes():
  assert models.default_input_shape("resnet50") == (224, 224, 3)
  assert models.default_input_shape("mobilenet_v2") == (224, 224, 3)
  assert models.default_input_shape("resnet20_cifar") == (32, 32, 3)
  assert models.default_input_shape("vgg19_cifar") == (32, 32, 3)
  assert models.default_input_shape("resnet50_cifar") == (32, 32, 3)
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


# The reference's CIFAR-10 "ResNet-50" (6 * 8 + 2 layers, option A shortcuts).


def test_resnet50_cifar_sizes():
  model = models.create("resnet50_cifar", 10)
  variables = abstract_variables(model, (32, 32, 3))
  params = variables["params"]
  # By hand: stem, 16 convs 32->32, 32->64 and 15 convs 64->64, 64->128 and
  # 15 convs 128->128, a 128x10 classifier; no projection conv.
  kernels = (9 * 3 * 32 + 16 * 9 * 32 * 32 + 9 * 32 * 64 + 15 * 9 * 64 * 64
             + 9 * 64 * 128 + 15 * 9 * 128 * 128 + 128 * 10)
  assert kernels == 3_006_560
  prunable = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  assert sum(x.size for x in prunable) == 3_006_560
  assert len(prunable) == 50  # 49 convs and the classifier
  # Plus the BatchNorm scales and biases (no classifier bias).
  norms = bn(32) * (1 + 16) + bn(64) * 16 + bn(128) * 16
  assert num_params(params) == kernels + norms == 3_013_792
  assert set(params["head"]) == {"kernel"}
  assert params["head"]["kernel"].shape == (128, 10)
  assert set(params["stage2_block1"]) == {"Conv_0", "BatchNorm_0", "Conv_1",
                                          "BatchNorm_1"}
  assert params["stage2_block1"]["Conv_0"]["kernel"].shape == (3, 3, 32, 64)
  assert params["stage3_block8"]["Conv_1"]["kernel"].shape == (3, 3, 128,
                                                               128)
  assert "stage3_block9" not in params and "stage4_block1" not in params
  macs = flops.count_macs(model, variables, (1, 32, 32, 3))
  assert macs.dense == 444_433_664
  assert [l.path for l in macs.per_layer][-1] == "head/kernel"


@pytest.mark.parametrize("shape, features, strides, pad", [
    ((2, 6, 6, 4), 8, (2, 2), (2, 2)),
    ((2, 7, 5, 3), 8, (2, 2), (2, 3)),  # odd sizes and an odd difference
    ((1, 4, 4, 32), 64, (2, 2), (16, 16)),
    ((2, 5, 6, 3), 6, (1, 1), (1, 2)),  # only pads
    ((1, 4, 4, 3), 3, (2, 2), (0, 0)),  # only subsamples
])
def test_zero_pad_shortcut_matches_numpy(shape, features, strides, pad):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = resnet.zero_pad_shortcut(jnp.asarray(x), features, strides)
  want = np.pad(x[:, ::strides[0], ::strides[1], :],
                ((0, 0), (0, 0), (0, 0), pad))
  np.testing.assert_array_equal(got, want)


def test_zero_pad_shortcut_cannot_drop_channels():
  with pytest.raises(ValueError, match="cannot reduce 8 channels to 4"):
    resnet.zero_pad_shortcut(jnp.zeros((1, 4, 4, 8)), 4)


def _random_variables(module, x, rng, **overrides):
  """`module`'s variables filled by hand (no init: quick on a CPU).

  Kernels are normal with variance 1 / fan_in, BatchNorm scales and
  variances uniform in [0.5, 1.5], biases and means normal; `overrides`
  maps a path ending (e.g. "BatchNorm_1']['scale']") to a value.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    for ending, value in overrides.items():
      if name.endswith(ending):
        return jnp.full(leaf.shape, value, jnp.float32)
    if name.endswith("['kernel']"):
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name.endswith("['scale']") or name.endswith("['var']"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(size=leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("strides", [(2, 2), (1, 1)])
def test_zero_pad_block_with_zeroed_branch_is_padded_input(strides):
  """With its last BatchNorm zeroed a block outputs relu(shortcut(x))."""
  block = resnet.BasicBlock(
      8, conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=True),
      act=nn.relu, strides=strides, shortcut="zero_pad")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  zeroed = _random_variables(block, x, rng, **{
      "BatchNorm_1']['scale']": 0.0, "BatchNorm_1']['bias']": 0.0})
  assert set(zeroed["params"]) == {"Conv_0", "BatchNorm_0", "Conv_1",
                                   "BatchNorm_1"}  # no projection
  want = np.maximum(np.pad(x[:, ::strides[0], ::strides[1], :],
                           ((0, 0), (0, 0), (0, 0), (2, 2))), 0)
  np.testing.assert_array_equal(block.apply(zeroed, x), want)
  # Unzeroed, the branch adds something.
  full = _random_variables(block, x, rng)
  assert not np.allclose(block.apply(full, x), want)


def _np_conv(x, kernel, stride):
  """A conv as PyTorch's: NHWC, HWIO, padding k // 2 on every side."""
  kh, kw = kernel.shape[:2]
  x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, kernel.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (oh - 1) + 1:stride,
                j:j + stride * (ow - 1) + 1:stride, :]
      out += patch @ kernel[i, j]
  return out


def _np_resnet_cifar_option_a(variables, x):
  """The reference's CIFAR ResNet (one block per stage), eval mode, NumPy."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64),
                        variables["params"])
  stats = jax.tree.map(lambda a: np.asarray(a, np.float64),
                       variables["batch_stats"])

  def batch_norm(y, p, s):
    return (y - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]

  relu = lambda y: np.maximum(y, 0)
  x = np.asarray(x, np.float64)
  x = relu(batch_norm(_np_conv(x, params["conv_init"]["kernel"], 1),
                      params["bn_init"], stats["bn_init"]))
  for i in range(3):
    name = f"stage{i + 1}_block1"
    p, s, stride = params[name], stats[name], 1 if i == 0 else 2
    y = relu(batch_norm(_np_conv(x, p["Conv_0"]["kernel"], stride),
                        p["BatchNorm_0"], s["BatchNorm_0"]))
    y = batch_norm(_np_conv(y, p["Conv_1"]["kernel"], 1), p["BatchNorm_1"],
                   s["BatchNorm_1"])
    lo = (y.shape[-1] - x.shape[-1]) // 2
    hi = y.shape[-1] - x.shape[-1] - lo
    shortcut = np.pad(x[:, ::stride, ::stride, :],
                      ((0, 0), (0, 0), (0, 0), (lo, hi)))
    x = relu(y + shortcut)
  return x.mean(axis=(1, 2)) @ params["head"]["kernel"]


def test_resnet50_cifar_layout_matches_numpy_reference():
  """One block per stage and small widths; random BatchNorm state."""
  model = models.create("resnet50_cifar", 5, stage_sizes=(1, 1, 1),
                        widths=(4, 8, 16))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 7, 10, 3)).astype(np.float32)
  variables = _random_variables(model, x, rng)
  got = model.apply(variables, x, train=False)
  want = _np_resnet_cifar_option_a(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Flax's "SAME" padding would centre the strided convs one pixel off the
  # pixels the shortcut keeps.
  same = model.clone(torch_padding=False).apply(variables, x, train=False)
  assert not np.allclose(same, want, rtol=1e-2, atol=1e-3)


# Initialisation options. A random init compiles once per kernel shape,
# about a second each on a CPU: the tests share small models' inits.


@functools.lru_cache(maxsize=None)
def _init_params(name, input_size=32, **kwargs):
  """The initial parameters of `models.create(name, 10, **kwargs)`; shared,
  so not to be modified."""
  model = models.create(name, 10, **kwargs)
  shape = (1, input_size, input_size, 3)
  return model.init(jax.random.key(0), jnp.zeros(shape), train=False)[
      "params"]


# Kernels (3, 3, 3, 256) and (3, 3, 256, 256), and a (256, 10) head.
_WIDE_VGG = dict(layers=(256, 256), input_size=4)


def test_kaiming_normal_is_untruncated_with_fan_in_std():
  params = _init_params("vgg19_cifar", kernel_init="kaiming_normal",
                        **_WIDE_VGG)
  kernel = np.asarray(params["Conv_1"]["kernel"])
  sigma = np.sqrt(2 / (3 * 3 * 256))
  assert abs(kernel.std() / sigma - 1) < 0.01
  assert abs(kernel.mean()) < 0.01 * sigma
  # A normal has 4.55% beyond 2 sigma; a truncated one nearly none.
  assert abs(np.mean(np.abs(kernel) > 2 * sigma) - 0.0455) < 0.003
  assert np.abs(kernel).max() > 4 * sigma
  # The head too (no head_init): 256 inputs.
  head = np.asarray(params["head"]["kernel"])
  assert abs(head.std() / np.sqrt(2 / 256) - 1) < 0.1
  # The registry's init, exactly: an unscaled normal times sqrt(2 / fan_in).
  key = jax.random.key(3)
  np.testing.assert_allclose(
      initializers.get("kaiming_normal")(key, (3, 3, 256, 256)),
      jax.random.normal(key, (3, 3, 256, 256)) * sigma, rtol=1e-6)


def test_default_init_is_still_flax_truncated_lecun_normal():
  params = _init_params("vgg19_cifar", **_WIDE_VGG)
  kernel = np.asarray(params["Conv_1"]["kernel"])
  sigma = np.sqrt(1 / (3 * 3 * 256))
  assert abs(kernel.std() / sigma - 1) < 0.01
  # Truncated at 2 standard deviations of the unscaled normal.
  assert np.abs(kernel).max() < 2 * sigma / 0.87962566
  explicit = _init_params("vgg19_cifar", kernel_init="lecun_normal",
                          **_WIDE_VGG)
  jax.tree.map(np.testing.assert_array_equal, params, explicit)


def test_torch_default_is_uniform_within_one_over_sqrt_fan_in():
  params = _init_params("vgg19_cifar", kernel_init="torch_default",
                        **_WIDE_VGG)
  kernel = np.asarray(params["Conv_1"]["kernel"])
  bound = 1 / np.sqrt(3 * 3 * 256)
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.999 * bound
  assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.01
  # Uniform: half the entries within half the bound.
  assert abs(np.mean(np.abs(kernel) < bound / 2) - 0.5) < 0.005
  head = np.asarray(params["head"]["kernel"])
  assert 0.9 / 16 < np.abs(head).max() <= 1 / 16  # fan_in 256


def test_depthwise_fan_in_is_the_kernel_area():
  """A 3x3 depthwise kernel (3, 3, 1, C) has fan_in 9, as in PyTorch."""
  params = _init_params("mobilenet_v1", width=0.25,
                        kernel_init="torch_default")
  kernel = np.asarray(params["block13_depthwise"]["Conv_0"]["kernel"])
  assert kernel.shape == (3, 3, 1, 256)
  assert 0.3 < np.abs(kernel).max() <= 1 / 3
  kernel = np.asarray(params["block13_pointwise"]["Conv_0"]["kernel"])
  assert kernel.shape == (1, 1, 256, 256)
  assert 0.9 / 16 < np.abs(kernel).max() <= 1 / 16


@pytest.mark.parametrize("name, kwargs", [
    ("vgg19_cifar", dict(layers=(16, "M", 16))),
    ("mobilenet_v1", dict(width=0.25)),
    ("resnet20_cifar", dict(stage_sizes=(1, 1, 1))),
])
def test_head_init_overrides_the_classifier_only(name, kwargs):
  """Init rngs follow the module paths, so each kernel matches one model."""
  mixed = _init_params(name, kernel_init="torch_default",
                       head_init="kaiming_normal", **kwargs)
  torch = _init_params(name, kernel_init="torch_default", **kwargs)
  kaiming = _init_params(name, kernel_init="kaiming_normal", **kwargs)
  np.testing.assert_array_equal(mixed["head"]["kernel"],
                                kaiming["head"]["kernel"])
  assert not np.array_equal(mixed["head"]["kernel"], torch["head"]["kernel"])
  body = lambda params: {k: v for k, v in params.items() if k != "head"}
  jax.tree.map(np.testing.assert_array_equal, body(mixed), body(torch))
  kernels = lambda params: [x for x in jax.tree.leaves(body(params))
                            if x.ndim >= 2]
  assert not any(np.array_equal(a, b)
                 for a, b in zip(kernels(mixed), kernels(kaiming)))


@pytest.mark.parametrize("name", ["resnet20_cifar", "resnet50_cifar",
                                  "vgg19_cifar", "mobilenet_v1",
                                  "mobilenet_v2"])
def test_head_bias_option(name):
  def head(**kwargs):
    variables = abstract_variables(models.create(name, 10, **kwargs),
                                   (32, 32, 3))
    return set(variables["params"]["head"])

  assert head(head_bias=False) == {"kernel"}
  assert head(head_bias=True) == {"kernel", "bias"}
  assert head() == ({"kernel"} if name == "resnet50_cifar"
                    else {"kernel", "bias"})


def _scales(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if jax.tree_util.keystr(path).endswith("['scale']")}


def test_zero_init_residual_option():
  # Default: each block's last BatchNorm scale is 0, the others 1.
  scales = _scales(_init_params("resnet20_cifar", input_size=8))
  assert len(scales) == 1 + 2 * 9 + 2  # two projection shortcuts
  for path, scale in scales.items():
    np.testing.assert_array_equal(scale, 0 if "BatchNorm_1" in path else 1)
  # False: every scale is 1.
  scales = _scales(_init_params("resnet20_cifar", input_size=8,
                                zero_init_residual=False))
  assert len(scales) == 21
  for scale in scales.values():
    np.testing.assert_array_equal(scale, 1)


def test_resnet50_default_still_zero_inits_the_last_bottleneck_bn():
  # ResNet-50's 16 bottlenecks, 4 wide (fewer kernel shapes: quicker).
  scales = _scales(_init_params("resnet50", widths=(4, 4, 4, 4)))
  assert len(scales) == 1 + 16 * 3 + 4
  zeros = [path for path, scale in scales.items() if not scale.any()]
  assert len(zeros) == 16 and all("BatchNorm_2" in path for path in zeros)
  for path, scale in scales.items():
    if path not in zeros:
      np.testing.assert_array_equal(scale, 1)


def test_resnet50_cifar_takes_the_reference_init():
  """Kaiming-normal kernels, BatchNorm scales 1, the classifier included."""
  params = _init_params("resnet50_cifar", input_size=8,
                        stage_sizes=(1, 1, 2))
  for scale in _scales(params).values():
    np.testing.assert_array_equal(scale, 1)
  kernel = np.asarray(params["stage3_block2"]["Conv_0"]["kernel"])
  sigma = np.sqrt(2 / (9 * 128))
  assert abs(kernel.std() / sigma - 1) < 0.02
  assert abs(np.mean(np.abs(kernel) > 2 * sigma) - 0.0455) < 0.005
  head = np.asarray(params["head"]["kernel"])
  assert abs(head.std() / np.sqrt(2 / 128) - 1) < 0.15


@pytest.mark.parametrize("kwargs", [dict(kernel_init="xavier"),
                                    dict(head_init="he_normal")])
@pytest.mark.parametrize("name", ["resnet20_cifar", "vgg19_cifar",
                                  "mobilenet_v1", "mobilenet_v2", "lenet5",
                                  "lenet_300_100"])
def test_unknown_init_name_raises(name, kwargs):
  match = ("unknown kernel init '(xavier|he_normal)'; valid inits: "
           "kaiming_normal, lecun_normal, torch_default")
  with pytest.raises(ValueError, match=match):
    models.create(name, 10, **kwargs)
  # Built without `create`, the module refuses it when initialised.
  constructor, shape = models._lookup(name)  # pylint: disable=protected-access
  model = constructor(num_classes=10, **kwargs)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1,) + shape), train=False))
  assert initializers.names() == ["kaiming_normal", "lecun_normal",
                                  "torch_default"]


def test_create_refuses_an_attribute_the_model_does_not_have():
  with pytest.raises(ValueError, match=(
      "model 'mobilenet_v1' has no attribute 'zero_init_residual'; its "
      "attributes: head_bias, head_init, kernel_init, width")):
    models.create("mobilenet_v1", 10, zero_init_residual=False)
  assert "torch_padding" in models.attributes("resnet50")


def test_unknown_shortcut_raises():
  model = models.create("resnet20_cifar", 10, shortcut="option_c")
  with pytest.raises(ValueError, match="unknown shortcut 'option_c'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1, 8, 8, 3)), train=False))
