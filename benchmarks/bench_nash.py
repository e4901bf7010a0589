"""Benchmark of the exact Nash solver `curax.nash_solution` (issue 5).

Measures, in one run and on the same problems:
* certified Frank-Wolfe gap (recomputed independently in numpy) and passes over E;
* warm solve time, and its ratio to one `E @ p` + `E.T @ w` pass measured in the same run;
* CVXPY + Clarabel (exponential cone) on the same problem: time and *true* gap of its answer;
* a batch of 256 problems (n = 2,000, m = 3): `vmap`, `lax.map` and a Python loop of solves.

    python benchmarks/bench_nash.py            # full (~5-10 minutes on a 2-core CPU)
    python benchmarks/bench_nash.py --quick    # small sizes, ~1 minute

Writes `benchmarks/results/nash.json` and prints a Markdown summary.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


HERE = Path(__file__).resolve().parent


def quad_1d(n, m, seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, n)
    c = rng.uniform(-2.5, 2.5, m)
    k = rng.uniform(0.5, 4.0, m)
    r = -k[:, None] * (x[None] - c[:, None]) ** 2
    return r, rng.dirichlet(np.ones(m)), (n,)


def smooth_1d(n, m, seed):
    # Random smooth rewards: a few random Fourier modes plus a gentle well, spread ~10 nats.
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n)
    r = np.zeros((m, n))
    for i in range(m):
        for f in range(1, 7):
            r[i] += rng.normal() / f * np.sin(2 * np.pi * f * x + rng.uniform(0, 2 * np.pi))
        r[i] *= 3.0
    return r, rng.dirichlet(np.ones(m)), (n,)


def grid_2d(n, m, seed):
    side = int(round(np.sqrt(n)))
    rng = np.random.default_rng(seed)
    a = np.linspace(-2, 2, side)
    xx, yy = np.meshgrid(a, a, indexing="ij")
    r = np.zeros((m, side * side))
    for i in range(m):
        cx, cy = rng.uniform(-1.5, 1.5, 2)
        k = rng.uniform(0.5, 3.0)
        r[i] = (-k * ((xx - cx) ** 2 + (yy - cy) ** 2)).ravel()
    return r, rng.dirichlet(np.ones(m)), (side, side)


FAMILIES = {"quadratic-1d": quad_1d, "smooth-1d": smooth_1d, "grid-2d": grid_2d}


def timeit(fn, repeats):
    fn()  # warm
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def true_gap(p, e, a):
    p = np.asarray(p, np.float64)
    u = e @ p
    return float(((a / u) @ e).max() - 1)


def solve_fn(bp, grid_shape):
    f = eqx.filter_jit(lambda b: curax.nash_solution(b, grid_shape=grid_shape, throw=False))
    return lambda: f(bp)


def pass_fn(e):
    f = jax.jit(lambda e, p, w: (e @ p, w @ e))
    n, m = e.shape[1], e.shape[0]
    p = jnp.full((n,), 1.0 / n)
    w = jnp.full((m,), 1.0 / m)
    return lambda: f(e, p, w)


CVX_CHILD = r"""
import os, sys, time, warnings
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np, cvxpy as cp
d = np.load(sys.argv[1])
e, a = d["e"], d["a"]
x = cp.Variable(e.shape[1])
prob = cp.Problem(cp.Maximize(a @ cp.log(e @ x)), [x >= 0, cp.sum(x) == 1])
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    prob.solve(solver=cp.CLARABEL)
dt = time.perf_counter() - t
xv = np.clip(np.asarray(x.value, np.float64), 0, None)
xv /= xv.sum()
np.savez(sys.argv[2], p=xv, time=dt, status=str(prob.status))
"""


def run_cvxpy(e, a, timeout):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, e=np.asarray(e), a=np.asarray(a))
        try:
            subprocess.run(
                [sys.executable, "-c", CVX_CHILD, str(src), str(dst)],
                timeout=timeout,
                check=True,
                capture_output=True,
            )
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as err:
            return {"error": type(err).__name__}
        out = np.load(dst)
        return {
            "time_s": float(out["time"]),
            "status": str(out["status"]),
            "true_gap": true_gap(out["p"], np.asarray(e), np.asarray(a)),
        }


def bench_solves(sizes, ms, repeats, cvx_max_n, cvx_timeout):
    rows = []
    for fam, make in FAMILIES.items():
        for n in sizes[fam]:
            for m in ms:
                r, a, shape = make(n, m, seed=m)
                bp = curax.BargainingProblem.from_rewards(jnp.asarray(r), jnp.asarray(a))
                e = bp.utilities
                fn = solve_fn(bp, shape)
                t0 = time.perf_counter()
                sol = jax.block_until_ready(fn())
                compile_s = time.perf_counter() - t0
                tmin, tmed = timeit(fn, repeats)
                pmin, pmed = timeit(pass_fn(e), repeats)
                en, an = np.asarray(e), np.asarray(a)
                row = {
                    "family": fam,
                    "n": int(e.shape[1]),
                    "m": m,
                    "result": str(sol.result._value),
                    "certified_gap": float(sol.stats["fw_gap"]),
                    "true_gap": true_gap(sol.value, en, an),
                    "passes": float(sol.stats["num_passes"]),
                    "fine_passes": int(sol.stats["num_steps"]),
                    "master_iterations": int(sol.stats["master_iterations"]),
                    "support": int(jnp.sum(sol.value > 0)),
                    "compile_plus_first_s": compile_s,
                    "time_min_s": tmin,
                    "time_median_s": tmed,
                    "pass_min_s": pmin,
                    "pass_median_s": pmed,
                    "ratio_to_pass": tmin / pmin,
                }
                if row["n"] <= cvx_max_n:
                    row["cvxpy"] = run_cvxpy(en, an, cvx_timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def bench_batch(batch, n, m, repeats):
    probs = [quad_1d(n, m, seed) for seed in range(batch)]
    r = jnp.asarray(np.stack([p[0] for p in probs]))
    a = jnp.asarray(np.stack([p[1] for p in probs]))
    bps = eqx.filter_vmap(curax.BargainingProblem.from_rewards)(r, a)
    shape = (n,)
    out = {"batch": batch, "n": n, "m": m}

    def one(b):
        return curax.nash_solution(b, grid_shape=shape, throw=False)

    vm = eqx.filter_jit(eqx.filter_vmap(one))
    sols = jax.block_until_ready(vm(bps))
    out["vmap_all_certified"] = bool(jnp.all(sols.stats["fw_gap"] <= 1e-12))
    out["vmap_max_gap"] = float(jnp.max(sols.stats["fw_gap"]))
    out["vmap_s"] = timeit(lambda: vm(bps), repeats)[0]

    @eqx.filter_jit
    def lmap(b):
        return jax.lax.map(one, b)

    jax.block_until_ready(lmap(bps))
    out["lax_map_s"] = timeit(lambda: lmap(bps), repeats)[0]

    single = eqx.filter_jit(one)
    items = [jax.tree.map(lambda x: x[i], bps) for i in range(batch)]
    jax.block_until_ready(single(items[0]))

    def loop():
        return [single(b) for b in items]

    out["loop_s"] = timeit(loop, max(1, repeats // 2))[0]
    for k in ("vmap_s", "lax_map_s", "loop_s"):
        out[k.replace("_s", "_per_problem_ms")] = 1e3 * out[k] / batch
    print(json.dumps(out), flush=True)
    return out


def markdown(res):
    lines = [
        f"Device: {res['environment']['device']}; x64; OPENBLAS_NUM_THREADS=1; "
        f"times are the minimum of {res['repeats']} warm runs.",
        "",
        "| family | n | m | certified gap | true gap | passes over E | time (ms) | "
        "one E pass (ms) | ratio | CVXPY+Clarabel (ms) | CVXPY true gap | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["solves"]:
        cv = r.get("cvxpy")
        if cv and "time_s" in cv:
            cvs = (
                f"{1e3 * cv['time_s']:.0f}",
                f"{cv['true_gap']:.1e}",
                f"{cv['time_s'] / r['time_min_s']:.0f}x",
            )
        elif cv:
            cvs = (cv["error"], "", "")
        else:
            cvs = ("", "", "")
        lines.append(
            f"| {r['family']} | {r['n']:,} | {r['m']} | {r['certified_gap']:.1e} | "
            f"{r['true_gap']:.1e} | {r['passes']:.2f} | {1e3 * r['time_min_s']:.2f} | "
            f"{1e3 * r['pass_min_s']:.2f} | {r['ratio_to_pass']:.1f}x | " + " | ".join(cvs) + " |"
        )
    b = res.get("batch")
    if b:
        lines += [
            "",
            f"Batch of {b['batch']} problems (n = {b['n']}, m = {b['m']}), per problem: "
            f"vmap {b['vmap_per_problem_ms']:.2f} ms, lax.map {b['lax_map_per_problem_ms']:.2f} "
            f"ms, Python loop of jitted solves {b['loop_per_problem_ms']:.2f} ms; "
            f"all certified: {b['vmap_all_certified']} (max gap {b['vmap_max_gap']:.1e}).",
        ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "nash.json"))
    ap.add_argument("--cvx-max-n", type=int, default=100_000)
    ap.add_argument("--cvx-timeout", type=float, default=120.0)
    ap.add_argument("--no-batch", action="store_true")
    args = ap.parse_args()
    if args.quick:
        sizes = {
            "quadratic-1d": [10_000],
            "smooth-1d": [10_000],
            "grid-2d": [100 * 100],
        }
        ms = [2, 8]
        args.cvx_max_n = min(args.cvx_max_n, 10_000)
    else:
        sizes = {
            "quadratic-1d": [10_000, 100_000, 1_000_000],
            "smooth-1d": [100_000, 1_000_000],
            "grid-2d": [1000 * 1000],
        }
        ms = [2, 4, 8]
    dev = jax.devices()[0]
    res = {
        "environment": {
            "device": f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores",
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "repeats": args.repeats,
        "solves": bench_solves(sizes, ms, args.repeats, args.cvx_max_n, args.cvx_timeout),
    }
    if not args.no_batch:
        res["batch"] = bench_batch(256 if not args.quick else 32, 2000, 3, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(markdown(res))


if __name__ == "__main__":
    main()
