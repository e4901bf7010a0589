"""curax's GENERAL fixed-point solvers on maps that are not curation maps (plus two curation
problems of the main suite), side by side with optimistix, jaxopt and scipy in one run.

    python benchmarks/bench_general.py [--quick] [--only REGEX] [--update-table]
        [--compare OLD.json] [--out DIR]

Problems (`general_problems.py`) each carry a TRUE fixed point `y*`, computed independently
of every benchmarked solver, so "error" is the true error

    err(y) = max |y - y*| / max |y*|        (relative max-norm; TARGET = 1e-8)

and not a residual. Every solver runs twice per problem, both compiled ahead of time
(compile time recorded separately, warm time = fastest of `--repeats` calls,
`block_until_ready`):

1. **Reach run**: the solver's own `init`/`step` (jaxopt: `init_state`/`update`; scipy: its
   `fixed_point` with a wrapper that stops it) in a loop that stops as soon as `err <= TARGET`
   (the error is checked in the loop, the same cost for every JAX solver), or at the
   problem's map-evaluation budget. It ignores the solver's own stopping rule: it measures
   how many map evaluations (and how much time) the *method* needs to reach the target.
   Ratios are against `optx.FixedPointIteration` (plain iteration) in the same run.
2. **Claim run**: the solver as a user calls it, with the same tolerance for all
   (`rtol = TOL`, `atol = TOL * max|y*|`, optimistix's scaled max-norm; jaxopt's `tol` is
   on the l2 residual and gets `TOL * max|y*|`; scipy's `xtol = TOL` is relative), through
   `curax.fixed_point` for curax's solvers (falling back to `optx.fixed_point` when
   `curax.fixed_point` refuses the map, which is recorded), `optx.fixed_point`,
   `jaxopt.AndersonAcceleration.run` and `scipy.optimize.fixed_point(method="del2")`.
   Recorded: the solver's claim (successful or not), the true error of its answer, its map
   evaluations and its time. Status: `correct` (claimed, err <= TARGET), `imprecise`
   (claimed, TARGET < err <= SLACK * TARGET), **`WRONG SUCCESS`** (claimed, err > SLACK *
   TARGET), `failed` (not claimed). A time is reported only for `correct`.

Map evaluations: curax's solvers report `num_map_evals` (a Jacobian-vector product counts as
one), optimistix's plain iteration one per step, jaxopt its `num_fun_eval`, scipy a Python
counter. Cross-check (`counted`): the claim run's compile call evaluates the map through a
`jax.debug.callback` counter (switched off by a traced flag in the timed calls), which counts
primal evaluations only (JVPs of a linearised map are not seen).

Writes `benchmarks/results/general.{json,md}` (git-ignored); `--update-table` also writes
`benchmarks/RESULTS_general.md`. `--quick`: smaller problems, one repeat (a smoke run).
CPU, float64 (x64 enabled).
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import json
import logging
import pathlib
import platform
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import curax  # noqa: E402
import equinox as eqx  # noqa: E402
import general_problems as GP  # noqa: E402
import optimistix as optx  # noqa: E402
from curax._output import write_file_atomic  # noqa: E402


jax.config.update("jax_enable_x64", True)
logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", category=DeprecationWarning)

TARGET = 1e-8  # true relative max-norm error to reach
TOL = 1e-8  # every solver's own tolerance in the claim run
SLACK = 10.0  # claimed success with err > SLACK * TARGET is a wrong success
PLAIN = "optx FixedPointIteration"
# The reach run gives up when the true error has not improved by 0.1% for this many steps
# (e.g. an iterate stuck on the wrong set); 500 steps of a 0.99-contraction shrink it by 150x.
STALL_STEPS = 500
OTHER_FP = 1e-4  # residual / err below this: the answer is another fixed point


# --------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Spec:
    name: str
    kind: str  # "optx" (an optimistix fixed-point solver), "jaxopt", "scipy"
    make: Callable[[float, float], Any] | None = None  # (rtol, atol) -> solver
    curax: bool = False
    evals_per_step: int = 1  # for the claim run's max_steps
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # jaxopt keywords
    default: bool = True  # in the default set (others: select with --solvers)


def _curax(name: str, evals_per_step: int = 1, **kw: Any) -> Spec:
    cls = getattr(curax, name)
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    label = f"{name}({args})" if kw else name
    return Spec(
        "curax " + label,
        "optx",
        lambda rtol, atol: cls(rtol=rtol, atol=atol, **kw),
        curax=True,
        evals_per_step=evals_per_step,
    )


def solver_specs() -> list[Spec]:
    return [
        Spec(PLAIN, "optx", lambda rtol, atol: optx.FixedPointIteration(rtol=rtol, atol=atol)),
        _curax("PlainIteration"),
        _curax("DampedIteration", damp=0.5),
        _curax("SQUAREM", evals_per_step=3),
        _curax("Anderson"),
        _curax("NewtonKrylov", evals_per_step=10),
        Spec("jaxopt Anderson", "jaxopt"),
        # jaxopt's ridge (1e-5) is absolute: it dominates the Gram matrix once residuals are
        # small. Opt-in, as a stronger competitor than the defaults a user gets.
        Spec("jaxopt Anderson(ridge=1e-12)", "jaxopt", options={"ridge": 1e-12}, default=False),
        Spec("scipy fixed_point (del2)", "scipy", evals_per_step=2),
    ]


def configure(solver: Any, problem: GP.Problem) -> Any:
    """On a curation problem, state the simplex constraint where the solver has one (as
    `curax.fixed_point` does for curation maps); everything else runs unconstrained."""
    if problem.curation is not None and hasattr(curax, "Simplex"):
        if hasattr(solver, "constraint"):
            return eqx.tree_at(
                lambda s: s.constraint, solver, curax.Simplex(), is_leaf=lambda x: x is None
            )
    return solver


def _jaxopt_anderson(fn: Callable, tol: float, maxiter: int, **options: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import jaxopt

    options = {"history_size": 5, **options}
    return jaxopt.AndersonAcceleration(
        fixed_point_fun=fn, maxiter=maxiter, tol=tol, implicit_diff=False, **options
    )


# --------------------------------------------------------------------------------------
# Map-evaluation counter that works under jit
# --------------------------------------------------------------------------------------

_COUNT = [0]


def _tick() -> None:
    _COUNT[0] += 1


class Counted(eqx.Module):
    """`fn` called as `fn(y, (args, flag))`: counts evaluations on the host (through
    `jax.debug.callback`) when the traced `flag` is true."""

    fn: Callable = eqx.field(static=True)

    def __call__(self, y, args_flag):
        args, flag = args_flag
        jax.lax.cond(flag, lambda: jax.debug.callback(_tick), lambda: None)
        return self.fn(y, args)


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


def _warm(call: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(call())
        best = min(best, time.perf_counter() - t0)
    return out, best


def _evals_of(state: Any, steps: jax.Array) -> jax.Array:
    n = getattr(state, "num_map_evals", None)
    return steps if n is None else n


def reach_optx(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    atol = TOL * problem.atol_scale
    solver = configure(spec.make(TOL, atol), problem)
    fn = lambda y, a: (problem.fn(y, a), None)  # noqa: E731
    f_struct = jax.ShapeDtypeStruct(problem.y0.shape, problem.y0.dtype)
    budget = problem.max_evals

    def run(y0, args, truth):
        state = solver.init(fn, y0, args, {}, f_struct, None, frozenset())

        def cond(c):
            y, state, k, err, evals, best, k_best = c
            # The step cap also bounds a solver whose evaluation count stops growing.
            going = (err > TARGET) & jnp.isfinite(err) & (evals < budget) & (k < budget)
            return going & (k - k_best < STALL_STEPS)

        def body(c):
            y, state, k, err, evals, best, k_best = c
            y, state, _ = solver.step(fn, y, args, {}, state, frozenset())
            k = k + 1
            err = GP.rel_error_jax(y, truth)
            better = err < 0.999 * best
            best = jnp.where(better, err, best)
            k_best = jnp.where(better, k, k_best)
            return y, state, k, err, _evals_of(state, k), best, k_best

        err0 = GP.rel_error_jax(y0, truth)
        zero = jnp.array(0)
        init = (y0, state, zero, err0, _evals_of(state, zero), err0, zero)
        y, state, k, err, evals, _, _ = jax.lax.while_loop(cond, body, init)
        return y, k, err, evals

    return _reach_compiled(run, problem, repeats)


def reach_jaxopt(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    solver = _jaxopt_anderson(
        problem.fn, TOL * problem.atol_scale, problem.max_evals, **spec.options
    )
    budget = problem.max_evals

    def run(y0, args, truth):
        state = solver.init_state(y0, args)

        def cond(c):
            y, state, err = c
            return (err > TARGET) & jnp.isfinite(err) & (state.num_fun_eval < budget)

        def body(c):
            y, state, err = c
            y, state = solver.update(y, state, args)
            return y, state, GP.rel_error_jax(y, truth)

        y, state, err = jax.lax.while_loop(cond, body, (y0, state, GP.rel_error_jax(y0, truth)))
        return y, state.iter_num, err, state.num_fun_eval

    return _reach_compiled(run, problem, repeats)


def _reach_compiled(run: Callable, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    truth = jnp.asarray(problem.truth)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(problem.y0, problem.args, truth).compile()
    compile_s = time.perf_counter() - t0
    (y, k, err, evals), warm = _warm(lambda: compiled(problem.y0, problem.args, truth), repeats)
    err = GP.rel_error(y, problem.truth)  # recomputed on the host
    reached = err <= TARGET
    return {
        "reached": bool(reached),
        "evals": int(evals),
        "steps": int(k),
        "err": err,
        "seconds": warm if reached else None,
        "compile_s": compile_s,
    }


SCIPY_MAX_EVALS = 5000  # a Python loop (~1 ms per call on a loaded machine): capped


def _scipy_budget(problem: GP.Problem) -> int:
    return min(problem.max_evals, SCIPY_MAX_EVALS)


class _Reached(Exception):
    pass


def _numpy_map(problem: GP.Problem) -> Callable[[np.ndarray], np.ndarray]:
    jf = jax.jit(problem.fn)
    f = lambda y: np.asarray(jf(jnp.asarray(y), problem.args))  # noqa: E731
    f(np.asarray(problem.y0))  # compile
    return f


def reach_scipy(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    from scipy import optimize

    f = _numpy_map(problem)
    truth, scale = problem.truth, np.max(np.abs(problem.truth))
    best = None
    for _ in range(repeats):
        count = [0]
        hit: list[Any] = [None, np.inf]

        def counted(y):
            e = np.max(np.abs(y - truth)) / scale if np.all(np.isfinite(y)) else np.inf
            hit[1] = min(hit[1], e)
            if not np.isfinite(e):
                raise FloatingPointError
            if e <= TARGET:
                hit[0] = count[0]
                raise _Reached
            count[0] += 1
            return f(y)

        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                optimize.fixed_point(
                    counted,
                    np.asarray(problem.y0),
                    xtol=1e-300,
                    maxiter=_scipy_budget(problem) // 2,
                    method="del2",
                )
        except (_Reached, RuntimeError, FloatingPointError, ValueError):
            pass
        seconds = time.perf_counter() - t0
        out = {
            "reached": hit[0] is not None,
            "evals": hit[0] if hit[0] is not None else count[0],
            "steps": None,
            "err": hit[1],
            "seconds": seconds if hit[0] is not None else None,
            "compile_s": 0.0,
        }
        if best is None or (out["seconds"] or np.inf) < (best["seconds"] or np.inf):
            best = out
    return best


def claim_optx(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    atol = TOL * problem.atol_scale
    solver = spec.make(TOL, atol)
    max_steps = max(problem.max_evals // spec.evals_per_step, 1)
    out: dict[str, Any] = {"via": "optx.fixed_point"}
    if spec.curax:
        # As a user would: curax.fixed_point, with the curation map itself for curation maps.
        # General maps are counted (the flag is traced: one compilation for both calls).
        if problem.curation is not None:
            fn, args_on, args_off = curax.curate, problem.curation, problem.curation
        else:
            fn = Counted(problem.fn)
            args_on, args_off = (problem.args, jnp.array(True)), (problem.args, jnp.array(False))

        def call(args):
            return curax.fixed_point(fn, solver, problem.y0, args, max_steps=max_steps, throw=False)

        try:
            _COUNT[0] = 0
            t0 = time.perf_counter()
            sol = jax.block_until_ready(call(args_on))
            first = time.perf_counter() - t0
            jax.effects_barrier()
            counted = _COUNT[0] if problem.curation is None else None
        except Exception as e:  # a refusal (ValueError) or a runtime error
            out["curax_fixed_point"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        else:
            sol, warm = _warm(lambda: call(args_off), repeats)
            return {
                **out,
                "via": "curax.fixed_point",
                "claimed": bool(sol.result == curax.RESULTS.successful),
                "result": _result_name(sol.result),
                "err": GP.rel_error(sol.value, problem.truth),
                "_y": sol.value,
                "evals": int(sol.stats.get("num_map_evals", -1)),
                "counted": counted,
                "seconds": warm,
                "compile_s": first - warm,
            }
        # Refused: the same solver through optimistix, as the issue's user would next try.
        out["via"] = "optx.fixed_point (curax.fixed_point refused)"

    counted_fn = Counted(problem.fn)

    def run(y0, args, flag):
        sol = optx.fixed_point(
            counted_fn, solver, y0, (args, flag), max_steps=max_steps, throw=False
        )
        evals = sol.stats.get("num_map_evals", sol.stats["num_steps"])
        return sol.value, sol.result == optx.RESULTS.successful, sol.result._value, evals

    return {**out, **_claim_compiled(run, problem, repeats, optx.RESULTS)}


def claim_jaxopt(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    tol = TOL * problem.atol_scale
    solver = _jaxopt_anderson(Counted(problem.fn), tol, problem.max_evals, **spec.options)

    def run(y0, args, flag):
        y, state = solver.run(y0, (args, flag))
        return y, state.error <= tol, jnp.array(-1), state.num_fun_eval

    return {"via": "AndersonAcceleration.run", **_claim_compiled(run, problem, repeats, None)}


def _claim_compiled(run: Callable, problem: GP.Problem, repeats: int, results: Any) -> dict:
    on, off = jnp.array(True), jnp.array(False)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(problem.y0, problem.args, on).compile()
    compile_s = time.perf_counter() - t0
    _COUNT[0] = 0
    jax.block_until_ready(compiled(problem.y0, problem.args, on))
    jax.effects_barrier()
    counted = _COUNT[0]
    (y, claimed, code, evals), warm = _warm(
        lambda: compiled(problem.y0, problem.args, off), repeats
    )
    return {
        "claimed": bool(claimed),
        "result": _result_name(code, results) if results is not None else None,
        "err": GP.rel_error(y, problem.truth),
        "_y": y,
        "evals": int(evals),
        "counted": counted,
        "seconds": warm,
        "compile_s": compile_s,
    }


def claim_scipy(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    from scipy import optimize

    f = _numpy_map(problem)
    best = None
    for _ in range(repeats):
        count = [0]
        last = [np.asarray(problem.y0)]

        def counted(y):
            if not np.all(np.isfinite(y)):  # scipy would iterate NaN until maxiter
                raise FloatingPointError(f"non-finite iterate after {count[0]} evaluations")
            count[0] += 1
            last[0] = y
            return f(y)

        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                y = optimize.fixed_point(
                    counted,
                    np.asarray(problem.y0),
                    xtol=TOL,
                    maxiter=_scipy_budget(problem) // 2,
                    method="del2",
                )
            claimed, result = True, "converged"
        except (RuntimeError, FloatingPointError, ValueError) as e:
            y, claimed, result = last[0], False, str(e).splitlines()[0][:80]
        seconds = time.perf_counter() - t0
        out = {
            "via": "scipy.optimize.fixed_point",
            "claimed": claimed,
            "result": result,
            "err": GP.rel_error(y, problem.truth),
            "_y": y,
            "evals": count[0],
            "counted": count[0],
            "seconds": seconds,
            "compile_s": 0.0,
        }
        if best is None or out["seconds"] < best["seconds"]:
            best = out
    return best


def _result_name(code: Any, results: Any = None) -> str:
    if results is None:
        results = curax.RESULTS
    code = int(code._value) if hasattr(code, "_value") else int(code)
    names = {int(v._value): k for k, v in results._name_to_item.items()}
    return names.get(code, str(code))


def status(claim: dict[str, Any]) -> str:
    if "exception" in claim:
        return "error"
    err = claim["err"]
    if claim["claimed"]:
        if err <= TARGET:
            return "correct"
        if err <= SLACK * TARGET:
            return "imprecise"
        # A genuine fixed point, but not the one the problem asks for (EM on a face): the
        # residual is far below what any contraction rate here (<= 0.99) allows at this
        # distance from y* (err <= residual / (1 - rate)).
        if claim.get("residual", np.inf) <= OTHER_FP * err:
            return "other fixed point"
        return "WRONG SUCCESS"
    return "failed"


_MAPS: dict[str, Callable] = {}


def residual(problem: GP.Problem, y: Any) -> float:
    """`max |f(y) - y| / max |y*|` at a solver's answer."""
    if problem.name not in _MAPS:
        _MAPS[problem.name] = jax.jit(problem.fn)
    y = jnp.asarray(np.asarray(y, np.float64))
    if not bool(jnp.all(jnp.isfinite(y))):
        return float("inf")
    fy = np.asarray(_MAPS[problem.name](y, problem.args))
    return float(np.max(np.abs(fy - np.asarray(y))) / np.max(np.abs(problem.truth)))


