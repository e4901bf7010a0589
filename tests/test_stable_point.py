"""`curax.stable_point`: every certificate is re-checked here by independent code (numpy
growth factors, exact multinomial sums over the atoms, a closed form, long iteration)."""

import itertools
import math

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from .helpers import default_cases


def _exp_rewards(problem):
    s = np.asarray(problem.scaled_rewards, np.float64)
    return np.exp(s - s.max(axis=1, keepdims=True))


def _numpy_growth_inf(p, problem):
    """K = infinity growth factor sum_i a_i w_i / E_p[w_i], in numpy."""
    w = _exp_rewards(problem)
    return (np.asarray(problem.weights) / (w @ np.asarray(p))) @ w


def _multinomial_growth(p, problem):
    """Exact finite-K growth factor at every point when `p` has few atoms: the K - 1 other
    candidates are a multiset of atoms, enumerated with their multinomial probabilities;
    H_i(x) = E[K w_i(x) / (w_i(x) + sum_j w_i(y_j))]. Independent of the Laplace quadrature."""
    p = np.asarray(p, np.float64)
    atoms = np.nonzero(p)[0]
    pa = p[atoms] / p[atoms].sum()
    w = _exp_rewards(problem)
    g = np.zeros(p.shape[0])
    for a_i, w_i, k in zip(np.asarray(problem.weights), w, problem.ks):
        if k is None:
            g += a_i * w_i / (w_i[atoms] @ pa)
            continue
        h = np.zeros(p.shape[0])
        for combo in itertools.combinations_with_replacement(range(len(atoms)), k - 1):
            counts = np.bincount(np.asarray(combo, int), minlength=len(atoms))
            log_prob = math.lgamma(k) - sum(math.lgamma(c + 1) for c in counts)
            log_prob += float(np.sum(counts * np.log(pa)))
            rest = float(counts @ w_i[atoms])
            h += math.exp(log_prob) * k * w_i / (w_i + rest)
        g += a_i * h
    return g


# ------------------------------------------------------------------------------------------
# Dispatch.
# ------------------------------------------------------------------------------------------


def test_method_dispatch():
    _, inf = curax.two_basin_problem(n=41)
    _, inf_ref = curax.two_basin_problem(n=41, reference_weight=0.2)
    _, fin = curax.two_basin_problem(n=41, k=3)
    _, fin_ref = curax.two_basin_problem(n=41, k=3, reference_weight=0.2)
    mixed = curax.CurationProblem(inf.rewards, inf.weights, k=(None, 4))
    zero_ref = curax.CurationProblem(
        inf.rewards, inf.weights, reference=inf.uniform(), reference_weight=0.0
    )
    assert curax.stable_point_method(inf) == "nash_solution"
    assert curax.stable_point_method(zero_ref) == "nash_solution"
    assert curax.stable_point_method(inf_ref) == "mixing_fixed_point"
    assert curax.stable_point_method(fin) == "active_set_newton"
    assert curax.stable_point_method(mixed) == "active_set_newton"
    assert curax.stable_point_method(fin_ref) == "squarem_newton"
    # (Under the test suite's runtime type checking a wrong type is a TypeError first.)
    with pytest.raises((ValueError, TypeError), match="problem"):
        curax.stable_point_method(inf.rewards)


