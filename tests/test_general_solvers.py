"""curax's general fixed-point solvers on maps that are not curation maps: pytrees, 0-d and
N-d arrays, complex dtypes, auxiliary outputs, implicit derivatives; and the cases where an
honest solver must not say `successful` (no fixed point, a map that does not preserve mass
under the simplex constraint, slow contractions)."""

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest
from scipy.optimize import brentq

from .helpers import central_difference, default_cases


jax.config.update("jax_enable_x64", True)

TOL = 1e-9
SOLVERS = (
    curax.PlainIteration(TOL, TOL),
    curax.DampedIteration(TOL, TOL, damp=0.3),
    curax.SQUAREM(TOL, TOL),
    curax.Anderson(TOL, TOL),
    curax.NewtonKrylov(TOL, TOL),
)
ACCELERATED = SOLVERS[2:]
DTYPES = (jnp.float64, jnp.complex128)
# y = tanh(y + 1), solved independently of curax (scipy's bracketing root finder).
TANH_ROOT = brentq(lambda y: np.tanh(y + 1) - y, 0.0, 2.0, xtol=1e-15, rtol=1e-15)


def _name(x):
    return type(x).__name__


def _linear_operator(key, n, radius, dtype):
    """A random non-normal `n x n` matrix with spectral norm `radius` (a contraction)."""
    a = jr.normal(key, (n, n))
    if jnp.issubdtype(dtype, jnp.complexfloating):
        a = jax.lax.complex(a, jr.normal(jr.fold_in(key, 1), (n, n)))
    return (a * (radius / jnp.linalg.norm(a, 2)).astype(a.dtype)).astype(dtype)


def _heat_matrix(n):
    """One explicit step of the 1-D heat equation with zero boundary values,
    `y -> y + dt * L y`, dt = 0.4: eigenvalues in (-0.6, 0.97), a slow contraction."""
    lap = -2 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    return np.eye(n) + 0.4 * lap


def _problems(dtype):
    """(name, fn, y0, args, truth) tuples; `truth` is computed without curax."""
    key = jr.key(0)
    c = jnp.asarray(1.0 + 0.5j if dtype == jnp.complex128 else 1.0, dtype)
    m = _linear_operator(key, 4, 0.8, dtype)
    b = (jnp.arange(12.0).reshape(3, 4) - 5).astype(dtype) * c

    # A pytree: a 0-d tanh, an N-d linear map acting on the last axis, a constant with offset.
    def tree_fn(y, args):
        del args
        return {
            "scalar": jnp.tanh(y["scalar"] + 1),
            "nd": (y["nd"][0] @ m.T + b, 3.0 * c + 0.0 * y["nd"][1]),
        }

    tree_y0 = {
        "scalar": jnp.zeros((), dtype),
        "nd": (jnp.zeros((3, 4), dtype), jnp.zeros((2, 2), dtype)),
    }
    eye = np.eye(4)
    nd_truth = np.linalg.solve(eye - np.asarray(m), np.asarray(b).T).T
    if dtype == jnp.complex128:
        # tanh is holomorphic: the complex root on the real axis is the real one.
        scalar_truth = np.asarray(TANH_ROOT, np.complex128)
    else:
        scalar_truth = np.asarray(TANH_ROOT)
    tree_truth = {
        "scalar": scalar_truth,
        "nd": (nd_truth, np.full((2, 2), 3.0 * np.asarray(c))),
    }

    # Heat equation with a source: the fixed point is far from any simplex (sum ~ 25).
    n = 10
    heat = jnp.asarray(_heat_matrix(n), dtype)
    src = jnp.linspace(0.5, 1.5, n).astype(dtype) * c

    def heat_fn(y, args):
        del args
        return heat @ y + src

    heat_truth = np.linalg.solve(np.eye(n) - np.asarray(heat), np.asarray(src))
    return {
        "pytree": (tree_fn, tree_y0, None, tree_truth),
        "heat": (heat_fn, jnp.zeros(n, dtype), None, heat_truth),
    }


PROBLEMS = ("pytree", "heat")


def _max_error(value, truth):
    errs = jax.tree_util.tree_map(
        lambda v, t: np.max(np.abs(np.asarray(v) - np.asarray(t)) / (1 + np.abs(np.asarray(t)))),
        value,
        truth,
    )
    return max(jax.tree_util.tree_leaves(errs))


# optimistix warns about complex support in general; these solvers use Hermitian products.
COMPLEX_OK = pytest.mark.filterwarnings("ignore:Complex support in Optimistix")


