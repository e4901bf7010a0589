import json
import os
import subprocess
import sys
import textwrap

import curax
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _iterate(p, problem, rounds):
    return jax.lax.fori_loop(0, rounds, lambda _, p: curax.curate(p, problem), p)


def _fn(q, sep, k):
    # Two basins on a fixed grid (the grid may not depend on a traced parameter).
    x = curax.grid_1d(-3.0, 3.0, 40)
    rewards = jnp.stack([curax.quadratic_reward(x, -sep / 2), curax.quadratic_reward(x, sep / 2)])
    problem = curax.CurationProblem(
        rewards, jnp.stack([q, 1 - q]), k, quadrature_nodes=curax.nodes_for_spread(26.0)
    )
    p = _iterate(problem.uniform(), problem, 20)
    return {
        "left": jnp.sum(jnp.where(x < 0, p, 0.0)),
        "p": p,
        "gap": curax.fw_gap(p, problem),
    }


_GRID = {
    "q": np.linspace(0.2, 0.8, 4),
    "sep": np.array([2.0, 3.0, 4.0]),
    "k": [3, None],
}


def test_sweep_matches_pointwise_evaluation(tmp_path):
    res = curax.sweep(_fn, _GRID, static=["k"], chunk_size=5, out=tmp_path, progress=False)
    assert res.shape == (4, 3, 2)
    assert res.values["p"].shape == (4, 3, 2, 40)
    # Each grid point computed on its own (no vmap, no chunking, no padding).
    one = jax.jit(_fn, static_argnums=2)
    for i, q in enumerate(_GRID["q"]):
        for j, sep in enumerate(_GRID["sep"]):
            for c, k in enumerate(_GRID["k"]):
                direct = one(jnp.asarray(q), jnp.asarray(sep), k)
                for name in ("left", "gap", "p"):
                    np.testing.assert_allclose(
                        res.values[name][i, j, c], direct[name], rtol=1e-10, atol=1e-14
                    )
    # Symmetry of the problem, an independent check: q <-> 1 - q mirrors the left mass.
    left = res.values["left"]
    np.testing.assert_allclose(left + left[::-1], 1.0, atol=1e-10)
    sub = res.select(k=None, sep=3.0)
    assert sub.shape == (4,)
    np.testing.assert_array_equal(sub.values["gap"], res.values["gap"][:, 1, 1])


def test_sweep_resumes_and_refuses_other_grid(tmp_path):
    first = curax.sweep(_fn, _GRID, static=["k"], chunk_size=5, out=tmp_path, progress=False)
    assert first.info["chunks_computed"] == first.info["num_chunks"] == 2 * 3
    chunks = sorted(os.listdir(tmp_path / "chunks"))
    os.remove(tmp_path / "chunks" / chunks[2])
    again = curax.sweep(_fn, _GRID, static=["k"], chunk_size=5, out=tmp_path, progress=False)
    assert again.info["chunks_computed"] == 1
    for name in first.values:
        np.testing.assert_array_equal(first.values[name], again.values[name])
    loaded = curax.load_sweep(tmp_path)
    np.testing.assert_array_equal(loaded.values["left"], first.values["left"])
    assert json.loads((tmp_path / "meta.json").read_text())["complete"]
    other = dict(_GRID, q=np.linspace(0.1, 0.9, 3))
    with pytest.raises(ValueError, match="different sweep"):
        curax.sweep(_fn, other, static=["k"], chunk_size=5, out=tmp_path, progress=False)
    res = curax.sweep(
        _fn,
        other,
        static=["k"],
        chunk_size=5,
        out=tmp_path,
        progress=False,
        overwrite=True,
    )
    assert res.shape == (3, 3, 2)


