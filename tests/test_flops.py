"""Tests of MAC counting (optg_jax/flops.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax as optg
from optg_jax import flops
from optg_jax import models


def abstract_variables(model, input_shape):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)), train=False))


@pytest.mark.parametrize("name, expected", [
    ("resnet18", 1.81e9),
    ("resnet50", 4.09e9),
    ("resnet101", 7.80e9),
    ("mobilenet_v1", 569e6),
    ("mobilenet_v2", 300e6),
    ("resnet56_cifar", 125e6),
    ("vgg19_cifar", 398e6),
])
def test_dense_macs_at_the_usual_input_size(name, expected):
  model = models.create(name, 10 if "cifar" in name else 1000)
  shape = models.default_input_shape(name)
  macs = flops.count_macs(model, abstract_variables(model, shape),
                          (1,) + shape)
  assert macs.dense == pytest.approx(expected, rel=0.02)
  assert macs.sparse == macs.dense
  assert macs.dense == sum(layer.dense for layer in macs.per_layer)


def test_per_layer_records_of_resnet50():
  model = models.create("resnet50", 1000)
  macs = flops.count_macs(model, abstract_variables(model, (224, 224, 3)),
                          (1, 224, 224, 3))
  layers = {layer.path: layer for layer in macs.per_layer}
  assert len(layers) == 53 + 1  # 53 convs (incl. 4 projections) and the head
  stem = layers["conv_init/kernel"]
  assert (stem.kind, stem.kernel_shape, stem.output_size) == (
      "conv", (7, 7, 3, 64), 112 * 112)
  assert stem.dense == 7 * 7 * 3 * 64 * 112 * 112
  head = layers["head/kernel"]
  assert (head.kind, head.output_size, head.dense) == ("dense", 1,
                                                       2048 * 1000)
  assert layers["stage4_block3/Conv_2/kernel"].output_size == 7 * 7


def uniform_masks(params, keep_fraction, seed=0):
  """Exactly round(keep_fraction * n) kept entries in every kernel."""
  rng = np.random.default_rng(seed)

  def one(leaf):
    if leaf.ndim < 2:
      return None
    n = int(np.prod(leaf.shape))
    flat = np.zeros(n, bool)
    flat[rng.permutation(n)[:round(keep_fraction * n)]] = True
    return flat.reshape(leaf.shape)

  return jax.tree.map(one, params)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v1",
                                  "resnet20_cifar"])
def test_uniform_90_percent_masks_cost_10_percent(name):
  model = models.create(name, 10 if "cifar" in name else 1000)
  shape = models.default_input_shape(name)
  variables = abstract_variables(model, shape)
  masks = uniform_masks(variables["params"], 0.1)
  macs = flops.count_macs(model, variables, (1,) + shape, masks)
  expected = sum(round(0.1 * np.prod(l.kernel_shape)) * l.output_size
                 for l in macs.per_layer)
  assert macs.sparse == expected
  assert macs.sparse / macs.dense == pytest.approx(0.1, rel=1e-3)
  for layer in macs.per_layer:
    assert layer.sparse == round(0.1 * np.prod(layer.kernel_shape)) * (
        layer.output_size)


class Convs(nn.Module):
  """A depthwise conv, a grouped conv, a VALID conv and a dense layer; no
  `train` argument."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), strides=(2, 2), feature_group_count=8,
                name="depthwise")(x)
    x = nn.Conv(12, (1, 1), feature_group_count=2, name="grouped")(x)
    x = nn.Conv(4, (3, 3), padding="VALID", name="valid")(x)
    return nn.Dense(5, name="dense")(x.reshape(x.shape[0], -1))


def convs_macs(masks=None, batch=2):
  model = Convs()
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 8))))
  macs = flops.count_macs(model, variables, (batch, 16, 16, 8), masks)
  return macs, {layer.path: layer for layer in macs.per_layer}, variables


def test_depthwise_conv_by_hand():
  macs, layers, _ = convs_macs()
  depthwise = layers["depthwise/kernel"]
  # 3x3 over each of 8 channels alone, stride 2: 8x8 outputs of 8 channels,
  # 9 MACs per output value.
  assert depthwise.kernel_shape == (3, 3, 1, 8)
  assert (depthwise.kind, depthwise.output_size) == ("conv", 8 * 8)
  assert depthwise.dense == 8 * 8 * 8 * 9
  assert macs.dense == sum(l.dense for l in layers.values())


def test_grouped_conv_by_hand():
  _, layers, _ = convs_macs()
  grouped = layers["grouped/kernel"]
  # 1x1 from 8 to 12 channels in 2 groups: each output value sees the 4
  # input channels of its group.
  assert grouped.kernel_shape == (1, 1, 4, 12)
  assert grouped.dense == 8 * 8 * 12 * 4


def test_valid_conv_and_dense_by_hand_per_example():
  macs, layers, _ = convs_macs(batch=3)
  # 3x3 VALID on 8x8x12 -> 6x6x4; the dense layer maps 144 -> 5.
  assert layers["valid/kernel"].output_size == 6 * 6
  assert layers["valid/kernel"].dense == 6 * 6 * 4 * 9 * 12
  assert layers["dense/kernel"].output_size == 1
  assert layers["dense/kernel"].dense == 6 * 6 * 4 * 5
  assert macs == convs_macs(batch=1)[0]  # whatever the batch


def test_sparse_macs_count_the_kept_entries():
  _, _, variables = convs_macs()
  masks = jax.tree.map(lambda p: None, variables["params"])
  masks["depthwise"]["kernel"] = np.zeros((3, 3, 1, 8), bool)
  masks["depthwise"]["kernel"][1, 1] = True  # the centre tap of each channel
  masks["grouped"]["kernel"] = np.ones((1, 1, 4, 12), bool)
  masks["grouped"]["kernel"][0, 0, 0] = False  # 12 of 48 entries pruned
  macs, layers, _ = convs_macs(masks)
  assert layers["depthwise/kernel"].sparse == 8 * 8 * 8
  assert layers["grouped/kernel"].sparse == 8 * 8 * 36
  assert layers["valid/kernel"].sparse == layers["valid/kernel"].dense
  assert macs.sparse == macs.dense - 8 * 8 * 8 * 8 - 8 * 8 * 12
  assert macs.sparse == sum(l.sparse for l in layers.values())


def test_paths_are_those_of_the_sparsity_report():
  model = models.create("resnet20_cifar", 10)
  variables = abstract_variables(model, (32, 32, 3))
  masks = uniform_masks(variables["params"], 0.25)
  macs = flops.count_macs(model, variables, (1, 32, 32, 3), masks)
  report = optg.sparsity_report(masks)
  kept = {layer.path: layer.sparse // layer.output_size
          for layer in macs.per_layer}
  # Every masked leaf is a conv or dense kernel, and the other way round.
  assert set(kept) == set(report["layers"])
  for path, kept_entries in kept.items():
    assert report["layers"][path]["kept"] == kept_entries
  assert macs.sparse < macs.dense


def test_mask_of_the_wrong_shape_is_an_error():
  _, _, variables = convs_macs()
  masks = jax.tree.map(lambda p: None, variables["params"])
  masks["dense"]["kernel"] = np.ones((3, 3), bool)
  with pytest.raises(ValueError, match="dense/kernel"):
    convs_macs(masks)


class Upsampler(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.ConvTranspose(4, (2, 2), strides=(2, 2))(x)


def test_layers_it_cannot_count_are_an_error():
  model = Upsampler()
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3))))
  with pytest.raises(NotImplementedError, match="ConvTranspose"):
    flops.count_macs(model, variables, (1, 4, 4, 3))
