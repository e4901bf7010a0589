import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
import warnings
import weakref
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ._sharding import device_mesh, fetch_global, put_global


_META = "meta.json"
# fn -> {(axes, static values, chunk size, dtypes, devices): compiled chunk function}
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_RESULTS = "results.npz"
# 2: meta.json records fingerprints of `fn` and of the grid.
_FORMAT_VERSION = 2


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def _axis_values(name: str, values: Any, static: bool) -> Any:
    if static:
        if isinstance(values, (np.ndarray, jax.Array)):
            values = np.asarray(values).tolist()
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"`grid[{name!r}]` must be a list or 1-D array of values.")
        vals = [_jsonable(v) for v in values]
        for v in vals:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(
                    f"static axis `grid[{name!r}]` must hold None, bool, int, float or str "
                    f"values (they select the computation), got {v!r}."
                )
        if not vals:
            raise ValueError(f"`grid[{name!r}]` is empty.")
        return vals
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"`grid[{name!r}]` must be a non-empty 1-D array of values, got shape {arr.shape}."
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(
            f"`grid[{name!r}]` must be numeric; mark axes of other values (e.g. K=None) as "
            f"`static`."
        )
    return arr


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The results of [`curax.sweep`][]: every output of `fn` on the full grid.

    **Attributes:**

    - `axes`: dict from axis name to its values, in the order of the `grid` argument.
    - `values`: the pytree that `fn` returns, each leaf a numpy array of shape
        `(*grid_shape, *leaf_shape)` with `grid_shape = tuple(len(v) for v in axes.values())`.
    - `static`: names of the axes that were looped over in Python.
    - `path`: the output directory, or `None`.
    - `info`: metadata (devices, chunk size, timings).
    """

    axes: dict[str, Any]
    values: Any
    static: tuple[str, ...]
    path: str | None
    info: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid shape."""
        return tuple(len(v) for v in self.axes.values())

    def select(self, **where: Any) -> "SweepResult":
        """Fix some axes at given values, e.g. `result.select(k=8, q=0.5)` (exact match for
        static axes, nearest value for numeric ones)."""
        axes = dict(self.axes)
        index: list[Any] = []
        for name, vals in self.axes.items():
            if name not in where:
                index.append(slice(None))
                continue
            if name in self.static:
                if where[name] not in vals:
                    raise ValueError(f"{where[name]!r} is not a value of axis {name!r}.")
                i = vals.index(where[name])
            else:
                i = int(np.argmin(np.abs(np.asarray(vals) - where[name])))
            index.append(i)
            del axes[name]
        unknown = set(where) - set(self.axes)
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}; the axes are {list(self.axes)}.")
        values = jtu.tree_map(lambda x: x[tuple(index)], self.values)
        return SweepResult(
            axes,
            values,
            tuple(s for s in self.static if s in axes),
            self.path,
            self.info,
        )


def _weakrefable(fn: Any) -> bool:
    try:
        weakref.ref(fn)
    except TypeError:
        return False
    return True


def _leaf_names(tree: Any) -> list[str]:
    # A flat dict of outputs (the common case) keeps its keys; other pytrees use keystr.
    if isinstance(tree, dict) and all(
        isinstance(k, str) and isinstance(v, jax.ShapeDtypeStruct) for k, v in tree.items()
    ):
        return sorted(tree)  # the order in which jax flattens a dict
    return [jtu.keystr(path) or "value" for path, _ in jtu.tree_flatten_with_path(tree)[0]]


def _hash_arrays(h: Any, arrays: Sequence[Any]) -> None:
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())


def _fn_fingerprint(f: Callable[..., Any], probe: Sequence[jax.ShapeDtypeStruct]) -> tuple:
    """A hash of what `f` computes: its jaxpr on one grid point (the program, with the
    values of any arrays it closes over), and its output structure. Editing `fn` so that it
    computes something else changes the hash; renaming a variable or a comment does not."""
    closed, out_struct = jax.make_jaxpr(f, return_shape=True)(*probe)
    h = hashlib.sha256(str(closed.jaxpr).encode())
    _hash_arrays(h, closed.consts)
    return h.hexdigest()[:32], out_struct


