"""Sharded arrays: `jax.jit` over a Mesh, and `jax.shard_map` with `axis_name`.

The tests run on 4 simulated CPU devices (tests/conftest.py).
"""

from fractions import Fraction
import pathlib
import re

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax as optg
from optg_jax.topk import topk_masks

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A 615 x 682 kernel has N = 419,430 weights; at this sparsity the global
# top-k keeps N - round(s * N) = 209,715 of them, while a top-k of each half
# (two shards of 209,715) keeps 2 * 104,858 = 209,716.
KERNEL_SHAPE = (615, 682)
SPARSITY = 0.499999
KEPT = 209_715
# The refusal of scores that vary over mesh axes axis_name does not name.
REFUSED = ("vary over mesh axes .'data', 'model'.*axis_name|"
           "axis_name.*vary over mesh axes .'data', 'model'.")


def kept(sparsity, total):
  return total - round(Fraction(sparsity) * total)


def count(masks):
  return sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(masks))


def mesh_1d(name, explicit=False):
  if explicit:
    return jax.make_mesh((4,), (name,),
                         axis_types=(jax.sharding.AxisType.Explicit,))
  return Mesh(np.array(jax.devices()), (name,))


def mesh_2d():
  return Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))


def put(tree, mesh, specs):
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                      tree, specs)


def specs_of(tree):
  """The PartitionSpec of each leaf (P() for one on a single device)."""
  return jax.tree.map(
      lambda a: a.sharding.spec if isinstance(a.sharding, NamedSharding)
      else P(), tree)


def assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def assert_trees_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5,
                               atol=1e-6)


def assert_placed_alike(got, want):
  assert got.sharding.is_equivalent_to(want.sharding, want.ndim), (
      got.sharding, want.sharding)


GUIDE = ROOT / "docs" / "guides" / "sharding.md"