@COMPLEX_OK
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("problem", PROBLEMS)
@default_cases(lambda id: id.endswith("pytree-float64"))
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_solves_any_pytree(solver, problem, dtype):
    fn, y0, args, truth = _problems(dtype)[problem]
    sol = optx.fixed_point(fn, solver, y0, args, max_steps=5000, throw=False)
    assert sol.result == optx.RESULTS.successful
    # Structure and dtypes are kept (nothing is projected or cast).
    assert eqx.tree_equal(jax.eval_shape(lambda: sol.value), jax.eval_shape(lambda: y0))
    # The answer, not just the last step, is within tolerance: |y - y*| <= ~(atol + rtol|y*|).
    assert _max_error(sol.value, truth) <= 10 * TOL


@COMPLEX_OK
@default_cases(2)
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_curax_fixed_point_pytree_with_aux(solver):
    """Through `curax.fixed_point`: a complex pytree, `has_aux`, no simplex anywhere."""
    fn, y0, args, truth = _problems(jnp.complex128)["pytree"]

    def fn_aux(y, a):
        return fn(y, a), jnp.sum(jnp.abs(y["nd"][0]))

    sol = curax.fixed_point(fn_aux, solver, y0, args, has_aux=True, max_steps=5000, throw=False)
    assert sol.result == curax.RESULTS.successful
    assert _max_error(sol.value, truth) <= 10 * TOL
    # The aux returned is that of the evaluation at the returned point.
    assert jnp.allclose(sol.aux, jnp.sum(jnp.abs(sol.value["nd"][0])), rtol=1e-12, atol=0)
    assert float(sol.stats["residual"]) <= 10 * TOL * (1 + 25)
    assert "fw_gap" not in sol.stats


def _tanh_layer(y, a):
    m = _linear_operator(jr.key(1), 5, 0.7, jnp.float64)
    return jnp.tanh(m @ y + a)


def _assert_jvp_matches_central_difference(solve, getkey):
    a0 = jr.normal(getkey(), (5,))
    t = jr.normal(getkey(), (5,))
    _, jvp = eqx.filter_jvp(solve, (a0,), (t,))
    fd = central_difference(solve, a0, t, 1e-5)
    assert jnp.allclose(jvp, fd, rtol=1e-5, atol=1e-7)


@default_cases(2)
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_implicit_jvp_matches_finite_differences(solver, getkey):
    # Tighter tolerance for the finite differences (their error is the solve's over 2h).
    solver = eqx.tree_at(lambda s: (s.rtol, s.atol), solver, (1e-13, 1e-13))

    def solve(a):
        return optx.fixed_point(
            _tanh_layer, solver, jnp.zeros(5), a, adjoint=optx.ImplicitAdjoint(), max_steps=5000
        ).value

    _assert_jvp_matches_central_difference(solve, getkey)


def test_jvp_through_curax_fixed_point_default_adjoint(getkey):
    solver = curax.Anderson(1e-13, 1e-13)

    def solve(a):
        return curax.fixed_point(_tanh_layer, solver, jnp.zeros(5), a).value

    _assert_jvp_matches_central_difference(solve, getkey)


def test_best_so_far_squarem_tanh():
    solver = optx.BestSoFarFixedPoint(curax.SQUAREM(1e-10, 1e-10))
    sol = optx.fixed_point(lambda y, _: jnp.tanh(y + 1), solver, jnp.array(0.0))
    assert abs(float(sol.value) - TANH_ROOT) <= 1e-9


# ------------------------------------------------------------------------------------------
# Never `successful` when wrong
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["shift", "expand"])
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_unconstrained_success_only_at_a_fixed_point(solver, case):
    # y + 0.01 has no fixed point; 1.5 y has only 0 (iterates run away from it).
    scale = {"shift": lambda y: y + 0.01, "expand": lambda y: 1.5 * y}[case]

    def fn(y, _):
        return jax.tree_util.tree_map(scale, y)

    y0 = {"a": jnp.linspace(0.1, 0.5, 5), "b": jnp.array(0.3)}
    sol = optx.fixed_point(fn, solver, y0, max_steps=300, throw=False)
    if case == "shift":
        assert sol.result != optx.RESULTS.successful
        with pytest.raises(Exception):
            optx.fixed_point(fn, solver, y0, max_steps=300)
    elif sol.result == optx.RESULTS.successful:
        assert optx.max_norm(sol.value) <= 10 * TOL


