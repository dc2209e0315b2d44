"""How the steps run over the devices: `jax.pmap` or `jax.jit` on a mesh.

`Pmap` (the default, `config.parallelism="pmap"`) keeps a replica of the
train state on every local device, stacked on a leading axis, and splits
each process's batch across its devices; the steps average over the
replicas (`axis_name="batch"`). `Jit` (`"jit"`) runs one program over a
mesh of every process's devices with a `data` axis: the state is a global
array replicated on the mesh, the batch a global array sharded along
`data` (`jax.make_array_from_process_local_data`), and the steps see the
whole batch (`axis_name=None`).

Both give the loop the same handful of operations: `compile` the steps
(the train step once for each `refresh` the host chooses),
`place` a host state on the devices, `one` replica of a tree (still on a
device) and its `host` copy, the `train_batches` and `eval_batch` of the
input pipeline's per-device batches, and the `fingerprints` of every
device's copy of the state. A checkpoint holds the host copy either way,
so a run saved under one resumes under the other.
"""

import functools

from flax import jax_utils
import jax
from jax.experimental import multihost_utils
import numpy as np

from optg_jax.harness import checkpoints


class Pmap:
  """A replica of the state on every local device (`jax.pmap`)."""

  name = "pmap"
  axis_name = "batch"

  def __init__(self):
    devices = jax.local_devices()
    self.local_device_count = len(devices)
    # The sharding the pmapped steps give their outputs: the state fed back
    # from one step to the next never changes sharding, one compilation.
    self._sharding = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(devices), ("batch",)),
        jax.sharding.PartitionSpec("batch"))

  def compile(self, train_step, eval_step):
    """The pmapped steps: `train(refresh)` is the train step for that value
    of its `refresh` (one compilation each, when first called; it donates
    its state), `evaluate` the eval step."""

    @functools.cache
    def train(refresh):
      return jax.pmap(functools.partial(train_step, axis_name=self.axis_name,
                                        refresh=refresh),
                      axis_name=self.axis_name, donate_argnums=(0,))

    evaluate = jax.pmap(functools.partial(eval_step,
                                          axis_name=self.axis_name),
                        axis_name=self.axis_name)
    return train, evaluate

  def place(self, tree):
    """A host pytree copied to every local device, stacked on axis 0."""
    n = self.local_device_count

    def one(x):
      x = np.asarray(x)
      return jax.device_put(np.broadcast_to(x[None], (n,) + x.shape),
                            self._sharding)

    return jax.tree.map(one, tree)

  def one(self, tree):
    """The first replica of a placed tree (device arrays)."""
    return jax.tree.map(lambda x: x[0], tree)

  def host(self, tree):
    """The host copy of one replica of a placed tree."""
    return jax.device_get(jax_utils.unreplicate(tree))

  def train_batches(self, batches):
    return jax_utils.prefetch_to_device(batches, 2)

  def eval_batch(self, batch):
    return batch

  def local_copies(self, tree):
    """This process's device copies of a placed tree, one tree each."""
    local = jax.device_get(tree)
    return [jax.tree.map(lambda x, i=i: x[i], local)
            for i in range(self.local_device_count)]

  def fingerprints(self, state) -> list:
    return _fingerprints(self.local_copies(state))


class Jit:
  """One program over a mesh of every process's devices (`jax.jit`)."""

  name = "jit"
  axis_name = None

  def __init__(self):
    self.local_device_count = jax.local_device_count()
    self.mesh = jax.make_mesh((jax.device_count(),), ("data",))
    self.replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec())
    self.sharded = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec("data"))

  def compile(self, train_step, eval_step):
    """The jitted steps, their outputs replicated on the mesh: `train(
    refresh)` is the train step for that value of its `refresh` (one
    compilation each, when first called; it donates its state), `evaluate`
    the eval step."""

    @functools.cache
    def train(refresh):
      return jax.jit(functools.partial(train_step, axis_name=None,
                                       refresh=refresh),
                     out_shardings=self.replicated, donate_argnums=(0,))

    evaluate = jax.jit(functools.partial(eval_step, axis_name=None),
                       out_shardings=self.replicated)
    return train, evaluate

  def place(self, tree):
    """A host pytree as global arrays replicated on the mesh (every process
    passes the same values)."""

    def one(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated,
                                          lambda index: x[index])

    return jax.tree.map(one, tree)

  def one(self, tree):
    """This process's first copy of a placed tree (device arrays)."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)

  def host(self, tree):
    return jax.device_get(self.one(tree))

  def _global(self, batch):
    """The process's `[devices, per_device, ...]` batch as a global array
    sharded along `data`."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            self.sharded, np.asarray(x).reshape((-1,) + x.shape[2:])), batch)

  def train_batches(self, batches):
    for batch in batches:
      yield self._global(batch)

  def eval_batch(self, batch):
    return self._global(batch)

  def local_copies(self, tree):
    shards = jax.tree.map(lambda x: [np.asarray(s.data)
                                     for s in x.addressable_shards], tree)
    return [jax.tree.map(lambda s, i=i: s[i], shards,
                         is_leaf=lambda x: isinstance(x, list))
            for i in range(self.local_device_count)]

  def fingerprints(self, state) -> list:
    return _fingerprints(self.local_copies(state))


PARALLELISM = {"pmap": Pmap, "jit": Jit}


def create(name: str):
  """`Pmap()` or `Jit()` for `config.parallelism`."""
  return PARALLELISM[name]()


def _fingerprints(copies) -> list:
  """SHA-256 of every device's copy of the state's weights, batch
  statistics and optimizer state, in process order (an all-gather: every
  process calls it). A healthy run's digests are all equal."""
  digests = np.stack([
      np.frombuffer(bytes.fromhex(checkpoints.state_digest(
          (c.params, c.batch_stats, c.opt_state))), np.uint8)
      for c in copies])
  if jax.process_count() > 1:
    digests = np.asarray(multihost_utils.process_allgather(digests))
  return [d.tobytes().hex() for d in digests.reshape(-1, 32)]
