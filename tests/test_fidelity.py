"""Fidelity: the JAX transform against an independent NumPy statement of OptG.

`NumpyOptG` below restates the procedure of OPTG_SPEC.md directly (manual
backward pass of a small MLP, score momentum, masked weight gradients, weight
decay, SGD momentum, per-epoch global top-k refresh with sigmoid sparsity and
coupled mask learning rate) in float64 NumPy. It shares no code with the
library. Both train the same MLP on scikit-learn's bundled digits with the same
initial weights and batches; the masks must be identical and the weights
equal to float32 accuracy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optg_jax as optg

EPOCHS = 10
BATCH = 64
HIDDEN = 64
TARGET = 0.8
BETA = 1.0
PEAK_LR = 0.5
WARMUP_EPOCHS = 1
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9


def load_data():
  digits = load_digits()
  x = digits.data.astype(np.float64) / 16.0
  x = x[:, x.std(axis=0) > 0]  # Constant pixels would give tied zero scores.
  order = np.random.default_rng(0).permutation(len(x))
  x, y = x[order], digits.target[order]
  return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def initial_params(num_inputs):
  rng = np.random.default_rng(1)
  return {
      "hidden": {"kernel": rng.standard_normal((num_inputs, HIDDEN)) /
                           math.sqrt(num_inputs),
                 "bias": np.zeros(HIDDEN)},
      "out": {"kernel": rng.standard_normal((HIDDEN, 10)) / math.sqrt(HIDDEN),
              "bias": np.zeros(10)},
  }


def batches(num_train, steps_per_epoch):
  rng = np.random.default_rng(2)
  for _ in range(EPOCHS):
    order = rng.permutation(num_train)
    for i in range(steps_per_epoch):
      yield order[i * BATCH:(i + 1) * BATCH]


class NumpyOptG:
  """OptG, stated from the spec, on a tanh MLP, in float64 NumPy."""

  def __init__(self, params, steps_per_epoch):
    self.w = {k: dict(v) for k, v in params.items()}
    self.spe = steps_per_epoch
    self.total_steps = EPOCHS * steps_per_epoch
    self.kernels = ["hidden", "out"]  # Leaf order of the params dict.
    self.score = {k: np.zeros_like(self.w[k]["kernel"]) for k in self.kernels}
    self.score_buf = {k: np.zeros_like(self.score[k]) for k in self.kernels}
    self.mask = {k: np.ones(self.score[k].shape, bool) for k in self.kernels}
    self.trace = {k: {n: np.zeros_like(v) for n, v in layer.items()}
                  for k, layer in self.w.items()}

  def lr(self, t):
    warmup = WARMUP_EPOCHS * self.spe
    if t < warmup:
      return PEAK_LR * t / warmup
    decay = self.total_steps - warmup
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * min(t - warmup, decay) /
                                         decay))

  def sparsity(self, t):
    epoch = t // self.spe
    return TARGET / (1 + math.exp(-BETA * (epoch - EPOCHS / 2)))

  def refresh(self, s):
    flat = np.concatenate([self.score[k].ravel() for k in self.kernels])
    n = flat.size
    k = n - round(s * n)
    # Highest first; equal scores by position (a stable sort of -score).
    keep_idx = np.argsort(-flat, kind="stable")[:k]
    keep = np.zeros(n, bool)
    keep[keep_idx] = True
    start = 0
    for name in self.kernels:
      size = self.score[name].size
      self.mask[name] = keep[start:start + size].reshape(self.score[name].shape)
      start += size

  def grads(self, x, y):
    w1 = self.w["hidden"]["kernel"] * self.mask["hidden"]
    w2 = self.w["out"]["kernel"] * self.mask["out"]
    h = np.tanh(x @ w1 + self.w["hidden"]["bias"])
    logits = h @ w2 + self.w["out"]["bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    d_logits = (p - np.eye(10)[y]) / len(y)
    d_h = d_logits @ w2.T
    d_z = d_h * (1 - h**2)
    return {"hidden": {"kernel": x.T @ d_z, "bias": d_z.sum(0)},
            "out": {"kernel": h.T @ d_logits, "bias": d_logits.sum(0)}}

  def step(self, t, x, y):
    g = self.grads(x, y)  # Gradients w.r.t. the masked weights.
    lr = self.lr(t)
    mask_lr = lr * self.sparsity(t) / TARGET
    for name in self.kernels:
      w = self.w[name]["kernel"]
      self.score_buf[name] = MOMENTUM * self.score_buf[name] + g[name]["kernel"] * w
      self.score[name] = self.score[name] - mask_lr * self.score_buf[name]
      g[name]["kernel"] = g[name]["kernel"] * self.mask[name]
    for name, layer in self.w.items():
      for leaf in layer:
        d = g[name][leaf] + WEIGHT_DECAY * layer[leaf]
        self.trace[name][leaf] = d + MOMENTUM * self.trace[name][leaf]
        layer[leaf] = layer[leaf] - lr * self.trace[name][leaf]
    # No refresh after the last step: its masks would train nothing.
    if (t + 1) % self.spe == 0 and t + 1 < self.total_steps:
      self.refresh(self.sparsity(t + 1))


def jax_training(params, x_train, y_train, steps_per_epoch):
  total = EPOCHS * steps_per_epoch
  lr = optax.warmup_cosine_decay_schedule(
      0.0, PEAK_LR, WARMUP_EPOCHS * steps_per_epoch, total, end_value=0.0)
  sparsity = optg.sigmoid_sparsity_schedule(TARGET, EPOCHS, steps_per_epoch,
                                            beta=BETA)
  tx = optax.chain(
      optg.mask_transform(sparsity,
                          optg.supermask_learning_rate(lr, sparsity, TARGET),
                          momentum=MOMENTUM, update_every=steps_per_epoch),
      optax.add_decayed_weights(WEIGHT_DECAY),
      optax.sgd(lr, momentum=MOMENTUM))

  def loss_fn(p, x, y):
    h = jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    logits = h @ p["out"]["kernel"] + p["out"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(p, state, x, y):
    masked = optg.apply_masks(p, optg.get_masks(state))
    grads = jax.grad(loss_fn)(masked, x, y)
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state

  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  state = tx.init(params)
  for idx in batches(len(x_train), steps_per_epoch):
    params, state = train_step(params, state, jnp.float32(x_train[idx]),
                               jnp.int32(y_train[idx]))
  return params, state


def test_jax_transform_matches_numpy_statement_of_spec():
  (x_train, y_train), (x_test, y_test) = load_data()
  steps_per_epoch = len(x_train) // BATCH
  init = initial_params(x_train.shape[1])
  # Both start from the same float32-representable weights.
  init = jax.tree.map(lambda v: np.float32(v).astype(np.float64), init)

  reference = NumpyOptG(init, steps_per_epoch)
  masks_per_epoch = []
  for t, idx in enumerate(batches(len(x_train), steps_per_epoch)):
    reference.step(t, x_train[idx].astype(np.float32).astype(np.float64),
                   y_train[idx])
    if (t + 1) % steps_per_epoch == 0:
      masks_per_epoch.append({k: v.copy() for k, v in reference.mask.items()})

  params, state = jax_training(init, x_train, y_train, steps_per_epoch)
  masks = optg.get_masks(state)
  # No refresh after the last step: the masks in force are those it
  # trained with.
  for a, b in zip(jax.tree.leaves(masks),
                  jax.tree.leaves(optg.trained_masks(state))):
    np.testing.assert_array_equal(a, b)

  # The masks tightened every epoch, then the last epoch trained with the
  # masks drawn at its start, at s(E - 1).
  n = sum(m.size for m in reference.mask.values())
  kept = [sum(int(m.sum()) for m in e.values()) for e in masks_per_epoch]
  assert kept == sorted(kept, reverse=True)
  assert len(set(kept)) == EPOCHS - 1 and kept[-1] == kept[-2]
  final_s = TARGET / (1 + math.exp(-BETA * (EPOCHS - 1 - EPOCHS / 2)))
  assert kept[-1] == n - round(final_s * n)

  for name in ("hidden", "out"):
    np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]),
                                  reference.mask[name])
    np.testing.assert_array_equal(masks[name]["bias"], None)
    for leaf in ("kernel", "bias"):
      got = np.asarray(params[name][leaf], np.float64)
      want = reference.w[name][leaf]
      scale = np.abs(want).max()
      # float32 against float64 over 230 steps: 1.1e-5 of the largest
      # weight on some x86 CPUs, 5e-6 on others (XLA's fusions differ).
      assert np.abs(got - want).max() <= 3e-5 * scale, (name, leaf)
    np.testing.assert_allclose(
        np.asarray(optg.get_optg_state(state).scores[name]["kernel"]),
        reference.score[name], rtol=1e-4,
        atol=1e-5 * np.abs(reference.score[name]).max())

  # And the sparse network it trained learned the task (10 classes).
  masked = optg.apply_masks(params, masks)
  h = np.tanh(x_test @ np.asarray(masked["hidden"]["kernel"]) +
              np.asarray(masked["hidden"]["bias"]))
  logits = h @ np.asarray(masked["out"]["kernel"]) + np.asarray(
      masked["out"]["bias"])
  assert (logits.argmax(1) == y_test).mean() > 0.75
