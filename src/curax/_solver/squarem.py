from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._custom_types import Aux
from ._misc import (
    DEFAULT_PATIENCE,
    log_extrapolate,
    scaled_error,
    solver_stats,
    StallTracker,
    terminate_on,
    to_simplex,
)


class _SquaremState(eqx.Module):
    error: Scalar
    tracker: StallTracker
    num_map_evals: Int[Array, ""]
    step_max: Scalar
    num_rejected: Int[Array, ""]


class SQUAREM(optx.AbstractFixedPointSolver[Array, Aux, _SquaremState]):
    """SQUAREM (Varadhan and Roland 2008, scheme S3) for fixed points on the simplex.

    Each step takes two map evaluations `p1 = f(p0)`, `p2 = f(p1)`, extrapolates along
    `r = p1 - p0`, `v = p2 - 2 p1 + p0` with step `alpha = -||r|| / ||v||` (at most
    `-1`, at least `-step_max`, where `step_max` grows by `step_factor` after each accepted
    maximal step), and stabilises with a third evaluation `f(p')`.

    Simplex safeguards:

    - the extrapolation is done in log coordinates on the points with positive mass, so the
      iterate stays positive with the same support (for replicator maps `p -> p G(p)` the
      log-iterates move additively, which is what makes this the natural coordinate); a
      linear extrapolation would clip mass to zero and, since zero mass never regrows under
      a replicator map, could land on a spurious fixed point on a face;
    - if the extrapolated point's residual `|f(p') - p'|` exceeds the plain step's
      residual `|p2 - p1|` (the extrapolation did not help), the step is rejected: the
      plain step `p2` is taken instead and `step_max` is reset to 1.

    Three map evaluations per step. Prefer it to plain iteration for every map; for
    replicator maps without reference data prefer [`curax.ActiveSetNewton`][].

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
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    step_factor: float = 4.0
    patience: int = DEFAULT_PATIENCE

    def __check_init__(self):
        if not self.step_factor >= 1:
            raise ValueError(f"`step_factor` must be >= 1, got {self.step_factor}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _SquaremState:
        del fn, args, options, f_struct, aux_struct, tags
        return _SquaremState(
            jnp.array(jnp.inf, y.dtype),
            StallTracker.init(y.dtype),
            jnp.array(0),
            jnp.array(1.0, y.dtype),
            jnp.array(0),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        p0 = y
        p1, _ = fn(p0, args)
        p1 = to_simplex(p1)
        p2, aux = fn(p1, args)
        p2 = to_simplex(p2)
        error = scaled_error(p0, p1, self.rtol, self.atol, self.norm)
        r = p1 - p0
        v = p2 - 2 * p1 + p0
        rn = jnp.sqrt(jnp.sum(r**2))
        vn = jnp.sqrt(jnp.sum(v**2))
        alpha = -rn / jnp.where(vn > 0, vn, 1.0)
        alpha = jnp.clip(jnp.where(vn > 0, alpha, -1.0), -state.step_max, -1.0)
        p_ext = log_extrapolate(p0, p1, p2, alpha)
        # Never hand a non-finite point to the map (its validation would raise).
        ext_ok = jnp.all(jnp.isfinite(p_ext)) & (jnp.sum(p_ext) > 0)
        p_ext = jnp.where(ext_ok, p_ext, p2)
        p_new, aux_new = fn(p_ext, args)
        p_new = to_simplex(p_new)
        res_ext = jnp.max(jnp.abs(p_new - p_ext))
        res_plain = jnp.max(jnp.abs(p2 - p1))
        accept = ext_ok & jnp.all(jnp.isfinite(p_new)) & (res_ext <= res_plain)
        new_y = jnp.where(accept, p_new, p2)
        aux = jtu.tree_map(lambda a, b: jnp.where(accept, a, b), aux_new, aux)
        step_max = jnp.where(
            accept,
            jnp.where(
                alpha <= -state.step_max,
                state.step_max * self.step_factor,
                state.step_max,
            ),
            1.0,
        )
        new_state = _SquaremState(
            error,
            state.tracker.update(error),
            state.num_map_evals + 3,
            step_max,
            state.num_rejected + jnp.where(accept, 0, 1),
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
                "num_rejected": state.num_rejected,
            },
        )


SQUAREM.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop when `norm((p - f(p)) / (atol + rtol |f(p)|)) < 1`.
- `atol`: absolute tolerance (see `rtol`).
- `norm`: the norm of that scaled residual, e.g. `optx.max_norm` (default).
- `step_factor`: factor by which the largest extrapolation step grows after an accepted
    maximal step (Varadhan and Roland's `mstep`, default 4).
- `patience`: steps without a new best residual after which the solve is declared stalled.
"""
