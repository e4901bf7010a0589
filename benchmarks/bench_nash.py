"""Benchmark of the exact Nash solver `curax.nash_solution` (issues 5 and 13).

Measures, in one run and on the same problems, per family of rewards:
* certified Frank-Wolfe gap (recomputed independently in numpy), passes over E (coarse levels
  counted by their size), passes on the finest level, master (interior-point) iterations and
  gather-priced rounds;
* warm solve time, and its ratio to one `E @ p` + `E.T @ w` pass measured in the same run
  (interleaved, minimum of the repeats);
* compile + first call per shape (cold);
* from a `CurationProblem` built once vs the equivalent `BargainingProblem` (n = 1e6, m = 8);
* optionally CVXPY + Clarabel (`--cvxpy`) and a batch of 256 problems (`--batch`).

    python benchmarks/bench_nash.py            # all families, n = 1e5 and 1e6
    python benchmarks/bench_nash.py --quick    # n = 1e4, ~2 seeds, a few minutes

Writes `benchmarks/results/nash.json` and `benchmarks/results/nash.md` (the committed
`RESULTS_nash.md` is written by hand from a full run).
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
from curax._output import write_file_atomic


HERE = Path(__file__).resolve().parent


def quad_1d(n, m, seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, n)
    c = rng.uniform(-2.5, 2.5, m)
    k = rng.uniform(0.5, 4.0, m)
    r = -k[:, None] * (x[None] - c[:, None]) ** 2
    return r, rng.dirichlet(np.ones(m)), (n,)


def quad_random_curvature(n, m, seed):
    # Issue 13's family: random centres and curvatures log-uniform over a decade (spreads
    # ~20-50 nats); the optimum often puts one atom between two wide peaks.
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n)
    c = rng.uniform(0, 1, m)
    k = np.exp(rng.uniform(np.log(5), np.log(50), m))
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


def smooth_random_scale(n, m, seed):
    # Random smooth rewards, each multiplied by its own scale (log-uniform 0.3-30).
    r, a, shape = smooth_1d(n, m, seed)
    rng = np.random.default_rng(seed + 1000)
    return r * np.exp(rng.uniform(np.log(0.1), np.log(10), m))[:, None], a, shape


def narrow_wide(n, m, seed):
    # Quadratic peaks spanning 1 nat (wide) or 50 nats (narrow) over the grid, alternating.
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n)
    c = rng.uniform(0, 1, m)
    span = np.where(np.arange(m) % 2 == 0, 1.0, 50.0)
    d = np.maximum(c, 1 - c) ** 2
    r = -(span / d)[:, None] * (x[None] - c[:, None]) ** 2
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


def grid_2d_anisotropic(n, m, seed):
    # Rotated elliptic bumps, axis curvatures log-uniform 0.3-30 (aspect ratios up to 100).
    side = int(round(np.sqrt(n)))
    rng = np.random.default_rng(seed)
    a = np.linspace(-2, 2, side)
    xx, yy = np.meshgrid(a, a, indexing="ij")
    r = np.zeros((m, side * side))
    for i in range(m):
        cx, cy = rng.uniform(-1.5, 1.5, 2)
        th = rng.uniform(0, np.pi)
        k1, k2 = np.exp(rng.uniform(np.log(0.3), np.log(30), 2))
        u = np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)
        v = -np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)
        r[i] = (-(k1 * u**2 + k2 * v**2)).ravel()
    return r, rng.dirichlet(np.ones(m)), (side, side)


def labels_random(n, m, seed):
    # Label sets without geometry, solved without `grid_shape`: i.i.d. rewards (1 nat) plus a
    # shared i.i.d. component (1 nat), so the optimum mixes compromise labels, not only each
    # reward's argmax.
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(m, n)) + rng.normal(size=(1, n))
    return r, rng.dirichlet(np.ones(m)), None


FAMILIES = {
    "quadratic-1d": quad_1d,
    "quadratic-random-curvature": quad_random_curvature,
    "smooth-1d": smooth_1d,
    "smooth-random-scale": smooth_random_scale,
    "narrow-wide-1d": narrow_wide,
    "grid-2d": grid_2d,
    "grid-2d-anisotropic": grid_2d_anisotropic,
    "labels-random": labels_random,
}


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


_SOLVERS = {}


def solver_for(shape):
    # One jitted wrapper per grid shape, so problems of the same shape share a compilation.
    if shape not in _SOLVERS:
        _SOLVERS[shape] = eqx.filter_jit(
            lambda b: curax.nash_solution(b, grid_shape=shape, throw=False)
        )
    return _SOLVERS[shape]


def pass_fn(e):
    f = jax.jit(lambda e, p, w: (e @ p, w @ e))
    n, m = e.shape[1], e.shape[0]
    p = jnp.full((n,), 1.0 / n)
    w = jnp.full((m,), 1.0 / m)
    return lambda: f(e, p, w)


def interleaved(fns, repeats):
    """Minimum warm time of each function, run in turns (the machine is shared: a burst of
    load hits every function of a turn alike)."""
    for f in fns:
        jax.block_until_ready(f())
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            jax.block_until_ready(f())
            best[i] = min(best[i], time.perf_counter() - t)
    return best


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


def bench_solves(configs, repeats, cvx_max_n, cvx_timeout):
    rows = []
    cold = set()
    for fam, n, m, seed in configs:
        r, a, shape = FAMILIES[fam](n, m, seed)
        bp = curax.BargainingProblem.from_rewards(jnp.asarray(r), jnp.asarray(a))
        e = bp.utilities
        solve = solver_for(shape)
        key = (shape, e.shape)
        t0 = time.perf_counter()
        sol = jax.block_until_ready(solve(bp))
        first_s = time.perf_counter() - t0
        tsol, tpass = interleaved([lambda: solve(bp), pass_fn(e)], repeats)
        en, an = np.asarray(e), np.asarray(a)
        row = {
            "family": fam,
            "n": int(e.shape[1]),
            "m": m,
            "seed": seed,
            "grid": shape,
            "result": str(sol.result._value),
            "certified_gap": float(sol.stats["fw_gap"]),
            "true_gap": true_gap(sol.value, en, an),
            "passes": float(sol.stats["num_passes"]),
            "fine_passes": int(sol.stats["num_steps"]),
            "master_iterations": int(sol.stats["master_iterations"]),
            "rounds": int(sol.stats["rounds"]),
            "support": int(jnp.sum(sol.value > 0)),
            "time_s": tsol,
            "pass_s": tpass,
            "ratio_to_pass": tsol / tpass,
        }
        if key not in cold:
            cold.add(key)
            row["cold_first_call_s"] = first_s
        if cvx_max_n and row["n"] <= cvx_max_n:
            row["cvxpy"] = run_cvxpy(en, an, cvx_timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_curation(n, m, seeds, repeats, families=("quadratic-random-curvature",)):
    """Issue 13: `nash_solution(CurationProblem)` (cached exp-rewards) against the same solve
    from the equivalent `BargainingProblem` and one E pass, interleaved in one run."""
    rows = []
    for fam, seed in [(f, s) for f in families for s in seeds]:
        r, a, shape = FAMILIES[fam](n, m, seed)
        cp = curax.CurationProblem(jnp.asarray(r), jnp.asarray(a))
        bp = curax.BargainingProblem.from_curation(cp)
        solve = solver_for(shape)
        t0 = time.perf_counter()
        s_cp = jax.block_until_ready(solve(cp))
        first_cp = time.perf_counter() - t0
        s_bp = jax.block_until_ready(solve(bp))
        t_cp, t_bp, t_pass = interleaved(
            [lambda: solve(cp), lambda: solve(bp), pass_fn(bp.utilities)], repeats
        )
        row = {
            "family": fam,
            "n": n,
            "m": m,
            "seed": seed,
            "gap_curation": float(s_cp.stats["fw_gap"]),
            "gap_bargaining": float(s_bp.stats["fw_gap"]),
            "objective_diff": float(s_cp.stats["objective"] - s_bp.stats["objective"]),
            "passes": float(s_cp.stats["num_passes"]),
            "passes_bargaining": float(s_bp.stats["num_passes"]),
            "master_iterations": int(s_cp.stats["master_iterations"]),
            "master_iterations_bargaining": int(s_bp.stats["master_iterations"]),
            "rounds": int(s_cp.stats["rounds"]),
            "rounds_bargaining": int(s_bp.stats["rounds"]),
            "same_p": bool(jnp.array_equal(s_cp.value, s_bp.value)),
            "curation_s": t_cp,
            "bargaining_s": t_bp,
            "pass_s": t_pass,
            "curation_ratio": t_cp / t_pass,
            "bargaining_ratio": t_bp / t_pass,
            "curation_cold_first_call_s": first_cp,
        }
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
        f"Device: {res['environment']['device']}; x64; OPENBLAS_NUM_THREADS=1; load average "
        f"{res['environment']['load_before']} before / {res['environment']['load_after']} after; "
        f"times are the minimum of {res['repeats']} warm runs, interleaved with one "
        "`E @ p` + `E.T @ w` pass.",
        "",
    ]
    fams = {}
    for r in res["solves"]:
        fams.setdefault(r["family"], []).append(r)
    worst = []
    for fam, rows in fams.items():
        lines += [
            f"### {fam}",
            "",
            "| n | m | seed | gap (certified) | gap (numpy) | passes over E | fine passes | "
            "master its | rounds | time (ms) | one pass (ms) | ratio | cold first call (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cold = r.get("cold_first_call_s")
            lines.append(
                f"| {r['n']:,} | {r['m']} | {r['seed']} | {r['certified_gap']:.1e} | "
                f"{r['true_gap']:.1e} | {r['passes']:.2f} | {r['fine_passes']} | "
                f"{r['master_iterations']} | {r['rounds']} | {1e3 * r['time_s']:.2f} | "
                f"{1e3 * r['pass_s']:.2f} | {r['ratio_to_pass']:.1f}x | "
                + (f"{cold:.1f}" if cold else "")
                + " |"
            )
        lines.append("")
        big = [r for r in rows if r["n"] >= 90_000 and r["m"] <= 16]
        if big:
            worst.append(
                (
                    fam,
                    max(r["passes"] for r in big),
                    statistics.median(r["passes"] for r in big),
                    max(r["true_gap"] for r in rows),
                    max(r["ratio_to_pass"] for r in big),
                )
            )
    if worst:
        lines += [
            "### Summary at n >= 1e5, m <= 16 (worst first)",
            "",
            "| family | max passes | median passes | max numpy gap | max ratio |",
            "|---|---|---|---|---|",
        ]
        for w in sorted(worst, key=lambda w: -w[1]):
            lines.append(f"| {w[0]} | {w[1]:.2f} | {w[2]:.2f} | {w[3]:.1e} | {w[4]:.1f}x |")
        lines.append("")
    if res.get("curation"):
        lines += [
            "### From a CurationProblem (cached exp-rewards) vs a BargainingProblem",
            "",
            "| family | n | m | seed | gap | objective diff | passes (cur / barg) | "
            "master its (cur / barg) | same p | curation (ms) | bargaining (ms) | "
            "one pass (ms) | curation ratio | bargaining ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["curation"]:
            lines.append(
                f"| {r['family']} | {r['n']:,} | {r['m']} | {r['seed']} | "
                f"{r['gap_curation']:.1e} | {r['objective_diff']:.1e} | "
                f"{r['passes']:.2f} / {r['passes_bargaining']:.2f} | "
                f"{r['master_iterations']} / {r['master_iterations_bargaining']} | "
                f"{r['same_p']} | {1e3 * r['curation_s']:.2f} | "
                f"{1e3 * r['bargaining_s']:.2f} | {1e3 * r['pass_s']:.2f} | "
                f"{r['curation_ratio']:.1f}x | {r['bargaining_ratio']:.1f}x |"
            )
        lines.append("")
    b = res.get("batch")
    if b:
        lines += [
            f"Batch of {b['batch']} problems (n = {b['n']}, m = {b['m']}), per problem: "
            f"vmap {b['vmap_per_problem_ms']:.2f} ms, lax.map {b['lax_map_per_problem_ms']:.2f} "
            f"ms, Python loop of jitted solves {b['loop_per_problem_ms']:.2f} ms; "
            f"all certified: {b['vmap_all_certified']} (max gap {b['vmap_max_gap']:.1e}).",
        ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "nash.json"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--cvxpy", action="store_true", help="CVXPY + Clarabel at n <= 1e5")
    ap.add_argument("--cvx-timeout", type=float, default=120.0)
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--n", type=int, help="only this size (with --m and --seeds)")
    ap.add_argument("--m", default="8", help="comma-separated m (with --n)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (with --n)")
    ap.add_argument("--no-curation", action="store_true")
    ap.add_argument("--curation-seeds", default="0,1")
    ap.add_argument("--curation-families", default="quadratic-random-curvature")
    ap.add_argument("--curation-n", type=int, default=1_000_000)
    args = ap.parse_args()
    fams = args.families.split(",")
    if args.n:
        ms = [int(x) for x in args.m.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
        configs = [(f, args.n, m, s) for f in fams for m in ms for s in seeds]
        curation = (args.curation_n, 8, [int(x) for x in args.curation_seeds.split(",")])
    elif args.quick:
        configs = [(f, 10_000, m, s) for f in fams for m in (2, 8) for s in (0, 1)]
        curation = (100_000, 8, [0])
    else:
        configs = [(f, 100_000, m, s) for f in fams for m in (2, 8, 16) for s in (0, 1)]
        configs += [(f, 1_000_000, 8, 0) for f in fams]
        configs += [("quadratic-random-curvature", 1_000_000, 8, s) for s in (1, 2)]
        configs += [
            (f, 100_000, m, 0)
            for f in ("quadratic-random-curvature", "labels-random")
            for m in (32, 64)
            if f in fams
        ]
        curation = (1_000_000, 8, [0, 1])
    dev = jax.devices()[0]
    res = {
        "environment": {
            "device": f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores",
            "python": platform.python_version(),
            "jax": jax.__version__,
            "load_before": os.getloadavg()[0],
        },
        "repeats": args.repeats,
    }
    cfams = tuple(args.curation_families.split(","))
    res["curation"] = (
        [] if args.no_curation else bench_curation(*curation, args.repeats, families=cfams)
    )
    res["solves"] = bench_solves(
        configs, args.repeats, 100_000 if args.cvxpy else 0, args.cvx_timeout
    )
    if args.batch:
        res["batch"] = bench_batch(256 if not args.quick else 32, 2000, 3, 3)
    res["environment"]["load_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, json.dumps(res, indent=1))
    md = markdown(res)
    write_file_atomic(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
