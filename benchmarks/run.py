"""curax convergence-speed benchmark suite (the umbrella script; see benchmarks/README.md).

    python benchmarks/run.py --quick                # ~2 minutes on a 2-core CPU
    python benchmarks/run.py                        # full suite, ~15 minutes on a 2-core CPU
    python benchmarks/run.py --out DIR --max-n 100000 --time-limit 5 --only random

Every solver runs on the same problems in the same process (CVXPY and SLSQP in a child
process with a time limit). Answers are certified here, not by the solvers: the
Frank-Wolfe / KKT gap `curax.fw_gap` (K = infinity and finite K) or the fixed-point residual
(with real data), and the potential `curax.potential`. A time is reported only for a run whose
certified answer meets the target; every other run is recorded with its failure.

Writes to `--out` (default `benchmarks/results/`, git-ignored): `results.json`,
`curves_*.png` and `RESULTS.md`, atomically (a temporary folder renamed at the end, with a
manifest; a folder holding files curax did not write is refused unless `--force`). The
committed `benchmarks/RESULTS.md` and `benchmarks/figures/` change only with `--update-tables`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import logging
import math
import platform
import re
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import baselines as B  # noqa: E402
import curax  # noqa: E402


jax.config.update("jax_enable_x64", True)
# A competitor whose iterate trips a curax runtime check raises (and is recorded); keep jax
# from also logging the whole traceback of the failed callback.
logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", category=DeprecationWarning, module="jaxopt")


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    family: str
    problem: Any  # curax.CurationProblem
    grid_shape: tuple[int, ...] | None = None
    curve: bool = False
    fails_safely: bool = False

    @property
    def n(self) -> int:
        return self.problem.size

    @property
    def m(self) -> int:
        return self.problem.num_rewards

    @property
    def k_inf(self) -> bool:
        return all(k is None for k in self.problem.ks)

    @property
    def mixing(self) -> bool:
        return self.problem.reference is not None

    @property
    def metric(self) -> str:
        # With real data the fixed point has full support and G = 1 nowhere in particular:
        # the certificate is the residual. Otherwise the FW / KKT gap.
        return "residual" if self.mixing else "gap"

    @property
    def k_label(self) -> str:
        ks = sorted({"inf" if k is None else str(k) for k in self.problem.ks})
        return ",".join(ks)


def random_smooth_rewards(n: int, m: int, seed: int, spread: float = 6.0) -> np.ndarray:
    """`m` smooth random rewards on `n` points of [0, 1]: random cosine series, each scaled to
    span `spread` nats."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    r = np.zeros((m, n))
    for i in range(m):
        for _ in range(4):
            f, ph, a = rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi), rng.normal()
            r[i] += a * np.cos(2 * np.pi * f * x + ph)
        r[i] = spread * (r[i] - r[i].min()) / (np.ptp(r[i]) + 1e-300)
    return r


def random_problem(n: int, m: int, seed: int = 0, dtype: Any = np.float64) -> Any:
    rng = np.random.default_rng(seed + 1000)
    alpha = rng.dirichlet(np.ones(m))
    return curax.CurationProblem(
        jnp.asarray(random_smooth_rewards(n, m, seed), dtype), jnp.asarray(alpha, dtype)
    )