def _grid_fingerprint(axes: Mapping[str, Any], static: Sequence[str]) -> str:
    """A hash of the grid: axis names and order, values and dtypes."""
    h = hashlib.sha256()
    for name, vals in axes.items():
        h.update(f"{name!r}:{name in static}:".encode())
        if name in static:
            h.update(json.dumps(vals).encode())
        else:
            _hash_arrays(h, [vals])
    return h.hexdigest()[:32]


def _load_chunk(
    file: str, leaves_struct: Sequence[Any], valid: int
) -> tuple[list[np.ndarray] | None, str | None]:
    """The arrays of one chunk file, or `(None, why)` when it is damaged (truncated, not an
    NPZ, missing leaves, wrong shapes or dtypes)."""
    try:
        # Open the file here: np.load leaks its own handle when the archive is damaged.
        with open(file, "rb") as fh, np.load(fh) as f:
            arrays = [f[f"leaf_{j}"] for j in range(len(leaves_struct))]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        return None, f"{type(e).__name__}: {e}"
    for j, (a, s) in enumerate(zip(arrays, leaves_struct)):
        if a.shape != (valid, *s.shape) or a.dtype != s.dtype:
            return None, (
                f"leaf {j} has shape {a.shape} and dtype {a.dtype}, expected "
                f"{(valid, *s.shape)} and {s.dtype}"
            )
    return arrays, None


def _load_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, _META)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write_json(path: str, obj: Any) -> None:
    # Write then rename, so an interrupted sweep never leaves a half-written file.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _write_npz(path: str, arrays: Sequence[np.ndarray]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **{f"leaf_{j}": a for j, a in enumerate(arrays)})
    os.replace(tmp, path)


