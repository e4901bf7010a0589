"""`curax.stable_point`: the certified answer to "where do the dynamics end up"."""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._fixed_point import fixed_point
from ._jit import filter_jit
from ._maps import CurationMap, mixed_growth
from ._nash import _mixing_fixed_point, checked_reference_weight, nash_solution
from ._problem import (
    canonical_k,
    check_distribution,
    CurationProblem,
    is_concrete,
    simplex_tolerance,
)
from ._solution import RESULTS, Solution, throw_if_failed
from ._solver import ActiveSetNewton, NewtonKrylov, SQUAREM
from ._solver._misc import to_simplex
from ._stability import _stability


Method = Literal["nash_solution", "mixing_fixed_point", "active_set_newton", "squarem_newton"]

# Steps of the accelerated dynamics that a fallback runs before handing over to a Newton
# method, per unit of `max_steps`.
_DYNAMICS_PER_STEP = 16
# Arnoldi steps for the contraction-rate estimate of a finite-K map with reference data.
_KRYLOV_DIM = 32
# Support points (the heaviest) on which the Jacobian's spectral radius is computed densely.
_RADIUS_SLOTS = 64
# The map the solvers iterate: `p0` is validated before the `jit`, and the iterates stay on
# the simplex, so no `eqx.error_if` (a host callback, never persistently cached) is needed.
_CURATE = CurationMap(checked=False)


def _has_reference(problem: CurationProblem) -> bool:
    """Whether reference data is mixed in (static; a traced weight counts as present)."""
    if problem.reference is None:
        return False
    rw = problem.reference_weight
    if is_concrete(rw):
        return bool(rw > 0)
    return True


def stable_point_method(problem: CurationProblem) -> Method:
    """Which method [`curax.stable_point`][] uses for `problem` (decided from its structure
    alone, so the same for every problem of the same shapes):

    - `"nash_solution"`: every reward has K = infinity and there is no reference data. The
        stable point is the weighted Nash bargaining solution, found by
        [`curax.nash_solution`][] (exact column generation).
    - `"mixing_fixed_point"`: every reward has K = infinity, with reference data
        ([`curax.mixing_fixed_point`][], Newton on an m-dimensional convex dual).
    - `"active_set_newton"`: some reward has finite K (a mixed population included), no
        reference data: [`curax.ActiveSetNewton`][] through [`curax.fixed_point`][], with
        accelerated dynamics ([`curax.SQUAREM`][]) and a second active-set solve as the
        fallback.
    - `"squarem_newton"`: some reward has finite K, with reference data (a full-support
        fixed point): [`curax.SQUAREM`][] followed by [`curax.NewtonKrylov`][].

    A `reference` with a concrete `reference_weight` of 0 counts as no reference data.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].

    **Returns:**

    One of the strings above.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, k=4)
        curax.stable_point_method(problem)  # "active_set_newton"
        ```
    """
    if not isinstance(problem, CurationProblem):
        raise ValueError(f"`problem` must be a CurationProblem, got {type(problem).__name__}.")
    infinite = not problem.has_finite_k
    reference = _has_reference(problem)
    if infinite:
        return "mixing_fixed_point" if reference else "nash_solution"
    return "squarem_newton" if reference else "active_set_newton"


