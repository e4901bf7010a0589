"""curax.stability: verdicts on points whose stability is known by theory, and the spectral
radius against a dense eigen-decomposition (small n only)."""

import curax
import jax
import jax.numpy as jnp
import numpy as np
import pytest


N = 41


@pytest.mark.parametrize("k", [None, 3])
def test_every_vertex_is_an_unstable_fixed_point(k):
    # Two rewards with different maximisers: at every Dirac, some point has G > 1.
    _, problem = curax.two_basin_problem(n=N, q=0.3, k=k, curvature=1.0)
    for j in range(0, N, 4):
        vertex = jnp.zeros(N).at[j].set(1.0)
        # A fixed point (exactly for K = inf; to quadrature accuracy for finite K).
        assert jnp.allclose(curax.curate(vertex, problem), vertex, rtol=0, atol=1e-12)
        report = curax.stability(vertex, problem)
        assert report.verdict == "unstable"
        assert int(report.support_size) == 1
        assert float(report.max_growth_off_support) > 1
        # The off-support growth is the growth factor itself (no reference data).
        assert float(report.max_growth_off_support) == pytest.approx(
            float(jnp.max(jnp.where(vertex > 0, -jnp.inf, curax.growth(vertex, problem)))),
            rel=1e-12,
        )


def test_nash_point_is_stable():
    _, problem = curax.two_basin_problem(n=N, q=0.3)
    sol = curax.fixed_point(curax.curate, curax.ActiveSetNewton(), problem.uniform(), problem)
    report = curax.stability(sol.value, problem)
    assert report.verdict == "stable"
    assert bool(report.is_stable)
    assert float(report.residual) <= 1e-12
    assert float(report.max_growth_off_support) < 1


def test_face_optimum_is_unstable():
    # The optimum restricted to one basin's face is a fixed point; the other basin's peak
    # has growth > 1 there.
    _, problem = curax.two_basin_problem(n=N, q=0.3)
    half = jnp.where(jnp.arange(N) < N // 2, 1.0, 0.0)
    p0 = half / jnp.sum(half)
    sol = curax.fixed_point(
        curax.curate,
        curax.SQUAREM(1e-12, 1e-12),
        p0,
        problem,
        throw=False,
        max_steps=20_000,
    )
    assert sol.result == curax.RESULTS.unstable_fixed_point
    report = curax.stability(sol.value, problem)
    assert report.verdict == "unstable"


def test_spectral_radius_matches_dense_jacobian():
    # Reference data: unique interior point, full support; compare the Arnoldi radius with
    # the dense eigenvalues of P J P (P removes the mean), computed independently.
    _, problem = curax.two_basin_problem(n=N, q=0.3, k=3, reference_weight=0.3, curvature=1.0)
    sol = curax.fixed_point(
        curax.curate, curax.NewtonKrylov(1e-12, 1e-12), problem.uniform(), problem
    )
    report = curax.stability(sol.value, problem)
    jac = np.asarray(jax.jacfwd(lambda p: curax.curate(p, problem))(sol.value))
    proj = np.eye(N) - 1.0 / N
    dense = np.max(np.abs(np.linalg.eigvals(proj @ jac @ proj)))
    assert float(report.spectral_radius) == pytest.approx(dense, rel=1e-8)
    assert report.verdict == "stable"
    assert int(report.support_size) == N
    assert float(report.max_growth_off_support) == -np.inf


def test_bad_inputs():
    _, problem = curax.two_basin_problem(n=N)
    with pytest.raises(ValueError, match="`p`"):
        curax.stability(jnp.ones((2, N)), problem)
    with pytest.raises(ValueError, match="`p`"):
        curax.stability(jnp.full(N, 0.5), problem)
    with pytest.raises(ValueError, match="krylov_dim"):
        curax.stability(problem.uniform(), problem, krylov_dim=0)