def sweep(
    fn: Callable[..., Any],
    grid: Mapping[str, Any],
    *,
    static: Sequence[str] = (),
    chunk_size: int | None = None,
    out: str | os.PathLike | None = None,
    devices: Sequence[Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SweepResult:
    """Evaluate `fn` on every point of a parameter grid as one batched computation.

    The non-static axes form a Cartesian product that is flattened into one batch and
    evaluated by `jax.jit(jax.vmap(fn))` in chunks of `chunk_size` (bounded memory, one
    compilation: the last chunk is padded). Each chunk is sharded across `devices` along the
    batch axis (a 1-D `NamedSharding`), so a sweep uses every device, on one host or, after
    `jax.distributed.initialize()`, on several. Axes named in `static` change the computation
    itself (e.g. the number of candidates K, which selects the map) and are looped over in
    Python: one compilation per static value.

    With `out`, every finished chunk is written to `out/chunks/` (NPZ) and the grid to
    `out/meta.json`; rerunning the same call skips the chunks on disk, so an interrupted sweep
    resumes. The assembled results go to `out/results.npz` (one array per output leaf, named
    like `jax.tree_util.keystr`) with `out/meta.json` describing the axes.

    A resume reuses chunks only from the same sweep: `meta.json` records a fingerprint of the
    grid (names, values, dtypes, chunk size) and of `fn` (a hash of its jaxpr on one grid
    point for each static value, including the values of arrays it closes over). If `fn` now
    computes something else, or the grid differs, the call raises a `ValueError` (pass
    `overwrite=True` to discard the old chunks). A chunk file that cannot be read (e.g.
    truncated by a full disk) is named in a `RuntimeWarning` and recomputed.

    **Arguments:**

    - `fn`: called as `fn(**params)` with one value per axis: a scalar array for numeric
        axes (traced, batched by `vmap`), the Python value for static axes. Returns a pytree
        of arrays (scalars or small arrays: they are stored for every grid point).
    - `grid`: dict from axis name to its values (1-D). The result has one dimension per axis,
        in this order.
    - `static`: keyword only; names of axes looped over in Python (their values may be
        `None`, ints, floats or strings).
    - `chunk_size`: keyword only; grid points per batch (rounded up to a multiple of the
        number of devices). Default: the whole non-static grid, at most 256.
    - `out`: keyword only; directory for resumable results, or `None` to keep them in memory.
    - `devices`: keyword only; devices to shard the batch over (default `jax.devices()`).
    - `progress`: keyword only; show a progress bar (rich).
    - `overwrite`: keyword only; discard results in `out` from a different sweep (another
        grid, or an `fn` that computes something else) instead of raising.

    **Returns:**

    A [`curax.SweepResult`][]: `values` has the structure of `fn`'s output, each leaf of shape
    `(*grid_shape, *leaf_shape)`.

    !!! Example

        ```python
        x = curax.grid_1d(-3.0, 3.0, 201)

        def limit_mass(q, sep, k):
            rewards = jnp.stack(
                [curax.quadratic_reward(x, -sep / 2), curax.quadratic_reward(x, sep / 2)]
            )
            # `sep` is traced, so the quadrature is sized for the widest reward spread
            # (|x - center|^2 <= 4.5^2 nats) instead of from the rewards' values.
            nodes = curax.nodes_for_spread(4.5**2)
            problem = curax.CurationProblem(rewards, jnp.stack([q, 1 - q]), k,
                                            quadrature_nodes=nodes)
            p = curax.trajectory(problem.uniform(), problem, 200)[-1]
            return {"left": jnp.sum(jnp.where(x < 0, p, 0.0)), "gap": curax.fw_gap(p, problem)}

        res = curax.sweep(
            limit_mass,
            {"q": jnp.linspace(0.1, 0.9, 9), "sep": jnp.array([2.0, 3.0]), "k": [4, None]},
            static=["k"],
            out="sweep-out",
        )
        res.values["left"].shape  # (9, 2, 2)
        ```
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("`grid` must be a non-empty dict from axis name to values.")
    static = tuple(static)
    for s in static:
        if s not in grid:
            raise ValueError(f"`static` names {s!r}, which is not an axis of `grid`.")
    names = list(grid)
    axes = {a: _axis_values(a, grid[a], a in static) for a in names}
    dyn = [a for a in names if a not in static]
    st = [a for a in names if a in static]
    dyn_shape = tuple(len(axes[a]) for a in dyn)
    batch = math.prod(dyn_shape)

    mesh = device_mesh(devices, "batch")
    ndev = mesh.devices.size
    if chunk_size is None:
        chunk_size = min(batch, 256)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    chunk_size = min(chunk_size, batch)
    chunk_size = -(-chunk_size // ndev) * ndev
    num_chunks = -(-batch // chunk_size)
    static_combos = list(itertools.product(*(axes[a] for a in st)))
    sharding = NamedSharding(mesh, P("batch"))

    # Flat batch index -> value of each dynamic axis.
    multi = np.unravel_index(np.arange(batch), dyn_shape) if dyn else ()
    flat = {a: axes[a][multi[i]] for i, a in enumerate(dyn)}

    def call(combo: tuple[Any, ...]) -> Callable[..., Any]:
        fixed = dict(zip(st, combo))

        def one(*dyn_vals: Any) -> Any:
            return fn(**dict(zip(dyn, dyn_vals)), **fixed)

        return one

    # Output structure, from an abstract evaluation (no compile, no FLOPs). With `out`, the
    # jaxpr of every static value also fingerprints `fn` for the resume check.
    probe = [jax.ShapeDtypeStruct((), jnp.asarray(flat[a][:1]).dtype) for a in dyn]
    fn_fingerprints: list[str] = []
    if out is None:
        out_struct = jax.eval_shape(call(static_combos[0]), *probe)
    else:
        for combo in static_combos:
            fp, struct = _fn_fingerprint(call(combo), probe)
            fn_fingerprints.append(fp)
            if len(fn_fingerprints) == 1:
                out_struct = struct
    leaves_struct, treedef = jtu.tree_flatten(out_struct)
    leaf_names = _leaf_names(out_struct)

    meta = {
        "format": _FORMAT_VERSION,
        "axes": {a: (axes[a] if a in static else axes[a].tolist()) for a in names},
        "static": list(st),
        "chunk_size": chunk_size,
        "leaves": leaf_names,
        "leaf_shapes": [list(s.shape) for s in leaves_struct],
        "leaf_dtypes": [str(s.dtype) for s in leaves_struct],
        "grid_fingerprint": _grid_fingerprint(axes, st),
        "fn_fingerprints": fn_fingerprints,
    }
    path = None if out is None else os.fspath(out)
    writer = jax.process_index() == 0
    if path is not None:
        chunk_dir = os.path.join(path, "chunks")
        old = _load_meta(path)
        differ = [] if old is None else [key for key in meta if old.get(key) != meta[key]]
        if differ and not overwrite:
            raise ValueError(
                f"`out`={path!r} holds results of a different sweep "
                f"({_describe_difference(differ, old, meta, st)}); pass `overwrite=True` to "
                f"discard them, or another `out`."
            )
        same = old is not None and not differ
        if writer:
            os.makedirs(chunk_dir, exist_ok=True)
            if old is not None and not same:
                for f in os.listdir(chunk_dir):
                    os.remove(os.path.join(chunk_dir, f))
            _write_json(os.path.join(path, _META), dict(meta, complete=False))

    def chunk_file(si: int, ci: int) -> str:
        return os.path.join(chunk_dir, f"chunk_{si:04d}_{ci:06d}.npz")

    todo = np.ones((len(static_combos), num_chunks), bool)
    loaded: dict[tuple[int, int], list[np.ndarray]] = {}
    if path is not None:
        for si, ci in itertools.product(range(len(static_combos)), range(num_chunks)):
            file = chunk_file(si, ci)
            if not os.path.exists(file):
                continue
            arrays, why = _load_chunk(file, leaves_struct, min(chunk_size, batch - ci * chunk_size))
            if arrays is None:
                warnings.warn(
                    f"sweep: chunk file {file!r} is damaged ({why}); recomputing it.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            loaded[si, ci] = arrays
            todo[si, ci] = False
        if jax.process_count() > 1:
            # Every process must run the same chunks (they are collective computations).
            from jax.experimental import multihost_utils

            todo = np.asarray(multihost_utils.broadcast_one_to_all(todo))

    results: list[list[list[np.ndarray]]] = [[] for _ in static_combos]
    start = time.perf_counter()
    compile_times: list[float] = []
    bar_ctx = _progress_bar(progress and writer, len(static_combos) * num_chunks)
    with bar_ctx as bar:
        task = None if bar is None else bar.add_task("sweep", total=todo.size)
        if bar is not None:
            bar.update(task, advance=int(todo.size - todo.sum()))
        for si, combo in enumerate(static_combos):
            key = (
                tuple(dyn),
                tuple(st),
                combo,
                chunk_size,
                tuple(str(jnp.asarray(flat[a][:1]).dtype) for a in dyn),
                tuple(d.id for d in mesh.devices.flat),
            )
            # Rerunning a sweep (e.g. to resume it, or with more seeds of the same shapes) in
            # the same process reuses the compiled chunk function of the same `fn`.
            cache = _COMPILED.setdefault(fn, {}) if _weakrefable(fn) else {}
            compiled = cache.get(key)
            batched = jax.jit(
                jax.vmap(call(combo)),
                in_shardings=(sharding,) * len(dyn),
                out_shardings=sharding,
            )
            for ci in range(num_chunks):
                if not todo[si, ci]:
                    arrays = loaded.pop((si, ci), None)
                    if arrays is None:
                        # Multi-host: process 0 found this chunk on disk; read it here too.
                        valid = min(chunk_size, batch - ci * chunk_size)
                        arrays, why = _load_chunk(chunk_file(si, ci), leaves_struct, valid)
                        if arrays is None:
                            raise ValueError(f"sweep: cannot read {chunk_file(si, ci)!r}: {why}")
                    results[si].append(arrays)
                    continue
                lo = ci * chunk_size
                idx = np.minimum(np.arange(lo, lo + chunk_size), batch - 1)  # pad: repeat last
                valid = min(chunk_size, batch - lo)
                inputs = [put_global(flat[a][idx], sharding) for a in dyn]
                if compiled is None:
                    t0 = time.perf_counter()
                    compiled = cache[key] = batched.lower(*inputs).compile()
                    compile_times.append(time.perf_counter() - t0)
                outs = [fetch_global(x)[:valid] for x in jtu.tree_leaves(compiled(*inputs))]
                if path is not None and writer:
                    _write_npz(chunk_file(si, ci), outs)
                results[si].append(outs)
                if bar is not None:
                    bar.update(task, advance=1)
    elapsed = time.perf_counter() - start

    # Assemble: (static..., dynamic...) then into the order of `grid`.
    st_shape = tuple(len(axes[a]) for a in st)
    order_now = st + dyn
    perm = [order_now.index(a) for a in names]
    leaves = []
    for j, s in enumerate(leaves_struct):
        per_combo = [
            np.concatenate([c[j] for c in chunks], axis=0).reshape(*dyn_shape, *s.shape)
            for chunks in results
        ]
        arr = np.stack(per_combo).reshape(*st_shape, *dyn_shape, *s.shape)
        arr = np.transpose(arr, perm + list(range(len(names), arr.ndim)))
        leaves.append(arr)
    values = jtu.tree_unflatten(treedef, leaves)
    info = {
        "devices": [str(d) for d in mesh.devices.flat],
        "device_kind": mesh.devices.flat[0].device_kind,
        "num_processes": jax.process_count(),
        "chunk_size": chunk_size,
        "num_chunks": int(todo.size),
        "chunks_computed": int(todo.sum()),
        "seconds": elapsed,
        "compile_seconds": compile_times,
    }
    if path is not None and writer:
        _write_npz(os.path.join(path, _RESULTS), leaves)
        _write_json(os.path.join(path, _META), dict(meta, complete=True, info=info))
    return SweepResult({a: axes[a] for a in names}, values, tuple(st), path, info)


def _describe_difference(
    differ: Sequence[str], old: Mapping[str, Any], meta: Mapping[str, Any], static: Sequence[str]
) -> str:
    """Say in words how the sweep in `out` (`old`) differs from this one (`meta`)."""
    if old.get("format") != meta["format"]:
        return f"written by another version of `curax.sweep` (format {old.get('format')})"
    phrases = {
        "axes": "the grid differs",
        "grid_fingerprint": "the grid differs",
        "static": "the static axes differ",
        "chunk_size": "the chunk size differs",
        "leaves": "the outputs differ",
        "leaf_shapes": "the outputs differ",
        "leaf_dtypes": "the outputs differ",
    }
    parts = [phrases[k] for k in differ if k in phrases]
    if "fn_fingerprints" in differ:
        what = "`fn` computes something else"
        olds, news = old.get("fn_fingerprints") or [], meta["fn_fingerprints"]
        changed = [i for i in range(len(news)) if i >= len(olds) or olds[i] != news[i]]
        if static and len(olds) == len(news) and len(changed) < len(news):
            combos = list(itertools.product(*(meta["axes"][a] for a in static)))
            what += " at " + ", ".join(str(dict(zip(static, combos[i]))) for i in changed)
        parts.append(what)
    return "; ".join(dict.fromkeys(parts)) or "other settings"


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress_bar(show: bool, total: int) -> Any:
    if not show:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def load_sweep(out: str | os.PathLike) -> SweepResult:
    """Load the results of a finished [`curax.sweep`][] from its `out` directory. The output
    pytree is returned as a dict from leaf name (`jax.tree_util.keystr`) to array.

    !!! Example

        ```python
        res = curax.load_sweep("sweep-out")
        ```
    """
    path = os.fspath(out)
    meta = _load_meta(path)
    if meta is None or not meta.get("complete", False):
        raise ValueError(f"`out`={path!r} holds no finished sweep (no complete meta.json).")
    axes = {a: (v if a in meta["static"] else np.asarray(v)) for a, v in meta["axes"].items()}
    file = os.path.join(path, _RESULTS)
    try:
        with open(file, "rb") as fh, np.load(fh) as f:
            values = {name: f[f"leaf_{j}"] for j, name in enumerate(meta["leaves"])}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"cannot read {file!r} ({type(e).__name__}: {e}); rerun `curax.sweep` with the same "
            f"arguments and `out` to rebuild it from the chunks on disk."
        ) from e
    return SweepResult(axes, values, tuple(meta["static"]), path, meta.get("info", {}))


def plot_sweep(
    result: SweepResult,
    y: str | None = None,
    x: str | None = None,
    hue: str | None = None,
    *,
    reduce: str = "mean",
    ax: Any = None,
) -> Any:
    """Line plot of one output of a sweep against one axis, one line per value of `hue`,
    reducing every other axis (`"mean"` with a min-max band, `"median"`, `"min"`, `"max"`).

    **Arguments:**

    - `result`: a [`curax.SweepResult`][].
    - `y`: the output leaf to plot (its name, e.g. `"['gap']"` or `"gap"`); default: the only
        leaf. Leaves must be scalars per grid point.
    - `x`: the axis on the horizontal axis; default: the first non-static axis.
    - `hue`: an axis drawn as separate lines; default none.
    - `reduce`: keyword only; how to reduce the remaining axes.
    - `ax`: keyword only; a matplotlib axes to draw on (default: a new figure).

    **Returns:**

    The matplotlib axes.

    !!! Example

        ```python
        ax = curax.plot_sweep(res, "left", x="q", hue="k")
        ax.figure.savefig("left-mass.png")
        ```
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    if isinstance(result.values, dict) and all(isinstance(k, str) for k in result.values):
        named = dict(result.values)
    else:
        paths_leaves = jtu.tree_flatten_with_path(result.values)[0]
        named = {jtu.keystr(p) or "value": v for p, v in paths_leaves}
    if y is None:
        if len(named) != 1:
            raise ValueError(f"`y` must name one of the outputs {sorted(named)}.")
        y = next(iter(named))
    key = y if y in named else next((k for k in named if k.strip("[]'\"") == y), None)
    if key is None:
        raise ValueError(f"`y`={y!r} is not an output; the outputs are {sorted(named)}.")
    data = np.asarray(named[key], float)
    names = list(result.axes)
    if data.shape != result.shape:
        raise ValueError(f"`y`={y!r} must be a scalar per grid point to plot it.")
    if x is None:
        x = next((a for a in names if a not in result.static), names[0])
    for a in (x, hue):
        if a is not None and a not in names:
            raise ValueError(f"{a!r} is not an axis; the axes are {names}.")
    reducers = {"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}
    if reduce not in reducers:
        raise ValueError(f"`reduce` must be one of {sorted(reducers)}, got {reduce!r}.")
    keep = [x] + ([hue] if hue is not None else [])
    data = np.moveaxis(data, [names.index(a) for a in keep], list(range(len(keep))))
    data = data.reshape(*data.shape[: len(keep)], -1)
    xs = result.axes[x]
    xs_plot = np.arange(len(xs)) if x in result.static else np.asarray(xs)
    hues = [None] if hue is None else list(result.axes[hue])
    for h, hv in enumerate(hues):
        d = data if hue is None else data[:, h]
        label = None if hue is None else f"{hue}={'inf' if hv is None else hv}"
        ax.plot(xs_plot, reducers[reduce](d, axis=-1), marker="o", ms=3, label=label)
        if reduce == "mean" and d.shape[-1] > 1:
            ax.fill_between(xs_plot, d.min(axis=-1), d.max(axis=-1), alpha=0.2)
    if x in result.static:
        ax.set_xticks(xs_plot, ["inf" if v is None else str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if hue is not None:
        ax.legend(fontsize="small")
    kind = result.info.get("device_kind")
    if kind:
        ax.set_title(f"{y} ({kind})", fontsize="small")
    return ax
