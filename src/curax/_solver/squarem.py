from collections.abc import Callable

import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Int, PyTree, Scalar

from .._custom_types import Aux, Y
from ._base import AbstractGeneralSolver, AbstractGeneralState
from ._constraint import AbstractConstraint, Unconstrained
from ._misc import (
    DEFAULT_PATIENCE,
    Monitor,
    real_dtype,
    secant_ratio,
    squarem_extrapolation,
    tree_sub,
    tree_where,
)


class _SquaremState(AbstractGeneralState):
    fy: PyTree[Array]
    monitor: Monitor
    num_map_evals: Int[Array, ""]
    step_max: Scalar
    num_rejected: Int[Array, ""]


class SQUAREM(AbstractGeneralSolver[Y, Aux, _SquaremState]):
    """SQUAREM (Varadhan and Roland 2008, scheme S3) for fixed points of any map on pytrees
    of real or complex arrays.

    From the iterate `y0` (whose image is known), each step takes `y1 = f(y0)`, `y2 = f(y1)`,
    extrapolates along `r = y1 - y0`, `v = y2 - 2 y1 + y0` with step
    `alpha = -||r|| / ||v||` (at most `-1`, at least `-step_max`, where `step_max` grows by
    `step_factor` after each accepted maximal step) to `y' = y0 - 2 alpha r + alpha^2 v`, and
    stabilises with `f(y')`. If the residual `|f(y') - y'|` exceeds the plain step's
    `|y2 - y1|` (or is not finite), the extrapolation is rejected: the plain step `y2` is
    taken and, if the step was at its cap, `step_max` shrinks by `step_factor`. One more
    evaluation gives the image of the new iterate, whose residual is what termination
    tests: three map evaluations per step.

    **Termination.** Stops when the estimated distance to the fixed point,
    `norm((f(y) - y) / (atol + rtol |f(y)|)) / (1 - rho_hat)`, is below 1, with `rho_hat`
    the largest contraction factor seen in the extrapolation's secants (`||v|| / ||r||`
    estimates `1 - rho` along `r`) and in the steps taken, over the last 16 steps (see
    `docs/solvers.md`). A stall (no 1% progress in `patience` steps, with most
    extrapolations rejected) is reported as `optx.RESULTS.nonlinear_divergence`
    (`curax.RESULTS.stalled` through [`curax.fixed_point`][]).

    **Constraint.** With [`curax.Simplex`][] the images are renormalised and the
    extrapolation is done in `log p` on the points with mass, so the iterate stays positive
    with the same support (for replicator maps `p -> p G(p)` the log-iterates move
    additively). [`curax.fixed_point`][] chooses it for replicator maps.

    ??? cite "References"

        ```bibtex
        @article{varadhan2008simple,
            author = {Varadhan, Ravi and Roland, Christophe},
            title = {Simple and Globally Convergent Methods for Accelerating the
                     Convergence of Any {EM} Algorithm},
            journal = {Scandinavian Journal of Statistics},
            volume = {35},
            number = {2},
            pages = {335--353},
            year = {2008},
        }
        ```

    !!! Example

        ```python
        sol = optx.fixed_point(lambda y, _: jnp.tanh(y + 1), curax.SQUAREM(1e-10, 1e-10),
                               jnp.zeros(3))
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    step_factor: float = 4.0
    constraint: AbstractConstraint = Unconstrained()
    patience: int | None = DEFAULT_PATIENCE

    def __check_init__(self):
        if not self.step_factor >= 1:
            raise ValueError(f"`step_factor` must be >= 1, got {self.step_factor}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _SquaremState:
        del options, f_struct, aux_struct, tags
        fy, monitor = self._start(fn, y, args)
        dtype = real_dtype(y)
        return _SquaremState(fy, monitor, jnp.array(1), jnp.array(1.0, dtype), jnp.array(0))

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        con = self.constraint
        p0 = y
        p1 = con.project(state.fy)
        f1, _ = fn(p1, args)
        p2 = con.project(f1)
        alpha, r, p_ext, ext_ok = squarem_extrapolation(con, p0, p1, p2, state.step_max)
        f_ext, _ = fn(p_ext, args)
        res_ext = self.norm(tree_sub(f_ext, p_ext))
        res_plain = self.norm(tree_sub(f1, p1))
        ok = ext_ok & jnp.isfinite(res_ext)
        accept = ok & (res_ext <= res_plain)
        # For the stall test, an extrapolation that does not strictly help is a rejection.
        helped = ok & (res_ext < res_plain)
        new_y = tree_where(accept, con.project(f_ext), p2)
        new_fy, aux = fn(new_y, args)
        # Varadhan and Roland's step-length control: grow the cap after a maximal accepted
        # step, shrink it (not reset it) after a rejected maximal one.
        at_cap = alpha <= -state.step_max
        step_max = jnp.where(
            at_cap,
            jnp.where(
                accept,
                state.step_max * self.step_factor,
                jnp.maximum(1.0, state.step_max / self.step_factor),
            ),
            state.step_max,
        ).astype(state.step_max.dtype)
        # The first plain step's secant, `||v|| / ||r||` to first order `||(J - I) r|| / ||r||`.
        g0 = tree_sub(state.fy, p0)
        g1 = tree_sub(f1, p1)
        inner, _ = secant_ratio(r, tree_sub(g1, g0), p0, self.norm)
        monitor = self._record(
            state.monitor, y, state.fy, new_y, new_fy, ~helped, extra_secant=inner
        )
        new_state = _SquaremState(
            new_fy,
            monitor,
            state.num_map_evals + 3,
            step_max,
            state.num_rejected + jnp.where(accept, 0, 1),
        )
        return new_y, new_state, aux

    def _stats(self, state):
        return {**super()._stats(state), "num_rejected": state.num_rejected}


SQUAREM.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance (see the termination rule above).
- `atol`: absolute tolerance.
- `norm`: the norm of the scaled residual, e.g. `optx.max_norm` (default).
- `step_factor`: factor by which the largest extrapolation step grows after an accepted
    maximal step (Varadhan and Roland's `mstep`, default 4).
- `constraint`: [`curax.Unconstrained`][] (default) or [`curax.Simplex`][].
- `patience`: steps without a 1% improvement of the best residual (with most
    extrapolations rejected) after which the solve is declared stalled; `None` never.
"""
