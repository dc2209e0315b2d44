"""The sparse model is the model trained, and misuse is loud or impossible.

`keep_sparse` (params that are the sparse network, in plain optax, Flax
linen's `TrainState` and `nnx.Optimizer`), `trained_masks` /
`trained_params`, `total_steps` (no refresh after the last step), the
transform-first check and the short-schedule warning.
"""

import warnings

from flax import linen as nn
from flax import nnx
from flax.core import freeze
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg

EPOCHS, SPE, TARGET = 6, 5, 0.9
STEPS = EPOCHS * SPE


def mlp():
  return nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])


def chain(update_every=SPE, beta=4.0, **kwargs):
  """OptG with a refresh once an "epoch" of 5 steps, weight decay, SGD."""
  sparsity = optg.sigmoid_sparsity_schedule(TARGET, EPOCHS, SPE, beta=beta)
  return optax.chain(
      optg.mask_transform(sparsity,
                          optg.supermask_learning_rate(0.1, sparsity, TARGET),
                          update_every=update_every, **kwargs),
      optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))


def data(steps=STEPS, batch=8, features=16):
  x = jax.random.normal(jax.random.key(1), (steps, batch, features))
  y = jax.random.randint(jax.random.key(2), (steps, batch), 0, 10)
  return x, y


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def kernels_zero_exactly_where_pruned(params, masks):
  """Whether every masked leaf is non-zero exactly where its mask keeps."""
  same = jax.tree.map(
      lambda m, p: True if m is None else bool(np.array_equal(
          np.asarray(p) != 0, np.asarray(m))),
      masks, params, is_leaf=lambda x: x is None)
  return all(jax.tree.leaves(same))


def test_keep_sparse_params_are_the_plain_chain_masked_bit_for_bit():
  model = mlp()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  x, y = data()
  loss = lambda p, x, y: xent(model.apply({"params": p}, x), y)
  raw, sparse = chain(), optg.keep_sparse(chain())

  def raw_step(p, s, x, y):  # The caller masks, the params stay dense.
    g = jax.grad(loss)(optg.apply_masks(p, optg.get_masks(s)), x, y)
    u, s = raw.update(g, s, p)
    return optax.apply_updates(p, u), s

  def sparse_step(p, s, x, y):  # An ordinary optax step.
    g = jax.grad(loss)(p, x, y)
    u, s = sparse.update(g, s, p)
    return optax.apply_updates(p, u), s

  dense, raw_state = params, raw.init(params)
  held, sparse_state = params, sparse.init(params)
  refreshes = 0
  for t in range(STEPS):  # Op by op: the same floating-point operations.
    before = optg.get_masks(raw_state)
    dense, raw_state = raw_step(dense, raw_state, x[t], y[t])
    held, sparse_state = sparse_step(held, sparse_state, x[t], y[t])
    refreshes += not leaves_equal(before, optg.get_masks(raw_state))
    assert leaves_equal(held, optg.apply_masks(dense,
                                               optg.get_masks(raw_state)))
    assert leaves_equal(optg.get_masks(sparse_state),
                        optg.get_masks(raw_state))
    assert kernels_zero_exactly_where_pruned(held,
                                             optg.get_masks(raw_state))
  assert refreshes == 4  # After steps 10, 15, 20 and 25; s(5) = 0.897.
  assert leaves_equal(optg.trained_params(held, sparse_state),
                      optg.trained_params(dense, raw_state))
  assert leaves_equal(optg.trained_params(held, sparse_state), held)

  # Jitted, the two programs fuse differently: the same masks, weights
  # within float32 rounding.
  raw_jit, sparse_jit = jax.jit(raw_step), jax.jit(sparse_step)
  dense, raw_state = params, raw.init(params)
  held, sparse_state = params, sparse.init(params)
  for t in range(STEPS):
    dense, raw_state = raw_jit(dense, raw_state, x[t], y[t])
    held, sparse_state = sparse_jit(held, sparse_state, x[t], y[t])
  assert leaves_equal(optg.get_masks(sparse_state), optg.get_masks(raw_state))
  assert kernels_zero_exactly_where_pruned(held, optg.get_masks(raw_state))
  for a, b in zip(jax.tree.leaves(held), jax.tree.leaves(
      optg.apply_masks(dense, optg.get_masks(raw_state)))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_ordinary_step_trains_the_sparse_network_only_with_keep_sparse():
  """The forward pass on the unmasked weights cannot be forgotten: with
  `keep_sparse` the params the step differentiates are the sparse network;
  the same step on the plain chain trains the dense one (what a caller who
  forgets `apply_masks` gets)."""
  model = mlp()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  x, y = data()
  loss = lambda p, x, y: xent(model.apply({"params": p}, x), y)
  results = {}
  for name, tx in (("keep_sparse", optg.keep_sparse(chain())),
                   ("plain", chain())):

    @jax.jit
    def step(p, s, x, y, tx=tx):
      g = jax.grad(loss)(p, x, y)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for t in range(STEPS):
      p, s = step(p, s, x[t], y[t])
    results[name] = (p, s)
  p, s = results["keep_sparse"]
  assert kernels_zero_exactly_where_pruned(p, optg.trained_masks(s))
  kept = optg.sparsity_report(optg.trained_masks(s))["kept"]
  assert sum(int(np.count_nonzero(k)) for k in jax.tree.leaves(p)
             if k.ndim == 2) == kept
  p, s = results["plain"]
  assert sum(int(np.count_nonzero(k)) for k in jax.tree.leaves(p)
             if k.ndim == 2) > 5 * kept


def test_flax_train_state_with_keep_sparse_holds_the_sparse_network():
  model = mlp()
  state = train_state.TrainState.create(
      apply_fn=model.apply, tx=optg.keep_sparse(chain()),
      params=model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"])
  x, y = data()

  @jax.jit
  def train(state, x, y):  # As flax/examples/mnist writes it.
    def loss_fn(params):
      return xent(state.apply_fn({"params": params}, x), y)
    grads = jax.grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads)

  for t in range(STEPS):
    state = train(state, x[t], y[t])
    assert kernels_zero_exactly_where_pruned(
        state.params, optg.get_masks(state.opt_state))
  # No refresh after the last step: the params are the model trained.
  assert leaves_equal(optg.get_masks(state.opt_state),
                      optg.trained_masks(state.opt_state))
  assert leaves_equal(optg.trained_params(state.params, state.opt_state),
                      state.params)
  report = optg.sparsity_report(optg.trained_masks(state.opt_state))
  assert abs(report["sparsity"] - TARGET) < 1e-3


class NnxMLP(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(x)))


