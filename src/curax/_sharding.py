from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._problem import CurationProblem


def device_mesh(devices: Sequence[Any] | None = None, axis_name: str = "batch") -> Mesh:
    """A 1-D device mesh over `devices` (default: every device of every process,
    `jax.devices()`), the mesh that [`curax.sweep`][] and [`curax.shard_support`][] use.

    **Arguments:**

    - `devices`: the devices, or `None` for `jax.devices()`.
    - `axis_name`: the mesh axis name.

    **Returns:**

    A `jax.sharding.Mesh` of shape `(len(devices),)`.

    !!! Example

        ```python
        mesh = curax.device_mesh()  # all local (and, after jax.distributed, remote) devices
        ```
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` must contain at least one device.")
    return Mesh(np.array(devices), (axis_name,))


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full onto a (possibly multi-host)
    sharding: each process contributes the shards of its own devices."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def fetch_global(x: jax.Array) -> np.ndarray:
    """Bring a (possibly multi-host) sharded array back to every process as numpy."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def shard_support(
    problem: CurationProblem,
    *arrays: Any,
    devices: Sequence[Any] | None = None,
) -> Any:
    """Shard one huge problem along its support axis across devices.

    The reward matrix `(m, n)` is split along `n` (each device holds `n / d` columns), the
    reference distribution and every extra array of shape `(..., n)` along their last axis;
    weights and temperature are replicated. Every curax function (`curax.curate`,
    `curax.fw_gap`, `curax.potential`, `curax.trajectory`, `curax.nash_solution`, ...) then
    runs unchanged under
    `jit`: XLA computes the per-device partial sums `E_local @ p_local` and inserts the
    all-reduce over the m-dimensional reductions (`u = E p`, `E_p[w]`, the maximum of `G`).
    Only O(m) numbers cross devices per map evaluation.

    **Arguments:**

    - `problem`: the [`curax.CurationProblem`][].
    - `*arrays`: further arrays whose last axis is the support (e.g. `p0`).
    - `devices`: keyword only; the devices (default `jax.devices()`). `n` must be divisible
        by their number.

    **Returns:**

    The sharded problem if no `arrays` are given, else the tuple `(problem, *arrays)`.

    !!! Example

        ```python
        problem, p0 = curax.shard_support(problem, problem.uniform())
        gap = curax.fw_gap(curax.trajectory(p0, problem, 100)[-1], problem)
        ```
    """
    mesh = device_mesh(devices, "support")
    d = mesh.devices.size
    n = problem.size
    if n % d != 0:
        raise ValueError(
            f"`problem` has n={n} support points, which is not divisible by the {d} devices; "
            f"pad or trim the support to a multiple of {d}."
        )
    for i, a in enumerate(arrays):
        if jnp.shape(a)[-1:] != (n,):
            raise ValueError(
                f"`arrays[{i}]` must have the support as its last axis (size {n}), got shape "
                f"{jnp.shape(a)}."
            )

    def along_last(x: Any) -> jax.Array:
        spec = P(*([None] * (jnp.ndim(x) - 1)), "support")
        if jax.process_count() > 1:
            return put_global(np.asarray(x), NamedSharding(mesh, spec))
        return jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))

    replicated = NamedSharding(mesh, P())
    # Rebuild through tree_at: the leaves were validated when `problem` was built.
    problem = eqx.tree_at(
        lambda pr: (pr.weights, pr.temperature, pr.reference_weight),
        problem,
        tuple(
            jax.device_put(x, replicated)
            if jax.process_count() == 1
            else put_global(np.asarray(x), replicated)
            for x in (problem.weights, problem.temperature, problem.reference_weight)
        ),
    )
    problem = problem.map_points(along_last)
    if not arrays:
        return problem
    return (problem, *(along_last(a) for a in arrays))
