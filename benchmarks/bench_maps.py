"""Cost of one curation-map application against the memory-bandwidth floor.

For n = 1e5 and 1e6 support points, m = 8 rewards, K = inf, 4, 64, 1,000 and reward spreads of
1 and 50 nats, times one jitted `curax.curate` and reports it as a ratio to a bare `E @ p` plus
`E.T @ w` pass measured in the same run (the floor: any map must read E at least once). Also
records the quadrature node count Q, the compiled temporary memory of the map (XLA's
memory analysis: O(Q * chunk), not O(Q * n)), the mass error |sum p' - 1| at that size and, on a
3-atom support where the exact multinomial sum is available, the max relative error of H.

    python benchmarks/bench_maps.py [--quick] [--out benchmarks/results/maps.json]
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


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from helpers import multinomial_growth  # noqa: E402


def best_time(fn, *args, repeats=3):
    fn(*args).block_until_ready()  # compile + warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


def problem_for(n, m, spread, k, key):
    x = jnp.linspace(-1.0, 1.0, n)
    centres = jax.random.uniform(key, (m, 1), minval=-1.0, maxval=1.0)
    r = -((x[None, :] - centres) ** 2)
    r = (
        spread
        * (r - r.min(axis=1, keepdims=True))
        / (r.max(axis=1, keepdims=True) - r.min(axis=1, keepdims=True))
    )
    return curax.CurationProblem(r, jnp.full((m,), 1.0 / m), k)


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
    ap.add_argument("--quick", action="store_true", help="n = 1e4 and 1e5 only, fewer K")
    ap.add_argument("--out", default="benchmarks/results/maps.json")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    ks = [None, 4, 64] if args.quick else [None, 4, 64, 1000]
    m = 8
    key = jax.random.PRNGKey(0)
    rows = []
    curate = jax.jit(curax.curate)
    for n in sizes:
        E = jax.random.uniform(key, (m, n))
        p = jnp.full((n,), 1.0 / n)
        w = jnp.full((m,), 1.0 / m)
        floor = best_time(jax.jit(lambda E, p, w: jnp.concatenate([E @ p, E.T @ w])), E, p, w)
        base = None
        for spread in (1.0, 50.0):
            for k in ks:
                problem = problem_for(n, m, spread, k, key)
                t = best_time(curate, p, problem, repeats=2 if (k and n >= 1_000_000) else 5)
                # Inside a loop (as in every solver) XLA hoists what does not depend on p.
                rounds = 3 if k else 20
                t_loop = (
                    best_time(
                        jax.jit(
                            lambda p, pr: jax.lax.fori_loop(
                                0, rounds, lambda i, q: curax.curate(q, pr), p
                            )
                        ),
                        p,
                        problem,
                        repeats=2,
                    )
                    / rounds
                )
                mem = curate.lower(p, problem).compile().memory_analysis()
                temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
                out = curate(p, problem)
                if k is None:
                    base = t
                    base_loop = t_loop
                row = dict(
                    n=n,
                    m=m,
                    k="inf" if k is None else k,
                    spread=spread,
                    nodes=problem.quadrature_nodes,
                    seconds=t,
                    ratio_to_floor=t / floor,
                    seconds_in_loop=t_loop,
                    loop_ratio_to_floor=t_loop / floor,
                    ratio_to_k_inf=t / base,
                    loop_ratio_to_k_inf=t_loop / base_loop,
                    target_ratio_to_k_inf=(1.5 * problem.quadrature_nodes if k else 2.0),
                    temp_bytes=temp,
                    q_times_n_bytes=8 * m * max(problem.quadrature_nodes, 1) * n,
                    mass_error=abs(float(out.sum()) - 1),
                    exact_rel_error=exact_error(k, spread) if k else 0.0,
                    floor_seconds=floor,
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
        quick=args.quick,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
