"""The Flax patterns of the guides evaluate the model the last step trained.

Flax's examples/imagenet evaluates `state.params` at the end of each epoch.
With `keep_sparse` and the paper's refresh once an epoch, those params hold
the masks the refresh has just drawn for the *next* epoch; the guides
evaluate `optg.trained_params(state.params, state.opt_state)`, inside the
compiled eval step, under `pmap` (replicated state, a leading device axis),
under `jit` (a state sharded over the devices) and with Flax NNX. Each test
checks that the evaluated network is the one the epoch trained, and that
`state.params` is not (so that the test could fail). The 4 devices are
conftest's simulated CPUs.
"""

import functools

from flax import jax_utils
from flax import linen as nn
from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optg_jax as optg
from test_keep_sparse import NnxMLP

# 6 epochs of 3 steps, refreshed once an epoch; s(e) = 0.9 * sigmoid(4 (e -
# 3)). The 832 weights keep 832, 832, 819, 458, 97 and 83 in epochs 0 to 5:
# the refresh after epochs 1 to 4 changes the count (after epoch 0 too few
# weights go, and none follows the last).
EPOCHS, SPE, TARGET, BATCH = 6, 3, 0.9, 8
CHANGED_BY_THE_REFRESH = [1, 2, 3, 4]


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


SPARSITY = optg.sigmoid_sparsity_schedule(TARGET, EPOCHS, SPE, beta=4.0)


def optimizer():
  """keep_sparse around the chain, a refresh once an epoch: the README's."""
  return optg.keep_sparse(optax.chain(
      optg.mask_transform(SPARSITY,
                          optg.supermask_learning_rate(0.1, SPARSITY, TARGET),
                          update_every=SPE),
      optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9)))


