"""Tests of the transform, masks and reports on Flax NNX state."""

import functools
import re

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg

KERNELS = {"conv1/kernel", "conv2/kernel", "head/kernel"}
ALL_PARAMS = KERNELS | {"conv1/bias", "conv2/bias", "head/bias", "bn1/scale",
                        "bn1/bias"}


class NnxCNN(nnx.Module):
  """Conv -> BatchNorm -> relu -> Conv -> mean pool -> Linear."""

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    return self.head(self.conv2(x).mean(axis=(1, 2)))


class LinenCNN(nn.Module):
  """The same network in linen, with the same parameter names."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), name="conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=False, name="bn1")(x))
    x = nn.Conv(8, (3, 3), name="conv2")(x)
    return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def by_name(tree):
  """`{path: numpy array}` of the leaves of a pytree (NNX state unwrapped)."""
  return {optg.path_to_str(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(nnx.as_pure(tree))}


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_tx(where=None):
  return optax.chain(
      optg.mask_transform(optax.linear_schedule(0.0, 0.5, 6), 0.5,
                          update_every=2, where=where),
      optax.add_decayed_weights(1e-4),
      optax.sgd(0.05, momentum=0.9))


def batch(step):
  kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(7), step))
  return (jax.random.normal(kx, (8, 6, 6, 3)),
          jax.random.randint(ky, (8,), 0, 10))


@nnx.jit
def nnx_step(model, optimizer, x, y):
  dense = nnx.as_pure(nnx.state(model, nnx.Param))
  masks = optg.get_masks(optimizer.opt_state)
  nnx.update(model, optg.apply_masks(dense, masks))
  loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
  nnx.update(model, dense)
  optimizer.update(model, grads)
  return loss


def test_nnx_optimizer_matches_linen_pattern():
  model = NnxCNN(nnx.Rngs(0))
  tx = make_tx(where=lambda path, leaf: path.endswith("kernel"))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  linen = LinenCNN()
  variables = linen.init(jax.random.key(1), jnp.zeros((1, 6, 6, 3)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  assert (jax.tree.structure(params) ==
          jax.tree.structure(variables["params"]))
  assert (jax.tree.structure(stats) ==
          jax.tree.structure(variables["batch_stats"]))
  linen_tx = make_tx(where=lambda path, leaf: path.endswith("kernel"))
  opt_state = linen_tx.init(params)

  @jax.jit
  def linen_step(params, stats, opt_state, x, y):
    masked = optg.apply_masks(params, optg.get_masks(opt_state))

    def loss_fn(masked):
      logits, new = linen.apply({"params": masked, "batch_stats": stats}, x,
                                mutable=["batch_stats"])
      return xent(logits, y), new["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(masked)
    updates, opt_state = linen_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  kept = []
  for step in range(6):
    x, y = batch(step)
    loss = nnx_step(model, optimizer, x, y)
    params, stats, opt_state, linen_loss = linen_step(params, stats,
                                                      opt_state, x, y)
    np.testing.assert_allclose(loss, linen_loss, rtol=1e-5)
    masks = by_name(optg.get_masks(optimizer.opt_state))
    linen_masks = by_name(optg.get_masks(opt_state))
    assert set(masks) == set(linen_masks) == KERNELS
    for name in KERNELS:
      np.testing.assert_array_equal(masks[name], linen_masks[name])
    kept.append(sum(int(m.sum()) for m in masks.values()))
    weights = by_name(nnx.state(model, nnx.Param))
    linen_weights = by_name(params)
    assert set(weights) == set(linen_weights) == ALL_PARAMS
    for name in ALL_PARAMS:
      np.testing.assert_allclose(weights[name], linen_weights[name],
                                 rtol=1e-5, atol=1e-7, err_msg=name)
    running = by_name(nnx.state(model, nnx.BatchStat))
    for name, value in by_name(stats).items():
      np.testing.assert_allclose(running[name], value, rtol=1e-5, atol=1e-7)

  # Refreshes after steps 2, 4, 6 at sparsity 1/6, 1/3, 1/2 of 872 weights.
  total = 3 * 3 * 3 * 8 + 3 * 3 * 8 * 8 + 8 * 10
  assert kept == [total, total - 145, total - 145, total - 291, total - 291,
                  total - 436]


@pytest.mark.parametrize("use_path", [False, True])
def test_where_sees_unwrapped_nnx_paths_and_selects_kernels(use_path):
  seen = {}

  def where(path, leaf):
    seen[path] = leaf
    return path.endswith("kernel") if use_path else jnp.ndim(leaf) >= 2

  model = NnxCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make_tx(where), wrt=nnx.Param)
  assert set(seen) == ALL_PARAMS
  assert all(isinstance(leaf, jax.Array) for leaf in seen.values())
  masks = by_name(optg.get_masks(optimizer.opt_state))
  assert set(masks) == KERNELS
  weights = by_name(nnx.state(model, nnx.Param))
  for name in KERNELS:
    assert masks[name].shape == weights[name].shape and masks[name].all()
  # The default `where` selects the same leaves.
  default = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
  assert set(by_name(optg.get_masks(default.opt_state))) == KERNELS


def magnitude_pruned(sparsity=0.5):
  """A model and an optimizer whose masks keep the largest half of |W|."""
  model = NnxCNN(nnx.Rngs(3))
  tx = optg.mask_transform(sparsity, 0.0, criterion="magnitude")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  optimizer.update(model, zero_grads)  # Refreshes the masks: top-k of |W|.
  return model, optimizer


def test_sparsity_table_names_nnx_layers():
  _, optimizer = magnitude_pruned()
  table = optg.sparsity_table(optg.get_masks(optimizer.opt_state))
  rows = [line.split()[0] for line in table.splitlines()[2:5]]
  assert rows == ["conv1/kernel", "conv2/kernel", "head/kernel"]
  assert "value" not in table
  assert re.search(r"all prunable\s+436\s+872\s+50\.00%", table)
  # The masks as the optimizer state holds them (NNX variables) read alike.
  wrapped = optimizer.opt_state.masks
  assert isinstance(wrapped["conv1"]["kernel"], nnx.Variable)
  assert optg.sparsity_table(wrapped) == table


def test_get_masks_apply_masks_round_trip_on_nnx_state():
  model, optimizer = magnitude_pruned()
  masks = optg.get_masks(optimizer.opt_state)
  dense = by_name(nnx.state(model, nnx.Param))
  mask = by_name(masks)
  for name in KERNELS:  # Magnitude pruning keeps the largest |W|.
    w = np.abs(dense[name])
    assert w[mask[name]].min() >= w[~mask[name]].max()

  masked = optg.apply_masks(nnx.state(model, nnx.Param), masks)
  assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(
      masked, is_leaf=lambda v: isinstance(v, nnx.Variable)))
  pure = optg.apply_masks(nnx.as_pure(nnx.state(model, nnx.Param)), masks)
  wrapped_masks = optg.apply_masks(nnx.state(model, nnx.Param),
                                   optimizer.opt_state.masks)
  nnx.update(model, masked)
  after = by_name(nnx.state(model, nnx.Param))
  for name in ALL_PARAMS:
    want = np.where(mask[name], dense[name], 0) if name in KERNELS else (
        dense[name])
    np.testing.assert_array_equal(after[name], want)
    np.testing.assert_array_equal(by_name(pure)[name], want)
    np.testing.assert_array_equal(by_name(wrapped_masks)[name], want)
  assert optg.sparsity_report(masks)["kept"] == sum(
      int(np.count_nonzero(after[n])) for n in KERNELS)


def test_update_on_variable_state_keeps_wrappers():
  model = NnxCNN(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optg.mask_transform(0.5, 0.1)
  out, state = tx.update(grads, tx.init(params), params)
  pure_out, pure_state = tx.update(nnx.as_pure(grads),
                                   tx.init(nnx.as_pure(params)),
                                   nnx.as_pure(params))
  assert isinstance(out["head"]["kernel"], nnx.Param)
  for name, value in by_name(pure_out).items():
    np.testing.assert_array_equal(by_name(out)[name], value)
  for name, value in by_name(pure_state.masks).items():
    np.testing.assert_array_equal(by_name(state.masks)[name], value)
  assert optg.sparsity_report(state.masks)["kept"] == 436


@functools.partial(nnx.jit, static_argnames="refresh")
def nnx_step_refreshing(model, optimizer, x, y, refresh):
  dense = nnx.as_pure(nnx.state(model, nnx.Param))
  masks = optg.get_masks(optimizer.opt_state)
  nnx.update(model, optg.apply_masks(dense, masks))
  loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
  nnx.update(model, dense)
  optimizer.update(model, grads, refresh=refresh)
  return loss


def test_nnx_optimizer_hands_the_host_chosen_refresh_on():
  """`nnx.Optimizer.update(model, grads, refresh=...)` reaches the
  transform: the run is the one whose refresh the device decides."""
  where = lambda path, leaf: path.endswith("kernel")
  host_model, device_model = NnxCNN(nnx.Rngs(0)), NnxCNN(nnx.Rngs(0))
  host = nnx.Optimizer(host_model, make_tx(where), wrt=nnx.Param)
  device = nnx.Optimizer(device_model, make_tx(where), wrt=nnx.Param)
  for step in range(6):
    x, y = batch(step)
    nnx_step_refreshing(host_model, host, x, y,
                        refresh=optg.refresh_due(step, 2))
    nnx_step(device_model, device, x, y)
  for got, want in ((host.opt_state, device.opt_state),
                    (nnx.state(host_model, nnx.Param),
                     nnx.state(device_model, nnx.Param))):
    got, want = by_name(got), by_name(want)
    assert set(got) == set(want)
    for name in got:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  kept = sum(int(m.sum()) for m in by_name(
      optg.get_masks(host.opt_state)).values())
  assert kept == 3 * 3 * 3 * 8 + 3 * 3 * 8 * 8 + 8 * 10 - 436
