import json
import math

import curax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from curax import theory


# The shapes and round counts of `curax reproduce --quick` (n = 101, chunks of 1000 rounds), so
# that a full test run reuses its compiled functions.
N = 101


def plateaus(q, d1=6.0, d2=6.0, mid=10.0, n=N):
    """Flat, separated basins: r_1 = 0 on x < -1, -d1 on x > 1, -mid in between (and
    symmetrically for r_2)."""
    x = np.linspace(-3, 3, n)
    r1 = np.where(x < -1, 0.0, np.where(x > 1, -d1, -mid))
    r2 = np.where(x > 1, 0.0, np.where(x < -1, -d2, -mid))
    return x, curax.CurationProblem(jnp.asarray(np.stack([r1, r2])), jnp.array([q, 1 - q]))


def flat_fixed_point(q, d1, d2):
    """Basin-1 mass of the interior fixed point of the flat two-plateau dynamics, from the
    fixed-point equation on S_1: q / Z_1 + (1 - q) e^{-d2} / Z_2 = 1 (bisection; independent
    of curax)."""
    k1, k2 = math.exp(-d1), math.exp(-d2)

    def g(a):
        z1 = a + (1 - a) * k1
        z2 = (1 - a) + a * k2
        return q / z1 + (1 - q) * k2 / z2 - 1

    lo, hi = 1e-12, 1 - 1e-12  # g(lo) > 0 > g(hi) inside the window
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def wells(sep, q, k=None, n=N, curvature=1.0):
    return theory.two_well_problem(sep, q, k, n=n, half_width=sep / 2 + 2.0, curvature=curvature)


# --- basins ---------------------------------------------------------------------------------


def test_basins_definitions():
    _, problem = plateaus(0.3, d1=5.0, d2=7.0)
    b = theory.basins(problem, eps=0.0)
    x = np.linspace(-3, 3, N)
    np.testing.assert_array_equal(b.masks[0], x < -1)
    np.testing.assert_array_equal(b.masks[1], x > 1)
    np.testing.assert_allclose(b.gaps, [5.0, 7.0])
    np.testing.assert_allclose(b.kappas, np.exp([-5.0, -7.0]))
    assert b.disjoint
    lo, hi = b.window(0.3)
    assert lo == pytest.approx((0.3 - math.exp(-5)) / (1 - math.exp(-5)))
    assert hi == pytest.approx(0.3 / (1 - math.exp(-7)))
    # eps enters kappa twice (the paper's conservative factor).
    b2 = theory.basins(problem, eps=0.5)
    np.testing.assert_allclose(b2.kappas, np.exp(-(np.array([5.0, 7.0]) - 1.0)))


def test_basins_bad_eps():
    _, problem = plateaus(0.3)
    with pytest.raises(ValueError, match="eps"):
        theory.basins(problem, eps=-1.0)


def test_two_reward_checks_refuse_other_m():
    x = jnp.linspace(-1, 1, 11)
    problem = curax.CurationProblem(jnp.stack([x, -x, x**2]))
    with pytest.raises(ValueError, match="m = 2"):
        theory.check_non_collapse(problem)


# --- collapse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 3])
def test_collapse_single_reward(k):
    problem = wells(2.0, 1.0, k)
    rep = theory.check_collapse(problem, eps=0.1, rounds=1000 if k is None else 200)
    assert rep.hypotheses_hold
    assert rep.verdict == "pass"
    assert rep.measured["variance_reward_final"] < 1e-3 * rep.measured["variance_reward_initial"]
    if k is None:
        # The exact tilt bound, checked against the measurement.
        assert rep.measured["outside_mass_final"] <= rep.predicted["outside_mass_bound_final"]


def test_collapse_hypotheses_fail_with_two_rewards():
    rep = theory.check_collapse(wells(2.0, 0.4), eps=0.1, rounds=1000)
    assert not rep.hypotheses["single_reward"]
    assert rep.verdict == "hypotheses-fail"
    # ...and indeed nothing collapses: the other basin keeps its mass.
    assert not rep.measured["consistent"]
    assert rep.measured["mass_near_argmax_final"] < 0.9


def test_collapse_hypotheses_fail_with_real_data():
    base = wells(2.0, 1.0)
    problem = curax.CurationProblem(
        base.rewards, base.weights, reference=base.uniform(), reference_weight=0.3
    )
    rep = theory.check_collapse(problem, eps=0.1, rounds=200)
    assert not rep.hypotheses["no_reference_data"]
    assert rep.verdict == "hypotheses-fail"
    assert rep.measured["mass_near_argmax_final"] < 0.95


