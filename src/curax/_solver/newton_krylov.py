from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._custom_types import Aux
from ._misc import scaled_error, solver_stats, StallTracker, terminate_on, to_simplex


class _NewtonKrylovState(eqx.Module):
    error: Scalar
    tracker: StallTracker
    num_map_evals: Int[Array, ""]
    line_search_failed: Bool[Array, ""]


class NewtonKrylov(optx.AbstractFixedPointSolver[Array, Aux, _NewtonKrylovState]):
    """Newton's method on `F(p) = f(p) - p`, restricted to the tangent space of the simplex,
    with matrix-free Krylov linear solves and a backtracking line search on the residual.

    Each step linearises `f` once (`jax.linearize`), solves
    `P (J - I) P d = -(f(p) - p)` with lineax GMRES (`P` removes the mean, so the step keeps
    the total mass), and backtracks `p + t d` (clipped onto the simplex) for
    `t = 1, 1/2, ...` until `max |F|` decreases by the Armijo factor `1 - 1e-4 t`. If no `t`
    decreases it, or the boundary of the simplex cuts the step below 5% of the Newton step
    (far from a fixed point the Newton direction can be poor), the plain step `f(p)` is
    taken instead; `patience` steps without a new best residual are a stall
    (`RESULTS.stalled` through [`curax.fixed_point`][]).

    Converges quadratically near a fixed point with an invertible `J - I`, e.g. the unique
    interior fixed point of a map with reference data. **It does not know about stability**:
    started near a vertex or a face of the simplex it happily converges to the spurious
    (unstable) fixed point there. [`curax.fixed_point`][] flags that through the FW gap
    (`RESULTS.unstable_fixed_point`); see also [`curax.stability`][].

    `stats["num_map_evals"]` counts each linearisation, each Krylov matrix-vector product
    (a Jacobian-vector product, about one map evaluation) and each line-search evaluation.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    linear_solver: lx.AbstractLinearSolver = lx.GMRES(
        rtol=1e-10, atol=1e-14, restart=50, max_steps=2, stagnation_iters=2
    )
    max_backtracks: int = 5
    patience: int = 32

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _NewtonKrylovState:
        del fn, args, options, f_struct, aux_struct, tags
        return _NewtonKrylovState(
            jnp.array(jnp.inf, y.dtype),
            StallTracker.init(y.dtype),
            jnp.array(0),
            jnp.array(False),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags

        def f(p):
            return fn(p, args)[0]

        fy, lin = jax.linearize(f, y)
        aux = fn(y, args)[1]
        res0 = fy - y
        error = scaled_error(y, fy, self.rtol, self.atol, self.norm)
        norm0 = jnp.max(jnp.abs(res0))

        def project(v):
            return v - jnp.mean(v)

        def matvec(v):
            v = project(v)
            return project(lin(v) - v)

        operator = lx.FunctionLinearOperator(matvec, jax.ShapeDtypeStruct(y.shape, y.dtype))
        lin_sol = lx.linear_solve(operator, -project(res0), self.linear_solver, throw=False)
        # (A failed or inexact Krylov solve is not fatal: the line search judges the step.)
        direction = project(lin_sol.value)
        direction = jnp.where(jnp.all(jnp.isfinite(direction)), direction, -res0)
        if isinstance(self.linear_solver, lx.GMRES):
            num_matvecs = lin_sol.stats["num_steps"] * (self.linear_solver.restart + 1)
        else:
            num_matvecs = jnp.array(0)

        # Fraction to the boundary: the step never zeroes a point's mass outright (that
        # distorts the iterate and, for a replicator map, cannot be undone); points still
        # head geometrically towards zero if the Newton direction says so.
        ratio = jnp.where(direction < 0, y / jnp.where(direction < 0, -direction, 1.0), jnp.inf)
        t_max = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        # A step cut short by the boundary is no Newton step: go straight to the fallback.
        usable = t_max >= 0.05

        def ls_cond(carry):
            i, _, _, _, accepted = carry
            return (i < self.max_backtracks) & ~accepted & usable

        def ls_body(carry):
            i, best, best_r, _, _ = carry
            t = t_max * 0.5**i
            cand = to_simplex(y + t * direction)
            r = jnp.max(jnp.abs(f(cand) - cand))
            r = jnp.where(jnp.isfinite(r), r, jnp.inf)
            accepted = r <= (1 - 1e-4 * t) * norm0
            better = r < best_r
            return (
                i + 1,
                jnp.where(better, cand, best),
                jnp.where(better, r, best_r),
                r,
                accepted,
            )

        num_ls, best, best_r, _, accepted = lax.while_loop(
            ls_cond,
            ls_body,
            (jnp.array(0), y, jnp.array(jnp.inf, y.dtype), norm0, jnp.array(False)),
        )
        # Globalisation: if no step length decreases the residual (far from the fixed point
        # the Newton direction can be poor), take the plain step f(p). Persistent failure
        # shows up as no new best residual for `patience` steps: a stall.
        plain = to_simplex(fy)

        def plain_residual():
            return jnp.max(jnp.abs(f(plain) - plain))

        del plain_residual
        new_y = jnp.where(accepted, best, plain)
        failed = ~accepted
        tracker = state.tracker.update(error)
        new_state = _NewtonKrylovState(
            error,
            tracker,
            state.num_map_evals + 1 + num_matvecs + num_ls,
            failed,
        )
        return new_y, new_state, aux

    def terminate(self, fn, y, args, options, state, tags) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return terminate_on(state.error, state.tracker, self.patience)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return (
            y,
            aux,
            {
                **solver_stats(state.num_map_evals, state.error, state.tracker, self.patience),
            },
        )


NewtonKrylov.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop when `norm((p - f(p)) / (atol + rtol |f(p)|)) < 1`.
- `atol`: absolute tolerance (see `rtol`).
- `norm`: the norm of that scaled residual, e.g. `optx.max_norm` (default).
- `linear_solver`: the lineax solver for the Newton system (matrix-free; default GMRES with
    restart 50, at most 2 restarts: an inexact Newton step). Its failure is not fatal: the
    line search decides.
- `max_backtracks`: halvings of the step before the line search gives up.
- `patience`: steps without a new best residual after which the solve is declared stalled.
"""