def test_nnx_model_evaluated_between_steps_is_the_sparse_network():
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optg.keep_sparse(chain()), wrt=nnx.Param)
  x, y = data()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: xent(m(x), y))(model)
    optimizer.update(model, grads)

  probe = jax.random.normal(jax.random.key(3), (4, 16))
  for t in range(STEPS):
    train_step(model, optimizer, x[t], y[t])
    masks = optg.get_masks(optimizer.opt_state)
    params = nnx.state(model, nnx.Param)
    assert kernels_zero_exactly_where_pruned(nnx.as_pure(params),
                                             nnx.as_pure(masks))
    # The model's output is that of its weights masked: nothing dense is
    # left in it between steps.
    sparse = nnx.as_pure(optg.apply_masks(params, masks))
    w1, b1 = sparse["fc1"]["kernel"], sparse["fc1"]["bias"]
    w2, b2 = sparse["fc2"]["kernel"], sparse["fc2"]["bias"]
    want = jax.nn.relu(probe @ w1 + b1) @ w2 + b2
    np.testing.assert_allclose(model(probe), want, rtol=1e-5, atol=1e-6)
  trained = optg.trained_params(nnx.state(model, nnx.Param),
                                optimizer.opt_state)
  assert leaves_equal(nnx.as_pure(trained),
                      nnx.as_pure(nnx.state(model, nnx.Param)))
  assert abs(optg.sparsity_report(optg.trained_masks(
      optimizer.opt_state))["sparsity"] - TARGET) < 1e-3