# --- monotonicity -----------------------------------------------------------------------------


def test_monotonicity_holds(getkey):
    p0 = jr.dirichlet(getkey(), jnp.ones(N))
    rep = theory.check_monotonicity(wells(1.5, 0.3), p0=p0 / p0.sum(), rounds=100)
    assert rep.verdict == "pass"
    assert rep.measured["phi_final"] > rep.measured["phi_initial"]
    rep_k = theory.check_monotonicity(wells(2.0, 1.0, k=3), rounds=200)
    assert rep_k.hypotheses_hold and rep_k.verdict == "pass"


def test_monotonicity_fails_with_real_data():
    # Start at the argmax: real data pulls the model away, so E[e^r] decreases.
    base = wells(1.5, 1.0)
    problem = curax.CurationProblem(
        base.rewards, base.weights, reference=base.uniform(), reference_weight=0.5
    )
    i = int(np.argmax(np.asarray(base.rewards[0])))
    p0 = jnp.full(N, 1e-3 / (N - 1)).at[i].set(1 - 1e-3)
    rep = theory.check_monotonicity(problem, p0=p0, rounds=20)
    assert rep.verdict == "hypotheses-fail"
    assert not rep.measured["consistent"]
    assert rep.measured["max_decrease"] > 0.1


# --- Lemma 3.5 --------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.2, 0.5, 0.7])
def test_non_collapse_against_closed_form(q):
    d1, d2 = 2.0, 3.0
    _, problem = plateaus(q, d1, d2)
    rep = theory.check_non_collapse(problem, eps=0.0, rounds=1000)
    assert rep.hypotheses_hold
    assert rep.verdict == "pass"
    lo, hi = rep.predicted["interval"]
    a_exact = flat_fixed_point(q, d1, d2)
    assert lo <= a_exact <= hi
    assert rep.measured["a_inf"] == pytest.approx(a_exact, abs=1e-7)


def test_non_collapse_on_smooth_wells():
    rep = theory.check_non_collapse(wells(2.0, 0.3), eps=0.25, rounds=1000)
    assert rep.verdict == "pass"
    lo, hi = rep.predicted["interval"]
    assert lo - 1e-6 <= rep.measured["a_inf"] <= hi + 1e-6


def test_non_collapse_outside_window():
    # q below kappa_1: the lemma says nothing, and basin 1 indeed dies.
    _, problem = plateaus(0.05, d1=1.0, d2=1.0)
    rep = theory.check_non_collapse(problem, eps=0.0, rounds=1000)
    assert not rep.hypotheses["q_in_window"]
    assert rep.verdict == "hypotheses-fail"
    assert rep.measured["a_inf"] < 1e-6


# --- Theorem 3.6 ------------------------------------------------------------------------------


def test_variance_bound_holds():
    problem = wells(2.0, 0.3)
    rep = theory.check_variance(problem, eps=0.25, rounds=1000)
    assert rep.verdict == "pass"
    a = rep.measured["a_inf"]
    b = theory.basins(problem, 0.25)
    bound = a * (1 - a) * np.maximum(b.gaps - 0.5, 0) ** 2
    assert np.all(np.asarray(rep.measured["variance"]) >= bound)
    # Independent variance at the limit of a long plain run.
    p = np.asarray(curax.trajectory(problem.uniform(), problem, 30000)[-1])
    r = np.asarray(problem.rewards)
    var = p @ (r.T**2) - (p @ r.T) ** 2
    np.testing.assert_allclose(rep.measured["variance"], var, rtol=1e-4)


def test_variance_hypotheses_fail_finite_k():
    rep = theory.check_variance(wells(2.0, 0.3, k=3), eps=0.25, rounds=200, max_chunks=1)
    assert not rep.hypotheses["k_infinite"]
    assert rep.verdict == "hypotheses-fail"


# --- Lemma 3.3 --------------------------------------------------------------------------------


def test_outside_decay_dominated():
    problem = wells(3.0, 0.3, curvature=2.0)
    rep = theory.check_outside_decay(problem, eps=1.0, rounds=500)
    assert rep.hypotheses["outside_domination"]
    assert rep.verdict == "pass"
    assert rep.measured["rate"] <= rep.predicted["rate_bound"] * (1 + 1e-3)
    assert rep.measured["fitted_rate"] < 1


def test_outside_decay_compromise_detected():
    # Close wells: the midpoint is liked by both rewards and absorbs the mass.
    problem = wells(0.6, 0.5)
    rep = theory.check_outside_decay(problem, eps=0.05, rounds=500, max_chunks=2)
    assert not rep.hypotheses["outside_domination"]
    assert rep.verdict == "compromise"
    x = np.linspace(-2.3, 2.3, N)
    assert abs(x[rep.measured["compromise_index"]]) < 0.2
    assert rep.values["compromise_advantage"] > 0