def test_sweep_bad_input():
    with pytest.raises(ValueError, match="not an axis"):
        curax.sweep(_fn, _GRID, static=["K"])
    with pytest.raises(ValueError, match="numeric"):
        curax.sweep(_fn, {"q": ["a", "b"], "sep": [1.0], "k": [None]}, static=["k"])
    with pytest.raises(ValueError, match="chunk_size"):
        curax.sweep(_fn, _GRID, static=["k"], chunk_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        curax.sweep(_fn, {})


def test_plot_sweep(tmp_path):
    grid = {"q": np.linspace(0.2, 0.8, 3), "sep": np.array([3.0]), "k": [None]}
    res = curax.sweep(_fn, grid, static=["k"], progress=False)
    ax = curax.plot_sweep(res, "left", x="q", hue="k")
    ax.figure.savefig(tmp_path / "left.png")
    assert (tmp_path / "left.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not an output"):
        curax.plot_sweep(res, "nope")
    with pytest.raises(ValueError, match="scalar per grid point"):
        curax.plot_sweep(res, "p")


_FOUR_DEVICES = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    import curax
    assert len(jax.devices()) == 4, jax.devices()
    """
)

_SHARDED = _FOUR_DEVICES + textwrap.dedent(
    """
    def fn(q, seed):
        key = jax.random.PRNGKey(seed)
        rewards = jax.random.normal(key, (3, 64))
        w = jnp.stack([q, (1 - q) / 2, (1 - q) / 2])
        problem = curax.CurationProblem(rewards, w)
        p = curax.trajectory(problem.uniform(), problem, 30)[-1]
        return {"phi": curax.potential(p, problem), "p": p}

    grid = {"q": np.linspace(0.1, 0.9, 7), "seed": np.arange(3)}
    sharded = curax.sweep(fn, grid, chunk_size=6, progress=False)
    single = curax.sweep(fn, grid, chunk_size=6, devices=jax.devices()[:1], progress=False)
    assert len(sharded.info["devices"]) == 4 and len(single.info["devices"]) == 1
    for k in ("phi", "p"):
        np.testing.assert_allclose(sharded.values[k], single.values[k], rtol=1e-12, atol=1e-15)
    print("SHARDED-OK")
    """
)

_SHARDED_SUPPORT = _FOUR_DEVICES + textwrap.dedent(
    """
    # One support sharded over 4 devices: every map and certificate agrees.
    x = curax.grid_1d(-3.0, 3.0, 4000)
    rewards = jnp.stack([-(x - 1) ** 2, -(x + 1) ** 2, -0.5 * x ** 2])
    for k, rw in ((None, 0.0), (4, 0.0), (None, 0.3)):
        ref = None if rw == 0 else jnp.full(4000, 1 / 4000)
        problem = curax.CurationProblem(rewards, jnp.array([0.2, 0.3, 0.5]), k, 1.0, ref, rw)
        p0 = jnp.exp(-x ** 2 / 4); p0 = p0 / p0.sum()
        sp, sp0 = curax.shard_support(problem, p0)
        assert len(sp.rewards.sharding.device_set) == 4
        assert sp0.sharding.shard_shape(sp0.shape) == (1000,)
        a = curax.trajectory(p0, problem, 5)
        b = curax.trajectory(sp0, sp, 5)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-11, atol=1e-16)
        for f in (curax.fw_gap, curax.potential):
            np.testing.assert_allclose(f(b[-1], sp), f(a[-1], problem), rtol=1e-11, atol=1e-15)
    # The exact Nash solve runs unchanged on the sharded support.
    problem = curax.CurationProblem(rewards, jnp.array([0.2, 0.3, 0.5]))
    a = curax.nash_solution(problem, grid_shape=(4000,))
    b = curax.nash_solution(curax.shard_support(problem), grid_shape=(4000,))
    np.testing.assert_allclose(b.stats["objective"], a.stats["objective"], rtol=1e-13)
    assert float(curax.fw_gap(jnp.asarray(np.asarray(b.value)), problem)) <= 1e-10
    try:
        curax.shard_support(curax.CurationProblem(rewards[:, :3998]))
    except ValueError as e:
        assert "divisible" in str(e)
    else:
        raise AssertionError("no error for indivisible support")
    print("SHARDED-OK")
    """
)


def _run_on_four_devices(script):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert "SHARDED-OK" in proc.stdout, proc.stdout + proc.stderr


def test_sharded_sweep_equals_unsharded():
    _run_on_four_devices(_SHARDED)


@pytest.mark.study
def test_sharded_support_equals_unsharded():
    _run_on_four_devices(_SHARDED_SUPPORT)


_MULTIPROCESS = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import jax.numpy as jnp, numpy as np, curax
    assert jax.process_count() == 2 and len(jax.devices()) == 4

    def fn(q, seed):
        rewards = jax.random.normal(jax.random.PRNGKey(seed), (3, 64))
        problem = curax.CurationProblem(rewards, jnp.stack([q, (1 - q) / 2, (1 - q) / 2]))
        p = jax.lax.fori_loop(0, 30, lambda _, p: curax.curate(p, problem), problem.uniform())
        return {"phi": curax.potential(p, problem)}

    grid = {"q": np.linspace(0.1, 0.9, 7), "seed": np.arange(3)}
    res = curax.sweep(fn, grid, chunk_size=8, progress=False, out=sys.argv[3])
    np.save(os.path.join(sys.argv[3], f"phi{sys.argv[2]}.npy"), res.values["phi"])
    """
)


@pytest.mark.slow
def test_multiprocess_sweep(tmp_path):
    # Two processes with two CPU devices each, joined by jax.distributed (gloo collectives):
    # the multi-host path of curax.sweep; both processes get the single-process result.
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _MULTIPROCESS,
                f"localhost:{port}",
                str(i),
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    def fn(q, seed):
        rewards = jax.random.normal(jax.random.PRNGKey(seed), (3, 64))
        problem = curax.CurationProblem(rewards, jnp.stack([q, (1 - q) / 2, (1 - q) / 2]))
        p = _iterate(problem.uniform(), problem, 30)
        return {"phi": curax.potential(p, problem)}

    single = curax.sweep(
        fn,
        {"q": np.linspace(0.1, 0.9, 7), "seed": np.arange(3)},
        chunk_size=8,
        progress=False,
    )
    for i in range(2):
        np.testing.assert_allclose(
            np.load(tmp_path / f"phi{i}.npy"), single.values["phi"], rtol=1e-13
        )
    np.testing.assert_allclose(
        curax.load_sweep(tmp_path).values["phi"], single.values["phi"], rtol=1e-13
    )


