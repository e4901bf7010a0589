from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._custom_types import Aux
from ._misc import scaled_error, solver_stats, StallTracker, terminate_on, to_simplex


class _IterationState(eqx.Module):
    error: Scalar
    tracker: StallTracker
    num_map_evals: Int[Array, ""]


def _init(y: Array) -> _IterationState:
    return _IterationState(jnp.array(jnp.inf, y.dtype), StallTracker.init(y.dtype), jnp.array(0))


def _step(solver: Any, damp: Any, fn, y, args, state: _IterationState):
    fy, aux = fn(y, args)
    # Damping keeps the iterate on the simplex (a convex combination); renormalising only
    # removes rounding drift, which the finite-K map would amplify (docs/finite_k.md).
    new_y = to_simplex((1 - damp) * fy + damp * y)
    error = scaled_error(y, fy, solver.rtol, solver.atol, solver.norm)
    new_state = _IterationState(error, state.tracker.update(error), state.num_map_evals + 1)
    return new_y, new_state, aux


class PlainIteration(optx.AbstractFixedPointSolver[Array, Aux, _IterationState]):
    """Plain iteration of the map, `p_{t+1} = f(p_t)`: the retraining dynamics themselves.

    The reference against which curax's accelerators are measured; it is what
    `optx.FixedPointIteration` does, plus a renormalisation onto the simplex each step, a
    map-evaluation count and stall detection. Replicator dynamics converge sublinearly
    near a stable point on a face (FW gap ~ 1/t), so prefer [`curax.SQUAREM`][] or
    [`curax.ActiveSetNewton`][] for tight tolerances.

    !!! Example

        ```python
        sol = curax.fixed_point(curax.curate, curax.PlainIteration(1e-8, 1e-8), p0, problem,
                                throw=False)
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    patience: int | None = None

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _IterationState:
        del fn, args, options, f_struct, aux_struct, tags
        return _init(y)

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        return _step(self, 0.0, fn, y, args, state)

    def terminate(self, fn, y, args, options, state, tags) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return terminate_on(state.error, state.tracker, self.patience)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return y, aux, solver_stats(state.num_map_evals, state.error, state.tracker, self.patience)


class DampedIteration(optx.AbstractFixedPointSolver[Array, Aux, _IterationState]):
    """Damped iteration `p_{t+1} = (1 - damp) f(p_t) + damp p_t`.

    Damping suppresses oscillation (eigenvalues of the Jacobian near -1, e.g. for the
    finite-K map with strong rewards) at the price of slower progress along slow modes.
    A convex combination of two distributions, so the iterate stays on the simplex.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    damp: float = 0.5
    patience: int | None = None

    def __check_init__(self):
        if not (0.0 <= self.damp < 1.0):
            raise ValueError(f"`damp` must lie in [0, 1), got {self.damp}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _IterationState:
        del fn, args, options, f_struct, aux_struct, tags
        return _init(y)

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        return _step(self, self.damp, fn, y, args, state)

    def terminate(self, fn, y, args, options, state, tags) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return terminate_on(state.error, state.tracker, self.patience)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return y, aux, solver_stats(state.num_map_evals, state.error, state.tracker, self.patience)


_ARGS_DOC = """- `rtol`: relative tolerance: stop when
    `norm((p - f(p)) / (atol + rtol |f(p)|)) < 1`.
- `atol`: absolute tolerance (see `rtol`).
- `norm`: the norm of that scaled residual, e.g. `optx.max_norm` (default).
"""
PlainIteration.__init__.__doc__ = f"""**Arguments:**

{_ARGS_DOC}- `patience`: steps without a new best residual after which the solve is declared
    stalled; `None` (default) never declares a stall (the residual of plain iteration is
    not monotone while mass migrates between points).
"""
DampedIteration.__init__.__doc__ = f"""**Arguments:**

{_ARGS_DOC}- `damp`: weight of the current iterate, in `[0, 1)` (0 is plain iteration).
- `patience`: steps without a new best residual after which the solve is declared
    stalled; `None` (default) never declares a stall (the residual of plain iteration is
    not monotone while mass migrates between points).
"""
