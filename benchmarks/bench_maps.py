"""Cost of one exact finite-K curation map against one pass over the reward matrix.

For each family of problems (1-D quadratic rewards with random centres and curvatures and
Dirichlet weights, fixed spreads of 1 and 50 nats, mixed narrow and wide rewards, 2-D grids of
anisotropic bumps, label sets with random rewards and no geometry; m = 1 to 16 rewards,
K = 2 to 1,000, n = 1e4 to 1e6), times one jitted `curax.curate` and divides it by one
`E @ p` plus `E.T @ w` pass over an (m, n) matrix measured in the same repeat (any map reads
its m x n rewards at least once). The ratio is reported per quadrature node Q ("ratio / Q";
the target of issue 13 is <= 2). Each repeat times the pass 7 times and the map 3 times and
keeps the medians; the table reports the median ratio over `--repeats` repeats, interleaved so
that the machine's load hits both alike. Exactness: the mass error |sum p' - 1| at the
benchmark size and, on a 3-atom support at the family's K and spread where the exact
multinomial sum is available, the max relative error of the growth factor.

    python benchmarks/bench_maps.py [--quick] [--repeats 3] [--out benchmarks/results/maps.json]
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import pathlib
import sys
import time

import curax
import jax
import jax.numpy as jnp
import numpy as np
from curax._output import write_file_atomic


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from helpers import multinomial_growth  # noqa: E402


def median_time(fn, *args, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _dirichlet(key, m):
    return jax.random.dirichlet(key, jnp.ones(m))


def quadratic_random(n, m, k, key, max_curvature=12.5):
    """1-D quadratic rewards, random centres and curvatures per reward, Dirichlet weights."""
    k1, k2, k3 = jax.random.split(key, 3)
    x = jnp.linspace(-1.0, 1.0, n)
    c = jax.random.uniform(k1, (m, 1), minval=-1.0, maxval=1.0)
    a = jax.random.uniform(k2, (m, 1), minval=1.0, maxval=max_curvature)
    return curax.CurationProblem(-a * (x[None, :] - c) ** 2, _dirichlet(k3, m), k)


def quadratic_spread(n, m, k, key, spread):
    """1-D quadratic rewards rescaled to span exactly `spread` nats (the original family)."""
    x = jnp.linspace(-1.0, 1.0, n)
    c = jax.random.uniform(key, (m, 1), minval=-1.0, maxval=1.0)
    r = -((x[None, :] - c) ** 2)
    lo, hi = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
    return curax.CurationProblem(spread * (r - lo) / (hi - lo), jnp.full((m,), 1.0 / m), k)


def mixed_widths(n, m, k, key):
    """Narrow and wide rewards mixed: spreads alternate 1 and 50 nats, random centres."""
    x = jnp.linspace(-1.0, 1.0, n)
    k1, k2 = jax.random.split(key)
    c = jax.random.uniform(k1, (m, 1), minval=-1.0, maxval=1.0)
    r = -((x[None, :] - c) ** 2)
    lo, hi = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
    spreads = jnp.where(jnp.arange(m) % 2 == 0, 1.0, 50.0)[:, None]
    return curax.CurationProblem(spreads * (r - lo) / (hi - lo), _dirichlet(k2, m), k)


def grid_2d(n, m, k, key):
    """2-D grid, each reward an anisotropic Gaussian bump (random centre, axes, angle)."""
    side = int(round(np.sqrt(n)))
    g = jnp.linspace(-1.0, 1.0, side)
    xx, yy = [a.reshape(-1) for a in jnp.meshgrid(g, g)]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    c = jax.random.uniform(k1, (m, 2), minval=-0.8, maxval=0.8)
    scale = jax.random.uniform(k2, (m, 2), minval=1.0, maxval=4.5)
    ang = jax.random.uniform(k3, (m,), maxval=np.pi)
    dx, dy = xx[None, :] - c[:, :1], yy[None, :] - c[:, 1:]
    u = jnp.cos(ang)[:, None] * dx + jnp.sin(ang)[:, None] * dy
    v = -jnp.sin(ang)[:, None] * dx + jnp.cos(ang)[:, None] * dy
    r = -((scale[:, :1] * u) ** 2 + (scale[:, 1:] * v) ** 2) / 2
    return curax.CurationProblem(r, _dirichlet(k4, m), k)


def labels_random(n, m, k, key, spread=20.0):
    """A label set without geometry: i.i.d. uniform rewards on [0, spread] per label."""
    k1, k2 = jax.random.split(key)
    r = spread * jax.random.uniform(k1, (m, n))
    return curax.CurationProblem(r, _dirichlet(k2, m), k)


# (name, builder, n, m, k); --quick divides n by 10.
FAMILIES = [
    ("quadratic, random curvatures (issue 13)", quadratic_random, 100_000, 8, 8),
    ("quadratic, random curvatures", quadratic_random, 1_000_000, 8, 2),
    ("quadratic, random curvatures", quadratic_random, 10_000, 16, 64),
    ("quadratic, random curvatures", quadratic_random, 1_000_000, 1, 1000),
    ("quadratic, spread 1", lambda *a: quadratic_spread(*a, spread=1.0), 1_000_000, 8, 4),
    ("quadratic, spread 50", lambda *a: quadratic_spread(*a, spread=50.0), 100_000, 8, 64),
    ("mixed 1 and 50 nats", mixed_widths, 100_000, 8, 4),
    ("2-D grid, anisotropic bumps", grid_2d, 90_000, 4, 4),
    ("labels, random rewards", labels_random, 100_000, 8, 8),
    ("labels, random rewards", labels_random, 10_000, 2, 2),
]


def exact_error(k, spread):
    r_atoms = np.array([0.0, 0.4 * spread, spread])
    p_atoms = np.array([0.5, 0.3, 0.2])
    r = np.concatenate([r_atoms, [0.1 * spread, 0.7 * spread, 0.99 * spread]])
    p = np.concatenate([p_atoms, np.zeros(3)])
    g = np.asarray(curax.growth(jnp.asarray(p), curax.CurationProblem(jnp.asarray(r), k=k)))
    w = np.exp(r - r.max())
    ref = multinomial_growth(p_atoms, w[:3], w, k)
    return float(np.max(np.abs(g - ref) / ref))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n / 10, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", type=int, nargs="*", help="family indices to run")
    ap.add_argument("--out", default="benchmarks/results/maps.json")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    key = jax.random.PRNGKey(0)
    curate = jax.jit(curax.curate)
    one_pass = jax.jit(lambda E, p, w: jnp.concatenate([E @ p, E.T @ w]))
    rows = []
    for i, (name, build, n, m, k) in enumerate(FAMILIES):
        if args.only is not None and i not in args.only:
            continue
        n = n // 10 if args.quick else n
        problem = build(n, m, k, key)
        s = problem.scaled_rewards
        spread = float(jnp.max(jnp.max(s, axis=1) - jnp.min(s, axis=1)))
        nodes = problem.quadrature_nodes
        p = problem.uniform()
        E = jax.random.uniform(key, (m, problem.size))
        pe = jnp.full((problem.size,), 1.0 / problem.size)
        we = jnp.full((m,), 1.0 / m)
        t0 = time.perf_counter()
        out = curate(p, problem).block_until_ready()
        compile_s = time.perf_counter() - t0
        one_pass(E, pe, we).block_until_ready()
        ratios, maps, floors = [], [], []
        for _ in range(repeats):
            floor = median_time(one_pass, E, pe, we, repeats=7)
            t = median_time(curate, p, problem, repeats=3)
            floors.append(floor)
            maps.append(t)
            ratios.append(t / floor)
        ratio = float(np.median(ratios))
        t = float(np.median(maps))
        row = dict(
            family=name,
            n=problem.size,
            m=m,
            k=k,
            spread=round(spread, 2),
            nodes=nodes,
            map_ms=1e3 * t,
            pass_ms=1e3 * float(np.median(floors)),
            ratio=ratio,
            ratio_per_node=ratio / nodes,
            ratios=ratios,
            ns_per_node_element=1e9 * t / (nodes * m * problem.size),
            first_call_s=compile_s,
            mass_error=abs(float(out.sum()) - 1),
            exact_rel_error=exact_error(k, spread),
            load=os.getloadavg()[0],
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = dict(
        device=jax.devices()[0].device_kind,
        platform=jax.devices()[0].platform,
        dtype="float64",
        x64=bool(jax.config.jax_enable_x64),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        curax=str(pathlib.Path(curax.__file__).parent),
        quick=args.quick,
        repeats=repeats,
        load_start_end=[rows[0]["load"], rows[-1]["load"]] if rows else None,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, json.dumps(dict(meta=meta, rows=rows), indent=1))
    worst = max(rows, key=lambda r: r["ratio_per_node"])
    print(f"worst ratio / Q: {worst['ratio_per_node']:.2f} ({worst['family']}, n={worst['n']})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
