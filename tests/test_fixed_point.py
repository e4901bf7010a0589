"""curax.fixed_point and its solvers: answers checked by independent methods (another solver,
the exact Nash solver, brute-force enumeration of the finite-K map), certificates, result
codes of the failure paths, optimistix interoperability and vmap."""

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

from .helpers import brute_force_curate, brute_force_growth


N = 61


@pytest.fixture(scope="module")
def nash_problem():
    # K = infinity, two well-separated basins: the stable point sits on a face (two atoms).
    _, problem = curax.two_basin_problem(n=N, q=0.3)
    return problem


@pytest.fixture(scope="module")
def nash_solution(nash_problem):
    return curax.fixed_point(
        curax.curate, curax.ActiveSetNewton(), nash_problem.uniform(), nash_problem
    )


def test_active_set_nash_point_certified(nash_problem, nash_solution):
    sol = nash_solution
    assert sol.result == curax.RESULTS.successful
    # The certificate, recomputed independently of the solver's own stats.
    assert float(curax.fw_gap(sol.value, nash_problem)) <= 1e-10
    assert float(jnp.max(jnp.abs(curax.curate(sol.value, nash_problem) - sol.value))) <= 1e-12
    assert int(sol.stats["num_map_evals"]) <= 40
    assert float(sol.stats["fw_gap"]) <= 1e-10
    # Generically at most m = 2 atoms (Caratheodory).
    assert int(jnp.sum(sol.value > 0)) <= 2


def test_active_set_agrees_with_squarem_and_nash_solver(nash_problem, nash_solution):
    squarem = curax.fixed_point(
        curax.curate,
        curax.SQUAREM(1e-11, 1e-11),
        nash_problem.uniform(),
        nash_problem,
        max_steps=20_000,
    )
    phi_asn = curax.potential(nash_solution.value, nash_problem)
    phi_sq = curax.potential(squarem.value, nash_problem)
    # FW gap bounds Phi* - Phi: both certified to ~1e-10.
    assert abs(float(phi_asn - phi_sq)) <= 1e-9
    u_asn = curax.expected_exp_rewards(nash_solution.value, nash_problem)
    u_sq = curax.expected_exp_rewards(squarem.value, nash_problem)
    assert jnp.allclose(u_asn, u_sq, rtol=0, atol=1e-4)
    if hasattr(curax, "nash_solution"):
        exact = curax.nash_solution(nash_problem)
        assert abs(float(curax.potential(exact.value, nash_problem) - phi_asn)) <= 1e-10


def test_optimistix_interop(nash_problem):
    """curax's solvers are optimistix fixed-point solvers: same answer both ways. Inside
    `optx.fixed_point` the simplex constraint must be stated; `curax.fixed_point` states it
    for a replicator map."""
    solver = curax.SQUAREM(rtol=1e-9, atol=1e-9)
    p0 = nash_problem.uniform()
    ours = curax.fixed_point(curax.curate, solver, p0, nash_problem, max_steps=20_000)
    theirs = optx.fixed_point(
        curax.curate,
        curax.SQUAREM(rtol=1e-9, atol=1e-9, constraint=curax.Simplex()),
        p0,
        args=nash_problem,
        max_steps=20_000,
    )
    assert theirs.result == optx.RESULTS.successful
    # Same iterates up to rounding (curax.fixed_point renormalises y0 onto the simplex).
    assert jnp.allclose(ours.value, theirs.value, rtol=0, atol=1e-12)
    assert int(ours.stats["num_steps"]) == int(theirs.stats["num_steps"])
    # And an optimistix solver runs under curax.fixed_point, with curax's certificates.
    sol = curax.fixed_point(
        curax.curate,
        optx.FixedPointIteration(1e-3, 1e-3),
        p0,
        nash_problem,
        throw=False,
    )
    assert int(sol.stats["num_map_evals"]) == int(sol.stats["num_steps"])
    assert "fw_gap" in sol.stats


def test_active_set_finite_k_against_enumeration():
    k = 3
    # Finite K has no potential: the stable point must be found by the solver, and checked
    # against brute-force enumeration of the K-tuples (independent of the quadrature).
    x = curax.grid_1d(-1.5, 1.5, 13)
    rewards = jnp.stack(
        [curax.quadratic_reward(x, -0.75, 4.0), curax.quadratic_reward(x, 0.75, 4.0)]
    )
    weights = jnp.array([0.4, 0.6])
    problem = curax.CurationProblem(rewards, weights, k)
    sol = curax.fixed_point(curax.curate, curax.ActiveSetNewton(), problem.uniform(), problem)
    assert sol.result == curax.RESULTS.successful
    assert float(sol.stats["residual"]) <= 1e-12
    assert int(sol.stats["num_map_evals"]) <= 60
    p = np.asarray(sol.value)
    brute = brute_force_curate(p, rewards, weights, k)
    assert np.max(np.abs(brute - p)) <= 1e-12
    # Stable: no point off the support would grow (enumerated growth factor <= 1).
    g = sum(
        a * brute_force_growth(p, np.exp(r - r.max()), k)
        for a, r in zip(np.asarray(weights), np.asarray(rewards))
    )
    assert g.max() <= 1 + 1e-12
    assert curax.stability(sol.value, problem).verdict == "stable"