def grid_problem(side: int, m: int = 3, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    pts = curax.grid_2d(-2.0, 2.0, (side, side))
    centers = rng.uniform(-1.5, 1.5, (m, 2))
    rewards = jnp.stack([curax.quadratic_reward(pts, c, 1.0) for c in centers])
    return curax.CurationProblem(rewards, jnp.asarray(rng.dirichlet(np.ones(m))))


def build_cases(quick: bool, max_n: int) -> list[Case]:
    cases: list[Case] = []

    def two_basin(n, k=None, rw=0.0, q=0.3):  # on a 1-D grid of n points
        return curax.two_basin_problem(n=n, separation=3.0, q=q, k=k, reference_weight=rw)[1]

    if quick:
        cases += [
            Case("two_basin n=1e3", "two-basin", two_basin(1000), curve=True),
            Case("random n=1e4 m=8", "random", random_problem(10_000, 8, seed=1)),
            Case("grid2d 32x32 m=3", "2-D grid", grid_problem(32), grid_shape=(32, 32)),
            Case("two_basin K=8 n=300", "finite K", two_basin(300, k=8)),
            Case("real data rw=0.2 n=1e3", "real-data mixing", two_basin(1000, rw=0.2)),
            Case("fails safely n=200", "fails safely", two_basin(200), fails_safely=True),
        ]
    else:
        cases += [
            Case("two_basin n=1e3", "two-basin", two_basin(1000), curve=True),
            Case("two_basin n=1e4", "two-basin", two_basin(10_000)),
            Case("random n=1e3 m=2", "random", random_problem(1000, 2)),
            Case("random n=1e4 m=8", "random", random_problem(10_000, 8, seed=1)),
            Case(
                "random n=1e5 m=16",
                "random",
                random_problem(100_000, 16, seed=2),
                curve=True,
            ),
            Case("random n=1e6 m=8", "random", random_problem(1_000_000, 8, seed=3)),
            Case(
                "grid2d 100x100 m=3",
                "2-D grid",
                grid_problem(100),
                grid_shape=(100, 100),
            ),
            Case("two_basin K=2 n=1e3", "finite K", two_basin(1000, k=2)),
            Case("two_basin K=8 n=1e3", "finite K", two_basin(1000, k=8)),
            Case("two_basin K=64 n=1e3", "finite K", two_basin(1000, k=64)),
            Case("real data rw=0.2 n=1e4", "real-data mixing", two_basin(10_000, rw=0.2)),
            Case(
                "real data K=8 rw=0.2 n=1e3",
                "real-data mixing",
                two_basin(1000, k=8, rw=0.2),
            ),
            Case("fails safely n=200", "fails safely", two_basin(200), fails_safely=True),
        ]
    for c in cases:  # two-basin and random rewards live on 1-D grids
        if c.grid_shape is None:
            c.grid_shape = (c.n,)
    return [c for c in cases if c.n <= max_n]


def numpy_e(problem: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(problem.scaled_rewards, np.float64)
    return np.exp(s - s.max(axis=1, keepdims=True)), np.asarray(problem.weights, np.float64)


# --------------------------------------------------------------------------------------
# Certification
# --------------------------------------------------------------------------------------


@jax.jit
def _certify(p: jax.Array, problem: Any) -> dict[str, jax.Array]:
    p = jnp.clip(p, 0.0)
    p = p / jnp.sum(p)
    out = {
        "gap": curax.fw_gap(p, problem),
        "phi": curax.potential(p, problem),
        "residual": jnp.max(jnp.abs(curax.curate(p, problem) - p)),
    }
    return out


def certify(p: Any, case: Case) -> dict[str, Any]:
    p = np.asarray(p, np.float64)
    info: dict[str, Any] = {
        "min_p": float(np.min(p)) if p.size else float("nan"),
        "sum_err": float(abs(np.sum(p) - 1)),
        "finite": bool(np.all(np.isfinite(p))),
    }
    if not info["finite"] or np.sum(np.clip(p, 0, None)) <= 0:
        return dict(info, gap=float("nan"), phi=float("nan"), residual=float("nan"))
    dt = case.problem.rewards.dtype
    c = _certify(jnp.asarray(p, dt), case.problem)
    return dict(info, **{k: float(v) for k, v in c.items()})


# --------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Solver:
    name: str
    kind: str  # "curax" or "competitor"
    applies: Callable[[Case], bool]
    # JAX solvers: make(case, max_steps) -> pure fn(problem, p0) -> dict(p, claimed, evals)
    make: Callable[..., Any] | None = None
    # other solvers: run(case, p0, max_steps, time_limit) -> dict (incl. warm_s, compile_s)
    run: Callable[..., Any] | None = None
    evals_kind: str = "map evals"
    steps_per_eval: float = 1.0  # how many max_steps one map evaluation buys
    iterative: bool = True  # included in the convergence curves


# Left out of --quick (compile time dominates there): slow to compile, or covered by another.
QUICK_SKIP = ("curax NewtonKrylov", "scipy SLSQP (simplex)")


def curax_solvers(tol: float) -> list[Solver]:
    out = [
        Solver(
            "curax SQUAREM",
            "curax",
            lambda c: True,
            make=lambda case, max_steps: _curax_fixed_point(
                curax.SQUAREM(rtol=tol, atol=tol), max_steps
            ),
            steps_per_eval=1 / 3,
        ),
    ]
    # (name, applies, max_steps per map evaluation)
    for name, applies, per_eval in (
        ("Anderson", lambda c: True, 1.0),
        # Newton on the tangent space needs a full-support fixed point (real data); without
        # it the stable point is on a face, where the Jacobian is singular.
        ("NewtonKrylov", lambda c: c.mixing, 1 / 20),
        # Replicator structure without real data: the exact support-identification solver.
        ("ActiveSetNewton", lambda c: not c.mixing, 1 / 4),
    ):
        cls = getattr(curax, name)
        out.append(
            Solver(
                f"curax {name}",
                "curax",
                applies,
                make=lambda case, max_steps, cls=cls: _curax_fixed_point(
                    cls(rtol=tol, atol=tol), max_steps
                ),
                steps_per_eval=per_eval,
            )
        )
    out.insert(
        0,
        Solver(
            "curax nash_solution",
            "curax",
            lambda c: c.k_inf and not c.mixing,
            run=_run_nash,
            evals_kind="passes over E",
            iterative=False,
        ),
    )
    return out


def _curax_fixed_point(solver: Any, max_steps: int) -> Callable[..., Any]:
    def fn(problem, p0):
        sol = curax.fixed_point(curax.curate, solver, p0, problem, max_steps=max_steps, throw=False)
        return {
            "p": sol.value,
            "claimed": sol.result == curax.RESULTS.successful,
            "evals": sol.stats["num_map_evals"],
            "result_code": sol.result._value,
        }

    return fn


def _run_nash(case: Case, p0: Any, max_steps: int, time_limit: float, tol: float) -> dict:
    fn = lambda pr, p0: _nash_outputs(
        curax.nash_solution(pr, grid_shape=case.grid_shape, tol=tol, throw=False)
    )
    return _time_jax(fn, case.problem, p0)


def _nash_outputs(sol: Any) -> dict[str, Any]:
    return {
        "p": sol.value,
        "claimed": sol.result == curax.RESULTS.successful,
        "evals": sol.stats.get("num_passes", jnp.array(-1)),
        "result_code": sol.result._value,
    }


def competitor_solvers(tol: float) -> list[Solver]:
    def jx(fn):
        return lambda case, max_steps: (
            lambda problem, p0: fn(problem, p0, tol=tol, max_steps=max_steps)
        )

    return [
        Solver(
            "optx FixedPointIteration",
            "competitor",
            lambda c: True,
            make=jx(B.optx_iteration),
        ),
        Solver(
            "optx Newton",
            "competitor",
            lambda c: c.n <= 1000,
            make=lambda case, max_steps: (
                lambda problem, p0: B.optx_newton(
                    problem, p0, tol=tol, max_steps=min(max_steps, 100)
                )
            ),
            steps_per_eval=1 / 1000,
            iterative=False,
        ),
        Solver("jaxopt Anderson", "competitor", lambda c: True, make=jx(B.jaxopt_anderson)),
        Solver(
            "scipy fixed_point",
            "competitor",
            lambda c: True,
            run=_run_scipy_fixed_point,
            steps_per_eval=1 / 2,
            iterative=False,
        ),
        Solver(
            "scipy SLSQP (simplex)",
            "competitor",
            lambda c: c.k_inf and not c.mixing and c.n <= 1000,
            run=_isolated("scipy_simplex_minimize"),
            evals_kind="fn evals",
            iterative=False,
        ),
        Solver(
            "CVXPY+Clarabel",
            "competitor",
            lambda c: c.k_inf and not c.mixing and c.n <= 100_000,
            run=_isolated("cvxpy_clarabel"),
            evals_kind="IPM iters",
            iterative=False,
        ),
        Solver(
            "CVXPY+SCS",
            "competitor",
            lambda c: c.k_inf and not c.mixing and c.n <= 100_000,
            run=_isolated("cvxpy_scs"),
            evals_kind="ADMM iters",
            iterative=False,
        ),
    ]


def _isolated(name: str) -> Callable[..., dict]:
    def run(case: Case, p0: Any, max_steps: int, time_limit: float, tol: float) -> dict:
        E, alpha = numpy_e(case.problem)
        return B.run_isolated(
            name,
            E,
            alpha,
            np.asarray(p0, np.float64),
            tol=tol,
            max_steps=10_000,
            time_limit=time_limit,
        )

    return run


def _run_scipy_fixed_point(
    case: Case, p0: Any, max_steps: int, time_limit: float, tol: float
) -> dict:
    if case.k_inf:
        E, alpha = numpy_e(case.problem)
        ref = None if case.problem.reference is None else np.asarray(case.problem.reference)
        f = B.numpy_map(E, alpha, ref, float(case.problem.reference_weight))
    else:  # the exact finite-K map, jitted, called from numpy
        jf = jax.jit(B.unchecked_map)
        f = lambda p: np.asarray(jf(jnp.asarray(p), case.problem))
        f(np.asarray(p0))
    t0 = time.perf_counter()
    res = B.scipy_fixed_point(f, np.asarray(p0, np.float64), tol=tol, max_steps=max_steps)
    res["warm_s"] = time.perf_counter() - t0
    res["compile_s"] = 0.0
    return res


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def _block(x: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x
    )


def _time_jax(fn: Callable[..., Any], *args: Any, repeats: int = 1) -> dict[str, Any]:
    """Compile ahead of time (compile time measured on its own), then run the compiled
    function; the warm time is the fastest of `repeats` runs."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _block(compiled(*args))
        times.append(time.perf_counter() - t0)
    res = {k: (np.asarray(v) if k == "p" else v) for k, v in out.items()}
    res["claimed"] = bool(res["claimed"])
    res["evals"] = int(res["evals"])
    res["compile_s"] = compile_s
    res["warm_s"] = min(times)
    res["_compiled"] = compiled
    return res


def map_time(case: Case) -> float:
    f = jax.jit(B.unchecked_map)
    p0 = case.problem.uniform()
    _block(f(p0, case.problem))
    ts = []
    for _ in range(5):  # the fastest of 5: other load on the machine only slows it down
        t0 = time.perf_counter()
        _block(f(p0, case.problem))
        ts.append(time.perf_counter() - t0)
    return min(ts)


def result_name(code: int) -> str:
    """The name of a `curax.RESULTS` member from its integer code."""
    names = {int(v._value): k for k, v in curax.RESULTS._name_to_item.items()}
    return "RESULTS." + names.get(int(code), str(code))


def target(case: Case, args: argparse.Namespace) -> float:
    return args.residual_target if case.metric == "residual" else args.gap_target


def run_one(solver: Solver, case: Case, args: argparse.Namespace, t_map: float) -> dict[str, Any]:
    p0 = case.problem.uniform()
    # The step budget that fits the time limit (a hang is impossible: every loop is bounded).
    max_steps = int(np.clip(args.time_limit / (t_map * 1.3) * solver.steps_per_eval, 20, 200_000))
    rec: dict[str, Any] = {
        "case": case.name,
        "family": case.family,
        "solver": solver.name,
        "kind": solver.kind,
        "n": case.n,
        "m": case.m,
        "k": case.k_label,
        "metric": case.metric,
        "target": target(case, args),
        "max_steps": max_steps,
        "evals_kind": solver.evals_kind,
    }
    try:
        if solver.make is not None:
            res = _time_jax(solver.make(case, max_steps), case.problem, p0)
        else:
            res = solver.run(case, p0, max_steps, args.time_limit, args.solver_tol)
    except Exception as e:  # a competitor crashing is a result, not a suite failure
        rec.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        if args.verbose:
            traceback.print_exc()
        return rec
    cert = certify(res["p"], case)
    value = cert[case.metric]
    correct = bool(np.isfinite(value) and value <= rec["target"])
    off_simplex = cert["min_p"] < -1e-9 or cert["sum_err"] > 1e-6
    rec.update(
        claimed=res["claimed"],
        evals=res.get("evals"),
        gap=cert["gap"],
        residual=cert["residual"],
        phi=cert["phi"],
        min_p=cert["min_p"],
        sum_err=cert["sum_err"],
        compile_s=res.get("compile_s"),
        error=res.get("error"),
        result_code=int(res["result_code"]) if "result_code" in res else None,
    )
    if rec["result_code"] is not None:
        rec["result"] = result_name(rec["result_code"])
    if res.get("error") == "timeout":
        status = "timeout"
    elif correct and not off_simplex:
        status = "ok"
    elif res["claimed"]:
        status = "wrong answer"  # the solver says converged, the certificate says not
    else:
        status = "not converged"
    rec["status"] = status
    if status == "ok":
        warm = res["warm_s"]
        if "_compiled" in res:  # a second run for a steadier warm time
            t0 = time.perf_counter()
            _block(res["_compiled"](case.problem, p0))
            warm = min(warm, time.perf_counter() - t0)
        rec["warm_s"] = warm
    else:
        rec["warm_s"] = None
        rec["spent_s"] = res.get("warm_s")
    return rec


def run_curves(case: Case, solvers: list[Solver], args: argparse.Namespace, t_map: float) -> dict:
    """Certified gap after a growing step budget, for every iterative JAX solver (each budget
    is a separate compiled run, timed warm)."""
    curves: dict[str, Any] = {}
    top = max(8, int(min(args.time_limit / (t_map * 1.3), 20_000)))
    budgets = sorted(set(np.unique(np.geomspace(2, top, args.curve_points).astype(int)).tolist()))
    p0 = case.problem.uniform()
    for s in solvers:
        if s.make is None or not s.iterative or not s.applies(case):
            continue
        pts = []
        spent = 0.0
        for b in budgets:
            steps = max(1, int(b * s.steps_per_eval))
            try:
                res = _time_jax(s.make(case, steps), case.problem, p0)
            except Exception as e:
                pts.append({"budget": steps, "error": str(e)[:200]})
                break
            cert = certify(res["p"], case)
            pts.append(
                {
                    "budget": steps,
                    "evals": res["evals"],
                    "time_s": res["warm_s"],
                    "gap": cert["gap"],
                    "residual": cert["residual"],
                }
            )
            spent += res["warm_s"] + res["compile_s"]
            if cert[case.metric] <= target(case, args) * 1e-2 or spent > 3 * args.time_limit:
                break
        curves[s.name] = pts
    return curves


# --------------------------------------------------------------------------------------
# Throughput (map applications per second vs the memory-bandwidth floor)
# --------------------------------------------------------------------------------------


def throughput(n: int, m: int, reps: int, k_finite: int) -> list[dict[str, Any]]:
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        problem = random_problem(n, m, seed=7, dtype=dtype)
        E = jnp.exp(problem.scaled_rewards - jnp.max(problem.scaled_rewards, 1, keepdims=True))
        p = problem.uniform()
        w = problem.weights

        def floor_pass(E, p, w):
            # One read of E for u = E p and one for g = E^T w: the least any K = infinity
            # map (or FW gap) evaluation must do.
            return E @ p, E.T @ w

        def e_map(E, p, w):
            return p * (E.T @ (w / (E @ p)))

        def best(f, *a):
            c = jax.jit(f).lower(*a).compile()
            _block(c(*a))
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                _block(c(*a))
                ts.append(time.perf_counter() - t0)
            return min(ts)

        t_floor = best(floor_pass, E, p, w)
        nbytes = 2 * E.size * E.dtype.itemsize
        entries = {
            "floor: E@p + E.T@w": t_floor,
            "K=inf map on E (p*E^T(a/Ep))": best(e_map, E, p, w),
            "curax.curate K=inf": best(lambda p, pr: curax.curate(p, pr), p, problem),
            "curax.fw_gap K=inf": best(lambda p, pr: curax.fw_gap(p, pr), p, problem),
        }
        pk = problem.with_k(k_finite)
        entries[f"curax.curate K={k_finite} (Q={pk.quadrature_nodes})"] = best(
            lambda p, pr: curax.curate(p, pr), p, pk
        )
        for name, t in entries.items():
            rows.append(
                {
                    "dtype": jnp.dtype(dtype).name,
                    "what": name,
                    "n": n,
                    "m": m,
                    "seconds": t,
                    "per_second": 1.0 / t,
                    "floor_ratio": t_floor / t,
                    "floor_GBps": nbytes / t_floor / 1e9,
                }
            )
    return rows


# --------------------------------------------------------------------------------------
# Sweep: many small problems as one batched computation vs a Python loop
# --------------------------------------------------------------------------------------


def sweep_benchmark(n: int, nq: int, nsep: int, nash_too: bool = True) -> list[dict[str, Any]]:
    """`curax.sweep` over q x separation of two-basin problems (n points each), against a
    Python loop over the same jitted function, for two workloads: the certified Nash solve
    (a data-dependent while loop: under vmap every lane runs until the slowest converges)
    and 200 rounds of the dynamics (fixed length: vmap turns matrix-vector products into
    matrix-matrix products)."""
    x = curax.grid_1d(-3.0, 3.0, n)

    def problem(q, sep):
        rewards = jnp.stack(
            [
                curax.quadratic_reward(x, -sep / 2, 4.0),
                curax.quadratic_reward(x, sep / 2, 4.0),
            ]
        )
        return curax.CurationProblem(rewards, jnp.stack([q, 1 - q]))

    def nash(q, sep):
        pr = problem(q, sep)
        sol = curax.nash_solution(pr, grid_shape=(n,), throw=False)
        return {"phi": sol.stats["objective"], "gap": sol.stats["fw_gap"]}

    def dynamics(q, sep):
        pr = problem(q, sep)
        p = jax.lax.fori_loop(0, 200, lambda _, p: curax.curate(p, pr), pr.uniform())
        return {"phi": curax.potential(p, pr), "gap": curax.fw_gap(p, pr)}

    grid = {"q": np.linspace(0.05, 0.95, nq), "sep": np.linspace(1.0, 4.0, nsep)}
    rows = []
    workloads = [("200 rounds of curax.curate", dynamics)]
    if nash_too:
        workloads.insert(0, ("Nash solve (curax.nash_solution)", nash))
    for name, fn in workloads:
        first = curax.sweep(fn, grid, chunk_size=nq * nsep, progress=False)
        t0 = time.perf_counter()
        res = curax.sweep(fn, grid, chunk_size=nq * nsep, progress=False)  # compiled: cached
        t_sweep = time.perf_counter() - t0
        one = jax.jit(fn)
        _block(one(jnp.asarray(grid["q"][0]), jnp.asarray(grid["sep"][0])))  # same dtypes
        t0 = time.perf_counter()
        loop_phi = np.array(
            [
                [float(one(jnp.asarray(q), jnp.asarray(s))["phi"]) for s in grid["sep"]]
                for q in grid["q"]
            ]
        )
        t_loop = time.perf_counter() - t0
        rows.append(
            {
                "workload": name,
                "problems": nq * nsep,
                "n": n,
                "sweep_s": t_sweep,
                "sweep_compile_s": sum(first.info["compile_seconds"]),
                "loop_s": t_loop,
                "speedup": t_loop / t_sweep,
                "max_gap": float(np.max(res.values["gap"])),
                "max_phi_diff_vs_loop": float(np.max(np.abs(res.values["phi"] - loop_phi))),
                "devices": first.info["devices"],
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Memory: a 1e7-point support with m = 8 in float32 (child process, max RSS)
# --------------------------------------------------------------------------------------


def memory_child(n: int, m: int) -> None:
    import resource

    t0 = time.perf_counter()
    x = jnp.linspace(0.0, 1.0, n, dtype=jnp.float32)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(m):
        r = jnp.zeros((n,), jnp.float32)
        for _ in range(4):
            f, ph, a = (float(v) for v in (rng.uniform(0.5, 4), rng.uniform(0, 6.28), rng.normal()))
            r = r + a * jnp.cos(2 * np.pi * f * x + ph)
        rows.append(6.0 * (r - r.min()) / (r.max() - r.min()))
    rewards = jnp.stack(rows)
    del rows, x
    problem = curax.CurationProblem(rewards, jnp.full((m,), 1.0 / m, jnp.float32))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sol = curax.nash_solution(problem, grid_shape=(n,), throw=False)
    method = "curax.nash_solution (default float32 tol)"
    p = sol.value.block_until_ready()
    solve_s = time.perf_counter() - t0
    gap = float(curax.fw_gap(p, problem))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    # On an accelerator the arrays live in device memory: report its peak too.
    stats = jax.devices()[0].memory_stats() or {}
    device_peak = stats.get("peak_bytes_in_use")
    print(
        "MEMORY-RESULT "
        + json.dumps(
            {
                "n": n,
                "m": m,
                "dtype": "float32",
                "method": method,
                "result": next(
                    k
                    for k, v in curax.RESULTS._name_to_item.items()
                    if v._value == int(sol.result._value)
                ),
                "fw_gap": gap,
                "reward_matrix_GiB": n * m * 4 / 2**30,
                "max_rss_GiB": rss,
                "device_peak_GiB": None if device_peak is None else device_peak / 2**30,
                "build_s": build_s,
                "solve_s": solve_s,
                "device": jax.devices()[0].device_kind,
            }
        )
    )


def memory_benchmark(n: int, m: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(n), str(m)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n": n, "m": m, "error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY-RESULT "):
            return json.loads(line[len("MEMORY-RESULT ") :])
    return {
        "n": n,
        "m": m,
        "error": (proc.stderr.strip().splitlines() or ["crashed"])[-1][:300],
    }


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def add_ratios(records: list[dict[str, Any]]) -> None:
    for case in {r["case"] for r in records}:
        rs = [r for r in records if r["case"] == case]
        comp = [r["warm_s"] for r in rs if r["kind"] == "competitor" and r.get("warm_s")]
        fastest = min(comp) if comp else None
        for r in rs:
            r["ratio_to_fastest_competitor"] = (
                r["warm_s"] / fastest if (fastest and r.get("warm_s")) else None
            )


def plot_curves(
    case: Case, curves: dict, records: list[dict], label: str, path: str, tgt: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    metric = case.metric
    for name, pts in curves.items():
        pts = [q for q in pts if "gap" in q]
        if not pts:
            continue
        y = [max(q[metric], 1e-17) for q in pts]
        axes[0].loglog([q["time_s"] for q in pts], y, marker="o", ms=3, label=name)
        axes[1].loglog([max(q["evals"], 1) for q in pts], y, marker="o", ms=3, label=name)
    for r in records:
        if r["case"] != case.name or r["solver"] in curves or r.get(metric) is None:
            continue
        t = r.get("warm_s") or r.get("spent_s")
        if t and np.isfinite(r[metric]):
            axes[0].loglog([t], [max(r[metric], 1e-17)], marker="*", ms=9, ls="", label=r["solver"])
            if r.get("evals") and r["evals"] > 0:
                axes[1].loglog(
                    [r["evals"]],
                    [max(r[metric], 1e-17)],
                    marker="*",
                    ms=9,
                    ls="",
                    label=r["solver"],
                )
    for ax, xl in zip(axes, ("warm time [s]", "map evaluations / iterations")):
        ax.axhline(tgt, color="k", lw=0.6, ls=":")
        ax.set_xlabel(xl)
        ax.set_ylabel("certified " + ("FW gap" if metric == "gap" else "residual"))
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="best")
    fig.suptitle(f"{case.name} ({label})", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any, spec: str = ".2e") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return format(x, spec)


def summary_rows(recs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for case in dict.fromkeys(r["case"] for r in recs):
        rs = [r for r in recs if r["case"] == case and r.get("warm_s")]
        first = next(r for r in recs if r["case"] == case)

        def best(kind: str) -> tuple[str, Any]:
            c = [r for r in rs if r["kind"] == kind]
            if not c:
                return "none certified", None
            r = min(c, key=lambda r: r["warm_s"])
            return f"{r['warm_s']:.3g} ({r['solver']})", r["warm_s"]

        cx, tc = best("curax")
        cp, tp = best("competitor")
        sp = f"**{tp / tc:.3g}x**" if tc and tp else "–"
        rows.append(
            f"| {case} | {first['n']:,} | {first['m']} | {first['k']} | {cx} | {cp} | {sp} |"
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# curax benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --quick' if report['quick'] else ''}` on "
        f"{report['date']}. Device: **{env['device_kind']}** ({env['num_devices']} device(s), "
        f"{env['cpu_count']} CPU cores, {env['platform']}); dtype **float64** (x64 on) unless "
        f"stated; jax {env['jax']}. Per-run time limit {report['args']['time_limit']} s.",
        "",
        "A time is given only for a run whose answer the suite certified: FW/KKT gap "
        f"`curax.fw_gap` <= {report['args']['gap_target']:.0e} (K = inf and finite K) or "
        f"fixed-point residual <= {report['args']['residual_target']:.0e} (with real data), "
        "on the simplex. `wrong answer` = the solver reported success but the certificate "
        "failed; `not converged` = it ran out of its step/time budget. Ratio = warm time / "
        "warm time of the fastest *competitor* that succeeded on that problem (< 1: faster).",
        "",
        "## Summary: fastest certified solve per problem",
        "",
        "| problem | n | m | K | fastest curax [s] | fastest competitor [s] | speedup |",
        "|---|---|---|---|---|---|---|",
        *summary_rows(report["records"]),
        "",
        "## All runs",
        "",
        "| problem | solver | status | warm [s] | compile [s] | evals | gap | residual | "
        "Phi* - Phi | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    recs = report["records"]
    for case in dict.fromkeys(r["case"] for r in recs):
        rs = [r for r in recs if r["case"] == case]
        phis = [r["phi"] for r in rs if r.get("phi") is not None and math.isfinite(r["phi"])]
        best_phi = max(phis) if phis else None
        for r in rs:
            ev = r.get("evals")
            evs = "–" if ev is None or ev < 0 else f"{ev} {r['evals_kind']}"
            dphi = None
            if best_phi is not None and r.get("phi") is not None and math.isfinite(r["phi"]):
                dphi = best_phi - r["phi"]
            status = r["status"]
            if r.get("result") and status != "ok":
                status += f" ({r['result']})"
            elif r.get("error") and status != "ok" and r["error"] != status:
                status += f" ({str(r['error'])[:60]})"
            lines.append(
                f"| {case} | {r['solver']} | {status} | {_fmt(r.get('warm_s'), '.3g')} | "
                f"{_fmt(r.get('compile_s'), '.2g')} | {evs} | {_fmt(r.get('gap'))} | "
                f"{_fmt(r.get('residual'))} | {_fmt(dphi, '.1e')} | "
                f"{_fmt(r.get('ratio_to_fastest_competitor'), '.3g')} |"
            )
    wrong = [r for r in recs if r["status"] == "wrong answer"]
    if wrong:
        lines += [
            "",
            "## Claimed success, failed the certificate",
            "",
            "Runs whose solver reported success but whose answer the suite's certificate "
            "rejects (the *fails safely* comparison: curax's solvers report non-convergence "
            "through their result code instead):",
            "",
        ]
        for r in wrong:
            val = r.get(r["metric"])
            lines.append(
                f"- {r['solver']} on {r['case']}: certified {r['metric']} {_fmt(val)}"
                + (f", min p {r['min_p']:.1e}" if r.get("min_p", 0) < -1e-9 else "")
                + (f", |sum p - 1| {r['sum_err']:.1e}" if r.get("sum_err", 0) > 1e-6 else "")
            )
        safe = [r for r in recs if r["status"] == "reported failure"]
        for r in safe:
            lines.append(f"- {r['solver']} on {r['case']}: reported failure — {r.get('note', '')}")
    if report.get("curves"):
        lines += [
            "",
            "Convergence curves (certified gap vs warm time and vs evaluations):",
            "",
        ]
        for name, png in report["curve_files"].items():
            lines += [f"**{name}**", "", f"![{name}]({png})", ""]
    if report.get("throughput"):
        lines += [
            "",
            "## Throughput at n = {:,}, m = {}".format(
                report["throughput"][0]["n"], report["throughput"][0]["m"]
            ),
            "",
            "Map applications per second against the memory-bandwidth floor of the same "
            "machine (one `E @ p` plus one `E.T @ w`, i.e. two reads of the m x n matrix). "
            "Ratio = floor time / time (1 = at the floor).",
            "",
            "| dtype | evaluation | time [ms] | per second | ratio to floor | floor GB/s |",
            "|---|---|---|---|---|---|",
        ]
        for t in report["throughput"]:
            lines.append(
                f"| {t['dtype']} | {t['what']} | {t['seconds'] * 1e3:.2f} | "
                f"{t['per_second']:.1f} | {t['floor_ratio']:.3f} | {t['floor_GBps']:.1f} |"
            )
    sw = report.get("sweep")
    if sw:
        lines += [
            "",
            "## Sweeps",
            "",
            f"`curax.sweep` over q x separation: {sw[0]['problems']} two-basin problems "
            f"(n = {sw[0]['n']:,}) as one vmapped computation on {len(sw[0]['devices'])} "
            "device(s), against a Python loop over the same jitted function (warm; the sweep "
            "compiles once per shape). Same answers (last column).",
            "",
            "| workload | sweep [ms] | compile [s] | loop [ms] | speedup | max FW gap "
            "| max abs Phi diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sw:
            lines.append(
                f"| {r['workload']} | {r['sweep_s'] * 1e3:.1f} | {r['sweep_compile_s']:.1f} | "
                f"{r['loop_s'] * 1e3:.1f} | {r['speedup']:.2f}x | {r['max_gap']:.1e} | "
                f"{r['max_phi_diff_vs_loop']:.1e} |"
            )
    mem = report.get("memory")
    if mem:
        lines += ["", "## Memory: one huge support", ""]
        if "error" in mem:
            lines.append(f"n = {mem['n']:,}, m = {mem['m']}: failed ({mem['error']}).")
        else:
            lines.append(
                f"n = {mem['n']:,} points, m = {mem['m']} rewards, float32 (reward matrix "
                f"{mem['reward_matrix_GiB']:.2f} GiB): solved by {mem['method']} in "
                f"{mem['solve_s']:.1f} s (build {mem['build_s']:.1f} s), FW gap "
                f"{mem['fw_gap']:.1e}, result `{mem['result']}`; peak resident memory "
                f"(max RSS of the process) **{mem['max_rss_GiB']:.2f} GiB** on "
                f"{mem['device']}"
                + (
                    f"; peak device memory {mem['device_peak_GiB']:.2f} GiB."
                    if mem.get("device_peak_GiB") is not None
                    else "."
                )
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small problems, ~2 minutes")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--max-n", type=int, default=None, help="skip problems with more points")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per solver run")
    ap.add_argument("--only", default=None, help="regex on problem names")
    ap.add_argument("--gap-target", type=float, default=1e-8)
    ap.add_argument("--residual-target", type=float, default=1e-9)
    ap.add_argument(
        "--solver-tol",
        type=float,
        default=1e-10,
        help="tolerance given to every solver",
    )
    ap.add_argument("--curve-points", type=int, default=None)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--memory-n", type=int, default=10_000_000)
    ap.add_argument(
        "--update-tables",
        action="store_true",
        help="also rewrite the committed benchmarks/RESULTS.md and benchmarks/figures/",
    )
    ap.add_argument("--force", action="store_true", help="write into a folder holding other files")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return {}
    if args.time_limit is None:
        args.time_limit = 1.0 if args.quick else 4.0
    if args.max_n is None:
        args.max_n = 10_000 if args.quick else 1_000_000
    if args.curve_points is None:
        args.curve_points = 4 if args.quick else 6
    from curax._output import OutputDir, OutputError

    try:
        outdir = OutputDir(
            args.out, force=args.force, writer="benchmarks/run.py", last=("results.json",)
        )
    except OutputError as e:
        print(f"run.py: error: --out: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with outdir as tmp:
        return _run(args, str(tmp))


def _run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """The suite, writing into `tmp` (renamed to `args.out` at the end)."""
    from curax._output import write_file_atomic

    # The committed table links to benchmarks/figures; a plain run keeps everything in --out.
    figures = os.path.join(HERE, "figures") if args.update_tables else tmp
    os.makedirs(figures, exist_ok=True)
    start = time.perf_counter()
    device = jax.devices()[0]
    env = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "x64": bool(jax.config.jax_enable_x64),
    }
    label = f"{env['device_kind']}, float64"
    print(f"curax benchmark suite on {env['device_kind']} ({env['platform']}), x64={env['x64']}")

    cases = build_cases(args.quick, args.max_n)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    solvers = curax_solvers(args.solver_tol) + competitor_solvers(args.solver_tol)
    if args.quick:
        solvers = [s for s in solvers if s.name not in QUICK_SKIP]
    records: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    curve_files: dict[str, str] = {}
    for case in cases:
        t_map = map_time(case)
        print(
            f"\n== {case.name}  (n={case.n}, m={case.m}, K={case.k_label}, "
            f"map {t_map * 1e3:.2f} ms)"
        )
        for s in solvers:
            if case.fails_safely and s.name not in ("optx Newton", "curax SQUAREM"):
                continue
            if not s.applies(case):
                continue
            rec = run_one(s, case, args, t_map)
            records.append(rec)
            print(
                f"  {s.name:28s} {rec['status']:14s} warm={_fmt(rec.get('warm_s'), '.3g'):>9s} "
                f"compile={_fmt(rec.get('compile_s'), '.2g'):>7s} evals={rec.get('evals')} "
                f"{case.metric}={_fmt(rec.get(case.metric))}"
                + (f"  [{str(rec.get('error'))[:80]}]" if rec.get("error") else "")
            )
        if case.fails_safely:
            records.extend(fails_safely(case, args))
            for r in records[-1:]:
                print(f"  {r['solver']:28s} {r['status']:14s} {r.get('note', '')}")
        if case.curve:
            curves[case.name] = run_curves(case, solvers, args, t_map)
    add_ratios(records)
    for case in cases:
        if case.name in curves:
            fname = "curves_" + re.sub(r"[^A-Za-z0-9]+", "_", case.name).strip("_") + ".png"
            path = os.path.join(figures, fname)
            plot_curves(case, curves[case.name], records, label, path, target(case, args))
            curve_files[case.name] = os.path.relpath(path, HERE if args.update_tables else tmp)

    tp = None
    if not args.no_throughput:
        print("\n== throughput")
        tp = throughput(1_000_000, 8, reps=3 if args.quick else 5, k_finite=8)
        for t in tp:
            print(
                f"  {t['dtype']:8s} {t['what']:36s} {t['seconds'] * 1e3:9.2f} ms  "
                f"floor ratio {t['floor_ratio']:.3f}"
            )
    sw = None
    if not args.no_sweep:
        print("\n== sweep (two-basin problems, batched vs loop)")
        sw = sweep_benchmark(1000, 16, 8) if not args.quick else sweep_benchmark(1000, 8, 4, False)
        for r in sw:
            print(
                f"   {r['workload']:34s} sweep {r['sweep_s'] * 1e3:8.1f} ms  "
                f"loop {r['loop_s'] * 1e3:8.1f} ms  speedup {r['speedup']:.2f}"
            )
    mem = None
    if not args.no_memory and not args.quick:
        print(f"\n== memory (n={args.memory_n:,}, m=8, float32)")
        mem = memory_benchmark(args.memory_n, 8, timeout=300)
        print("  ", mem)

    report = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": env,
        "args": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "records": records,
        "curves": curves,
        "curve_files": curve_files,
        "throughput": tp,
        "sweep": sw,
        "memory": mem,
        "total_s": time.perf_counter() - start,
    }
    table = markdown(report)
    with open(os.path.join(tmp, "RESULTS.md"), "w") as f:
        f.write(table)
    with open(os.path.join(tmp, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    if args.update_tables:
        write_file_atomic(os.path.join(HERE, "RESULTS.md"), table)
    print(f"\nDone in {report['total_s']:.0f} s; results in {args.out}")
    return report


def fails_safely(case: Case, args: argparse.Namespace) -> list[dict[str, Any]]:
    """optx.Newton on `f(p) - p` converges (and says so) to a fixed point that is not the
    stable one; curax.fixed_point wrapped around the same Newton solver certifies the
    answer and reports `unstable_fixed_point` instead of success."""
    import optimistix as optx

    p0 = case.problem.uniform()
    solver = optx.Newton(rtol=args.solver_tol, atol=args.solver_tol)

    def fn(problem, p0):
        sol = curax.fixed_point(curax.curate, solver, p0, problem, max_steps=100, throw=False)
        return {
            "p": sol.value,
            "claimed": sol.result == curax.RESULTS.successful,
            "evals": sol.stats["num_steps"],
            "code": sol.result._value,
        }

    rec = {
        "case": case.name,
        "family": case.family,
        "solver": "curax.fixed_point(optx.Newton)",
        "kind": "curax",
        "n": case.n,
        "m": case.m,
        "k": case.k_label,
        "metric": case.metric,
        "target": target(case, args),
        "evals_kind": "Newton steps",
    }
    try:
        res = _time_jax(fn, case.problem, p0)
    except Exception as e:
        # curax refused the iterate (an error naming the violated condition): a safe failure.
        lines = [ln.strip() for ln in str(e).splitlines() if "must" in ln]
        msg = (lines[0] if lines else str(e).splitlines()[0])[:200]
        rec.update(status="reported failure", error=msg, note=f"raised: {msg}")
        return [rec]
    cert = certify(res["p"], case)
    code = int(res["code"])
    names = {int(v._value): k for k, v in curax.RESULTS._name_to_item.items()}
    rec.update(
        claimed=res["claimed"],
        evals=res["evals"],
        gap=cert["gap"],
        residual=cert["residual"],
        phi=cert["phi"],
        compile_s=res["compile_s"],
        warm_s=None,
        status="reported failure"
        if not res["claimed"]
        else ("ok" if cert["gap"] <= rec["target"] else "wrong answer"),
        note=f"result = RESULTS.{names.get(code, code)}",
        error=f"RESULTS.{names.get(code, code)}",
    )
    return [rec]


if __name__ == "__main__":
    from curax._cli import _install_interrupt_handler

    _install_interrupt_handler("bench")
    main()