def test_bad_arguments():
    _, problem = curax.two_basin_problem(n=41, k=3)
    with pytest.raises(ValueError, match="p0"):
        curax.stable_point(problem, jnp.ones(40) / 40)
    with pytest.raises(ValueError, match="p0"):
        curax.stable_point(problem, -jnp.ones(41) / 41)
    with pytest.raises(ValueError, match="tol"):
        curax.stable_point(problem, tol=float("nan"))
    with pytest.raises(ValueError, match="tol"):
        curax.stable_point(problem, tol=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        curax.stable_point(problem, max_steps=0)


# ------------------------------------------------------------------------------------------
# K = infinity.
# ------------------------------------------------------------------------------------------


_STATS = ("fw_gap", "residual", "error_bound", "num_map_evals", "support_size", "num_steps")


@pytest.mark.parametrize("q", [0.2, 0.5])
def test_infinite_k_certificate(q):
    x, problem = curax.two_basin_problem(n=801, separation=3.0, q=q, curvature=1.0)
    sol = curax.stable_point(problem, tol=1e-11)
    assert sol.result == curax.RESULTS.successful
    for key in _STATS + ("max_steps",):
        assert isinstance(sol.stats[key], jax.Array)
    p = np.asarray(sol.value)
    g = _numpy_growth_inf(p, problem)
    assert g.max() - 1 <= 1e-11
    assert abs(g.max() - 1 - float(sol.stats["fw_gap"])) <= 1e-13
    assert np.isinf(float(sol.stats["error_bound"]))
    # The dynamics from the uniform start agree in the potential (u* is unique).
    ps = curax.trajectory(problem.uniform(), problem, 4000)
    phi_dyn = float(curax.potential(ps[-1], problem))
    phi = float(curax.potential(sol.value, problem))
    assert phi >= phi_dyn - 1e-12
    assert phi - phi_dyn <= float(curax.fw_gap(ps[-1], problem)) + 1e-12


def test_infinite_k_ignores_p0():
    _, problem = curax.two_basin_problem(n=201, q=0.3)
    a = curax.stable_point(problem)
    p0 = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(201)))
    b = curax.stable_point(problem, p0)
    assert float(curax.potential(a.value, problem)) == float(curax.potential(b.value, problem))


def test_infinite_k_with_reference_against_dynamics():
    _, problem = curax.two_basin_problem(n=201, q=0.3, reference_weight=0.3, curvature=1.0)
    sol = curax.stable_point(problem)
    assert sol.result == curax.RESULTS.successful
    rho = float(sol.stats["contraction_rate"])
    assert 0 < rho < 1
    # The map is a contraction: long plain iteration from the uniform start converges.
    ps = curax.trajectory(problem.uniform(), problem, 4000)
    err = float(jnp.max(jnp.abs(ps[-1] - sol.value)))
    assert err <= 1e-13
    assert float(sol.stats["error_bound"]) <= 1e-10
    assert float(sol.stats["residual"]) <= 1e-14


# ------------------------------------------------------------------------------------------
# Finite K.
# ------------------------------------------------------------------------------------------


def test_finite_k_certificate_by_enumeration():
    x, problem = curax.two_basin_problem(n=201, separation=3.0, q=0.3, k=4, curvature=1.0)
    sol = curax.stable_point(problem)
    assert sol.result == curax.RESULTS.successful
    p = np.asarray(sol.value)
    assert int(sol.stats["support_size"]) == np.count_nonzero(p)
    assert np.count_nonzero(p) <= 8
    g = _multinomial_growth(p, problem)
    # G <= 1 everywhere (stable against invasion), G = 1 on the support, sum p G = 1.
    assert g.max() - 1 <= 1e-10
    np.testing.assert_allclose(g[p > 0], 1.0, atol=1e-10)
    assert float(sol.stats["residual"]) <= 1e-10
    np.testing.assert_allclose(p * g, p, atol=1e-10)


def test_finite_k_with_reference_against_iteration():
    _, problem = curax.two_basin_problem(n=101, q=0.3, k=3, reference_weight=0.3)
    sol = curax.stable_point(problem)
    assert sol.result == curax.RESULTS.successful
    ps = curax.trajectory(sol.value * 0.5 + 0.5 * problem.uniform(), problem, 2000)
    err = float(jnp.max(jnp.abs(ps[-1] - sol.value)))
    assert err <= max(float(sol.stats["error_bound"]), 1e-14)


