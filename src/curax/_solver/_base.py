"""The part every general fixed-point solver of curax shares: a constraint, the residual of
the iterate it returns, and the contraction-aware termination rule."""

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from equinox import AbstractVar
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._custom_types import Aux, Y
from ._constraint import AbstractConstraint
from ._misc import check_inexact, Monitor, scaled_error, secant_ratio, tree_sub


_State = TypeVar("_State", bound="AbstractGeneralState")


class AbstractGeneralState(eqx.Module):
    """Every general solver's state holds the current iterate's image `f(y)` (so that the
    residual of the point it returns is known), the monitor, and the evaluation count."""

    fy: AbstractVar[PyTree[Array]]
    monitor: AbstractVar[Monitor]
    num_map_evals: AbstractVar[Int[Array, ""]]


class AbstractGeneralSolver(optx.AbstractFixedPointSolver[Y, Aux, _State]):
    """Shared by [`curax.PlainIteration`][], [`curax.DampedIteration`][],
    [`curax.SQUAREM`][], [`curax.Anderson`][] and [`curax.NewtonKrylov`][].

    **Termination.** Each step ends at an iterate `y` whose image `f(y)` the solver has
    evaluated. With the scaled residual `r = norm((f(y) - y) / (atol + rtol |f(y)|))` and
    `1 - rho_hat` the smallest secant ratio `norm(dg) / norm(dy)` over the last 16 steps (how
    much a step `dy` changed the residual `g = f(y) - y`: an estimate of `1 - rho` for the
    contraction factor `rho` along the directions the solver moved in), the solve succeeds
    when `r / (1 - rho_hat) < 1` (or `r = 0`). `1 - rho_hat` is clipped to
    `[1e-6, 1]`; before any ratio is measured it is `1e-6`. A contraction with factor `rho`
    has `|y - y*| <= |f(y) - y| / (1 - rho)`, so this bounds the distance to the fixed point,
    not just the last step.

    **Stalls.** The solve is declared stalled when the best residual has not improved by 1%
    over `patience` steps *and* the solver's acceleration (extrapolation, mixing, Newton step)
    was rejected on at least half of them.
    """

    rtol: AbstractVar[float]
    atol: AbstractVar[float]
    norm: AbstractVar[Callable[[PyTree], Scalar]]
    constraint: AbstractVar[AbstractConstraint]
    patience: AbstractVar[int | None]

    def _error(self, y: PyTree[Array], fy: PyTree[Array]) -> Scalar:
        return scaled_error(y, fy, self.rtol, self.atol, self.norm)

    def _start(self, fn: Callable, y: PyTree[Array], args: PyTree) -> tuple[Any, Monitor]:
        check_inexact(y)
        self.constraint.check(y)
        fy, _ = fn(y, args)
        return fy, Monitor.init(self._error(y, fy))

    def _record(
        self,
        monitor: Monitor,
        y: PyTree[Array],
        fy: PyTree[Array],
        new_y: PyTree[Array],
        new_fy: PyTree[Array],
        rejected: Bool[Array, ""] | bool,
        extra_secant: Scalar | None = None,
    ) -> Monitor:
        """Monitor update for the step `y -> new_y` (both images known)."""
        dx = tree_sub(new_y, y)
        dg = tree_sub(tree_sub(new_fy, new_y), tree_sub(fy, y))
        secant, _ = secant_ratio(dx, dg, y, self.norm)
        if extra_secant is not None:
            secant = jnp.minimum(secant, extra_secant)
        return monitor.update(self._error(new_y, new_fy), secant, rejected)

    def terminate(self, fn, y, args, options, state, tags) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return state.monitor.terminate(self.patience)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return y, aux, self._stats(state)

    def _stats(self, state: Any) -> dict[str, Array]:
        return state.monitor.stats(state.num_map_evals, self.patience)