RUNNERS = {
    "optx": (reach_optx, claim_optx),
    "jaxopt": (reach_jaxopt, claim_jaxopt),
    "scipy": (reach_scipy, claim_scipy),
}


def run_solver(spec: Spec, problem: GP.Problem, repeats: int) -> dict[str, Any]:
    reach_fn, claim_fn = RUNNERS[spec.kind]
    rec: dict[str, Any] = {"solver": spec.name, "curax": spec.curax}
    for key, f in (("reach", reach_fn), ("claim", claim_fn)):
        try:
            rec[key] = f(spec, problem, repeats)
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rec[key] = {"exception": msg, "reached": False, "claimed": False}
            traceback.print_exc(limit=3)
    y = rec["claim"].pop("_y", None)
    if y is not None:
        rec["claim"]["residual"] = residual(problem, y)
    rec["status"] = status(rec["claim"])
    if rec["claim"].get("exception") is None and rec["status"] != "correct":
        rec["claim"]["seconds_unreported"] = rec["claim"].pop("seconds", None)
    return rec


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def add_ratios(records: list[dict[str, Any]]) -> None:
    plain = next((r for r in records if r["solver"] == PLAIN), None)
    base = plain["reach"] if plain and plain["reach"].get("reached") else None
    for r in records:
        reach = r["reach"]
        if base and reach.get("reached"):
            reach["evals_vs_plain"] = reach["evals"] / base["evals"]
            reach["time_vs_plain"] = reach["seconds"] / base["seconds"]