SOLVERS = (
    curax.PlainIteration(1e-12, 1e-12),
    curax.DampedIteration(1e-12, 1e-12, damp=0.3),
    curax.SQUAREM(1e-12, 1e-12),
    curax.Anderson(1e-12, 1e-12),
    curax.NewtonKrylov(1e-12, 1e-12),
    curax.ActiveSetNewton(),  # runs its Newton-Krylov fallback: reference data
)


@pytest.fixture(scope="module")
def reference_problem():
    _, problem = curax.two_basin_problem(n=N, q=0.3, k=3, reference_weight=0.25, curvature=1.0)
    return problem


@pytest.fixture(scope="module")
def reference_point(reference_problem):
    # Dense Newton on the full system (n is small): an independent reference answer.
    f = lambda p: curax.curate(p, reference_problem)
    p = curax.trajectory(reference_problem.uniform(), reference_problem, 200)[-1]
    n = p.shape[0]
    proj = jnp.eye(n) - 1.0 / n
    for _ in range(8):
        jac = jax.jacfwd(f)(p)
        mat = proj @ (jac - jnp.eye(n)) @ proj + jnp.ones((n, n)) / n
        p = p - jnp.linalg.solve(mat, f(p) - p)
    return p


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_every_solver_finds_interior_fixed_point(solver, reference_problem, reference_point):
    sol = curax.fixed_point(
        curax.curate,
        solver,
        reference_problem.uniform(),
        reference_problem,
        max_steps=20_000,
    )
    assert sol.result == curax.RESULTS.successful
    assert float(sol.stats["residual"]) <= 1e-11
    assert jnp.allclose(sol.value, reference_point, rtol=0, atol=1e-10)
    # Reference data: full support, the gap is reported but is no stability certificate.
    assert float(sol.stats["fw_gap"]) > 0


def test_max_steps_reached(nash_problem):
    sol = curax.fixed_point(
        curax.curate,
        curax.PlainIteration(1e-12, 1e-12),
        nash_problem.uniform(),
        nash_problem,
        max_steps=5,
        throw=False,
    )
    assert sol.result == curax.RESULTS.nonlinear_max_steps_reached
    # One evaluation per step, plus one of the starting point (its residual is tested too).
    assert int(sol.stats["num_map_evals"]) == 6
    with pytest.raises(Exception, match="maximum number of steps"):
        curax.fixed_point(
            curax.curate,
            curax.PlainIteration(1e-12, 1e-12),
            nash_problem.uniform(),
            nash_problem,
            max_steps=5,
        )


def test_newton_krylov_spurious_point_flagged(nash_problem):
    # Started near a vertex, Newton converges to a fixed point on a face that is not stable.
    n = nash_problem.size
    p0 = 0.97 * jnp.zeros(n).at[n // 4].set(1.0) + 0.03 / n
    sol = curax.fixed_point(
        curax.curate, curax.NewtonKrylov(1e-10, 1e-10), p0, nash_problem, throw=False
    )
    assert sol.result == curax.RESULTS.unstable_fixed_point
    assert float(sol.stats["residual"]) <= 1e-9
    assert float(sol.stats["fw_gap"]) > 1e-3
    assert curax.stability(sol.value, nash_problem).verdict == "unstable"
    with pytest.raises(Exception, match="not stable"):
        curax.fixed_point(curax.curate, curax.NewtonKrylov(1e-10, 1e-10), p0, nash_problem)


def test_vertex_start_is_spurious(nash_problem):
    # A vertex is a fixed point of every replicator map; a solver started there stays there.
    p0 = jnp.zeros(nash_problem.size).at[3].set(1.0)
    sol = curax.fixed_point(
        curax.curate, curax.SQUAREM(1e-10, 1e-10), p0, nash_problem, throw=False
    )
    assert sol.result == curax.RESULTS.unstable_fixed_point


def test_loose_tolerance_is_not_called_unstable(nash_problem):
    # Stopped early with mass still growing at G > 1: the certificate failed, nothing more.
    # (optimistix's plain residual test stops early; curax's own solvers would go on.)
    sol = curax.fixed_point(
        curax.curate,
        optx.FixedPointIteration(1e-3, 1e-3),
        nash_problem.uniform(),
        nash_problem,
        throw=False,
    )
    assert sol.result == curax.RESULTS.certificate_failed


def _no_fixed_point(p, args):
    # A map on the 2-simplex without a fixed point (it jumps at p0 = 1/2): every solver's
    # residual stays >= 1/2, so its best residual stops improving.
    del args
    return jnp.where(p[0] >= 0.5, jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]))


