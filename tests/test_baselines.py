"""The competitor wrappers of benchmarks/baselines.py give correct answers on tiny problems
(checked against curax's certified Nash solution and against each other), so the benchmark
suite compares like with like."""

import os
import sys

import curax
import jax
import jax.numpy as jnp
import numpy as np
import pytest


sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
baselines = pytest.importorskip("baselines")
pytest.importorskip("cvxpy")
pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def nash():
    _, problem = curax.two_basin_problem(n=60, separation=3.0, q=0.3, curvature=1.0)
    s = np.asarray(problem.scaled_rewards)
    E = np.exp(s - s.max(axis=1, keepdims=True))
    sol = curax.nash_solution(problem, grid_shape=(60,))
    return problem, E, np.asarray(problem.weights), float(sol.stats["objective"])


def _phi_gap(p, problem):
    p = jnp.asarray(np.clip(np.asarray(p), 0, None))
    p = p / p.sum()
    return float(curax.potential(p, problem)), float(curax.fw_gap(p, problem))


@pytest.mark.parametrize("solver", ["CLARABEL", "SCS"])
def test_cvxpy_matches_certified_nash(nash, solver):
    problem, E, alpha, phi_star = nash
    res = baselines.cvxpy_nash(
        E, alpha, np.full(60, 1 / 60), solver=solver, tol=1e-9, max_steps=5000
    )
    assert res["claimed"]
    phi, gap = _phi_gap(res["p"], problem)
    # Phi* - Phi <= FW gap (concavity); both solvers get within 1e-6 of the optimum.
    assert phi <= phi_star + 1e-12
    assert phi_star - phi <= max(gap, 0.0) + 1e-12
    assert gap < 1e-4


def test_slsqp_isolated_matches_certified_nash(nash):
    problem, E, alpha, phi_star = nash
    res = baselines.run_isolated(
        "scipy_simplex_minimize",
        E,
        alpha,
        np.full(60, 1 / 60),
        tol=1e-12,
        max_steps=500,
        time_limit=60,
    )
    assert res["error"] is None and res["claimed"]
    phi, _ = _phi_gap(res["p"], problem)
    np.testing.assert_allclose(phi, phi_star, atol=1e-6)


def test_isolated_crash_is_recorded(nash):
    _, E, alpha, _ = nash
    # A malformed start (wrong length) makes the child fail; the parent records it.
    res = baselines.run_isolated(
        "cvxpy_clarabel", E, alpha, np.ones(3), tol=1e-8, max_steps=10, time_limit=30
    )
    assert not res["claimed"] and res["error"]


def test_fixed_point_baselines_agree_with_real_data():
    # With real data the map is a contraction with a unique full-support fixed point: every
    # generic fixed-point solver must find the same one.
    _, problem = curax.two_basin_problem(n=50, separation=3.0, q=0.3, reference_weight=0.3)
    p0 = problem.uniform()
    ref = jax.jit(lambda pr, p: baselines.optx_iteration(pr, p, tol=1e-13, max_steps=5000))(
        problem, p0
    )
    assert bool(ref["claimed"])
    p_ref = np.asarray(ref["p"])
    np.testing.assert_allclose(curax.curate(jnp.asarray(p_ref), problem), p_ref, atol=1e-12)
    and_ = baselines.jaxopt_anderson(problem, p0, tol=1e-12, max_steps=5000)
    assert bool(and_["claimed"])
    np.testing.assert_allclose(np.asarray(and_["p"]), p_ref, atol=1e-9)
    s = np.asarray(problem.scaled_rewards)
    E = np.exp(s - s.max(axis=1, keepdims=True))
    f = baselines.numpy_map(E, np.asarray(problem.weights), np.asarray(problem.reference), 0.3)
    sp = baselines.scipy_fixed_point(f, np.asarray(p0), tol=1e-12, max_steps=500)
    assert sp["claimed"], sp["error"]
    np.testing.assert_allclose(sp["p"], p_ref, atol=1e-9)


def test_scipy_fixed_point_failure_is_recorded():
    _, problem = curax.two_basin_problem(n=50, separation=3.0, q=0.3)
    s = np.asarray(problem.scaled_rewards)
    E = np.exp(s - s.max(axis=1, keepdims=True))
    f = baselines.numpy_map(E, np.asarray(problem.weights))
    res = baselines.scipy_fixed_point(f, np.full(50, 1 / 50), tol=1e-14, max_steps=3)
    assert not res["claimed"] and "converge" in res["error"]