def test_failure_is_reported():
    _, problem = curax.two_basin_problem(n=201, q=0.3)
    # Below rounding, a computed gap of -1e-16 would "certify" anything: refused.
    with pytest.raises(ValueError, match="tol"):
        curax.stable_point(problem, tol=1e-30)
    # Reference weight 0.01: contraction rate ~0.99992, so the residual's rounding alone
    # allows an error above 1e-10; the bound cannot certify the default tol.
    _, problem = curax.two_basin_problem(n=201, q=0.3, reference_weight=0.01)
    sol = curax.stable_point(problem, throw=False)
    assert sol.result == curax.RESULTS.certificate_failed
    assert float(sol.stats["error_bound"]) > 1e-10
    with pytest.raises(Exception, match="certificate"):
        curax.stable_point(problem)


# ------------------------------------------------------------------------------------------
# jit / vmap.
# ------------------------------------------------------------------------------------------


def test_vmap_over_weights():
    x, base = curax.two_basin_problem(n=201, separation=3.0, curvature=1.0)
    qs = jnp.array([0.2, 0.35, 0.5])

    def solve(q):
        problem = curax.CurationProblem(base.rewards, jnp.stack([q, 1 - q]))
        sol = curax.stable_point(problem, throw=False)
        return sol.value, sol.result._value, sol.stats["fw_gap"]

    ps, codes, gaps = eqx.filter_jit(jax.vmap(solve))(qs)
    for q, p, code, gap in zip(qs, ps, codes, gaps):
        problem = curax.CurationProblem(base.rewards, jnp.stack([q, 1 - q]))
        assert int(code) == curax.RESULTS.successful._value
        assert _numpy_growth_inf(p, problem).max() - 1 <= 1e-10
        one = curax.stable_point(problem)
        assert float(curax.potential(p, problem)) == pytest.approx(
            float(curax.potential(one.value, problem)), abs=1e-13
        )


# ------------------------------------------------------------------------------------------
# K = infinity with reference data: Wei et al.'s Prop. 3.8 closed form.
# ------------------------------------------------------------------------------------------


def _prop38(s, pref, eta):
    """Prop. 3.8 (one reward, curated fraction eta): p = (1 - eta) p_ref Z / (Z - eta w),
    w = e^{s - max s}, Z the root of sum (1 - eta) p_ref w / (Z - eta w) = 1 with Z > eta.
    The unknown is delta = Z - eta (bisection in log delta, then Newton), and
    Z - eta w = delta + eta (1 - w) with 1 - w = -expm1(s - max s): no cancellation, so p is
    accurate to a few ulps even where Z - eta w is 1e-9 of Z."""
    w = np.exp(s - s.max())
    one_minus_w = -np.expm1(s - s.max())
    rw = 1 - eta

    def f(delta):
        return np.sum(rw * pref * w / (delta + eta * one_minus_w)) - 1

    lo, hi = 1e-300, rw  # f(lo) > 0 (the argmax term), f(rw) <= 0
    while hi / lo > 1 + 1e-14:
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    delta = np.sqrt(lo * hi)
    for _ in range(3):
        den = delta + eta * one_minus_w
        delta += (np.sum(rw * pref * w / den) - 1) / np.sum(rw * pref * w / den**2)
    return rw * pref * (eta + delta) / (delta + eta * one_minus_w)


