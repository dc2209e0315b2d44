"""N:M structure in `mask_transform`: from dense to N:M along the sigmoid,
exact counts at every refresh, the magnitude baseline, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg
from optg_jax import nm


def params_tree(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "stem": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 8)),
                                     jnp.float32)},  # 3 inputs: stays dense.
      "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)),
                                     jnp.float32),
               "bias": jnp.zeros((16,), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(16, 10)),
                                     jnp.float32)},
  }


NM_ABLE = ("conv", "head")


def run_steps(tx, params, steps, seed=1):
  state = tx.init(params)
  rng = np.random.default_rng(seed)
  update = jax.jit(tx.update)
  history = []
  for _ in range(steps):
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    _, state = update(grads, state, params)
    history.append(jax.device_get(optg.get_masks(state)))
  return history


@pytest.mark.parametrize("criterion", ["optg", "magnitude"])
def test_masks_ramp_from_dense_to_2_4_with_exact_counts(criterion):
  params = params_tree()
  epochs, steps_per_epoch = 6, 2
  sparsity = optg.sigmoid_sparsity_schedule(0.5, epochs, steps_per_epoch,
                                            beta=8.0)
  tx = optg.mask_transform(sparsity, 0.1, update_every=1, criterion=criterion,
                           structure=optg.NM(2, 4))
  history = run_steps(tx, params, epochs * steps_per_epoch)
  total = sum(params[k]["kernel"].size for k in NM_ABLE)
  groups = total // 4
  for step, masks in enumerate(history, start=1):
    share = min(float(sparsity(step)) / 0.5, 1.0)
    kept = sum(int(masks[k]["kernel"].sum()) for k in NM_ABLE)
    expected = total - 2 * int(np.round(np.float32(share) * groups))
    assert abs(kept - expected) <= 2, (step, kept, expected)
    assert masks["stem"]["kernel"].all()
    assert masks["conv"]["bias"] is None
    # Every group is dense (4 kept) or 2:4.
    for k in NM_ABLE:
      counts = nm.group_counts(masks[k]["kernel"], 4)
      assert set(np.unique(counts)) <= {2, 4}
  final = history[-1]
  for k in NM_ABLE:
    assert nm.is_nm(final[k]["kernel"], 2, 4), k
  if criterion == "magnitude":
    for k in NM_ABLE:
      np.testing.assert_array_equal(
          final[k]["kernel"], nm.nm_mask(jnp.abs(params[k]["kernel"]), 2, 4))


def test_groups_pruned_first_are_those_with_the_least_to_lose():
  scores = {"w": jnp.asarray(
      [[9.0, 8.0, 1.0, 0.0],   # loses 1.0: pruned first
       [9.0, 8.0, 7.0, 6.0],   # loses 7.0: stays dense longest
       [5.0, 4.0, 3.0, 2.0]],  # loses 3.0
      jnp.float32).T}  # (in=4, out=3): groups along axis 0.
  counts = lambda f: nm.group_counts(
      nm.progressive_nm_masks(scores, 2, 4, f)["w"], 4)[:, 0]
  np.testing.assert_array_equal(counts(0.0), [4, 4, 4])
  np.testing.assert_array_equal(counts(1 / 3), [2, 4, 4])
  np.testing.assert_array_equal(counts(2 / 3), [2, 4, 2])
  np.testing.assert_array_equal(counts(1.0), [2, 2, 2])


def test_jit_and_traced_share_match_concrete():
  scores = {"a": jnp.asarray(np.random.default_rng(3).normal(
      size=(3, 3, 8, 4)), jnp.float32)}
  for share in (0.25, 0.6):
    eager = nm.progressive_nm_masks(scores, 2, 4, share)
    traced = jax.jit(lambda s, f: nm.progressive_nm_masks(s, 2, 4, f))(
        scores, jnp.float32(share))
    np.testing.assert_array_equal(eager["a"], traced["a"])


def test_structure_string_and_static_args():
  params = params_tree()
  tx = optax.inject_hyperparams(optg.mask_transform,
                                static_args=optg.STATIC_ARGS)(
      sparsity=0.5, mask_learning_rate=0.1, structure="2:4")
  history = run_steps(tx, params, 1)
  for k in NM_ABLE:
    assert nm.is_nm(history[-1][k]["kernel"], 2, 4)


def test_structure_errors():
  params = params_tree()
  with pytest.raises(ValueError, match=r"'stem/kernel' \(3\) is not a "
                     r"multiple of 4; pass indivisible='dense'"):
    optg.mask_transform(0.5, 0.1, structure=optg.NM(2, 4),
                        indivisible="error").init(params)
  with pytest.raises(ValueError, match="min_kept_per_unit is not supported"):
    optg.mask_transform(0.5, 0.1, structure="2:4", min_kept_per_unit=1)
  with pytest.raises(ValueError, match="N:M pattern"):
    optg.mask_transform(0.5, 0.1, structure="2-4")
  with pytest.raises(ValueError, match="no prunable kernel"):
    optg.mask_transform(0.5, 0.1, structure="2:4").init(
        {"stem": params["stem"]})