def stable_point(
    problem: CurationProblem,
    p0: Float[Array, " n"] | None = None,
    *,
    tol: float = 1e-10,
    max_steps: int = 256,
    throw: bool = True,
    grid_shape: tuple[int, ...] | None = None,
) -> Solution:
    """The stable point of the curation dynamics of `problem`, with a certificate.

    The method is chosen from the problem's structure (see
    [`curax.stable_point_method`][]): the exact Nash bargaining solver for K = infinity
    without reference data, the mixing fixed point for K = infinity with reference data,
    support identification plus Newton ([`curax.ActiveSetNewton`][]) for finite K and mixed
    populations, and accelerated dynamics plus Newton-Krylov for finite K with reference
    data. A method that does not certify its point is followed by a fallback (accelerated
    dynamics, then a second Newton solve from where they stopped).

    `result` is `RESULTS.successful` **only with a certificate**, computed here from the map
    itself at the returned point:

    - without reference data: the Frank-Wolfe / KKT gap `max_x G(x) - 1 <= tol` over *all*
        points `x` (`G` the growth factor, [`curax.growth`][]). Since `E_p[G] = 1`, this says
        `G = 1` on the support up to `tol` and `G <= 1 + tol` off it: mass put anywhere does
        not grow, so the point is stable against invasion, not merely a vertex or face
        optimum (those are fixed points too).
    - with reference data: an error bound `error_bound <= tol` on `max |p - p*|` from the
        residual and the contraction rate `rho` of the map at `p`,
        `error_bound = residual_w / (1 - rho)`. For K = infinity the Jacobian of the mixing
        map is similar to a symmetric matrix with spectrum in `[0, rho]`,
        `rho = max_x (1 - reference_weight) G(x) < 1`, so `rho` is exact and the bound
        (in the `p^{-1/2}`-weighted norm, converted to max-norm:
        `residual_w = sqrt(max p * sum r^2 / p)`) holds to first order in the residual. For
        finite K, `rho` is the Arnoldi estimate of the spectral radius
        ([`curax.stability`][]) and `residual_w` the max-norm residual: an estimate.

    Otherwise `result` is `certificate_failed`, `stalled` or `nonlinear_max_steps_reached`
    (or the failing method's own code), with the numbers in `stats`.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].
    - `p0`: `Float[Array, " n"]` or `None`: where the finite-K methods start (default
        uniform; a full-support start). K = infinity answers do not depend on it: the
        stable point's utilities `u* = E p*` are unique (`p*` itself is unique up to
        duplicate support points).
    - `tol`: keyword only, the certified FW gap (no reference data) or error bound (with
        reference data). Default 1e-10; at least `50 eps` (1.1e-14 in float64), below
        which rounding in `G` would certify anything.
    - `max_steps`: keyword only, the step limit of the chosen method: passes over the
        rewards (`nash_solution`), Newton steps (`mixing_fixed_point`), active-set passes
        (`ActiveSetNewton`) or Newton-Krylov steps; the fallback dynamics run at most
        `16 * max_steps` steps. Default 256.
    - `throw`: keyword only, raise if no certificate holds (inside `jit` this follows
        equinox's `EQX_ON_ERROR`).
    - `grid_shape`: keyword only, the support as a grid (e.g. `(n,)`), handed to
        [`curax.nash_solution`][] (stencil and multilevel solve); `None` treats the points
        as unordered columns there.

    **Returns:**

    A [`curax.Solution`][]: `value` the stable point `p` (n,), `result`, and `stats` (all
    arrays): `fw_gap` (`max G - 1`; reported with reference data too, where it is no
    certificate), `residual` (`max |f(p) - p|`), `error_bound` (`inf` without reference
    data), `contraction_rate` (`rho`, `nan` without reference data), `num_map_evals`
    (evaluations of the map or passes over the rewards, certificate included),
    `support_size` (points with positive mass), `num_steps`, `max_steps`,
    `fallback_used` (whether the first method did not certify and the fallback ran) and
    `support_radius` (without reference data; `nan` with it): the spectral radius of the
    map's Jacobian along the support (mass moved between support points; computed densely
    on the 64 heaviest points).

    !!! info "Stable against invasion vs. attracting"

        The certificate says that no mass placed anywhere grows: `p` is an equilibrium of the
        curation game that no point can invade. Whether the iterates of the dynamics
        *converge* to it is a second question, answered by `support_radius`: below 1 they
        do from nearby starts; above 1 they oscillate around it with growing amplitude. The
        latter happens: for K = 2 the growth factor is `G = 1 + B p` with `B` antisymmetric
        (`sigma(d) + sigma(-d) = 1`), a zero-sum game, whose discrete replicator dynamics
        spiral away from a mixed equilibrium and only their time averages converge to it.
        Near-duplicate support points (neighbours on a fine grid) give radii within ~1e-8
        of 1 either way.

    This function is `jit`- and `vmap`-able (e.g. `jax.vmap` over weights or rewards of
    problems with the same shapes); the method is static.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, separation=3.0, q=0.3, k=4)
        sol = curax.stable_point(problem)
        sol.result == curax.RESULTS.successful, sol.stats["fw_gap"]
        curax.stable_point_method(problem)  # "active_set_newton"
        ```
    """
    method = stable_point_method(problem)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be a positive float, got {tol!r}.")
    floor = 50 * float(jnp.finfo(problem.rewards.dtype).eps)
    if tol < floor:
        # G ~ 1 is computed to a few ulps: a computed gap of -1e-16 "certifies" any tol.
        raise ValueError(
            f"`tol` must be at least {floor:.1e} for {problem.rewards.dtype} rewards (the "
            f"growth factor and residual are only computed to rounding), got {tol!r}."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    n = problem.size
    dtype = problem.rewards.dtype
    if p0 is None:
        p0 = problem.uniform()
    else:
        p0 = check_distribution(p0, n, "p0", dtype)
    if grid_shape is not None:
        grid_shape = tuple(int(g) for g in grid_shape)
    if method == "mixing_fixed_point":
        problem = checked_reference_weight(problem)
    # One compiled solve for every finite K of a bucket; the Solution holds no problem.
    problem = canonical_k(problem)
    kwargs = dict(method=method, tol=float(tol), max_steps=max_steps, grid_shape=grid_shape)
    finite_k = method in ("active_set_newton", "squarem_newton")
    if finite_k and is_concrete(*jax.tree.leaves(eqx.filter((problem, p0), eqx.is_array))):
        out = _finite_k_on_host(problem, p0, kwargs)
    else:
        out = _stable_point(problem, p0, **kwargs)
    # After the `jit`, so that the compiled solve carries no host callback (cacheable).
    return throw_if_failed(out, throw)


def _finite_k_on_host(problem: CurationProblem, p0: Array, kwargs: dict) -> Solution:
    """The finite-K solve with its fallback decided on the host: the Newton attempt is one
    compiled program, the fallback's dynamics another, compiled only when an attempt fails
    to certify; the second attempt reuses the first's program. The same steps as the single
    traced program (`fallback=True`, used under the caller's `jit`/`vmap`), with about a
    quarter less to compile when the first attempt certifies (the common case)."""
    first = _stable_point(problem, p0, fallback=False, **kwargs)
    if bool(first.result == RESULTS.successful):
        return first
    start, dyn_evals = _fallback_start(problem, p0, kwargs["tol"], kwargs["max_steps"])
    second = _stable_point(problem, start, fallback=False, **kwargs)
    stats = dict(second.stats)
    # Both attempts' map evaluations and the dynamics', with the certificate counted once.
    stats["num_map_evals"] = (
        first.stats["num_map_evals"] + dyn_evals + second.stats["num_map_evals"] - 1
    )
    stats["num_steps"] = first.stats["num_steps"] + second.stats["num_steps"]
    stats["fallback_used"] = jnp.array(True)
    return Solution(value=second.value, result=second.result, aux=None, stats=stats, state=None)


def _support_radius(p: Array, problem: CurationProblem) -> Array:
    """Spectral radius of the map's Jacobian on the tangent space of the support of `p` (the
    `_RADIUS_SLOTS` heaviest points), from the dense Jacobian of the map restricted to them:
    O(slots^2 Q), no evaluation on the full support."""
    slots = min(_RADIUS_SLOTS, p.shape[0])
    mass, idx = lax.top_k(p, slots)
    on = mass > 0
    onf = on.astype(p.dtype)
    sub = problem.map_points(lambda a: a[..., idx])

    def restricted(q):
        q = q / jnp.sum(q)
        return jnp.where(on, q * mixed_growth(q, sub), 0.0)

    jac = jax.jacfwd(restricted)(jnp.where(on, mass, 0.0))
    count = jnp.maximum(jnp.sum(onf), 1.0)
    proj = jnp.diag(onf) - onf[:, None] * onf[None, :] / count
    eig = jnp.linalg.eigvals(proj @ jac @ proj)
    return jnp.where(jnp.sum(onf) > 1, jnp.max(jnp.abs(eig)), 0.0)


def _no_reference_certificate(p: Array, problem: CurationProblem) -> dict[str, Array]:
    g = mixed_growth(p, problem)
    return {
        "fw_gap": jnp.max(g) - 1,
        "residual": jnp.max(jnp.abs(jnp.where(p > 0, p * g, 0.0) - p)),
        "error_bound": jnp.array(jnp.inf, p.dtype),
        "contraction_rate": jnp.array(jnp.nan, p.dtype),
    }


def _mixing_certificate(p: Array, problem: CurationProblem, rho: Array | None) -> dict[str, Array]:
    """Residual and contraction-rate error bound of the reference-mixing map at `p`."""
    g = mixed_growth(p, problem)
    rw = problem.reference_weight
    fp = rw * problem.reference + (1 - rw) * jnp.where(p > 0, p * g, 0.0)
    r = fp - p
    residual = jnp.max(jnp.abs(r))
    if rho is None:
        # K = infinity: J = (1 - rw)(diag G - diag(p) M) with M positive semi-definite, similar
        # (by p^{1/2}) to a symmetric matrix whose spectrum lies in [0, max (1 - rw) G]; in the
        # p^{-1/2}-weighted 2-norm it is a contraction with that factor.
        rho = jnp.max((1 - rw) * g)
        pos = p > 0
        weighted = jnp.sqrt(
            jnp.max(p) * jnp.sum(jnp.where(pos, r**2 / jnp.where(pos, p, 1.0), 0.0))
        )
        # A residual where p = 0 (cannot happen at a fixed point with p_ref > 0 there) is not
        # covered by the weighted norm: fall back to the max-norm residual then.
        weighted = jnp.where(jnp.all(pos | (r == 0)), weighted, residual)
    else:
        weighted = residual
    bound = jnp.where(rho < 1, weighted / (1 - jnp.minimum(rho, 1.0 - 1e-300)), jnp.inf)
    return {
        "fw_gap": jnp.max(g) - 1,
        "residual": residual,
        "error_bound": bound,
        "contraction_rate": rho,
    }


def _certify(p: Array, problem: CurationProblem, method: Method, tol: float) -> tuple:
    if method in ("nash_solution", "active_set_newton"):
        cert = _no_reference_certificate(p, problem)
        ok = cert["fw_gap"] <= tol
    elif method == "mixing_fixed_point":
        cert = _mixing_certificate(p, problem, None)
        ok = cert["error_bound"] <= tol
    else:
        krylov_dim = min(_KRYLOV_DIM, problem.size)
        rho = _stability(p, problem, _CURATE, 1e-10, 1e-9, krylov_dim).radius
        cert = _mixing_certificate(p, problem, rho)
        ok = cert["error_bound"] <= tol
    tol_simplex = simplex_tolerance(p.dtype)
    on_simplex = (jnp.min(p) >= -tol_simplex) & (jnp.abs(jnp.sum(p) - 1) <= tol_simplex)
    finite = jnp.all(jnp.isfinite(p)) & jnp.isfinite(cert["residual"])
    # `ok` is False for a NaN certificate.
    return cert, ok & finite & on_simplex, finite


def _fallback_result(first: RESULTS, ok: Array, finite: Array) -> RESULTS:
    """Without a certificate: keep the method's own failure code, or `certificate_failed`
    where it claimed success."""
    failed = RESULTS.where(first == RESULTS.successful, RESULTS.certificate_failed, first)
    failed = RESULTS.where(finite, failed, RESULTS.nonfinite)
    return RESULTS.where(ok, RESULTS.successful, failed)


def _active_set_solver(tol: float) -> ActiveSetNewton:
    return ActiveSetNewton(rtol=0.5 * tol, atol=0.5 * tol)


def _newton(tol: float, method: Method) -> Any:
    if method == "squarem_newton":
        return NewtonKrylov(rtol=0.5 * tol, atol=0.5 * tol)
    return _active_set_solver(tol)


def _dynamics(problem, p0, tol, max_steps):
    """The fallback's accelerated dynamics from `p0`: where the second Newton solve starts."""
    dyn = fixed_point(
        _CURATE,
        SQUAREM(rtol=tol, atol=tol),
        p0,
        problem,
        max_steps=_DYNAMICS_PER_STEP * max_steps,
        throw=False,
    )
    return to_simplex(lax.stop_gradient(dyn.value)), dyn.stats["num_map_evals"]


def _attempt(problem, start, tol, max_steps, method: Method):
    """One Newton solve from `start` and its certificate."""
    sol = fixed_point(
        _CURATE, _newton(tol, method), start, problem, max_steps=max_steps, throw=False
    )
    p = to_simplex(lax.stop_gradient(sol.value))
    cert, ok, finite = _certify(p, problem, method, tol)
    return p, sol.result, cert, ok, finite, sol.stats["num_map_evals"], sol.stats["num_steps"]


def _finite_k(problem, p0, tol, max_steps, method: Method, fallback: bool):
    """Finite K: the Newton method from `p0`; if its point does not certify (and `fallback`),
    accelerated dynamics from `p0` and the Newton method again from where they stopped. One
    loop of at most two attempts, so that each solver is compiled once."""
    if not fallback:
        return (*_attempt(problem, p0, tol, max_steps, method), jnp.array(False))

    def attempt(i):
        start, evals = lax.cond(
            i == 0,
            lambda _: (p0, jnp.array(0)),
            lambda _: _dynamics(problem, p0, tol, max_steps),
            None,
        )
        p, result, cert, ok, finite, e, steps = _attempt(problem, start, tol, max_steps, method)
        return p, result, cert, ok, finite, evals + e, steps

    def cond(carry):
        i, *_, ok, _, _, _ = carry
        return (i < 2) & ~ok

    def body(carry):
        i, _, _, _, _, _, evals, steps = carry
        p, result, cert, ok, finite, e, st = attempt(i)
        return i + 1, p, result, cert, ok, finite, evals + e, steps + st

    shapes = jax.eval_shape(attempt, jnp.array(0))
    zeros = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype), shapes)
    init = (jnp.array(0), *zeros)
    i, p, result, cert, ok, finite, evals, steps = lax.while_loop(cond, body, init)
    return p, result, cert, ok, finite, evals, steps, i > 1