def readme_sharded_example():
  """The first Python block of the sharding guide."""
  return GUIDE.read_text().split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_data_parallel_step_matches_one_device(capsys):
  namespace = {}
  code = compile(readme_sharded_example(), str(GUIDE), "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  assert "all prunable     10,163  50,816    80.00%" in capsys.readouterr().out
  params, opt_state = namespace["params"], namespace["opt_state"]
  state = optg.get_optg_state(opt_state)
  assert namespace["x"].sharding.spec == P("data")
  for leaf in jax.tree.leaves((params, state.scores, state.momentum,
                               state.masks)):
    assert len(leaf.sharding.device_set) == 4
    assert leaf.sharding.is_fully_replicated

  # The same three steps with everything on one device.
  model, tx = namespace["model"], namespace["tx"]
  train_step = namespace["train_step"]
  params_1 = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
  opt_state_1 = tx.init(params_1)
  x, y = np.asarray(namespace["x"]), np.asarray(namespace["y"])
  for _ in range(3):
    params_1, opt_state_1 = train_step(params_1, opt_state_1, x, y)
  assert len(jax.tree.leaves(params_1)[0].sharding.device_set) == 1

  masks = optg.get_masks(opt_state)
  total = sum(m.size for m in jax.tree.leaves(masks))
  assert count(masks) == kept(0.8, total)
  assert_trees_equal(masks, optg.get_masks(opt_state_1))
  assert_trees_close(params, params_1)
  assert_trees_close(state.scores, optg.get_optg_state(opt_state_1).scores)


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("jitted", [False, True])
def test_init_places_state_like_params(jitted, explicit):
  mesh = mesh_1d("model", explicit)
  rng = np.random.default_rng(0)
  params = put({"column": rng.standard_normal((8, 16), np.float32),
                "replicated": rng.standard_normal((6, 4), np.float32),
                "bias": np.zeros(16, np.float32)},
               mesh, {"column": P(None, "model"), "replicated": P(),
                      "bias": P("model")})
  tx = optax.chain(optg.mask_transform(0.5, 0.1), optax.sgd(0.1))
  init = jax.jit(tx.init) if jitted else tx.init
  with jax.set_mesh(mesh):
    state = optg.get_optg_state(init(params))
  for field, dtype, value in (("scores", jnp.float32, 0),
                              ("momentum", jnp.float32, 0),
                              ("masks", jnp.bool_, True)):
    tree = getattr(state, field)
    assert tree["bias"] is None
    for name in ("column", "replicated"):
      assert_placed_alike(tree[name], params[name])
      assert tree[name].dtype == dtype
      np.testing.assert_array_equal(
          np.asarray(tree[name]), np.full(params[name].shape, value, dtype))
  assert state.scores["column"].sharding.spec == P(None, "model")


@pytest.mark.parametrize("tie_levels", [None, 3])
def test_jit_topk_of_sharded_scores_equals_unsharded(tie_levels):
  mesh = mesh_1d("model")
  rng = np.random.default_rng(tie_levels or 0)
  shapes = {"column": (64, 96), "row": (48, 20), "replicated": (7, 5)}
  specs = {"column": P(None, "model"), "row": P("model", None),
           "replicated": P()}
  if tie_levels:
    scores = {k: rng.integers(0, tie_levels, s).astype(np.float32)
              for k, s in shapes.items()}
  else:
    scores = {k: rng.standard_normal(s).astype(np.float32)
              for k, s in shapes.items()}
  sharded = put(scores, mesh, specs)
  got = jax.jit(lambda s: topk_masks(s, 0.9))(sharded)
  want = topk_masks(jax.tree.map(jnp.asarray, scores), 0.9)
  assert count(got) == kept(0.9, sum(np.prod(s) for s in shapes.values()))
  assert_trees_equal(got, want)
  for name in shapes:
    assert_placed_alike(got[name], sharded[name])


@pytest.mark.parametrize("explicit", [False, True])
def test_jit_topk_of_column_sharded_kernel_gathers_nothing(explicit):
  mesh = mesh_1d("model", explicit)
  scores = jax.random.normal(jax.random.key(0), (512, 1024))
  topk = jax.jit(lambda s: topk_masks(s, 0.9))
  with jax.set_mesh(mesh):
    sharded = topk.lower(jax.device_put(
        scores, NamedSharding(mesh, P(None, "model")))).compile()
    replicated = topk.lower(jax.device_put(
        scores, NamedSharding(mesh, P()))).compile()
  text = sharded.as_text()
  assert "all-gather" not in text and "all-to-all" not in text
  # The only communication: all-reduces of scalars (the counts of a pass,
  # and the largest and smallest key of the last bracket).
  reduced = re.findall(r"= (\([^)]*\)|\S+) all-reduce(?:-start)?\(", text)
  operands = re.findall(r"\w+\[[^\]]*\]", " ".join(reduced))
  assert reduced and set(operands) <= {"s32[]", "u32[]"}, reduced
  assert "s32[]" in operands, reduced
  sharded_memory = sharded.memory_analysis()
  replicated_memory = replicated.memory_analysis()
  if sharded_memory is None or replicated_memory is None:
    pytest.skip("no memory analysis on this backend")
  # About a quarter of the replicated run's temporaries (4 shards).
  assert (sharded_memory.temp_size_in_bytes * 3 <
          replicated_memory.temp_size_in_bytes), (sharded_memory,
                                                  replicated_memory)


def mlp_loss(params, x, y):
  hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] - y))


