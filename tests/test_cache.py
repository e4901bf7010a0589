"""Fast start: the compiled kernels behind the public entry points carry no host callback
(JAX never writes a program with one to its persistent compilation cache, so it would
recompile in every process), while every check still fires: a concrete bad input is a
`ValueError` before `jit`, a traced one (the user's own `jit`) an `eqx.error_if`, and
`throw=True` still raises."""

import json
import os
import re
import subprocess
import sys

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curax import _fixed_point, _jit, _maps, _nash, _sampling, _stability, _stable_point


def _callbacks(jitted, *args, **kwargs) -> list[str]:
    # `eqx.error_if` and `jax.debug.callback` lower to a custom call to a Python callback.
    text = jitted.lower(*args, **kwargs).as_text()
    return re.findall(r"custom_call @\w*callback\w*", text)


def _problems():
    x = curax.grid_1d(-3.0, 3.0, 41)
    r = jnp.stack([curax.quadratic_reward(x, -1.0), curax.quadratic_reward(x, 1.0)])
    w = jnp.array([0.3, 0.7])
    ref = jnp.ones(41) / 41
    return {
        "inf": curax.CurationProblem(r, w),
        "k3": curax.CurationProblem(r, w, k=3),
        "mixed": curax.CurationProblem(r, w, k=[None, 3]),
        "inf_ref": curax.CurationProblem(r, w, reference=ref, reference_weight=0.2),
        "k3_ref": curax.CurationProblem(r, w, k=3, reference=ref, reference_weight=0.2),
    }


def test_concrete_problem_records_checked_spread():
    probs = _problems()
    assert all(pr.spread_checked for pr in probs.values())
    # An explicit node count that does not cover the spread keeps the run-time check.
    short = curax.CurationProblem(jnp.array([[0.0, 10.0, 40.0]]), k=3, quadrature_nodes=40)
    assert not short.spread_checked
    assert _callbacks(_maps._curate, jnp.ones(3) / 3, short)

    @jax.jit
    def traced(scale):
        pr = curax.CurationProblem(scale * jnp.array([[0.0, 1.0, 2.0]]), k=3)
        assert not pr.spread_checked
        return curax.curate(jnp.ones(3) / 3, pr)

    traced(1.0)


@pytest.mark.parametrize("name", ["inf", "k3", "mixed", "k3_ref"])
def test_map_kernels_have_no_host_callback(name):
    pr = _problems()[name]
    p = pr.uniform()
    for kernel in (_maps._curate, _maps._growth, _maps._potential, _maps._fw_gap):
        assert _callbacks(kernel, p, pr) == [], kernel
    assert _callbacks(_maps._trajectory, p, pr, 3) == []
    fn = curax.CurationMap()
    assert _callbacks(_stability._stability, p, pr, fn, 1e-10, 1e-9, 8) == []


def test_solver_kernels_have_no_host_callback():
    probs = _problems()
    pr = probs["k3"]
    for solver in (curax.SQUAREM(rtol=1e-8, atol=1e-8), curax.ActiveSetNewton()):
        # What `curax.fixed_point(curax.curate, ...)` runs after validating `y0`.
        args = (curax.curate, solver, pr.uniform(), pr, None)
        kw = dict(
            has_aux=False,
            max_steps=8,
            adjoint=_fixed_point.DEFAULT_ADJOINT,
            gap_tol=None,
            tags=frozenset(),
        )
        assert _callbacks(_fixed_point._fixed_point, *args, **kw) == [], solver
    for name in ("inf", "k3", "inf_ref", "k3_ref"):
        problem = probs[name]
        method = curax.stable_point_method(problem)
        kw = dict(method=method, tol=1e-10, max_steps=4, grid_shape=None)
        assert _callbacks(_stable_point._stable_point, problem, problem.uniform(), **kw) == [], (
            method
        )
    bp = curax.BargainingProblem.from_curation(probs["inf"])
    kw = dict(parametrisation="square", max_steps=4, tol=None)
    assert _callbacks(_nash._nash_optimize, bp, None, **kw) == []
    assert _callbacks(_nash._mixing_fixed_point, probs["inf_ref"], tol=None, max_steps=4) == []


def test_checks_still_fire_when_traced():
    probs = _problems()
    pr = probs["inf"]
    bad = jnp.ones(41)  # sums to 41
    solver = curax.PlainIteration(rtol=1e-6, atol=1e-6)

    @eqx.filter_jit
    def solve(y0):
        return curax.fixed_point(curax.curate, solver, y0, pr, max_steps=4, throw=False).value

    with pytest.raises(Exception, match="`y0` must sum to 1"):
        solve(bad)

    @eqx.filter_jit
    def report(p):
        return curax.stability(p, pr, krylov_dim=4).radius

    with pytest.raises(Exception, match="`p` must sum to 1"):
        report(bad)

    # A traced reference weight of 0 reaches `mixing_fixed_point` and is refused at run time;
    # concrete, it is a ValueError before anything compiles.
    ref = jnp.ones(41) / 41

    @eqx.filter_jit
    def mixing(rw):
        problem = curax.CurationProblem(pr.rewards, pr.weights, reference=ref, reference_weight=rw)
        return curax.mixing_fixed_point(problem, max_steps=4, throw=False).value

    with pytest.raises(Exception, match="reference_weight > 0"):
        mixing(0.0)
    zero = curax.CurationProblem(pr.rewards, pr.weights, reference=ref, reference_weight=0.0)
    with pytest.raises(ValueError, match="reference_weight > 0"):
        curax.mixing_fixed_point(zero)

    # nash_solution's disagreement point: concrete -> ValueError, traced -> error_if.
    e = jnp.exp(pr.rewards - jnp.max(pr.rewards, axis=1, keepdims=True))
    with pytest.raises(ValueError, match="disagreement point 0"):
        curax.nash_solution(curax.BargainingProblem(e, pr.weights, disagreement=0.1))

    @eqx.filter_jit
    def nash(d):
        return curax.nash_solution(curax.BargainingProblem(e, pr.weights, disagreement=d)).value

    with pytest.raises(Exception, match="disagreement point 0"):
        nash(jnp.array(0.1))
    with pytest.raises(ValueError, match="non-negative utilities"):
        curax.nash_solution(curax.BargainingProblem(e - 0.5, pr.weights))