_fallback_start = filter_jit(_dynamics)


@filter_jit
def _stable_point(
    problem: CurationProblem,
    p0: Array,
    *,
    method: Method,
    tol: float,
    max_steps: int,
    grid_shape: tuple[int, ...] | None,
    fallback: bool = True,
) -> Solution:
    fallback_used = jnp.array(False)
    if method == "nash_solution":
        sol = nash_solution(
            problem, grid_shape=grid_shape, tol=tol, max_passes=max_steps, throw=False
        )
        p = to_simplex(sol.value)
        first = sol.result
        evals = sol.stats["num_passes"]
        steps = sol.stats["num_steps"]
    elif method == "mixing_fixed_point":
        sol = _mixing_fixed_point(problem, tol=0.1 * tol, max_steps=max_steps)
        p = to_simplex(sol.value)
        first = sol.result
        evals = sol.stats["num_map_evals"]
        steps = sol.stats["num_steps"]
    else:
        p, first, cert, ok, finite, evals, steps, fallback_used = _finite_k(
            problem, p0, tol, max_steps, method, fallback
        )
    if method in ("nash_solution", "mixing_fixed_point"):
        cert, ok, finite = _certify(p, problem, method, tol)
    result = _fallback_result(first, ok, finite)
    if method in ("nash_solution", "active_set_newton"):
        radius = _support_radius(p, problem)
    else:
        radius = jnp.array(jnp.nan, p.dtype)
    stats = {
        **cert,
        "support_radius": radius,
        # + the certificate's own evaluation of the map
        "num_map_evals": jnp.asarray(evals) + 1,
        "support_size": jnp.sum(p > 0),
        "num_steps": jnp.asarray(steps),
        "max_steps": jnp.array(max_steps),
        "fallback_used": fallback_used,
    }
    stats = {k: jnp.asarray(v) for k, v in stats.items()}
    return Solution(value=p, result=result, aux=None, stats=stats, state=None)
