"""Competitor solvers for the curation fixed point / weighted Nash problem, wrapped behind one
calling convention so that the suite (`benchmarks/run.py`) can time them on the same problems.

Two kinds:

* JAX baselines (`optx_iteration`, `optx_newton`, `jaxopt_anderson`) are pure functions of a
  `curax.CurationProblem` and a start `p0`, suitable for `jax.jit(...).lower(...).compile()`
  (so compile time is measured separately). They iterate the same curation map as curax
  (`curax._maps.reward_growths`, without curax's simplex validation, which a generic
  accelerator's extrapolated iterates would trip) under a `max_steps` budget.
* numpy baselines (`scipy_fixed_point`, `scipy_simplex_minimize`, `cvxpy_nash`) take the
  matrix `E = exp(r - max r)` (m, n), weights `alpha` and `p0`. The suite runs the CVXPY and
  SLSQP ones in a child process with a wall-clock time limit (`run_isolated`): canonicalising
  a large CVXPY problem, or SLSQP's dense O(n^3) steps, cannot be interrupted otherwise.

Every baseline returns a dict with at least `p` (its answer, not necessarily on the simplex),
`claimed` (whether the solver itself reports success), `evals` (map evaluations, function
evaluations or solver iterations; see `evals_kind`) and `error` (a message or None). The
suite certifies answers itself (`curax.fw_gap`, `curax.potential`); `claimed` is only what
the competitor says.

Run as a worker: `python benchmarks/baselines.py --worker NAME IN.npz OUT.npz`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np


# --------------------------------------------------------------------------------------
# JAX baselines
# --------------------------------------------------------------------------------------


def unchecked_map(p, problem):
    """One curation round `p -> rw * ref + (1 - rw) * p * G(p)`, curax's exact map without
    the simplex check (generic accelerators extrapolate off the simplex)."""

    from curax._maps import reward_growths

    curated = p * (problem.weights @ reward_growths(p, problem))
    if problem.reference is None:
        return curated
    rw = problem.reference_weight
    return rw * problem.reference + (1 - rw) * curated


def optx_iteration(problem, p0, *, tol: float, max_steps: int) -> dict[str, Any]:
    """`optx.fixed_point` with `optx.FixedPointIteration(rtol=tol, atol=tol)`."""
    import optimistix as optx

    sol = optx.fixed_point(
        unchecked_map,
        optx.FixedPointIteration(rtol=tol, atol=tol),
        p0,
        problem,
        max_steps=max_steps,
        throw=False,
    )
    return {
        "p": sol.value,
        "claimed": sol.result == optx.RESULTS.successful,
        "evals": sol.stats["num_steps"],
    }


def optx_newton(problem, p0, *, tol: float, max_steps: int) -> dict[str, Any]:
    """`optx.root_find` of `f(p) - p` with `optx.Newton(rtol=tol, atol=tol)` (dense Jacobian
    through lineax's default LU: only for small n)."""
    import optimistix as optx

    sol = optx.root_find(
        lambda p, a: unchecked_map(p, a) - p,
        optx.Newton(rtol=tol, atol=tol),
        p0,
        problem,
        max_steps=max_steps,
        throw=False,
    )
    # Each Newton step costs one Jacobian (n JVPs, jacfwd) and one evaluation.
    return {
        "p": sol.value,
        "claimed": sol.result == optx.RESULTS.successful,
        "evals": sol.stats["num_steps"] * (p0.shape[0] + 1),
    }


def jaxopt_anderson(
    problem, p0, *, tol: float, max_steps: int, history_size: int = 5
) -> dict[str, Any]:
    """jaxopt's `AndersonAcceleration` (history 5, ridge 1e-5, its defaults); jaxopt's `tol`
    is on the l2 norm of `f(p) - p`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt

    solver = jaxopt.AndersonAcceleration(
        fixed_point_fun=unchecked_map,
        history_size=history_size,
        maxiter=max_steps,
        tol=tol,
        implicit_diff=False,
        jit=True,
    )
    params, state = solver.run(p0, problem)
    return {"p": params, "claimed": state.error <= tol, "evals": state.iter_num}


# --------------------------------------------------------------------------------------
# numpy baselines
# --------------------------------------------------------------------------------------


def numpy_map(E: np.ndarray, alpha: np.ndarray, ref: np.ndarray | None = None, rw: float = 0.0):
    """The K -> infinity map on a precomputed `E = exp(r - max r)`:
    `p -> rw * ref + (1 - rw) * p * E^T (alpha / E p)`."""

    def f(p: np.ndarray) -> np.ndarray:
        out = p * (E.T @ (alpha / (E @ p)))
        return out if ref is None else rw * ref + (1 - rw) * out

    return f


def scipy_fixed_point(f, p0: np.ndarray, *, tol: float, max_steps: int) -> dict[str, Any]:
    """`scipy.optimize.fixed_point(f, p0, xtol=tol, method="del2")` (Steffensen with Aitken
    extrapolation, its default). `f` is any numpy map; scipy raises when it does not
    converge, which is recorded as a failure. `xtol` is relative."""
    from scipy import optimize

    count = [0]
    last = [p0]

    def counted(p):
        count[0] += 1
        last[0] = p
        return f(p)

    try:
        with np.errstate(all="ignore"):
            p = optimize.fixed_point(counted, p0, xtol=tol, maxiter=max_steps, method="del2")
        return {"p": np.asarray(p), "claimed": True, "evals": count[0], "error": None}
    except (RuntimeError, FloatingPointError, ValueError) as e:
        return {
            "p": np.asarray(last[0]),
            "claimed": False,
            "evals": count[0],
            "error": str(e)[:200],
        }


def scipy_simplex_minimize(
    E: np.ndarray, alpha: np.ndarray, p0: np.ndarray, *, tol: float, max_steps: int
) -> dict[str, Any]:
    """`scipy.optimize.minimize(-Phi, method="SLSQP")` over the simplex (bounds [0, 1],
    equality `sum p = 1`), with the exact gradient. Dense QP subproblems: O(n^3) per step."""
    from scipy import optimize

    def obj(p):
        u = E @ p
        return -float(alpha @ np.log(np.maximum(u, 1e-300))), -(E.T @ (alpha / u))

    res = optimize.minimize(
        obj,
        p0,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * p0.shape[0],
        constraints=[
            {
                "type": "eq",
                "fun": lambda p: p.sum() - 1,
                "jac": lambda p: np.ones_like(p),
            }
        ],
        options={"ftol": tol, "maxiter": max_steps},
    )
    return {
        "p": np.asarray(res.x),
        "claimed": bool(res.success),
        "evals": int(res.nfev),
        "error": None if res.success else str(res.message),
    }


def cvxpy_nash(
    E: np.ndarray,
    alpha: np.ndarray,
    p0: np.ndarray,
    *,
    solver: str,
    tol: float,
    max_steps: int,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """The weighted Nash bargaining problem `max sum_i alpha_i log (E p)_i` over the simplex
    as a CVXPY exponential-cone program, solved by Clarabel (interior point) or SCS (ADMM)
    with gap/feasibility tolerances `tol`. Reports CVXPY's canonicalisation time as
    `compile_s` and the rest of `solve()` as `warm_s`."""
    import cvxpy as cp

    n = E.shape[1]
    p = cp.Variable(n, nonneg=True)
    prob = cp.Problem(cp.Maximize(alpha @ cp.log(E @ p)), [cp.sum(p) == 1])
    opts: dict[str, Any]
    if solver == "CLARABEL":
        opts = dict(
            tol_gap_abs=tol,
            tol_gap_rel=tol,
            tol_feas=tol,
            max_iter=max_steps,
        )
        if time_limit is not None:
            opts["time_limit"] = time_limit
    elif solver == "SCS":
        opts = dict(eps_abs=tol, eps_rel=tol, max_iters=max_steps)
        if time_limit is not None:
            opts["time_limit_secs"] = time_limit
    else:
        raise ValueError(f"`solver` must be CLARABEL or SCS, got {solver!r}.")
    t0 = time.perf_counter()
    try:
        prob.solve(solver=solver, **opts)
    except cp.error.SolverError as e:
        return {
            "p": np.asarray(p0),
            "claimed": False,
            "evals": -1,
            "error": str(e)[:200],
        }
    total = time.perf_counter() - t0
    compile_s = float(getattr(prob, "compilation_time", None) or 0.0)
    stats = prob.solver_stats
    value = p.value if p.value is not None else np.asarray(p0)
    return {
        "p": np.asarray(value),
        "claimed": prob.status == cp.OPTIMAL,
        "evals": int(stats.num_iters) if stats.num_iters is not None else -1,
        "error": None if prob.status == cp.OPTIMAL else f"status {prob.status}",
        "compile_s": compile_s,
        "warm_s": total - compile_s,
    }


# --------------------------------------------------------------------------------------
# Isolation: run a numpy baseline in a child process with a time limit
# --------------------------------------------------------------------------------------

ISOLATED = {
    "scipy_simplex_minimize": scipy_simplex_minimize,
    "cvxpy_clarabel": lambda E, a, p0, **kw: cvxpy_nash(E, a, p0, solver="CLARABEL", **kw),
    "cvxpy_scs": lambda E, a, p0, **kw: cvxpy_nash(E, a, p0, solver="SCS", **kw),
}


def run_isolated(
    name: str,
    E: np.ndarray,
    alpha: np.ndarray,
    p0: np.ndarray,
    *,
    tol: float,
    max_steps: int,
    time_limit: float,
) -> dict[str, Any]:
    """Run `ISOLATED[name]` in a child process, killed after `time_limit` seconds (plus the
    child's import time). Returns the baseline's dict, or one with `error="timeout"`."""
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.npz"), os.path.join(d, "out.npz")
        np.savez(inp, E=E, alpha=alpha, p0=p0)
        cfg = {"tol": tol, "max_steps": max_steps}
        if name.startswith("cvxpy"):
            cfg["time_limit"] = time_limit
        cmd = [sys.executable, __file__, "--worker", name, inp, out, json.dumps(cfg)]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=time_limit + 15, env=env
            )
        except subprocess.TimeoutExpired:
            return {
                "p": p0,
                "claimed": False,
                "evals": -1,
                "error": "timeout",
                "warm_s": None,
            }
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["crashed"]
            return {"p": p0, "claimed": False, "evals": -1, "error": tail[0][:200]}
        with np.load(out) as f:
            res = json.loads(str(f["meta"]))
            res["p"] = f["p"]
        res.setdefault("wall_s", wall)
        if res.get("warm_s") is not None and res["warm_s"] + res.get("compile_s", 0) > time_limit:
            res["error"] = res.get("error") or "timeout"
            res["claimed"] = False
        return res


def _worker(name: str, inp: str, out: str, cfg: str) -> None:
    kw = json.loads(cfg)
    with np.load(inp) as f:
        E, alpha, p0 = f["E"], f["alpha"], f["p0"]
    t0 = time.perf_counter()
    res = ISOLATED[name](E, alpha, p0, **kw)
    res.setdefault("warm_s", time.perf_counter() - t0)
    res.setdefault("compile_s", 0.0)
    p = res.pop("p")
    np.savez(out, p=p, meta=json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        _worker(*sys.argv[2:])
    else:
        print(__doc__)