def _small(q, k, scale=1.0):
    x = curax.grid_1d(-3.0, 3.0, 30)
    rewards = scale * jnp.stack([curax.quadratic_reward(x, -1.0), curax.quadratic_reward(x, 1.0)])
    problem = curax.CurationProblem(
        rewards, jnp.stack([q, 1 - q]), k, quadrature_nodes=curax.nodes_for_spread(30.0)
    )
    p = _iterate(problem.uniform(), problem, 10)
    return {"left": jnp.sum(jnp.where(x < 0, p, 0.0)), "phi": curax.potential(p, problem)}


def _small_other(q, k):
    # The same outputs of the same shapes, but a different computation (sharper rewards).
    return _small(q, k, scale=1.5)


_SMALL_GRID = {"q": np.linspace(0.2, 0.8, 5), "k": [2, None]}


def _run_small(fn, out, **kw):
    return curax.sweep(fn, _SMALL_GRID, static=["k"], chunk_size=2, out=out, progress=False, **kw)


def test_sweep_refuses_to_resume_with_another_fn(tmp_path):
    first = _run_small(_small, tmp_path)
    fresh = _run_small(_small_other, None)
    # The two functions really differ, so reusing the old chunks would be wrong.
    assert np.max(np.abs(fresh.values["left"] - first.values["left"])) > 1e-3
    with pytest.raises(ValueError, match="computes something else"):
        _run_small(_small_other, tmp_path)
    # The refusal left the old results intact: resuming with the original fn reuses them.
    again = _run_small(_small, tmp_path)
    assert again.info["chunks_computed"] == 0
    np.testing.assert_array_equal(again.values["left"], first.values["left"])
    # overwrite=True recomputes everything, and gives what a sweep without `out` gives.
    redone = _run_small(_small_other, tmp_path, overwrite=True)
    assert redone.info["chunks_computed"] == redone.info["num_chunks"]
    for name in fresh.values:
        np.testing.assert_array_equal(redone.values[name], fresh.values[name])
    loaded = curax.load_sweep(tmp_path)
    np.testing.assert_array_equal(loaded.values["left"], fresh.values["left"])


def test_sweep_fingerprint_sees_closed_over_arrays(tmp_path):
    # Same program, other data: an array that `fn` closes over is part of its fingerprint.
    def make(centre):
        c = jnp.asarray(centre)

        def fn(q):
            x = curax.grid_1d(-3.0, 3.0, 30)
            rewards = jnp.stack([curax.quadratic_reward(x, -c), curax.quadratic_reward(x, c)])
            problem = curax.CurationProblem(rewards, jnp.stack([q, 1 - q]))
            p = _iterate(problem.uniform(), problem, 5)
            return jnp.sum(jnp.where(x < 0, p, 0.0))

        return fn

    grid = {"q": np.linspace(0.2, 0.8, 3)}
    curax.sweep(make(1.0), grid, out=tmp_path, progress=False)
    same = curax.sweep(make(1.0), grid, out=tmp_path, progress=False)
    assert same.info["chunks_computed"] == 0
    with pytest.raises(ValueError, match="computes something else"):
        curax.sweep(make(1.5), grid, out=tmp_path, progress=False)
    # A grid of another dtype is another sweep too.
    with pytest.raises(ValueError, match="different sweep"):
        curax.sweep(make(1.0), {"q": grid["q"].astype(np.float32)}, out=tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape"])
def test_sweep_recomputes_damaged_chunk(tmp_path, damage):
    first = _run_small(_small, tmp_path)
    chunks = sorted((tmp_path / "chunks").iterdir())
    victim = chunks[3]
    if damage == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_text("not an npz file")
    else:
        np.savez(victim, leaf_0=np.zeros(7), leaf_1=np.zeros(7))
    with pytest.warns(RuntimeWarning, match=victim.name):
        again = _run_small(_small, tmp_path)
    assert again.info["chunks_computed"] == 1
    for name in first.values:
        np.testing.assert_array_equal(again.values[name], first.values[name])
    # The recomputed chunk was written back: a third run reads everything.
    assert _run_small(_small, tmp_path).info["chunks_computed"] == 0
    # A damaged assembled file is named too, and rebuilt by rerunning the sweep.
    results = tmp_path / "results.npz"
    results.write_bytes(results.read_bytes()[:100])
    with pytest.raises(ValueError, match="results.npz"):
        curax.load_sweep(tmp_path)
    _run_small(_small, tmp_path)
    np.testing.assert_array_equal(curax.load_sweep(tmp_path).values["left"], first.values["left"])
