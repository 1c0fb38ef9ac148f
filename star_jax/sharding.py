"""Device meshes, partition rules and multi-host plumbing — the only module with mesh code.

Parameters and activations carry *logical* axis names (see models/transformer.py); the rules below map
them onto the three mesh axes:

  data    pure data parallelism: batch split, parameters replicated;
  fsdp    batch split AND parameters/optimizer state split along their `embed` dimension (ZeRO-3 style:
          XLA all-gathers a weight just before it is used and reduce-scatters its gradient);
  tensor  Megatron-style model parallelism over heads, MLP width and vocabulary.

A dimension that a mesh axis does not divide is left unsplit (replicated) on that axis rather than failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None, *,
              name: str = "mesh") -> Mesh:
  """Mesh from [("data", -1), ("fsdp", 1), ("tensor", 1)]; one size may be -1 (= all remaining devices).

  Errors start with `name` (e.g. "config.mesh.axes" when the axes come from a config) and give the value.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = [axis for axis, _ in axes]
  if sorted(names) != sorted(MESH_AXES):
    raise ValueError(f"{name} must name exactly {MESH_AXES} (any order), got {tuple(axes)!r}")
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{name} sizes must be positive with at most one -1, got {tuple(axes)!r}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{name}={tuple(axes)!r} cannot be built: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"{name}={tuple(axes)!r} cannot be built: {dict(zip(names, sizes))} needs "
                     f"{math.prod(sizes)} devices, found {len(devices)}")
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(sizes), devices=devices)


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh,
                         rules=DEFAULT_RULES) -> P:
  """Map a PartitionSpec of logical names to mesh axes, dropping axes that do not divide the dim."""
  rule_map = dict(rules)
  used: set[str] = set()
  out = []
  for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
    if name is None:
      out.append(None)
      continue
    if name not in rule_map:
      raise KeyError(f"no sharding rule for logical axis {name!r}; known: {sorted(rule_map)}")
    target = rule_map[name]
    mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = []
    for axis in mesh_axes:
      size = mesh.shape[axis]
      if axis in used or size == 1 or dim % (math.prod(mesh.shape[a] for a in kept) * size):
        continue
      kept.append(axis)
    used.update(kept)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*out)


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of `abstract_tree` (arrays or ShapeDtypeStructs)."""
  def one(spec, leaf):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, logical_to_mesh_spec(spec, leaf.shape, mesh, rules))
  return jax.tree.map(one, logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of [batch, ...] input arrays: batch split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """The global batch must be a multiple of this."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


# ---- activation constraints (used by the model through `constrain`, without seeing the mesh) ----

@dataclasses.dataclass(frozen=True)
class _ActivationContext:
  mesh: Mesh
  rules: tuple


_ACTIVE: contextvars.ContextVar[_ActivationContext | None] = contextvars.ContextVar("star_jax_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[None]:
  """Within this context (at trace time), `constrain` pins activations to the mesh."""
  token = _ACTIVE.set(_ActivationContext(mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """with_sharding_constraint by logical names; identity outside `activation_sharding`."""
  ctx = _ACTIVE.get()
  if ctx is None or ctx.mesh.size == 1:
    return x
  spec = logical_to_mesh_spec(P(*logical_axes), x.shape, ctx.mesh, ctx.rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))


# ---- multi-host ----

def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """jax.distributed.initialize; on TPU pods / SLURM the arguments are discovered automatically."""
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                  process_id=process_id).items() if v is not None}
  jax.distributed.initialize(**kwargs)


def host_batch_to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble each process's slice of the batch into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(tree):
  """Fetch a pytree to numpy on every process (gathers arrays that span several hosts)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def bytes_per_device(tree) -> dict[jax.Device, int]:
  """How many bytes of `tree`'s arrays each device holds."""
  counts: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      counts[shard.device] = counts.get(shard.device, 0) + shard.data.nbytes
  return counts


def under_mesh(fn, mesh: Mesh, rules=DEFAULT_RULES):
  """Wrap `fn` so that, when traced, its activations are constrained to `mesh` (see `constrain`)."""
  def wrapped(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)
  return wrapped


def shard_global_batch(global_array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A [B, ...] array every process holds in full -> a global array split over the batch axes."""
  target = batch_sharding(mesh)
  return jax.make_array_from_callback(global_array.shape, target, lambda index: global_array[index])
