from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._custom_types import Aux
from ._misc import (
    DEFAULT_PATIENCE,
    scaled_error,
    solver_stats,
    StallTracker,
    terminate_on,
    to_simplex,
)


class _AndersonState(eqx.Module):
    fy: Float[Array, " n"]
    prev_y: Float[Array, " n"]
    prev_g: Float[Array, " n"]
    dx: Float[Array, "memory n"]
    dg: Float[Array, "memory n"]
    filled: Bool[Array, " memory"]
    head: Int[Array, ""]
    have_fy: Bool[Array, ""]
    error: Scalar
    tracker: StallTracker
    num_map_evals: Int[Array, ""]
    num_rejected: Int[Array, ""]


class Anderson(optx.AbstractFixedPointSolver[Array, Aux, _AndersonState]):
    """Anderson acceleration (type II, "Anderson mixing") with simplex safeguards.

    With residuals `g_k = f(p_k) - p_k` and the last `memory` differences `dX`, `dG` of
    iterates and residuals (preallocated `(memory, n)` buffers, overwritten cyclically), the
    candidate is `p_k + g_k - (dX + dG) gamma`, `gamma` minimising
    `|g_k - dG gamma|^2 + regularisation |gamma|^2`.

    Simplex safeguards: the candidate is floored at `floor` times the plain step `f(p_k)`
    (no point with mass loses it at once: under a replicator map zero mass never regrows)
    and renormalised; if its residual `|f(c) - c|` is not below the current residual
    `|f(p_k) - p_k|` (or it is not finite), the plain step `f(p_k)` is taken instead and the
    history is cleared.

    `log_space=True` mixes in the coordinates `log p` instead (a replicator map moves them
    additively, `log p' = log p + log G`). It can be spectacular (K = infinity, n = 401:
    FW gap 1e-16 in 14 evaluations) but is fragile: over many steps it drives masses to
    underflow, and on larger grids it was measured to end on spurious fixed points (which
    [`curax.fixed_point`][] reports as `RESULTS.unstable_fixed_point`). Hence the default
    `False`.

    One map evaluation per accepted step, two per rejected one.

    ??? cite "References"

        ```bibtex
        @article{walker2011anderson,
            author = {Walker, Homer F. and Ni, Peng},
            title = {Anderson Acceleration for Fixed-Point Iterations},
            journal = {SIAM Journal on Numerical Analysis},
            volume = {49},
            number = {4},
            pages = {1715--1735},
            year = {2011},
        }
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = 5
    regularisation: float = 1e-10
    floor: float = 1e-3
    log_space: bool = False
    patience: int = DEFAULT_PATIENCE

    def __check_init__(self):
        if self.memory < 1:
            raise ValueError(f"`memory` must be >= 1, got {self.memory}.")

    def _coords(self, p: Array, pos: Array) -> Array:
        if self.log_space:
            return jnp.where(pos, jnp.log(jnp.where(pos, p, 1.0)), 0.0)
        return p

    def _uncoords(self, x: Array, pos: Array, fy: Array) -> Array:
        if self.log_space:
            # Floor: no entry drops below `floor` times the plain step in one step, so an
            # extrapolation cannot underflow a point's mass to zero at once (final under a
            # replicator map). (A two-sided trust region was tried: it stalls K = inf.)
            logf = jnp.log(jnp.where(pos, fy, 1.0))
            x = jnp.where(pos, jnp.maximum(x, logf + jnp.log(self.floor)), -jnp.inf)
            x = x - jnp.max(x)
            return to_simplex(jnp.where(pos, jnp.exp(x), 0.0))
        return to_simplex(jnp.maximum(x, self.floor * fy))

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _AndersonState:
        del fn, args, options, aux_struct, tags
        n = y.shape[0]
        z = jnp.zeros((self.memory, n), f_struct.dtype)
        return _AndersonState(
            jnp.zeros_like(y),
            jnp.zeros_like(y),
            jnp.zeros_like(y),
            z,
            z,
            jnp.zeros((self.memory,), bool),
            jnp.array(0),
            jnp.array(False),
            jnp.array(jnp.inf, y.dtype),
            StallTracker.init(y.dtype),
            jnp.array(0),
            jnp.array(0),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        # f(y) is carried over from the previous step (the candidate's evaluation).
        fy, aux0 = lax.cond(
            state.have_fy,
            lambda: (state.fy, jtu.tree_map(jnp.zeros_like, fn(y, args)[1])),
            lambda: fn(y, args),
        )
        evals = jnp.where(state.have_fy, 0, 1)
        fy = to_simplex(fy)
        error = scaled_error(y, fy, self.rtol, self.atol, self.norm)
        # Mixing coordinates: log p on the points with mass (zeros stay zero), where a
        # replicator map moves additively (log p' = log p + log G), so the extrapolation keeps
        # the iterate positive with the same support; or p itself (`log_space=False`).
        pos = (y > 0) & (fy > 0)
        xy, xf = self._coords(y, pos), self._coords(fy, pos)
        g = xf - xy

        # History update with the pair (previous iterate -> y).
        slot = state.head % self.memory
        dx = state.dx.at[slot].set(jnp.where(state.have_fy, xy - state.prev_y, 0.0))
        dg = state.dg.at[slot].set(jnp.where(state.have_fy, g - state.prev_g, 0.0))
        filled = state.filled.at[slot].set(state.have_fy)

        gram = dg @ dg.T
        mask = filled[:, None] & filled[None, :]
        gram = jnp.where(mask, gram, 0.0)
        reg = self.regularisation * jnp.maximum(jnp.trace(gram), jnp.finfo(y.dtype).tiny)
        gram = gram + jnp.diag(jnp.where(filled, reg, 1.0))
        rhs = jnp.where(filled, dg @ g, 0.0)
        gamma = jnp.where(filled, jnp.linalg.solve(gram, rhs), 0.0)
        cand = self._uncoords(xy + g - (dx + dg).T @ gamma, pos, fy)
        # An ill-conditioned history can give a non-finite candidate: never hand that to the
        # map (its input validation would raise); the plain step stands in and is rejected.
        cand_ok = jnp.all(jnp.isfinite(cand)) & (jnp.sum(cand) > 0)
        cand = jnp.where(cand_ok, cand, fy)
        fc, aux_c = fn(cand, args)
        fc = to_simplex(fc)
        res_c = jnp.max(jnp.abs(fc - cand))
        accept = jnp.isfinite(res_c) & (res_c < jnp.max(jnp.abs(fy - y))) & jnp.any(filled)

        # Rejected (or no history yet): the plain step f(y), whose image we also need.
        def plain():
            f2, aux2 = fn(fy, args)
            return fy, to_simplex(f2), aux2

        new_y, new_fy, aux = lax.cond(accept, lambda: (cand, fc, aux_c), plain)
        del aux0
        new_state = _AndersonState(
            new_fy,
            xy,
            g,
            jnp.where(accept, dx, 0.0),
            jnp.where(accept, dg, 0.0),
            filled & accept,
            jnp.where(accept, state.head + 1, 0),
            jnp.array(True),
            error,
            state.tracker.update(error),
            state.num_map_evals + evals + 1 + jnp.where(accept, 0, 1),
            state.num_rejected + jnp.where(accept | ~jnp.any(filled), 0, 1),
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


Anderson.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance: stop when `norm((p - f(p)) / (atol + rtol |f(p)|)) < 1`.
- `atol`: absolute tolerance (see `rtol`).
- `norm`: the norm of that scaled residual, e.g. `optx.max_norm` (default).
- `memory`: number of past differences kept (static).
- `regularisation`: Tikhonov regularisation of the least-squares problem, relative to the
    trace of its Gram matrix.
- `floor`: the candidate is floored at `floor * f(p)` entrywise (positivity safeguard).
- `log_space`: mix in `log p` instead of `p` (default `False`; see above).
- `patience`: steps without a new best residual after which the solve is declared stalled.
"""
