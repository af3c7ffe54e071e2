"""The device mesh (data, fsdp, tensor) and name-based partition rules for parameters.

Rules map a parameter's path ("layers/attn/q/kernel") to a PartitionSpec: FSDP shards the
model dimension over `fsdp`, tensor parallelism shards heads / MLP width / vocabulary over
`tensor`. A mesh axis is dropped from a dimension it does not divide, so any model runs on any
mesh (tiny test models simply replicate).
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # batch rows are split over both data-parallel axes

# (regex on the "/"-joined parameter path, spec). Layer parameters carry a leading layer axis.
RULES: list[tuple[str, P]] = [
    (r"^embed/embedding$", P("tensor", "fsdp")),
    (r"^lm_head/kernel$", P("fsdp", "tensor")),
    (r"^layers/attn/[qkv]/kernel$", P(None, "fsdp", "tensor")),
    (r"^layers/attn/[qkv]/bias$", P(None, "tensor")),
    (r"^layers/attn/o/kernel$", P(None, "tensor", "fsdp")),
    (r"^layers/mlp/(gate|up)/kernel$", P(None, "fsdp", "tensor")),
    (r"^layers/mlp/(gate|up)/bias$", P(None, "tensor")),
    (r"^layers/mlp/down/kernel$", P(None, "tensor", "fsdp")),
    (r".*", P()),  # norms, small biases: replicated
]


def mesh_sizes(data: int, fsdp: int, tensor: int, devices: int) -> dict[str, int]:
    """Sizes of (data, fsdp, tensor) on `devices` devices; one size may be -1 (all remaining
    devices). ValueError naming the sizes when they do not fit."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    if list(sizes.values()).count(-1) > 1:
        raise ValueError("mesh: at most one of data, fsdp, tensor may be -1")
    known = math.prod(s for s in sizes.values() if s != -1)
    if any(s == 0 or s < -1 for s in sizes.values()) or devices % known:
        raise ValueError(
            f"mesh: data={data} fsdp={fsdp} tensor={tensor} does not fit {devices} devices"
        )
    sizes = {k: devices // known if s == -1 else s for k, s in sizes.items()}
    if math.prod(sizes.values()) != devices:
        raise ValueError(
            f"mesh: data*fsdp*tensor = {math.prod(sizes.values())} but there are {devices} "
            "devices (set mesh.data=-1 to use them all)"
        )
    return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Any = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = tuple(mesh_sizes(data, fsdp, tensor, len(devices)).values())
    return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def rule_spec(path: str, ndim: int, rules: list[tuple[str, P]] = RULES) -> P:
    """The spec of the first rule matching `path`. A LoRA adapter (".../lora_a", ".../lora_b",
    redjax.lora) follows its base kernel's rule: A [.., in, r] is split as the kernel's input
    dimension, B [.., r, out] as its output dimension, the rank never."""
    *module, leaf = path.split("/")
    if leaf in ("lora_a", "lora_b"):
        base = tuple(rule_spec("/".join([*module, "kernel"]), ndim, rules))
        base += (None,) * (ndim - len(base))
        return P(*base[:-1], None) if leaf == "lora_a" else P(*base[:-2], None, base[-1])
    return next((s for pattern, s in rules if re.search(pattern, path)), P())


def param_specs(shapes: Any, mesh: Mesh, rules: list[tuple[str, P]] = RULES) -> Any:
    """PartitionSpecs for a parameter tree (arrays or ShapeDtypeStructs), by path name."""

    def spec(kp, x):
        path = "/".join(str(getattr(k, "key", k)) for k in kp)
        return _fit(rule_spec(path, len(x.shape), rules), x.shape, mesh)

    return jax.tree_util.tree_map_with_path(spec, shapes)


def param_shardings(shapes: Any, mesh: Mesh, rules: list[tuple[str, P]] = RULES) -> Any:
    """NamedShardings for a parameter tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(shapes, mesh, rules))


def layer_gather(mesh: Mesh | None, rules: list[tuple[str, P]] = RULES) -> Any:
    """FSDP proper: a function that all-gathers one layer's parameters over `fsdp` as the layer
    runs (they stay split over `tensor`); None when there is nothing to gather.

    Without it XLA may keep the weights split and move the activations instead, which costs
    far more (measured on the compiled step: bench/RESULTS.md). Its transpose reduce-scatters
    the layer's gradient back onto the fsdp shards.
    """
    if mesh is None or mesh.shape.get("fsdp", 1) == 1:
        return None

    def one(kp, x):
        path = "layers/" + "/".join(str(getattr(k, "key", k)) for k in kp)
        spec = rule_spec(path, x.ndim + 1, rules)
        spec = P(*(None if a == "fsdp" else a for a in tuple(spec)[1:]))  # no layer axis
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _fit(spec, x.shape, mesh)))

    return lambda tree: jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over (data, fsdp); the other dimensions replicated."""
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes batch rows are split over (those of BATCH the mesh has)."""
    return tuple(a for a in BATCH if a in mesh.axis_names)


def data_shards(mesh: Mesh | None) -> int:
    """How many ways the batch is split (rows must be a multiple of this); 1 without a mesh."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def put_local(batch: Any, mesh: Mesh) -> Any:
    """Global arrays from this process's rows (all rows on one host), rows split over the mesh:
    every array of a pytree (a `redjax.rows.Rows`, a dict).

    Scalars (0-d) are replicated and must be identical on every process.
    """

    def put(v: Any) -> jax.Array:
        v = np.asarray(v)
        if v.ndim == 0:
            return jax.device_put(v, replicated(mesh))
        return jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)

    return jax.tree.map(put, batch)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) global array as a numpy array on every process."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def get_local(x: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded global array (the whole array on one host)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    spec = x.sharding.spec if isinstance(x.sharding, NamedSharding) else P()
    local = multihost_utils.global_array_to_host_local_array(x, x.sharding.mesh, spec)
    return np.asarray(local)