@pytest.mark.parametrize("case", ["shift", "expand", "unnormalised"])
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_simplex_map_without_fixed_point_never_successful(solver, case):
    """With `Simplex()` the iterates are renormalised, but the residual tested is that of the
    map itself: a map that does not preserve mass has no fixed point on the simplex."""
    w = jnp.array([0.9, 1.3, 0.7, 1.1, 1.05])  # no w_i = 1: no vertex is fixed
    fn = {
        "shift": lambda p, _: p + 0.01,
        "expand": lambda p, _: 1.5 * p,
        "unnormalised": lambda p, _: p * w,
    }[case]
    solver = eqx.tree_at(lambda s: s.constraint, solver, curax.Simplex())
    p0 = jnp.full(5, 0.2)
    sol = curax.fixed_point(fn, solver, p0, max_steps=300, throw=False)
    assert sol.result != curax.RESULTS.successful
    with pytest.raises(Exception):
        curax.fixed_point(fn, solver, p0, max_steps=300)


@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_slow_contraction_success_means_close(solver):
    """`y -> M y + b` with a mode contracting at 0.9999: a residual of 1e-9 leaves an error
    of up to 1e-5. Success must mean the answer is within tolerance."""
    q, _ = jnp.linalg.qr(jr.normal(jr.key(3), (6, 6)))
    m = q @ jnp.diag(jnp.array([0.9999, 0.99, 0.5, -0.5, 0.2, 0.0])) @ q.T
    b = jnp.linspace(-1.0, 1.0, 6)
    truth = np.linalg.solve(np.eye(6) - np.asarray(m), np.asarray(b))
    sol = optx.fixed_point(
        lambda y, _: m @ y + b, solver, jnp.zeros(6), max_steps=3000, throw=False
    )
    if sol.result == optx.RESULTS.successful:
        assert _max_error(sol.value, truth) <= 10 * TOL
    # (SQUAREM's single step length is slow with several slow modes: honesty only.)
    if isinstance(solver, (curax.Anderson, curax.NewtonKrylov)):
        assert sol.result == optx.RESULTS.successful


@pytest.fixture(scope="module")
def slow_curation():
    # Reference weight 1e-4: the map contracts at ~0.9999 near its (full-support) fixed point.
    _, problem = curax.two_basin_problem(n=101, q=0.3, reference_weight=1e-4)
    return problem, curax.mixing_fixed_point(problem).value


@default_cases(2)
@pytest.mark.parametrize("solver", SOLVERS, ids=_name)
def test_slow_curation_success_means_close(solver, slow_curation):
    problem, truth = slow_curation
    sol = curax.fixed_point(
        curax.curate, solver, problem.uniform(), problem, max_steps=3000, throw=False
    )
    if sol.result == curax.RESULTS.successful:
        assert jnp.max(jnp.abs(sol.value - truth) / (TOL + TOL * truth)) <= 10
    # (Anderson and Newton-Krylov do not certify this one within 3000 steps: honesty only.)
    if isinstance(solver, curax.SQUAREM):
        assert sol.result == curax.RESULTS.successful


# ------------------------------------------------------------------------------------------
# Newton-Krylov from far starts; input errors
# ------------------------------------------------------------------------------------------


def _one_nat_problem():
    x = curax.grid_1d(0.0, 1.0, 101)
    return curax.CurationProblem(
        x[None, :], jnp.array([1.0]), reference=jnp.full(101, 1 / 101), reference_weight=0.1
    )


@default_cases(1)
@pytest.mark.parametrize(
    "make",
    [
        _one_nat_problem,
        lambda: curax.two_basin_problem(n=400, separation=3.0, q=0.3, reference_weight=0.2)[1],
    ],
    ids=["one-nat", "two-basin"],
)
def test_newton_krylov_from_uniform_with_reference_data(make):
    problem = make()
    truth = curax.mixing_fixed_point(problem).value
    sol = curax.fixed_point(
        curax.curate, curax.NewtonKrylov(1e-11, 1e-11), problem.uniform(), problem
    )
    assert sol.result == curax.RESULTS.successful
    assert jnp.max(jnp.abs(sol.value - truth)) <= 1e-9


def test_mixed_precision_y0():
    def fn(y, _):
        return 0.5 * jnp.ones(3, jnp.float64) * y.astype(jnp.float64) + 1.0

    # float32 into a float64 map: cast up.
    sol = curax.fixed_point(fn, curax.Anderson(1e-10, 1e-10), jnp.zeros(3, jnp.float32))
    assert sol.value.dtype == jnp.float64
    assert jnp.allclose(sol.value, 2.0, rtol=0, atol=1e-8)
    # complex into a real map cannot be cast down: an error naming `y0`.
    with pytest.raises(ValueError, match="y0"):
        curax.fixed_point(
            lambda y, _: jnp.real(y) * 0.5, curax.Anderson(1e-8, 1e-8), jnp.zeros(3, complex)
        )
