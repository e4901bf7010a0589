"""Fixed-point solvers on curation maps: map evaluations and time to reach FW gap 1e-6, 1e-8,
1e-10 (or the gap reached within the budget), as ratios against optimistix's
FixedPointIteration on the same problem in the same run; plus one jitted vmap over 1,000
problems.

    python benchmarks/bench_solvers.py [--quick] [--budget SECONDS]

Writes benchmarks/results/solvers.json and prints a Markdown summary (copied by hand into
benchmarks/RESULTS_solvers.md). CPU, float64.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import pathlib
import platform
import time

import curax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from curax._output import write_file_atomic
from curax._solver.active_set import support_growth_for


TARGETS = (1e-6, 1e-8, 1e-10)


def random_problem(n: int, m: int, seed: int) -> curax.CurationProblem:
    """m smooth random rewards on a 1-D grid: quadratic wells at random centres with random
    curvature, plus a random low-frequency ripple; Dirichlet weights."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-3.0, 3.0, n)
    rows = []
    for _ in range(m):
        c, a = rng.uniform(-2.5, 2.5), rng.uniform(0.5, 3.0)
        amp, om, ph = (
            rng.uniform(0.1, 0.5),
            rng.uniform(1.0, 4.0),
            rng.uniform(0, 2 * np.pi),
        )
        rows.append(-a * (x - c) ** 2 + amp * np.sin(om * x + ph))
    weights = rng.dirichlet(np.ones(m))
    return curax.CurationProblem(jnp.asarray(np.stack(rows)), jnp.asarray(weights))


def solvers():
    return {
        "optx.FixedPointIteration": (optx.FixedPointIteration(1e-14, 1e-14), 200),
        "PlainIteration": (curax.PlainIteration(1e-14, 1e-14), 200),
        "DampedIteration(0.5)": (curax.DampedIteration(1e-14, 1e-14, damp=0.5), 200),
        "Anderson(m=5)": (curax.Anderson(1e-14, 1e-14), 100),
        "SQUAREM": (curax.SQUAREM(1e-14, 1e-14), 70),
        "NewtonKrylov": (curax.NewtonKrylov(1e-14, 1e-14), 2),
        "ActiveSetNewton": (curax.ActiveSetNewton(rtol=1e-13, atol=1e-13), 1),
    }


def _counted(solver, state, steps):
    if isinstance(solver, optx.FixedPointIteration):
        return steps
    return state.num_map_evals


def run_monitored(name, solver, chunk, problem, budget, max_evals):
    """Run `solver` step by step (chunks of `chunk` steps in one jitted scan), recording the
    FW gap after every step; stop at gap <= 1e-10 (or the solver's own termination), at
    `max_evals` map evaluations or after `budget` seconds."""
    fn = lambda y, a: (curax.curate(y, a), None)
    options = {}
    if isinstance(solver, curax.ActiveSetNewton):
        options = {
            "growth": curax.curate.growth,
            "support_growth": support_growth_for(curax.curate, curax.curate.growth),
        }
    y0 = problem.uniform()
    f_struct = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
    tags = frozenset()

    @eqx.filter_jit
    def init(y0, problem):
        return solver.init(fn, y0, problem, options, f_struct, None, tags)

    @eqx.filter_jit
    def chunk_run(y, state, steps, problem):
        def body(carry, _):
            y, state, steps, done = carry
            y2, s2, _ = solver.step(fn, y, problem, options, state, tags)
            term, _ = solver.terminate(fn, y, problem, options, s2, tags)
            y2, s2 = jtu.tree_map(lambda a, b: jnp.where(done, a, b), (y, state), (y2, s2))
            steps2 = jnp.where(done, steps, steps + 1)
            gap = curax.fw_gap(y2, problem)
            evals = _counted(solver, s2, steps2)
            return (y2, s2, steps2, done | term | (gap <= TARGETS[-1])), (gap, evals)

        (y, state, steps, done), (gaps, evals) = lax.scan(
            body, (y, state, steps, jnp.array(False)), None, length=chunk
        )
        return y, state, steps, done, gaps, evals

    # Compile (not timed).
    t0 = time.perf_counter()
    state = init(y0, problem)
    out = chunk_run(y0, state, jnp.array(0), problem)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = init(y0, problem)
    jax.block_until_ready(state)
    y, steps = y0, jnp.array(0)
    hit = {t: None for t in TARGETS}
    best_gap, last_evals = np.inf, 0
    while True:
        y, state, steps, done, gaps, evals = chunk_run(y, state, steps, problem)
        gaps, evals = np.asarray(gaps), np.asarray(evals)
        elapsed = time.perf_counter() - t0
        for g, e in zip(gaps, evals):
            best_gap = min(best_gap, float(g))
            for t in TARGETS:
                if hit[t] is None and g <= t:
                    # Time is interpolated within the chunk by evaluations.
                    hit[t] = {"evals": int(e), "seconds": elapsed}
        last_evals = int(evals[-1])
        if bool(done) or elapsed > budget or last_evals >= max_evals:
            break
    return {
        "solver": name,
        "compile_s": compile_s,
        "seconds": time.perf_counter() - t0,
        "evals": last_evals,
        "final_gap": float(gaps[-1]),
        "best_gap": best_gap,
        "reached": {str(t): hit[t] for t in TARGETS},
        "residual": float(jnp.max(jnp.abs(curax.curate(y, problem) - y))),
    }