@pytest.mark.parametrize(
    "solver",
    [curax.SQUAREM(1e-8, 1e-8, patience=4), curax.NewtonKrylov(1e-8, 1e-8, patience=4)],
    ids=lambda s: type(s).__name__,
)
def test_stall_reported(solver):
    p0 = jnp.array([0.7, 0.3])
    sol = curax.fixed_point(_no_fixed_point, solver, p0, throw=False, max_steps=100)
    assert sol.result == curax.RESULTS.stalled
    assert bool(sol.stats["stalled"])
    assert "fw_gap" not in sol.stats  # not a replicator map
    with pytest.raises(Exception, match="stalled"):
        curax.fixed_point(_no_fixed_point, solver, p0, max_steps=100)
    # Plain iteration does not declare stalls by default: it runs out of steps.
    sol = curax.fixed_point(
        _no_fixed_point, curax.PlainIteration(1e-8, 1e-8), p0, throw=False, max_steps=20
    )
    assert sol.result == curax.RESULTS.nonlinear_max_steps_reached


def test_bad_inputs(nash_problem):
    with pytest.raises(ValueError, match="y0"):
        curax.fixed_point(curax.curate, curax.SQUAREM(1e-8, 1e-8), jnp.ones((2, 3)), nash_problem)
    with pytest.raises(ValueError, match="y0"):
        curax.fixed_point(
            curax.curate,
            curax.SQUAREM(1e-8, 1e-8),
            jnp.full(nash_problem.size, 0.5),
            nash_problem,
        )
    with pytest.raises(ValueError, match="growth factor"):
        optx.fixed_point(
            curax.curate,
            curax.ActiveSetNewton(),
            nash_problem.uniform(),
            args=nash_problem,
        )
    with pytest.raises(ValueError, match="damp"):
        curax.DampedIteration(1e-8, 1e-8, damp=1.5)


def test_user_replicator_map_and_growth(nash_problem):
    """A user's own growth factor (the K = infinity map written by hand), through
    curax.ReplicatorMap and through ActiveSetNewton(growth=...)."""
    w = jnp.exp(nash_problem.rewards - jnp.max(nash_problem.rewards, axis=1, keepdims=True))
    alpha = nash_problem.weights

    def growth(p, args):
        return args.T @ (alpha / (args @ p))

    fn = curax.ReplicatorMap(growth)
    sol = curax.fixed_point(fn, curax.ActiveSetNewton(), jnp.full(w.shape[1], 1 / w.shape[1]), w)
    assert float(sol.stats["fw_gap"]) <= 1e-10
    ref = curax.fixed_point(
        curax.curate, curax.ActiveSetNewton(), nash_problem.uniform(), nash_problem
    )
    assert (
        abs(
            float(
                curax.potential(sol.value, nash_problem) - curax.potential(ref.value, nash_problem)
            )
        )
        <= 1e-12
    )


def test_vmap_batch_matches_unbatched():
    n, batch = 101, 16
    _, base = curax.two_basin_problem(n=n, q=0.5, separation=2.0)
    qs = jnp.linspace(0.05, 0.95, batch)
    weights = jnp.stack([qs, 1 - qs], axis=1)

    def solve(w):
        problem = curax.CurationProblem(base.rewards, w)
        return curax.fixed_point(
            curax.curate,
            curax.ActiveSetNewton(max_support=40),
            problem.uniform(),
            problem,
            throw=False,
        )

    batched = eqx.filter_jit(jax.vmap(solve))(weights)
    assert bool(jnp.all(batched.result == curax.RESULTS.successful))
    for i in range(batch):
        single = solve(weights[i])
        assert jnp.allclose(batched.value[i], single.value, rtol=0, atol=1e-12)
        assert float(batched.stats["fw_gap"][i]) <= 1e-10


@pytest.mark.parametrize("value", [0.0, jnp.nan])
def test_garbage_fixed_point_is_not_successful(value):
    # A map that sends everything to 0 (or NaN) has a "fixed point" a step-size test accepts;
    # with the simplex stated it is not a distribution, and curax says so.
    def fn(p, args):
        del args
        return jnp.full_like(p, value)

    solver = curax.PlainIteration(rtol=1e-8, atol=1e-8, constraint=curax.Simplex())
    sol = curax.fixed_point(fn, solver, jnp.ones(3) / 3, max_steps=8, throw=False)
    assert sol.result != curax.RESULTS.successful
    with pytest.raises(Exception):
        curax.fixed_point(fn, solver, jnp.ones(3) / 3, max_steps=8)
