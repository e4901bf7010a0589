"""Implicit differentiation of fixed points (optimistix ImplicitAdjoint + lineax GMRES,
matrix-free) against central finite differences."""

import curax
import jax
import jax.numpy as jnp

from .helpers import central_difference as _fd


def _close(a, b, rtol=1e-6):
    return abs(float(a) - float(b)) <= rtol * max(abs(float(b)), 1e-12)


def test_gradients_interior_fixed_point(getkey):
    k = 3  # finite K: the exact Laplace-quadrature map is differentiated too
    # Real-data mixing: a unique interior fixed point.
    x, base = curax.two_basin_problem(n=41, q=0.3, reference_weight=0.3, curvature=1.0)
    rewards, reference = base.rewards, base.reference
    c = jnp.sin(3.0 * x)
    solver = curax.SQUAREM(1e-13, 1e-13)

    def loss(rewards, weights, temperature, reference_weight):
        problem = curax.CurationProblem(
            rewards,
            weights,
            k,
            temperature,
            reference,
            reference_weight,
            quadrature_nodes=curax.nodes_for_spread(25.0),
        )
        sol = curax.fixed_point(curax.curate, solver, problem.uniform(), problem, max_steps=20_000)
        return c @ sol.value

    params = (rewards, jnp.array([0.3, 0.7]), jnp.array(1.3), jnp.array(0.3))
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*params)
    h = 1e-5
    d_rewards = jax.random.normal(getkey(), rewards.shape)
    fd = _fd(lambda r: loss(r, *params[1:]), rewards, d_rewards, h)
    assert _close(jnp.sum(grads[0] * d_rewards), fd)
    d_w = jnp.array([1.0, -1.0])  # stay on the simplex of weights
    fd = _fd(lambda w: loss(params[0], w, *params[2:]), params[1], d_w, h)
    assert _close(grads[1] @ d_w, fd)
    fd = _fd(lambda t: loss(params[0], params[1], t, params[3]), params[2], 1.0, h)
    assert _close(grads[2], fd)
    fd = _fd(lambda e: loss(*params[:3], e), params[3], 1.0, h)
    assert _close(grads[3], fd)


def test_gradient_nash_point_utilities():
    # K = infinity without reference data: the stable point lies on a face (a few atoms).
    # Locally the support is fixed (strict complementarity: G < 1 off it), so the solution is
    # differentiable through the reduced system on the support; the full implicit system
    # gives exactly that, because the map's Jacobian vanishes at zero-mass points.
    _, base = curax.two_basin_problem(n=41, q=0.3, separation=1.5, curvature=2.0)
    rewards = base.rewards

    def log_utilities(weights):
        problem = curax.CurationProblem(rewards, weights)
        sol = curax.fixed_point(curax.curate, curax.ActiveSetNewton(), problem.uniform(), problem)
        return curax.expected_exp_rewards(sol.value, problem)

    weights = jnp.array([0.35, 0.65])
    d_w = jnp.array([1.0, -1.0])
    h = 1e-5
    jac = jax.jacrev(log_utilities)(weights)
    fd = _fd(log_utilities, weights, d_w, h)
    for i in range(2):
        assert _close(jac[i] @ d_w, fd[i])