def test_trained_params_after_a_refresh_are_the_masks_the_period_trained():
  model = mlp()
  params = model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  tx = optg.keep_sparse(chain())
  state = tx.init(params)
  x, y = data()
  loss = lambda p, x, y: xent(model.apply({"params": p}, x), y)
  for t in range(20):  # The refresh after step 20 draws s(4) masks.
    masks_in_force = optg.get_masks(state)
    g = jax.grad(loss)(params, x[t], y[t])
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  assert leaves_equal(optg.trained_masks(state), masks_in_force)
  assert not leaves_equal(optg.get_masks(state), masks_in_force)
  trained = optg.trained_params(params, state)
  assert kernels_zero_exactly_where_pruned(trained, masks_in_force)
  assert kernels_zero_exactly_where_pruned(params, optg.get_masks(state))
  # Weights the new masks pruned come back from keep_sparse's dense copy.
  assert isinstance(state, optg.KeepSparseState)
  kernels = lambda tree: [tree["layers_0"]["kernel"],
                          tree["layers_2"]["kernel"]]
  for t_leaf, d, m in zip(kernels(trained), kernels(state.dense),
                          kernels(masks_in_force)):
    np.testing.assert_array_equal(t_leaf, np.where(m, d, 0))


def _update_eagerly_and_jitted(tx, state, params):
  """The ValueError messages of `tx.update` op by op and under `jit`."""
  grads = jax.tree.map(jnp.zeros_like, params)
  messages = []
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(ValueError) as e:
      update(grads, state, params)
    messages.append(str(e.value))
  return messages


FIX = "init the optimizer with the params you update"


def test_keep_sparse_update_with_params_of_another_tree_names_the_leaves():
  params = mlp().init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  tx = optg.keep_sparse(chain())
  state = tx.init(params)
  deeper = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(32), nn.relu,
                          nn.Dense(10)]).init(jax.random.key(0),
                                              jnp.zeros((1, 16)))["params"]
  assert _update_eagerly_and_jitted(tx, state, deeper) == 2 * [
      "keep_sparse: update got params of another tree than init did (they "
      f"have layers_4/bias, layers_4/kernel, not at init); {FIX}"]
  assert _update_eagerly_and_jitted(
      tx, state, {"layers_0": params["layers_0"]}) == 2 * [
          "keep_sparse: update got params of another tree than init did "
          f"(they lack layers_2/bias, layers_2/kernel); {FIX}"]
  # The same leaf paths in other containers: the two structures, shortly.
  message, = set(_update_eagerly_and_jitted(tx, state, freeze(params)))
  assert message.startswith(
      "keep_sparse: update got params of another tree than init did (they "
      "are PyTreeDef(CustomNode(FrozenDict["), message
  assert ("at init PyTreeDef({'layers_0': {'bias': *, 'kernel': *}, "
          "'layers_2': {'bias': *, 'kernel': *}})); " + FIX) in message
  assert message.endswith(FIX) and len(message) < 400


def test_keep_sparse_update_with_a_leaf_of_another_shape_names_it():
  params = mlp().init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  tx = optg.keep_sparse(chain())
  state = tx.init(params)
  wider = mlp().init(jax.random.key(0), jnp.zeros((1, 12)))["params"]
  assert _update_eagerly_and_jitted(tx, state, wider) == 2 * [
      "keep_sparse: update got params leaf layers_0/kernel of shape "
      f"(12, 32), but (16, 32) at init; {FIX}"]
  other = nn.Sequential([nn.Dense(24), nn.relu, nn.Dense(10)]).init(
      jax.random.key(0), jnp.zeros((1, 16)))["params"]
  assert _update_eagerly_and_jitted(tx, state, other) == 2 * [
      "keep_sparse: update got params leaf layers_0/kernel of shape "
      f"(16, 24), but (16, 32) at init (2 leaves have other shapes); {FIX}"]


