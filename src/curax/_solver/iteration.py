from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Int, PyTree, Scalar

from .._custom_types import Aux, Y
from ._base import AbstractGeneralSolver, AbstractGeneralState
from ._constraint import AbstractConstraint, Unconstrained
from ._misc import Monitor


class _IterationState(AbstractGeneralState):
    fy: PyTree[Array]
    monitor: Monitor
    num_map_evals: Int[Array, ""]


def _init(solver, fn, y, args) -> _IterationState:
    fy, monitor = solver._start(fn, y, args)
    return _IterationState(fy, monitor, jnp.array(1))


def _step(solver, damp: float, fn, y, args, state: _IterationState):
    if damp == 0:
        mixed = state.fy
    else:

        def mix(a, b):
            with jax.numpy_dtype_promotion("standard"):
                return ((1 - damp) * a + damp * b).astype(a.dtype)

        mixed = jtu.tree_map(mix, state.fy, y)
    new_y = solver.constraint.project(mixed)
    new_fy, aux = fn(new_y, args)
    # Plain iteration has no acceleration to reject: every step counts towards a stall.
    monitor = solver._record(state.monitor, y, state.fy, new_y, new_fy, rejected=True)
    return new_y, _IterationState(new_fy, monitor, state.num_map_evals + 1), aux


class PlainIteration(AbstractGeneralSolver[Y, Aux, _IterationState]):
    """Plain iteration of the map, `y_{t+1} = f(y_t)`, for any pytree of real or complex
    arrays.

    The reference against which curax's accelerators are measured: what
    `optx.FixedPointIteration` does, plus a map-evaluation count, an honest termination rule
    and an optional constraint. For curation maps these are the retraining dynamics
    themselves; replicator dynamics converge sublinearly near a stable point on a face, so
    prefer [`curax.SQUAREM`][] or [`curax.ActiveSetNewton`][] for tight tolerances.

    **Termination.** Stops when the estimated distance to the fixed point,
    `norm((f(y) - y) / (atol + rtol |f(y)|)) / (1 - rho_hat)`, is below 1, where `rho_hat`
    is the contraction factor observed over recent steps (see `docs/solvers.md`). The
    returned `y` is the iterate whose residual was tested. One map evaluation per step (plus
    one at the start).

    !!! Example

        ```python
        sol = optx.fixed_point(lambda y, _: jnp.tanh(y + 1), curax.PlainIteration(1e-8, 1e-8),
                               jnp.array(0.0))
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    constraint: AbstractConstraint = Unconstrained()
    patience: int | None = None

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _IterationState:
        del options, f_struct, aux_struct, tags
        return _init(self, fn, y, args)

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        return _step(self, 0.0, fn, y, args, state)


class DampedIteration(AbstractGeneralSolver[Y, Aux, _IterationState]):
    """Damped iteration `y_{t+1} = (1 - damp) f(y_t) + damp y_t`, for any pytree of real or
    complex arrays.

    Damping suppresses oscillation (eigenvalues of the Jacobian near -1, e.g. for the
    finite-K map with strong rewards) at the price of slower progress along slow modes.
    Terminates like [`curax.PlainIteration`][].
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    damp: float = 0.5
    constraint: AbstractConstraint = Unconstrained()
    patience: int | None = None

    def __check_init__(self):
        if not (0.0 <= self.damp < 1.0):
            raise ValueError(f"`damp` must lie in [0, 1), got {self.damp}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _IterationState:
        del options, f_struct, aux_struct, tags
        return _init(self, fn, y, args)

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        return _step(self, self.damp, fn, y, args, state)


_ARGS_DOC = """- `rtol`: relative tolerance (see the termination rule above).
- `atol`: absolute tolerance.
- `norm`: the norm of the scaled residual, e.g. `optx.max_norm` (default) or
    `optx.rms_norm`.
"""
_CONSTRAINT_DOC = """- `constraint`: [`curax.Unconstrained`][] (default: nothing is projected) or
    [`curax.Simplex`][] (each image is clipped and renormalised before it is iterated).
- `patience`: steps without a 1% improvement of the best residual after which the solve is
    declared stalled; `None` (default) never declares a stall (the residual of plain
    iteration is not monotone while mass migrates between points).
"""
PlainIteration.__init__.__doc__ = f"""**Arguments:**

{_ARGS_DOC}{_CONSTRAINT_DOC}"""
DampedIteration.__init__.__doc__ = f"""**Arguments:**

{_ARGS_DOC}- `damp`: weight of the current iterate, in `[0, 1)` (0 is plain iteration).
{_CONSTRAINT_DOC}"""