def end_to_end(problem, solver):
    """curax.fixed_point, compile excluded, median of 3."""
    solve = eqx.filter_jit(
        lambda p0, pr: curax.fixed_point(curax.curate, solver, p0, pr, throw=False)
    )
    sol = solve(problem.uniform(), problem)
    jax.block_until_ready(sol.value)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sol = solve(problem.uniform(), problem)
        jax.block_until_ready(sol.value)
        times.append(time.perf_counter() - t0)
    return {
        "seconds": float(np.median(times)),
        "result": str(sol.result == curax.RESULTS.successful),
        "num_map_evals": int(sol.stats["num_map_evals"]),
        "fw_gap": float(sol.stats["fw_gap"]),
        "residual": float(sol.stats["residual"]),
        "support_size": int(jnp.sum(sol.value > 0)),
    }


def batch_bench(batch: int, n: int):
    _, base = curax.two_basin_problem(n=n, q=0.5, separation=2.0)
    qs = jnp.linspace(0.02, 0.98, batch)
    weights = jnp.stack([qs, 1 - qs], axis=1)
    solver = curax.ActiveSetNewton(max_support=40)

    def solve(w):
        problem = curax.CurationProblem(base.rewards, w)
        return curax.fixed_point(curax.curate, solver, problem.uniform(), problem, throw=False)

    run = eqx.filter_jit(jax.vmap(solve))
    t0 = time.perf_counter()
    sol = run(weights)
    jax.block_until_ready(sol.value)
    compile_and_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    sol = run(weights)
    jax.block_until_ready(sol.value)
    seconds = time.perf_counter() - t0
    # Spot-check batch members against unbatched solves.
    err = max(
        float(jnp.max(jnp.abs(sol.value[i] - solve(weights[i]).value)))
        for i in (0, batch // 2, batch - 1)
    )
    return {
        "batch": batch,
        "n": n,
        "seconds": seconds,
        "first_call_seconds": compile_and_run,
        "all_successful": bool(jnp.all(sol.result == curax.RESULTS.successful)),
        "max_fw_gap": float(jnp.max(sol.stats["fw_gap"])),
        "max_abs_diff_vs_unbatched": err,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, short budgets")
    parser.add_argument("--budget", type=float, default=None, help="seconds per solver run")
    args = parser.parse_args()
    quick = args.quick
    budget = args.budget if args.budget is not None else (3.0 if quick else 15.0)
    n_basin = 401 if quick else 2001
    n_random = 5_000 if quick else 100_000
    _, basin = curax.two_basin_problem(n=n_basin, q=0.3)
    problems = {
        f"two-basin n={n_basin} K=inf": (basin, 10**6),
        f"random m=8 n={n_random} K=inf": (random_problem(n_random, 8, 0), 10**6),
        f"two-basin n={n_basin} K=4": (
            curax.two_basin_problem(n=n_basin, q=0.3, k=4)[1],
            10**5,
        ),
        f"two-basin n={n_basin} K=64": (
            curax.two_basin_problem(n=n_basin, q=0.3, k=64)[1],
            10**5,
        ),
    }
    results = {
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "dtype": "float64",
        "budget_s": budget,
        "problems": {},
    }
    for pname, (problem, max_evals) in problems.items():
        print(f"## {pname}", flush=True)
        runs = []
        for sname, (solver, chunk) in solvers().items():
            r = run_monitored(sname, solver, chunk, problem, budget, max_evals)
            runs.append(r)
            reached = {t: (v["evals"] if v else None) for t, v in r["reached"].items()}
            print(
                f"  {sname:26s} evals={r['evals']:>8d} best_gap={r['best_gap']:.2e} "
                f"reached={reached} t={r['seconds']:.2f}s",
                flush=True,
            )
        e2e = end_to_end(problem, curax.ActiveSetNewton(rtol=1e-13, atol=1e-13))
        print(f"  ActiveSetNewton end-to-end: {e2e}", flush=True)
        results["problems"][pname] = {"runs": runs, "active_set_end_to_end": e2e}
    results["vmap"] = batch_bench(64 if quick else 1000, 500)
    print("vmap:", results["vmap"], flush=True)

    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    write_file_atomic(out / "solvers.json", json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results) -> str:
    lines = [
        f"Device: {results['device']}, {results['dtype']}, budget {results['budget_s']} s per "
        "run (map evaluations to reach each FW gap; `-` = not reached; ratio = baseline "
        "evaluations / solver evaluations, where the baseline reached the target, else "
        "`>` the baseline's total evaluations / solver's).",
        "",
    ]
    for pname, pr in results["problems"].items():
        runs = pr["runs"]
        base = runs[0]
        lines += [
            f"### {pname}",
            "",
            "| solver | "
            + " | ".join(f"gap {t:g}: evals (s) | ratio" for t in TARGETS)
            + " | best gap |",
            "|---" * (2 + 2 * len(TARGETS)) + "|",
        ]
        for r in runs:
            cells = []
            for t in TARGETS:
                hit = r["reached"][str(t)]
                bhit = base["reached"][str(t)]
                if hit is None:
                    cells += ["-", "-"]
                    continue
                cells.append(f"{hit['evals']} ({hit['seconds']:.2f})")
                if bhit is not None:
                    cells.append(f"{bhit['evals'] / max(hit['evals'], 1):.3g}")
                else:
                    cells.append(f">{base['evals'] / max(hit['evals'], 1):.3g}")
            lines.append(f"| {r['solver']} | " + " | ".join(cells) + f" | {r['best_gap']:.1e} |")
        e = pr["active_set_end_to_end"]
        lines += [
            "",
            f"ActiveSetNewton end to end (`curax.fixed_point`, compiled): {e['seconds']:.3f} s, "
            f"{e['num_map_evals']} map evaluations, gap {e['fw_gap']:.1e}, residual "
            f"{e['residual']:.1e}, support {e['support_size']} points.",
            "",
        ]
    v = results["vmap"]
    lines.append(
        f"vmap: {v['batch']} problems (n = {v['n']}, m = 2, different weights) in one jitted "
        f"call: {v['seconds']:.2f} s (first call with compile {v['first_call_seconds']:.1f} s), "
        f"all successful: {v['all_successful']}, max gap {v['max_fw_gap']:.1e}, max |batched - "
        f"unbatched| {v['max_abs_diff_vs_unbatched']:.1e}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