@pytest.mark.parametrize("wrong", [
    lambda: optax.chain(optax.sgd(0.1, 0.9), optg.mask_transform(0.5, 0.1)),
    lambda: optax.chain(optax.scale_by_adam(),
                        optg.mask_transform(0.5, 0.1), optax.scale(-0.1)),
    lambda: optax.chain(optax.add_decayed_weights(1e-4),
                        optax.chain(optg.mask_transform(0.5, 0.1),
                                    optax.sgd(0.1))),
])
def test_transform_not_first_is_an_error_in_every_pattern(wrong):
  params = mlp().init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  match = "mask_transform is not the first transformation of its chain"
  # Plain optax: when the masks are first read.
  state = wrong().init(params)
  for read in (optg.get_masks, optg.trained_masks):
    with pytest.raises(ValueError, match=match):
      read(state)
  with pytest.raises(ValueError, match="put it first"):
    optg.trained_params(params, state)
  # keep_sparse (and so Flax's TrainState.create): at init.
  with pytest.raises(ValueError, match=match):
    train_state.TrainState.create(apply_fn=mlp().apply, params=params,
                                  tx=optg.keep_sparse(wrong()))
  # nnx.Optimizer, with and without keep_sparse.
  model = NnxMLP(nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    nnx.Optimizer(model, optg.keep_sparse(wrong()), wrt=nnx.Param)
  optimizer = nnx.Optimizer(model, wrong(), wrt=nnx.Param)
  with pytest.raises(ValueError, match=match):
    optg.get_masks(optimizer.opt_state)


def test_first_in_wrappers_and_nested_chains_is_accepted():
  params = mlp().init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
  for tx in (
      optax.chain(optax.chain(optg.mask_transform(0.5, 0.1),
                              optax.add_decayed_weights(1e-4)),
                  optax.sgd(0.1)),
      optax.MultiSteps(chain(), 2),
      optax.apply_if_finite(chain(), 3),
      optax.inject_hyperparams(optg.mask_transform,
                               static_args=optg.STATIC_ARGS)(
                                   sparsity=0.5, mask_learning_rate=0.1)):
    assert optg.sparsity_report(optg.get_masks(tx.init(params)))["kept"] > 0


def test_flax_default_ten_epochs_warns_with_the_harness_advice():
  # flax/examples/mnist trains 10 epochs: at beta 1 the last epoch trains at
  # 0.9 * sigmoid(4) = 0.8838, not 0.9.
  schedule = optg.sigmoid_sparsity_schedule(0.9, 10, 469)
  with pytest.warns(UserWarning, match=(
      r"drawn after step 4221 of 4690\) are at sparsity 0\.8838, short of "
      r"the target 0\.9 by 0\.0162.*beta >= 1\.71 \(now 1\) or "
      r"total_epochs >= 16 \(now 10\)")):
    optg.mask_transform(schedule, 0.1, update_every=469)
  with pytest.warns(UserWarning, match="short of the target"):
    optg.mask_transform(schedule, 0.1)  # A refresh every step: the same.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    optg.mask_transform(optg.sigmoid_sparsity_schedule(0.9, 10, 469,
                                                       beta=1.71), 0.1)
    # A run that stops before the schedule's end is the caller's choice.
    optg.mask_transform(schedule, 0.1, total_steps=1000)


def test_a_period_that_never_refreshes_before_the_end_is_an_error():
  schedule = optg.sigmoid_sparsity_schedule(0.9, 6, 10, beta=4.0)
  with pytest.raises(ValueError, match="never refreshes the masks within "
                     "the run's total_steps=60"):
    optg.mask_transform(schedule, 0.1, update_every=60)
  with pytest.raises(ValueError, match="total_steps=8"):
    optg.mask_transform(0.5, 0.1, update_every=10, total_steps=8)
  with pytest.raises(ValueError, match="total_steps must be a positive"):
    optg.mask_transform(0.5, 0.1, total_steps=0)


def test_no_refresh_after_total_steps():
  params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10)}
  grads = lambda t: {"w": jnp.cos(jnp.arange(100.0) * (t + 1)).reshape(10, 10)}
  for total_steps, last_change in ((None, 7), (6, 3)):
    tx = optg.mask_transform(optax.linear_schedule(0.1, 0.9, 8), 1.0,
                             update_every=2, total_steps=total_steps)
    state, changes = tx.init(params), []
    for t in range(8):
      before = np.asarray(state.masks["w"])
      _, state = tx.update(grads(t), state, params)
      np.testing.assert_array_equal(state.trained_masks["w"], before)
      if not np.array_equal(before, state.masks["w"]):
        changes.append(t)
    assert changes[-1] == last_change
