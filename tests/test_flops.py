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
  """A depthwise conv, a grouped conv and a dense layer."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), strides=(2, 2), feature_group_count=8,
                name="depthwise")(x)
    x = nn.Conv(12, (1, 1), feature_group_count=2, name="grouped")(x)
    x = nn.Conv(4, (3, 3), padding="VALID", name="valid")(x)
    return nn.Dense(5, name="dense")(x.reshape(x.shape[0], -1))


def test_depthwise_grouped_and_valid_convs_by_hand():
  model = Convs()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 8)))
  macs = flops.count_macs(model, variables, (2, 16, 16, 8))
  layers = {layer.path: layer for layer in macs.per_layer}
  # Depthwise 3x3 over 8 channels, stride 2: 8x8 outputs, 9 MACs each.
  assert layers["depthwise/kernel"].kernel_shape == (3, 3, 1, 8)
  assert layers["depthwise/kernel"].dense == 8 * 8 * 8 * 9
  # 1x1, 2 groups of 4 -> 6 channels: 4 MACs per output value.
  assert layers["grouped/kernel"].dense == 8 * 8 * 12 * 4
  # 3x3 VALID on 8x8x12 -> 6x6x4.
  assert layers["valid/kernel"].dense == 6 * 6 * 4 * 9 * 12
  assert layers["dense/kernel"].dense == 6 * 6 * 4 * 5
  assert macs.dense == sum(l.dense for l in layers.values())
  # Masks from optg count only the kept entries.
  masks = jax.tree.map(lambda p: None, variables["params"])
  masks["depthwise"]["kernel"] = np.zeros((3, 3, 1, 8), bool)
  masks["depthwise"]["kernel"][1, 1] = True
  sparse = flops.count_macs(model, variables, (1, 16, 16, 8), masks)
  assert sparse.sparse == macs.dense - 8 * 8 * 8 * 8


def test_masks_from_the_transform():
  model = models.create("resnet20_cifar", 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  params = variables["params"]
  scores = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1),
                                                    p.shape) if p.ndim >= 2
                        else None, params)
  masks = optg.topk_masks(scores, 0.75)
  macs = flops.count_macs(model, variables, (1, 32, 32, 3), masks)
  kept = {layer.path: layer.sparse // layer.output_size
          for layer in macs.per_layer}
  report = optg.sparsity_report(masks)
  for path, kept_entries in kept.items():
    assert report["layers"][path]["kept"] == kept_entries
  assert macs.sparse < macs.dense


def test_mask_of_the_wrong_shape_is_an_error():
  model = Convs()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 8)))
  masks = jax.tree.map(lambda p: None, variables["params"])
  masks["dense"]["kernel"] = np.ones((3, 3), bool)
  with pytest.raises(ValueError, match="dense/kernel"):
    flops.count_macs(model, variables, (1, 16, 16, 8), masks)
