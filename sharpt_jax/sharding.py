"""Device mesh, the logical-axis rules table, and shardings of parameters and batches.

Every parameter names its logical axes (see `sharpt_jax.models.layers`); `LOGICAL_AXIS_RULES` maps each
logical name to a mesh axis ('data', 'model') or to None (replicated). This one table is the whole sharding
strategy: batch over 'data', the backbone's heads / mlp / vocab dimensions over 'model' (Megatron-style tensor
parallelism), prompts, generator and codebook replicated (they are small and read by every example).
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": "data",
    "length": None,
    "embed": None,
    "heads": "model",
    "kv": None,
    "mlp": "model",
    "vocab": "model",
    "relpos": None,
    "prompt": None,
    "codebook": None,
    "layers": None,  # The stacked layers of a T5 stack (scanned over, so never split across devices).
}
MESH_AXES = ("data", "model")


def parse_mesh_shape(mesh_shape: str | tuple[int, int], num_devices: int) -> tuple[int, int]:
    """'data,model' with at most one -1 ('all remaining devices') -> a (data, model) shape using every device."""
    dims = [int(x) for x in mesh_shape.split(",")] if isinstance(mesh_shape, str) else list(mesh_shape)
    if len(dims) != 2 or dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"mesh_shape {mesh_shape!r}: expected 'data,model' with positive sizes or one -1")
    known = int(np.prod([d for d in dims if d != -1]))
    if -1 in dims:
        if num_devices % known:
            raise ValueError(f"mesh_shape {mesh_shape!r} does not divide the {num_devices} available devices")
        dims[dims.index(-1)] = num_devices // known
    if dims[0] * dims[1] != num_devices:
        raise ValueError(f"mesh_shape {mesh_shape!r} needs {dims[0] * dims[1]} devices but {num_devices} are available")
    return dims[0], dims[1]


def make_mesh(mesh_shape: str | tuple[int, int]) -> jax.sharding.Mesh:
    """The ('data', 'model') mesh over every device of every host; ValueError if a 'model' group spans hosts."""
    # Auto axes: jit propagates shardings from the annotated inputs and outputs (the classic pjit model), so the
    # model code needs no explicit resharding.
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh(parse_mesh_shape(mesh_shape, jax.device_count()), MESH_AXES, axis_types=(auto, auto))
    check_hosts_along_data(mesh)
    return mesh


def check_hosts_along_data(mesh: jax.sharding.Mesh) -> None:
    """ValueError unless the hosts split the mesh along 'data', i.e. each 'model' group (a row of the mesh) lies
    on one host: tensor parallelism exchanges activations in every layer, which only a host's own interconnect
    (ICI, NVLink) carries at speed, while data parallelism exchanges gradients once per step."""
    for row in mesh.devices:
        hosts = sorted({device.process_index for device in row})
        if len(hosts) > 1:
            local, model = jax.local_device_count(), mesh.shape["model"]
            raise ValueError(
                f"the 'model' axis of size {model} would span hosts {hosts} (each has {local} devices); use a "
                f"'model' size that divides {local}, e.g. mesh_shape=-1,{math.gcd(local, model)}"
            )


def logical_to_spec(axes: tuple[str | None, ...] | None) -> PartitionSpec:
    """('embed', 'mlp') -> PartitionSpec(None, 'model') by the rules table; unknown names are an error."""
    if not axes:
        return PartitionSpec()
    unknown = [a for a in axes if a is not None and a not in LOGICAL_AXIS_RULES]
    if unknown:
        raise KeyError(f"logical axis name(s) {unknown} are not in sharding.LOGICAL_AXIS_RULES")
    return PartitionSpec(*(LOGICAL_AXIS_RULES[a] if a is not None else None for a in axes))


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """The NamedSharding of every parameter in `state`, from its `out_sharding` logical axis names.

    A dimension whose size the mesh axis does not divide is replicated instead (e.g. a 6-head model on a 4-way
    'model' axis), so any mesh runs any model.
    """

    def one(variable):
        axes = variable.get_metadata().get("out_sharding")
        spec = list(logical_to_spec(axes))
        for i, mesh_axis in enumerate(spec):
            if mesh_axis is not None and variable.shape[i] % mesh.shape[mesh_axis]:
                spec[i] = None
        return variable.replace(NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batches are split over 'data' along their leading axis and replicated over 'model'."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