def create_state():
  model = MLP()
  return train_state.TrainState.create(
      apply_fn=model.apply, tx=optimizer(),
      params=model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"])


def batch(step, shape):
  x = jax.random.normal(jax.random.fold_in(jax.random.key(1), step),
                        shape + (16,))
  y = jax.random.randint(jax.random.fold_in(jax.random.key(2), step), shape,
                         0, 10)
  return x, y


def loss_fn(params, apply_fn, x, y):
  logits = apply_fn({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def kept(params):
  """How many kernel entries are non-zero (traceable)."""
  return sum(jnp.count_nonzero(k) for k in jax.tree.leaves(params)
             if k.ndim == 2)


def host_count(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


def nonzero_is(params, masks):
  """Whether the kernels are non-zero exactly where the masks keep."""
  same = jax.tree.map(
      lambda m, p: m is None or np.array_equal(np.asarray(p) != 0,
                                               np.asarray(m)),
      masks, params, is_leaf=lambda x: x is None)
  return all(jax.tree.leaves(same))


def eval_step(state, x):
  """As Flax's eval_step, on the model the last step trained."""
  params = optg.trained_params(state.params, state.opt_state)
  return state.apply_fn({"params": params}, x), params, kept(params)


def naive_eval_step(state, x):
  """As Flax's eval_step unchanged: on `state.params`."""
  return kept(state.params)


def check_epochs(trained, evaluated, naive):
  """Per epoch: the evaluated network kept what the epoch trained with;
  `state.params` did not after the refreshes that changed the count."""
  assert evaluated == trained, (evaluated, trained)
  assert trained[0] == 832 and trained[-1] < 100, trained
  changed = [e for e in range(EPOCHS) if naive[e] != trained[e]]
  assert changed == CHANGED_BY_THE_REFRESH, (trained, naive)
  # At the end no refresh follows: the params are the model trained.
  assert naive[-1] == trained[-1]


def test_linen_train_state_under_pmap_evaluates_the_trained_masks():
  devices = jax.local_device_count()
  assert devices == 4  # conftest's simulated CPUs

  @functools.partial(jax.pmap, axis_name="batch")
  def train_step(state, x, y):  # as in flax/examples/imagenet
    grads = jax.grad(loss_fn)(state.params, state.apply_fn, x, y)
    grads = jax.lax.pmean(grads, axis_name="batch")
    return state.apply_gradients(grads=grads)

  p_eval_step = jax.pmap(eval_step, axis_name="batch")
  p_naive_eval_step = jax.pmap(naive_eval_step, axis_name="batch")
  state = jax_utils.replicate(create_state())
  x_eval, _ = batch(999, (devices, BATCH))
  trained, evaluated, naive = [], [], []
  for epoch in range(EPOCHS):
    masks = jax.tree.map(lambda m: np.asarray(m[0]),
                         optg.get_masks(state.opt_state))
    for i in range(SPE):
      state = train_step(state, *batch(epoch * SPE + i, (devices, BATCH)))
    # The end of the epoch, after its refresh: evaluate.
    logits, params, counts = p_eval_step(state, x_eval)
    assert np.all(np.asarray(counts) == counts[0])  # the same on each
    on_device_0 = jax.tree.map(lambda p: p[0], params)
    assert nonzero_is(on_device_0, masks)
    # Outside pmap, on the replicated state: the same params.
    host = optg.trained_params(state.params, state.opt_state)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        logits[1], MLP().apply({"params": on_device_0}, x_eval[1]),
        rtol=1e-5, atol=1e-5)
    trained.append(host_count(masks))
    evaluated.append(int(counts[0]))
    naive.append(int(p_naive_eval_step(state, x_eval)[0]))
  check_epochs(trained, evaluated, naive)
  # The report of one replica: the run reached its target as scheduled.
  one = jax_utils.unreplicate(state)
  report = optg.sparsity_report(one.opt_state, schedule=SPARSITY,
                                step=one.step, update_every=SPE)
  assert (report["step"], report["count"]) == (EPOCHS * SPE, EPOCHS * SPE)
  assert report["kept"] == trained[-1] and report["alerts"] == []


def test_linen_train_state_under_jit_sharded_evaluates_the_trained_masks():
  devices = jax.local_device_count()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("d",))
  spec = jax.sharding.PartitionSpec

  def placed(leaf):  # kernels split over their outputs where they divide
    split = (np.ndim(leaf) == 2 and np.shape(leaf)[-1] % devices == 0)
    return jax.device_put(leaf, jax.sharding.NamedSharding(
        mesh, spec(None, "d") if split else spec()))

  state = jax.tree.map(placed, create_state())
  assert not state.params["Dense_1"]["kernel"].sharding.is_fully_replicated
  rows = jax.sharding.NamedSharding(mesh, spec("d"))

  @jax.jit
  def train_step(state, x, y):
    grads = jax.grad(loss_fn)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads)

  j_eval_step = jax.jit(eval_step)
  j_naive_eval_step = jax.jit(naive_eval_step)
  x_eval = jax.device_put(batch(999, (devices * BATCH,))[0], rows)
  trained, evaluated, naive = [], [], []
  for epoch in range(EPOCHS):
    masks = jax.device_get(optg.get_masks(state.opt_state))
    for i in range(SPE):
      x, y = batch(epoch * SPE + i, (devices * BATCH,))
      state = train_step(state, jax.device_put(x, rows),
                         jax.device_put(y, rows))
    assert not state.opt_state.dense["Dense_1"]["kernel"].sharding \
        .is_fully_replicated
    logits, params, count = j_eval_step(state, x_eval)
    assert nonzero_is(jax.device_get(params), masks)
    host = optg.trained_params(state.params, state.opt_state)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        logits, MLP().apply({"params": jax.device_get(params)},
                            np.asarray(x_eval)), rtol=1e-5, atol=1e-5)
    trained.append(host_count(masks))
    evaluated.append(int(count))
    naive.append(int(j_naive_eval_step(state, x_eval)))
  check_epochs(trained, evaluated, naive)


def test_nnx_evaluates_the_trained_masks_between_epochs():
  model = NnxMLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optimizer(), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, x, y):
    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(x), y).mean()
    opt.update(model, nnx.grad(loss)(model))

  @nnx.jit
  def evaluate(model, opt, x):  # as the NNX guide shows it
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    trained = optg.trained_params(params, opt.opt_state)
    return nnx.merge(graphdef, trained, rest)(x), nnx.as_pure(trained)

  x_eval, _ = batch(999, (BATCH,))
  trained, evaluated, naive = [], [], []
  for epoch in range(EPOCHS):
    masks = nnx.as_pure(optg.get_masks(opt.opt_state))
    for i in range(SPE):
      train_step(model, opt, *batch(epoch * SPE + i, (BATCH,)))
    logits, params = evaluate(model, opt, x_eval)
    assert nonzero_is(params, masks)
    hidden = jax.nn.relu(x_eval @ params["fc1"]["kernel"] +
                         params["fc1"]["bias"])
    np.testing.assert_allclose(
        logits, hidden @ params["fc2"]["kernel"] + params["fc2"]["bias"],
        rtol=1e-5, atol=1e-5)
    weights = nnx.as_pure(nnx.state(model, nnx.Param))
    trained.append(host_count(masks))
    evaluated.append(int(kept(params)))
    naive.append(int(kept(weights)))
  check_epochs(trained, evaluated, naive)
  report = optg.sparsity_report(opt.opt_state, schedule=SPARSITY,
                                step=EPOCHS * SPE, update_every=SPE)
  assert report["count"] == EPOCHS * SPE
  assert report["kept"] == trained[-1] and report["alerts"] == []