def verdict(problem: dict[str, Any]) -> dict[str, Any]:
    """The issue's target on one problem: curax's best general solver (fewest evaluations to
    the target) uses <= 1/5 of plain iteration's evaluations and no more than jaxopt's
    Anderson; and no solver claims a wrong success."""
    recs = problem["records"]
    by = {r["solver"]: r for r in recs}
    cx = [r for r in recs if r["curax"] and r["reach"].get("reached")]
    best = min(cx, key=lambda r: r["reach"]["evals"]) if cx else None
    plain = by.get(PLAIN, {}).get("reach", {})
    jx = by.get("jaxopt Anderson", {}).get("reach", {})
    out = {
        "best_curax": best["solver"] if best else None,
        "best_curax_evals": best["reach"]["evals"] if best else None,
        "plain_evals": plain.get("evals") if plain.get("reached") else None,
        "jaxopt_evals": jx.get("evals") if jx.get("reached") else None,
        "wrong_success": [r["solver"] for r in recs if r["status"] == "WRONG SUCCESS"],
        "wrong_success_curax": [
            r["solver"] for r in recs if r["status"] == "WRONG SUCCESS" and r["curax"]
        ],
        "other_fixed_point": [r["solver"] for r in recs if r["status"] == "other fixed point"],
    }
    e = out["best_curax_evals"]
    out["fifth_of_plain"] = (
        None if e is None or out["plain_evals"] is None else e <= out["plain_evals"] / 5
    )
    out["not_worse_than_jaxopt"] = (
        None if e is None else (True if out["jaxopt_evals"] is None else e <= out["jaxopt_evals"])
    )
    return out