def test_tensor_parallel_jit_steps_match_unsharded():
  mesh = mesh_1d("model")
  rng = np.random.default_rng(1)
  params = {"w1": 0.2 * rng.standard_normal((32, 64), np.float32),
            "b1": np.zeros(64, np.float32),
            "w2": 0.2 * rng.standard_normal((64, 8), np.float32)}
  specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}
  x = rng.standard_normal((16, 32), np.float32)
  y = rng.standard_normal((16, 8), np.float32)
  tx = optax.chain(optg.mask_transform(0.7, 1.0), optax.sgd(0.1))

  @jax.jit
  def step(params, opt_state):
    masked = optg.apply_masks(params, optg.get_masks(opt_state))
    grads = jax.grad(mlp_loss)(masked, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  sharded_params = put(params, mesh, specs)
  results = []
  for p in (sharded_params, jax.tree.map(jnp.asarray, params)):
    opt_state = tx.init(p)
    for _ in range(3):
      p, opt_state = step(p, opt_state)
    results.append((p, optg.get_optg_state(opt_state)))
  (p_sharded, state), (p_unsharded, state_unsharded) = results

  assert count(state.masks) == kept(0.7, 32 * 64 + 64 * 8)
  assert_trees_equal(state.masks, state_unsharded.masks)
  assert_trees_close(p_sharded, p_unsharded)
  assert_trees_close(state.scores, state_unsharded.scores)
  for name in ("w1", "w2"):
    for tree in (state.scores, state.momentum, state.masks):
      assert_placed_alike(tree[name], sharded_params[name])


def kernel_step(tx):
  """One training step of `sum(tanh(x @ (W * M)) ** 2)`."""

  def step(params, opt_state, x):
    masked = optg.apply_masks(params, optg.get_masks(opt_state))
    grads = jax.grad(
        lambda m: jnp.sum(jnp.square(jnp.tanh(x @ m["w"]))))(masked)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def test_shard_map_step_keeps_exact_global_count():
  mesh = mesh_2d()
  rng = np.random.default_rng(2)
  params = {"w": 0.05 * rng.standard_normal(KERNEL_SHAPE, np.float32)}
  x = rng.standard_normal((8, KERNEL_SHAPE[0]), np.float32)
  tx = optax.chain(optg.mask_transform(SPARSITY, 0.1, axis_name="model"),
                   optax.sgd(0.1))
  params_specs = {"w": P(None, "model")}
  sharded_params = put(params, mesh, params_specs)
  opt_state = tx.init(sharded_params)
  state_specs = specs_of(opt_state)
  step = jax.jit(jax.shard_map(
      kernel_step(tx), mesh=mesh,
      in_specs=(params_specs, state_specs, P("data", None)),
      out_specs=(params_specs, state_specs)))
  new_params, opt_state = step(sharded_params, opt_state,
                               jax.device_put(x, NamedSharding(mesh, P(
                                   "data", None))))
  state = optg.get_optg_state(opt_state)
  masks, scores = np.asarray(state.masks["w"]), np.asarray(state.scores["w"])
  assert masks.sum() == KEPT == kept(SPARSITY, masks.size)
  assert state.masks["w"].sharding.spec == P(None, "model")
  # No ties at the threshold, so the masks are the unsharded top-k's.
  assert np.count_nonzero(scores == scores[masks].min()) == 1
  np.testing.assert_array_equal(
      masks, np.asarray(topk_masks(jnp.asarray(scores), SPARSITY)))

  # The same step unsharded: the same scores, weights and masks.
  tx_1 = optax.chain(optg.mask_transform(SPARSITY, 0.1), optax.sgd(0.1))
  params_1, opt_state_1 = jax.jit(kernel_step(tx_1))(
      jax.tree.map(jnp.asarray, params), tx_1.init(params), x)
  state_1 = optg.get_optg_state(opt_state_1)
  assert_trees_close(new_params, params_1)
  assert_trees_close(state.scores, state_1.scores)
  np.testing.assert_array_equal(masks, np.asarray(state_1.masks["w"]))


def test_check_vma_false_without_axis_name_is_a_per_shard_topk():
  # The documented limitation: nothing tells the shards from replicas.
  mesh = mesh_2d()
  topk = jax.jit(jax.shard_map(
      lambda s: topk_masks(s, SPARSITY), mesh=mesh,
      in_specs=P(None, "model"), out_specs=P(None, "model"),
      check_vma=False))
  scores = jax.random.normal(jax.random.key(5), KERNEL_SHAPE)
  masks = topk(jax.device_put(scores, NamedSharding(mesh, P(None, "model"))))
  assert count(masks) == KEPT + 1


@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_topk_count_is_exact_with_ties(check_vma):
  # All scores tie: exactly k are kept, in the documented order (shard index
  # along the axis, then flat position within the shard).
  mesh = mesh_2d()
  sparsity = 0.7
  topk = jax.jit(jax.shard_map(
      lambda s: topk_masks(s, sparsity, axis_name="model"), mesh=mesh,
      in_specs=P(None, "model"), out_specs=P(None, "model"),
      check_vma=check_vma))
  masks = np.asarray(topk(jax.device_put(
      jnp.zeros(KERNEL_SHAPE), NamedSharding(mesh, P(None, "model")))))
  k = kept(sparsity, masks.size)
  assert masks.sum() == k
  positions = np.arange(masks.size).reshape(KERNEL_SHAPE)
  order = np.concatenate([shard.reshape(-1)
                          for shard in np.split(positions, 2, axis=1)])
  want = np.zeros(masks.size, bool)
  want[order[:k]] = True
  np.testing.assert_array_equal(masks, want.reshape(KERNEL_SHAPE))


def test_shard_map_topk_matches_unsharded_without_ties():
  # A replicated leaf (counted once) beside the column-sharded kernel.
  mesh = mesh_2d()
  rng = np.random.default_rng(3)
  scores = {"w": rng.standard_normal(KERNEL_SHAPE, np.float32),
            "v": rng.standard_normal((37, 3), np.float32)}
  specs = {"w": P(None, "model"), "v": P()}
  topk = jax.jit(jax.shard_map(
      lambda s: topk_masks(s, SPARSITY, axis_name="model"), mesh=mesh,
      in_specs=(specs,), out_specs=specs))
  got = topk(put(scores, mesh, specs))
  want = topk_masks(jax.tree.map(jnp.asarray, scores), SPARSITY)
  flat = np.concatenate([x.reshape(-1) for x in jax.tree.leaves(scores)])
  kept_flat = np.concatenate([np.asarray(m).reshape(-1)
                              for m in jax.tree.leaves(want)])
  assert np.count_nonzero(flat == flat[kept_flat].min()) == 1  # No ties.
  assert count(got) == kept(SPARSITY, flat.size)
  assert_trees_equal(got, want)


def test_shard_map_leading_axis_sharding_breaks_ties_like_unsharded():
  # Sharded on the first axis, the shard-major order is the row-major one.
  mesh = mesh_2d()
  rng = np.random.default_rng(4)
  scores = rng.integers(0, 3, (64, 30)).astype(np.float32)
  names = ("data", "model")
  topk = jax.jit(jax.shard_map(
      lambda s: topk_masks(s, 0.6, axis_name=names), mesh=mesh,
      in_specs=P(names, None), out_specs=P(names, None)))
  got = topk(jax.device_put(scores, NamedSharding(mesh, P(names, None))))
  want = topk_masks(jnp.asarray(scores), 0.6)
  assert count(got) == kept(0.6, scores.size)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_sharded_scores_without_or_with_wrong_axis_name_are_refused():
  mesh = mesh_2d()
  scores = jax.device_put(jnp.ones((64, 64)),
                          NamedSharding(mesh, P("data", "model")))
  for axis_name in (None, "model"):
    topk = jax.shard_map(
        lambda s, a=axis_name: topk_masks(s, 0.5, axis_name=a), mesh=mesh,
        in_specs=P("data", "model"), out_specs=P("data", "model"))
    with pytest.raises(ValueError, match=REFUSED):
      topk(scores)
  # The same through mask_transform: an update inside shard_map.
  tx = optg.mask_transform(0.5, 0.1)
  params = {"w": scores}
  state = tx.init(params)
  specs = specs_of(state)
  update = jax.shard_map(
      lambda g, s, p: tx.update(g, s, p)[1], mesh=mesh,
      in_specs=({"w": P("data", "model")}, specs, {"w": P("data", "model")}),
      out_specs=specs)
  with pytest.raises(ValueError, match=REFUSED):
    update(params, state, params)
  with pytest.raises(ValueError, match="axis_name='model'.*not a mesh axis"):
    topk_masks(jnp.ones((4, 4)), 0.5, axis_name="model")
  with pytest.raises(ValueError, match="score_normalization.*axis_name"):
    optg.mask_transform(0.5, 0.1, score_normalization="layer_rms",
                        axis_name="model")
