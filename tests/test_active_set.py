"""`curax.ActiveSetNewton`: finite-K certification (checked by exact sums over the atoms, in
numpy) and the cost of a user growth function."""

import curax
import jax.numpy as jnp
import numpy as np
import pytest


def _pairwise_growth_k2(p, problem):
    """Exact K = 2 growth factor: the one other candidate y ~ p,
    G(x) = sum_i a_i sum_y p(y) 2 w_i(x) / (w_i(x) + w_i(y)). O(n * atoms) numpy."""
    p = np.asarray(p, np.float64)
    s = np.asarray(problem.scaled_rewards, np.float64)
    atoms = np.nonzero(p)[0]
    g = np.zeros(p.shape[0])
    for a, r in zip(np.asarray(problem.weights), s):
        w = np.exp(r - r.max())
        g += a * (2 * w[:, None] / (w[:, None] + w[None, atoms])) @ p[atoms]
    return g


@pytest.mark.slow
def test_benchmark_k2_two_basin_certified():
    """The benchmark's finite-K case (two_basin K=2, n=1000): once stalled at gap 7e-2 (the
    support cycled between single atoms); now certified, checked by exact enumeration."""
    _, problem = curax.two_basin_problem(n=1000, separation=3.0, q=0.3, k=2)
    sol = curax.fixed_point(
        curax.curate,
        curax.ActiveSetNewton(rtol=1e-10, atol=1e-10),
        problem.uniform(),
        problem,
        max_steps=64,
    )
    p = np.asarray(sol.value)
    g = _pairwise_growth_k2(p, problem)
    assert g.max() - 1 <= 1e-10
    np.testing.assert_allclose(g[p > 0], 1.0, atol=1e-10)
    # More than one atom: a single atom is invaded here (the old failure mode).
    assert np.count_nonzero(p) >= 2
    stable = curax.stable_point(problem)
    g2 = _pairwise_growth_k2(stable.value, problem)
    assert g2.max() - 1 <= 1e-10
    # K = 2 is a zero-sum game (G = 1 + B p, B antisymmetric): p^T G = 1 for any p ...
    q = np.random.default_rng(0).dirichlet(np.ones(1000))
    assert abs(q @ _pairwise_growth_k2(q, problem) - 1) <= 1e-12
    # ... whose discrete replicator dynamics spiral away from a mixed equilibrium:
    # the support radius says so (> 1).
    assert float(stable.stats["support_radius"]) > 1


def test_user_growth_costs_a_few_evaluations_per_newton_step():
    """A user ReplicatorMap (the K = infinity growth written by hand): the reduced Jacobian
    is one batched call, so evaluations of G grow with Newton iterations, not slots."""
    x = jnp.linspace(-3.0, 3.0, 301)
    rewards = jnp.stack([-((x - 1.0) ** 2), -((x + 1.5) ** 2), -0.5 * x**2])
    e = jnp.exp(rewards - jnp.max(rewards, axis=1, keepdims=True))
    alpha = jnp.array([0.3, 0.5, 0.2])
    calls = []

    def growth(p, e):
        calls.append(1)  # traced calls; not the count asserted below
        return e.T @ (alpha / (e @ p))

    fn = curax.ReplicatorMap(growth)
    solver = curax.ActiveSetNewton(rtol=1e-12, atol=1e-12)
    sol = curax.fixed_point(fn, solver, jnp.full(301, 1 / 301), e)
    evals = int(sol.stats["num_map_evals"])
    newton = int(sol.stats["num_newton"])
    passes = int(sol.stats["num_steps"])
    # Per pass: 2 (map + G) + 1 (start) + 2 per interior-point iteration + 9 (polish).
    assert evals <= 2 * newton + 12 * passes + 1
    assert evals < 0.1 * (1 + solver.max_support) * newton
    # Certificate, recomputed in numpy; and the exact Nash solver agrees.
    p = np.asarray(sol.value)
    en, an = np.asarray(e), np.asarray(alpha)
    assert ((an / (en @ p)) @ en).max() - 1 <= 1e-11
    problem = curax.CurationProblem(rewards, alpha)
    nash = curax.nash_solution(problem)
    assert float(curax.potential(sol.value, problem)) == pytest.approx(
        float(nash.stats["objective"]), abs=1e-12
    )