def _f(x: Any, spec: str = ".1e") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and not np.isfinite(x):
        return "inf"
    return format(x, spec)


def _yn(x: Any) -> str:
    return "—" if x is None else ("yes" if x else "**no**")


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# General fixed-point solvers: measured results",
        "",
        "Written by `"
        + " ".join(["python benchmarks/bench_general.py", report.get("argv", "")]).strip()
        + "`"
        + f" ({report['date']}; {env['device']}, {env['cpus']} CPU cores, float64; the "
        "machine was shared and loaded: times are noisy, ratios are from the same run)"
        + (
            f"; the run took {report['total_s']:.0f} s wall, "
            f"{report.get('total_cpu_s', float('nan')):.0f} s CPU"
            if "total_s" in report
            else ""
        )
        + (f"; code at commit {report['commit']}" if report.get("commit") else "")
        + ".",
        "",
        f"Error = true relative max-norm error `max|y - y*| / max|y*|`; target {TARGET:g}. "
        f"**Reach**: map evaluations and warm time until the iterate's true error <= "
        f"{TARGET:g} (the solver's own stopping rule ignored), ratios against "
        f"`{PLAIN}` in the same run. **Claim**: the solver as a user calls it with "
        f"rtol = {TOL:g}, atol = {TOL:g} x max|y*| (jaxopt: l2 tol {TOL:g} x max|y*|; scipy: "
        f"xtol = {TOL:g}); status `correct` (claimed, err <= {TARGET:g}), `imprecise` "
        f"(claimed, err <= {SLACK:g} x {TARGET:g}), `WRONG SUCCESS` (claimed, err > "
        f"{SLACK:g} x {TARGET:g}) and `other fixed point` (the same, but its residual "
        f"`max|f(y) - y| / max|y*|` is below {OTHER_FP:g} x err, which no contraction rate "
        "<= 0.99 allows near y*: a genuine fixed point, not the one asked for), `failed` (not "
        "claimed). Time only for correct answers. "
        f"scipy's budget is capped at {SCIPY_MAX_EVALS} evaluations (a Python loop) and it is "
        "stopped at its first non-finite iterate. "
        "`counted`: primal map evaluations seen by a `jax.debug.callback` counter (JVPs not "
        "seen; through `curax.fixed_point` it includes the certificate's evaluation of the "
        "returned point; not counted for curation maps, which are passed as `curax.curate`).",
        "",
        "## Summary (the issue's target)",
        "",
        "| problem | n | plain evals | best curax general solver | its evals | <= 1/5 plain |"
        " jaxopt Anderson evals | <= jaxopt | wrong successes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["problems"]:
        v = p["verdict"]
        lines.append(
            f"| {p['name']} | {p['n']} | {_f(v['plain_evals'], 'd')} | "
            f"{v['best_curax'] or '— (none reached)'} | {_f(v['best_curax_evals'], 'd')} | "
            f"{_yn(v['fifth_of_plain'])} | {_f(v['jaxopt_evals'], 'd')} | "
            f"{_yn(v['not_worse_than_jaxopt'])} | "
            f"{', '.join(v['wrong_success']) or 'none'}"
            + (
                f" (other fixed point: {', '.join(v['other_fixed_point'])})"
                if v.get("other_fixed_point")
                else ""
            )
            + " |"
        )
    for p in report["problems"]:
        lines += [
            "",
            f"## {p['name']} (n = {p['n']})",
            "",
            f"Truth: {p['truth_method']}; its residual {p['truth_residual']:.1e}"
            + (
                f", error bound {p['truth_error_bound']:.1e}"
                if np.isfinite(p["truth_error_bound"])
                else ""
            )
            + (f". {p['note']}" if p["note"] else "")
            + f". Budget {p['max_evals']} map evaluations.",
            "",
            "| solver | reach: evals | x plain | time (s) | x plain | claim: via | result |"
            " err | residual | evals | counted | time (s) | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in p["records"]:
            re_, cl = r["reach"], r["claim"]
            if re_.get("exception"):
                reach_cells = f"error: {re_['exception'][:60]} | | | "
            elif re_["reached"]:
                reach_cells = (
                    f"{re_['evals']} | {_f(re_.get('evals_vs_plain'), '.2f')} | "
                    f"{_f(re_['seconds'], '.3f')} | {_f(re_.get('time_vs_plain'), '.2f')} "
                )
            else:
                reach_cells = f"not reached ({re_['evals']} evals, err {_f(re_['err'])}) | | | "
            if cl.get("exception"):
                claim_cells = f"{cl.get('via', '')} | error: {cl['exception'][:80]} | | | | | |"
            else:
                via = cl["via"]
                if cl.get("curax_fixed_point"):
                    via += f" [{cl['curax_fixed_point'][:70]}]"
                claim_cells = (
                    f"{via} | {cl['result'] or ''} "
                    f"({'claims success' if cl['claimed'] else 'no claim'})"
                    f" | {_f(cl['err'])} | {_f(cl.get('residual'))} | {cl['evals']} | "
                    f"{_f(cl.get('counted'), 'd')} | "
                    f"{_f(cl.get('seconds'), '.3f')}"
                )
            st = r["status"]
            st = f"**{st}**" if st in ("WRONG SUCCESS", "failed", "error") else st
            lines.append(f"| {r['solver']} | {reach_cells}| {claim_cells} | {st} |")
    return "\n".join(lines) + "\n"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Before/after table: evaluations to the target and claim status per problem x solver."""
    lines = [
        "| problem | solver | before: reach evals | before: status | after: reach evals |"
        " after: status |",
        "|---|---|---|---|---|---|",
    ]
    olds = {(p["name"], r["solver"]): r for p in old["problems"] for r in p["records"]}
    for p in new["problems"]:
        for r in p["records"]:
            o = olds.get((p["name"], r["solver"]))

            def cell(x):
                if x is None:
                    return "—", "—"
                re_ = x["reach"]
                ev = str(re_["evals"]) if re_.get("reached") else "not reached"
                return ev, f"{x['status']} (err {_f(x['claim'].get('err'))})"

            (oe, os_), (ne, ns) = cell(o), cell(r)
            lines.append(f"| {p['name']} | {r['solver']} | {oe} | {os_} | {ne} | {ns} |")
    return "\n".join(lines) + "\n"


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems, one repeat")
    ap.add_argument("--only", default=None, help="regex on problem names")
    ap.add_argument("--solvers", default=None, help="regex on solver names")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="general", help="output file stem")
    ap.add_argument("--update-table", action="store_true", help="write RESULTS_general.md")
    ap.add_argument("--compare", default=None, help="earlier JSON: print a before/after table")
    ap.add_argument(
        "--render",
        default=None,
        help="re-render the tables of earlier JSON files, comma-separated (no run)",
    )
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    out = pathlib.Path(args.out)
    if args.render:
        # Several runs (e.g. split by --only / --solvers) merged into one report.
        reports = [json.loads(pathlib.Path(f).read_text()) for f in args.render.split(",")]
        report = reports[0]
        for extra in reports[1:]:
            names = [p["name"] for p in report["problems"]]
            for p in extra["problems"]:
                if p["name"] not in names:
                    report["problems"].append(p)
                    continue
                # Same problem: records of the later run replace those of the same solver.
                recs = report["problems"][names.index(p["name"])]["records"]
                solvers = [r["solver"] for r in recs]
                for r in p["records"]:
                    if r["solver"] in solvers:
                        recs[solvers.index(r["solver"])] = r
                    else:
                        recs.append(r)
            report["argv"] = report.get("argv", "") + " (+ " + extra.get("argv", "") + ")"
        for p in report["problems"]:  # re-judged with the current rules
            for r in p["records"]:
                r["status"] = status(r["claim"])
            add_ratios(p["records"])
            p["verdict"] = verdict(p)
        return _write(report, args, out)

    t_start = time.perf_counter()
    problems = GP.build(quick=args.quick)
    if args.only:
        problems = [p for p in problems if re.search(args.only, p.name)]
    specs = solver_specs()
    if args.solvers:
        specs = [s for s in specs if re.search(args.solvers, s.name)]
    else:
        specs = [s for s in specs if s.default]
    print(f"problems built in {time.perf_counter() - t_start:.1f}s", flush=True)

    report: dict[str, Any] = {
        "quick": args.quick,
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "target": TARGET,
        "tol": TOL,
        "slack": SLACK,
        "environment": {
            "device": jax.devices()[0].device_kind,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "x64": bool(jax.config.jax_enable_x64),
        },
        "problems": [],
    }
    for problem in problems:
        recs = []
        for spec in specs:
            t0 = time.perf_counter()
            rec = run_solver(spec, problem, repeats)
            rec["wall_s"] = time.perf_counter() - t0
            recs.append(rec)
            re_, cl = rec["reach"], rec["claim"]
            print(
                f"{problem.name:40s} {spec.name:28s} reach "
                f"{re_['evals'] if re_.get('reached') else 'NO'} "
                f"| claim {cl.get('result', cl.get('exception'))} err {_f(cl.get('err'))} "
                f"-> {rec['status']}  [{rec['wall_s']:.1f}s]",
                flush=True,
            )
        add_ratios(recs)
        entry = {
            "name": problem.name,
            "n": problem.n,
            "truth_method": problem.truth_method,
            "truth_residual": problem.truth_residual,
            "truth_error_bound": problem.truth_error_bound,
            "max_evals": problem.max_evals,
            "note": problem.note,
            "records": recs,
        }
        entry["verdict"] = verdict(entry)
        report["problems"].append(entry)
        # Partial results survive an interrupted run.
        out.mkdir(parents=True, exist_ok=True)
        write_file_atomic(out / f"{args.name}.json", json.dumps(report, indent=1, default=str))
    report["total_s"] = time.perf_counter() - t_start
    report["total_cpu_s"] = time.process_time()

    return _write(report, args, out)


def _write(report: dict[str, Any], args: argparse.Namespace, out: pathlib.Path) -> dict:
    md = markdown(report)
    table = None
    if args.compare:
        old = json.loads(pathlib.Path(args.compare).read_text())
        table = compare(old, report)
        md += (
            "\n## Before / after\n\nBefore: `"
            + " ".join(["python benchmarks/bench_general.py", old.get("argv", "")]).strip()
            + f"` ({old.get('date', '?')}). Reach evaluations to err <= {TARGET:g} and the "
            "claim's status.\n\n" + table
        )
    out.mkdir(parents=True, exist_ok=True)
    inputs = [pathlib.Path(f).resolve() for f in (args.render or "").split(",") if f]
    if (out / f"{args.name}.json").resolve() not in inputs:  # never overwrite an input
        write_file_atomic(out / f"{args.name}.json", json.dumps(report, indent=1, default=str))
    write_file_atomic(out / f"{args.name}.md", md)
    if args.update_table:
        write_file_atomic(HERE / "RESULTS_general.md", md)
    print(md)
    if table is not None:
        write_file_atomic(out / f"{args.name}_compare.md", table)
    if "total_s" in report:
        cpu = report.get("total_cpu_s", float("nan"))
        print(f"total {report['total_s']:.0f}s wall, {cpu:.0f}s CPU (process)")
    return report


if __name__ == "__main__":
    main()