# --- Theorem 3.7 / Corollary 3.8 --------------------------------------------------------------


@pytest.mark.parametrize("q", [0.25, 0.6])
def test_nash_bargaining_flat_hard(q):
    _, problem = plateaus(q, d1=12.0, d2=12.0, mid=15.0)
    rep = theory.check_nash_bargaining(problem, eps=0.0, rounds=1000)
    assert rep.hypotheses_hold
    assert rep.verdict == "pass"
    assert rep.measured["a_star_numeric"] == pytest.approx(q, abs=1e-9)
    assert rep.measured["a_inf"] == pytest.approx(q, abs=1e-4)


def test_nash_bargaining_not_flat():
    rep = theory.check_nash_bargaining(wells(2.0, 0.3), eps=0.25, rounds=1000)
    assert not rep.hypotheses["flat_basins"]
    assert rep.verdict == "hypotheses-fail"
    # Theorem 3.7 itself (a* = q on the mixture family) holds for any basins with gains.
    assert rep.measured["a_star_numeric"] == pytest.approx(0.3, abs=1e-9)


# --- Ferbach: real data -----------------------------------------------------------------------


def _real(rw, k):
    x = jnp.linspace(-1, 1, N)
    r = jnp.stack([-0.3 * (x + 0.5) ** 2, -0.3 * (x - 0.5) ** 2])
    ref = jnp.full(N, 1 / N) if rw > 0 else None
    return curax.CurationProblem(r, jnp.array([0.4, 0.6]), k, reference=ref, reference_weight=rw)


def test_real_data_unique_stable(getkey):
    problem = _real(0.6, 2)
    assert theory.contraction_bound(problem) < 1
    rep = theory.check_real_data_stability(problem, key=getkey(), num_starts=3, rounds=150)
    assert rep.verdict == "pass"
    assert rep.measured["limit_spread"] < 1e-8
    assert rep.measured["contraction_rate"] <= rep.predicted["contraction_rate_bound"]


def test_real_data_hypotheses_fail_without_data(getkey):
    rep = theory.check_real_data_stability(_real(0.0, None), key=getkey(), num_starts=2, rounds=50)
    assert not rep.hypotheses["real_data"]
    assert rep.verdict == "hypotheses-fail"


# --- finite K ---------------------------------------------------------------------------------


def test_finite_k_approaches_k_inf():
    problem = theory.two_well_problem(2.0, 0.3, None, n=N, half_width=3.0)
    study = theory.finite_k_convergence(
        problem,
        (8, 32),
        eps=0.25,
        rounds=1000,
        method="dynamics",
        max_chunks=2,
        check_stability=False,
    )
    d = np.array(study.log_u_distance)
    assert d[1] < d[0] / 4
    # The basin mass approaches the K = inf one.
    m = np.abs(np.array(study.basin_mass) - study.basin_mass_inf)
    assert m[1] < m[0]
    json.dumps(study.to_dict())


def test_phase_diagram_classes():
    ph = theory.phase_diagram((0.5, 3.0), (None,), (0.05, 0.5), n=N, rounds=300)
    # close wells, q = 0.5: one compromise point; far wells, q = 0.5: two basins.
    assert ph.phases[0][0][1] == "compromise"
    assert ph.phases[1][0][1] == "two basins"
    # far wells, q = 0.05 < kappa_1 window edge? no: kappa is tiny, two basins survive.
    assert ph.phases[1][0][0] == "two basins"
    assert ph.basin_mass[1][0][0] == pytest.approx(0.05, abs=1e-3)
    assert all(v == "stable" for row in ph.stability for kk in row for v in kk)
    json.dumps(ph.to_dict())


def test_classify_one_basin():
    # q outside the window: all mass in basin 2.
    _, problem = plateaus(0.05, d1=1.0, d2=1.0)
    p = curax.trajectory(problem.uniform(), problem, 2000)[-1]
    assert theory.classify_stable_point(p, problem, eps=0.0) == "one basin"


# --- report object ----------------------------------------------------------------------------


def test_report_serialises_and_summarises():
    rep = theory.check_non_collapse(wells(2.0, 0.3), eps=0.25, rounds=1000)
    d = rep.to_dict()
    s = json.dumps(d)
    assert "Lemma 3.5" in s and d["verdict"] == rep.verdict
    assert d["hypotheses_hold"] is True
    text = rep.summary()
    assert "PASS" in text and "interval" in text