def test_throw_still_raises():
    pr = _problems()["inf"]
    solver = curax.PlainIteration(rtol=1e-14, atol=1e-14)
    # Concrete failure: raised after the jit, with the solver's message.
    with pytest.raises(Exception, match="maximum number of steps"):
        curax.fixed_point(curax.curate, solver, pr.uniform(), pr, max_steps=2)
    sol = curax.fixed_point(curax.curate, solver, pr.uniform(), pr, max_steps=2, throw=False)
    assert sol.result == curax.RESULTS.nonlinear_max_steps_reached
    # Traced (inside the user's jit): the same error at run time.
    with pytest.raises(Exception, match="maximum number of steps"):
        eqx.filter_jit(lambda p: curax.fixed_point(curax.curate, solver, p, pr, max_steps=2))(
            pr.uniform()
        )
    # A certified solve returns normally.
    ok = curax.nash_solution(pr)
    assert ok.result == curax.RESULTS.successful
    assert float(ok.stats["fw_gap"]) <= 1e-10
    np.testing.assert_allclose(float(jnp.sum(ok.value)), 1.0, rtol=0, atol=1e-12)


def test_sampling_kernels_have_no_host_callback_and_check_traced_p():
    pr = _problems()["k3"]
    key = jax.random.key(0)
    assert _callbacks(_sampling._sample_round, key, pr.uniform(), pr, 10) == []
    assert _callbacks(_sampling._simulate_histogram, key, pr, 2, 10, pr.uniform()) == []

    @eqx.filter_jit
    def draw(p):
        return curax.sample_round(key, p, pr, 10)

    with pytest.raises(Exception, match="`p` must sum to 1"):
        draw(jnp.ones(41))


def test_compiler_options_probed_and_refusable(monkeypatch):
    # The option the library compiles with is known to this XLA; an unknown one (a future XLA
    # that dropped it) or the opt-out gives XLA's defaults, decided before any user program.
    try:
        assert _jit.compiler_options() == _jit._OPTIONS
        monkeypatch.setattr(_jit, "_OPTIONS", {"xla_cpu_no_such_option": True})
        _jit.compiler_options.cache_clear()
        assert _jit.compiler_options() == {}
        monkeypatch.undo()
        monkeypatch.setenv("CURAX_XLA_DEFAULT_OPTIONS", "1")
        _jit.compiler_options.cache_clear()
        assert _jit.compiler_options() == {}
    finally:
        monkeypatch.undo()
        _jit.compiler_options.cache_clear()
    assert _jit.compiler_options() == _jit._OPTIONS
    # Only calls without a finite-K problem among their arguments get them (the quadrature's
    # code is faster with XLA's defaults); the problem may sit inside another pytree.
    probs = _problems()
    assert not _jit._finite_k(((probs["inf"], probs["inf_ref"]), {"tol": 1e-9}))
    assert _jit._finite_k(((probs["inf"],), {"args": [probs["k3_ref"]]}))
    assert _jit._finite_k(probs["mixed"])
    # `fixed_point`: a curation map gets them, a user's own map (maybe run-time bound) not.
    jitted = _fixed_point._fixed_point
    assert jitted._get((curax.curate, None, None, probs["inf"]), {}) is jitted._fast
    assert jitted._get((curax.curate, None, None, probs["k3"]), {}) is jitted._plain
    assert jitted._get((lambda y, _: y, None, None, None), {}) is jitted._plain


def _results_to_compare() -> dict:
    x, inf = curax.two_basin_problem(n=41, separation=2.0, q=0.3)
    _, k3 = curax.two_basin_problem(n=41, separation=2.0, q=0.3, k=3)
    return {
        "nash": curax.stable_point(inf).value.tolist(),
        "curate_k3": curax.curate(k3.uniform(), k3).tolist(),
        "traced": jax.jit(curax.curate)(inf.uniform(), inf).tolist(),
    }


@pytest.mark.study  # every default test already checks results compiled with the options
def test_compiler_options_change_no_result():
    # curax's programs compiled with XLA's default options (another code generator) give the
    # same solution and map values, to rounding.

    assert _jit.compiler_options()  # this process: curax's options
    script = (
        "import json, jax; jax.config.update('jax_enable_x64', True); import curax; "
        "from tests.test_cache import _results_to_compare; "
        "print(json.dumps(_results_to_compare()))"
    )
    env = dict(os.environ, CURAX_XLA_DEFAULT_OPTIONS="1", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    defaults = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = _results_to_compare()
    for name in ours:
        np.testing.assert_allclose(ours[name], defaults[name], rtol=1e-12, atol=1e-15)
