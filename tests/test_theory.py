import json
import math

import curax
import jax.numpy as jnp
import numpy as np
import pytest
from curax import theory

from .helpers import flat_dirichlet


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
    p0 = flat_dirichlet(getkey(), N)
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
    assert rep.measured["limit"]["certified"]
    assert rep.measured["rate"] <= rep.predicted["rate_bound"] * (1 + 1e-9)
    # The trajectory (an illustration) decays too.
    assert rep.measured["trajectory_fitted_rate"] < 1


def test_outside_decay_compromise_detected():
    # Close wells: the midpoint is liked by both rewards and absorbs the mass.
    problem = wells(0.6, 0.5)
    rep = theory.check_outside_decay(problem, eps=0.05, rounds=500)
    assert not rep.hypotheses["outside_domination"]
    assert rep.measured["limit"]["certified"]
    assert rep.verdict == "compromise"
    x = np.linspace(-2.3, 2.3, N)
    assert abs(x[rep.measured["compromise_index"]]) < 0.2
    assert rep.values["compromise_advantage"] > 0


# --- Theorem 3.7 / Corollary 3.8 --------------------------------------------------------------


def mixture_argmax(q, problem, eps):
    """Closed form of the maximiser of q log u_1(a) + (1 - q) log u_2(a) on the mixture
    family p_a = a P_1 + (1 - a) P_2 (P_i: uniform on the eps-basin S_i), u_i = E[e^{r_i}]:
    with A_ij = E_{P_j}[e^{r_i}], c_1 = A_11 - A_12, c_2 = A_22 - A_21, the stationary point is
    a = q A_22 / c_2 - (1 - q) A_12 / c_1 (linear equation; clipped to [0, 1])."""
    s = np.asarray(problem.rewards, np.float64)
    masks = s >= s.max(axis=1, keepdims=True) - eps
    P = [m / m.sum() for m in masks.astype(float)]
    A = np.array([[P[j] @ np.exp(s[i]) for j in range(2)] for i in range(2)])
    c1, c2 = A[0, 0] - A[0, 1], A[1, 1] - A[1, 0]
    return float(np.clip(q * A[1, 1] / c2 - (1 - q) * A[0, 1] / c1, 0, 1))


@pytest.mark.parametrize("q", [0.25, 0.6])
def test_nash_bargaining_flat_hard(q):
    _, problem = plateaus(q, d1=12.0, d2=12.0, mid=15.0)
    rep = theory.check_nash_bargaining(problem, eps=0.0, rounds=1000)
    assert rep.hypotheses_hold
    assert rep.verdict == "pass"
    assert rep.measured["limit"]["certified"]
    assert rep.measured["a_star_numeric"] == pytest.approx(
        mixture_argmax(q, problem, 0.0), abs=1e-12
    )
    # Flat plateaus: the limit's basin mass solves the fixed-point equation on S_1.
    assert rep.measured["a_inf"] == pytest.approx(flat_fixed_point(q, 12.0, 12.0), abs=1e-9)
    assert abs(rep.measured["a_inf"] - q) <= 1e-4


def test_nash_bargaining_not_flat():
    problem = wells(2.0, 0.3)
    rep = theory.check_nash_bargaining(problem, eps=0.25, rounds=1000)
    assert not rep.hypotheses["flat_basins"]
    assert not rep.hypotheses["hard_separation"]
    assert rep.verdict == "hypotheses-fail"
    # The mixture-family maximiser is computed from the actual utilities, not assumed: with
    # leaky basins it is not q (closed form in the test).
    a_star = rep.measured["a_star_numeric"]
    assert a_star == pytest.approx(mixture_argmax(0.3, problem, 0.25), abs=1e-12)
    assert abs(a_star - 0.3) > 1e-3


def issue_problem():
    """The issue's case: rewards -(x +- 2)^2 on 3,201 points of [-8, 8], weights (0.2, 0.8);
    the trajectory has not settled after 10k rounds (gap ~5e-5)."""
    x = jnp.linspace(-8.0, 8.0, 3201)
    return curax.CurationProblem(
        jnp.stack([-((x + 2) ** 2), -((x - 2) ** 2)]), jnp.array([0.2, 0.8])
    )


def test_nash_bargaining_issue_case_certified():
    problem = issue_problem()
    rep = theory.check_nash_bargaining(problem)
    assert rep.hypotheses_hold
    assert rep.measured["limit"]["certified"]
    assert rep.measured["limit"]["fw_gap"] <= 1e-10
    # Independent truth: the leakage interval from kappa_i = e^{-16} (Delta = 16) around 0.2.
    k = math.exp(-16.0)
    lo, hi = (0.2 - k) / (1 - k), 0.2 / (1 - k)
    assert lo - 1e-6 <= rep.measured["a_inf"] <= hi + 1e-6
    assert rep.measured["outside_mass"] <= 1e-6
    assert rep.verdict == "pass"
    # A 10k-round trajectory is not a limit: inconclusive, never pass, with its gap.
    dyn = theory.check_nash_bargaining(problem, method="dynamics", rounds=10000, max_chunks=1)
    assert dyn.verdict == "inconclusive"
    assert not dyn.measured["limit"]["certified"]
    assert dyn.measured["limit"]["fw_gap"] > 1e-6
    non = theory.check_non_collapse(problem, eps=0.0, method="dynamics", rounds=10000, max_chunks=1)
    assert non.verdict == "inconclusive"
    assert theory.check_non_collapse(problem, eps=0.0).verdict == "pass"