@pytest.mark.parametrize("eta", [0.5, 0.9, 0.99, 0.999])
def test_mixing_matches_prop38_to_ulps(eta):
    n = 20_000
    x = np.linspace(-3, 3, n)
    r = -((x - 0.7) ** 2) + 0.3 * np.sin(5 * x)
    pref = np.exp(-0.5 * x**2) * (1 + 0.5 * np.cos(3 * x))
    pref /= pref.sum()
    tau = 0.5
    exact = _prop38(r / tau, pref, eta)
    assert abs(exact.sum() - 1) <= 1e-14
    problem = curax.CurationProblem(
        jnp.asarray(r), temperature=tau, reference=jnp.asarray(pref), reference_weight=1 - eta
    )
    sol = curax.mixing_fixed_point(problem)
    rel = np.max(np.abs(np.asarray(sol.value) - exact) / exact)
    assert rel <= 1e-14
    sp = curax.stable_point(problem, throw=False)
    assert curax.stable_point_method(problem) == "mixing_fixed_point"
    err = float(np.max(np.abs(np.asarray(sp.value) - exact)))
    # The certificate's error bound is a bound: never below the true error.
    assert err <= float(sp.stats["error_bound"])
    if sp.result == curax.RESULTS.successful:
        assert err <= 1e-10


@pytest.mark.slow
def test_phase_diagram_k4_separation2_is_certified_and_attracting():
    """The issue's case: two wells at +-1 on [-3, 3] (curvature 1), K = 4, q = 0.5, n = 401.
    From the uniform start the dynamics are still drifting after 20k rounds; a stable point
    exists. Certified here, re-checked by exact enumeration, and attracting: the dynamics
    started near it return to it."""
    from curax._problem import nodes_for_spread

    problem = curax.theory.two_well_problem(
        2.0, 0.5, 4, n=401, half_width=3.0, curvature=1.0, quadrature_nodes=nodes_for_spread(16.0)
    )
    sol = curax.stable_point(problem)
    p = np.asarray(sol.value)
    g = _multinomial_growth(p, problem)
    assert g.max() - 1 <= 1e-10
    np.testing.assert_allclose(g[p > 0], 1.0, atol=1e-10)
    assert float(sol.stats["support_radius"]) < 1
    ps = curax.trajectory(0.99 * sol.value + 0.01 * problem.uniform(), problem, 1000)
    dist = [float(jnp.sum(jnp.abs(ps[t] - sol.value))) for t in (0, 300, 1000)]
    assert dist[2] < 0.5 * dist[0]


@default_cases(1)
@pytest.mark.parametrize("start", ["uniform", "near-vertex"])
def test_fallback_on_the_host_equals_the_traced_loop(start, monkeypatch):
    # With one active-set pass the first attempt cannot certify, so the fallback runs: from
    # the uniform start the dynamics lead to a point the second attempt certifies, from next
    # to a vertex they do not. Concrete inputs decide the fallback on the host (two programs);
    # under `jit` it is one traced loop. Both must take the same steps to the same point.
    import curax._stable_point as sp

    calls = []
    real = sp._fallback_start
    monkeypatch.setattr(sp, "_fallback_start", lambda *a: calls.append(1) or real(*a))
    n = 101
    x, problem = curax.two_basin_problem(n=n, separation=3.0, q=0.3, k=4)
    p0 = problem.uniform()
    if start == "near-vertex":
        p0 = jnp.full((n,), 0.01 / (n - 1)).at[0].set(0.99)
    host = curax.stable_point(problem, p0, max_steps=1, throw=False)
    traced = jax.jit(lambda pr, p: curax.stable_point(pr, p, max_steps=1, throw=False))(problem, p0)
    assert calls == [1]
    assert bool(host.stats["fallback_used"]) and bool(traced.stats["fallback_used"])
    assert host.result == traced.result
    for name in ("num_map_evals", "num_steps", "support_size"):
        assert int(host.stats[name]) == int(traced.stats[name]), name
    np.testing.assert_allclose(host.value, traced.value, rtol=0, atol=1e-13)
    if start == "uniform":
        assert host.result == curax.RESULTS.successful
        assert float(host.stats["fw_gap"]) <= 1e-10
    else:
        assert host.result != curax.RESULTS.successful

    # The common case: the first attempt certifies and the fallback is not even compiled.
    calls.clear()
    ok = curax.stable_point(problem, problem.uniform())
    assert calls == [] and not bool(ok.stats["fallback_used"])