def test_dynamics_certificate_when_it_converges():
    # Flat plateaus converge geometrically: the trajectory's own certificate holds, and its
    # verdict and a_inf agree with the stable point's.
    _, problem = plateaus(0.3, d1=3.0, d2=3.0)
    dyn = theory.check_non_collapse(problem, eps=0.0, method="dynamics", rounds=1000)
    sp = theory.check_non_collapse(problem, eps=0.0)
    assert dyn.measured["limit"]["certified"] and sp.measured["limit"]["certified"]
    assert dyn.verdict == sp.verdict == "pass"
    assert dyn.measured["a_inf"] == pytest.approx(sp.measured["a_inf"], abs=1e-8)
    assert sp.measured["a_inf"] == pytest.approx(flat_fixed_point(0.3, 3.0, 3.0), abs=1e-9)


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
    assert rep.measured["limit"]["certified"]
    assert rep.measured["distance_to_fixed_point"] < 1e-8
    assert rep.measured["limit_spread"] < 1e-8
    # Independent truth: a long plain run from a vertex lands on the same point.
    p_long = curax.trajectory(jnp.zeros(N).at[0].set(1.0), problem, 2000)[-1]
    p_star = curax.trajectory(problem.uniform(), problem, 2000)[-1]
    assert float(jnp.abs(p_long - p_star).sum()) < 1e-12
    # Too few rounds: the end points are not settled, so the verdict is inconclusive.
    short = theory.check_real_data_stability(problem, key=getkey(), num_starts=3, rounds=3)
    assert short.verdict == "inconclusive"
    assert short.measured["end_point_error_bound"] > 1e-8


def test_real_data_hypotheses_fail_without_data(getkey):
    rep = theory.check_real_data_stability(_real(0.0, None), key=getkey(), num_starts=2, rounds=50)
    assert not rep.hypotheses["real_data"]
    assert rep.verdict == "hypotheses-fail"


# --- finite K ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_finite_k_approaches_k_inf():
    # (Also run by `curax reproduce --quick`, whose verdicts tests/test_cli.py asserts.)
    problem = theory.two_well_problem(2.0, 0.3, None, n=61, half_width=3.0)
    study = theory.finite_k_convergence(problem, (4, 16), eps=0.25, check_stability=False)
    assert study.inf_certified and all(study.certified)
    assert all(g <= 1e-10 for g in study.fw_gaps)
    d = np.array(study.log_u_distance)
    assert d[1] < d[0] / 2
    json.dumps(study.to_dict())


def test_finite_k_uncertified_points_are_not_judged():
    # Too few rounds of the dynamics: nothing is certified, nothing is called unstable, and
    # no distance is reported for an uncertified point.
    problem = theory.two_well_problem(2.0, 0.3, None, n=61, half_width=3.0)
    dyn = theory.finite_k_convergence(
        problem, (4, 16), eps=0.25, method="dynamics", rounds=20, max_chunks=1
    )
    assert not any(dyn.certified)
    assert dyn.stability == ["not certified"] * 2
    assert np.all(np.isnan(dyn.log_u_distance))


def test_phase_diagram_classes():
    ph = theory.phase_diagram((0.5, 3.0), (None,), (0.05, 0.5), n=N)
    assert all(c for row in ph.certified for kk in row for c in kk)
    # close wells, q = 0.5: one compromise atom at the middle; far wells: two basins.
    assert ph.phases[0][0][1] == "compromise"
    assert ph.num_atoms[0][0][1] == 1
    assert abs(ph.atoms[0][0][1][0][0]) < 0.1
    assert ph.phases[1][0][1] == "two basins"
    assert ph.num_atoms[1][0][1] == 2
    # far wells, q = 0.05: kappa = e^-5.75 is tiny, two basins survive with mass ~q.
    assert ph.phases[1][0][0] == "two basins"
    assert ph.basin_mass[1][0][0] == pytest.approx(0.05, abs=1e-3)
    assert all(v == "stable" for row in ph.stability for kk in row for v in kk)
    assert all(r < 1 for row in ph.radius for kk in row for r in kk)
    json.dumps(ph.to_dict())
    assert "atom" in ph.summary()


@pytest.mark.slow
def test_phase_diagram_issue_case_k4():
    # The issue's case: a stable point exists at separation 2, K = 4, q = 0.5 (the dynamics
    # from the uniform start still drift after 20k rounds). It must be found and be stable.
    ph = theory.phase_diagram(separations=(2.0,), ks=(4,), qs=(0.5,), n=401)
    assert ph.certified[0][0][0]
    assert ph.stability[0][0][0] == "stable"
    assert ph.radius[0][0][0] < 1
    # Independent check of the point: a fixed point of the K = 4 map with no growth above 1.
    x = np.asarray(ph.x)
    problem = theory.two_well_problem(2.0, 0.5, 4, n=401, half_width=3.0)
    sol = curax.fixed_point(
        curax.curate, curax.ActiveSetNewton(rtol=1e-12, atol=1e-12), problem.uniform(), problem
    )
    p = np.asarray(sol.value)
    assert float(jnp.max(jnp.abs(curax.curate(sol.value, problem) - sol.value))) < 1e-12
    assert float(jnp.max(curax.growth(sol.value, problem))) <= 1 + 1e-9
    assert ph.num_atoms[0][0][0] == len(theory.atoms(p, x))


def test_atoms():
    p = np.array([0.0, 0.3, 0.2, 0.0, 0.5])
    got = theory.atoms(p)
    assert len(got) == 2
    assert got[0][0] == pytest.approx(1.4) and got[0][1] == pytest.approx(0.5)
    assert got[1] == pytest.approx((4.0, 0.5))
    with pytest.raises(ValueError, match="same shape"):
        theory.atoms(p, np.arange(3.0))


# --- compare / nash_agreement -----------------------------------------------------------------


def test_compare_unfinished_trajectory_is_not_called_unstable():
    problem = wells(2.0, 0.3)
    ps = curax.trajectory(problem.uniform(), problem, 200)
    rep = curax.compare(ps[-1], problem)
    assert float(rep.fw_gap_point) > 1e-6  # not converged
    assert rep.verdict == "not a fixed point"
    assert np.isnan(float(rep.stability_radius))
    text = rep.summary()
    assert "unstable" not in text and "stable point" not in text
    status = text.splitlines()[1]
    assert "not a fixed point" in status and "radius" not in status
    assert "certified" in status  # the Nash column: the Nash solution's own certificate


def test_nash_agreement_does_not_certify_unfinished_dynamics():
    problem = wells(2.0, 0.3)
    p = curax.trajectory(problem.uniform(), problem, 200)[-1]
    agree = theory.nash_agreement(problem, p)
    assert agree["dynamics"]["result"] == "not converged"
    assert agree["dynamics"]["stability"] == "not a fixed point"
    assert agree["dynamics"]["fw_gap"] > 1e-6
    sp, ns = agree["stable_point"], agree["nash_solution"]
    assert sp["result"] == ns["result"] == "successful"
    assert abs(sp["phi"] - ns["phi"]) <= 1e-10
    assert sp["stability"] in ("stable", "marginal")
    # The dynamics' potential is below the optimum by at most its gap (FW bound).
    assert 0 <= ns["phi"] - agree["dynamics"]["phi"] <= agree["dynamics"]["fw_gap"] + 1e-12


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


# --- the reproduce suite's expectations -------------------------------------------------------


def test_reproduce_expectations_match_grid_hypotheses():
    # The suite's expected verdicts come from closed-form (continuous) hypotheses; on the
    # suite's grids the code's own hypotheses must agree for every case it runs.
    from curax import _reproduce as rp, _theory

    cfg = rp.SuiteConfig()
    for sep in cfg.leak_separations:
        for q in cfg.leak_qs:
            closed = rp._two_well_hypotheses(sep, q, 0.25, 1.0)
            problem = theory.two_well_problem(sep, q, None, n=cfg.n, half_width=sep / 2 + 2.0)
            b = theory.basins(problem, 0.25)
            grid, _, _ = _theory._two_reward_hypotheses(problem, b)
            for name, value in closed.items():
                assert grid[name] == value, (sep, q, name)
    # Hand-computed cases: separation 1.5 has an empty q-window (kappa = e^-0.5 > 1/2).
    assert rp._expect_two_well(1.5, 0.5, 0.25, 1.0) == "hypotheses-fail"
    assert rp._expect_two_well(3.0, 0.05, 0.25, 1.0) == "pass"
    assert rp._expect_two_well(2.0, 0.1, 0.25, 1.0) == "hypotheses-fail"  # kappa = e^-1.75


def test_reproduce_flags_any_unexpected_verdict():
    from curax import _reproduce as rp

    results = {
        "a": {
            "reports": [
                {"name": "x", "verdict": "pass", "expected": "pass"},
                {"name": "y", "verdict": "hypotheses-fail", "expected": "pass"},
                {"name": "z", "verdict": "compromise"},
            ],
            "verdicts": {"w": False},
        }
    }
    checks = rp._checks(results)
    flags = [rp._expected(v, e) for _, _, v, e in checks]
    assert flags == [True, False, False, False]
    with pytest.raises(ValueError, match="expected verdict"):
        rp._row(theory.check_monotonicity(wells(1.5, 0.3), rounds=5), "maybe")
