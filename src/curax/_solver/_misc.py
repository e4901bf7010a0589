"""Helpers shared by curax's fixed-point solvers (private)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar


# A solver whose best scaled error has not improved for this many consecutive steps has
# stalled (floating-point floor, cycling, or a line search that cannot decrease the residual).
DEFAULT_PATIENCE = 256


def scaled_error(
    y: Float[Array, " n"],
    fy: Float[Array, " n"],
    rtol: float,
    atol: float,
    norm: Callable[[PyTree], Scalar],
) -> Scalar:
    """optimistix's fixed-point error `norm((y - f(y)) / (atol + rtol |f(y)|))`; the solve has
    converged when it is < 1."""
    with jax.numpy_dtype_promotion("standard"):
        scale = atol + rtol * jnp.abs(fy)
        return norm((y - fy) / scale)


def to_simplex(p: Float[Array, " n"]) -> Float[Array, " n"]:
    """Clip negative entries and renormalise; a zero vector stays zero (then the map's own
    validation refuses it)."""
    p = jnp.clip(p, 0.0)
    total = jnp.sum(p)
    return p / jnp.where(total > 0, total, 1.0)


def log_extrapolate(
    p0: Float[Array, " n"],
    p1: Float[Array, " n"],
    p2: Float[Array, " n"],
    alpha: Scalar,
) -> Float[Array, " n"]:
    """SQUAREM's extrapolation `x0 - 2 alpha r + alpha^2 v` in log coordinates on the points
    with positive mass (zeros stay zero), then renormalised.

    For a replicator map `p -> p * G(p)` the log-iterates move additively (`log p' = log p +
    log G`), so extrapolating `log p` keeps the iterate positive with the same support, which
    is exactly the simplex safeguard we need: a point whose mass is clipped to zero could never
    come back (its mass is multiplied by G), and the solver would converge to a spurious fixed
    point on a face.
    """
    pos = (p0 > 0) & (p1 > 0) & (p2 > 0)
    l0, l1, l2 = (jnp.log(jnp.where(pos, x, 1.0)) for x in (p0, p1, p2))
    r = l1 - l0
    v = l2 - 2 * l1 + l0
    lx = l0 - 2 * alpha * r + alpha**2 * v
    lx = jnp.where(pos, lx, -jnp.inf)
    lx = lx - jnp.max(lx)
    p = jnp.where(pos, jnp.exp(lx), 0.0)
    return p / jnp.sum(p)


class StallTracker(eqx.Module):
    """Best scaled error so far and how many steps ago it was reached."""

    best: Scalar
    since_best: Int[Array, ""]

    @staticmethod
    def init(dtype: Any) -> "StallTracker":
        return StallTracker(jnp.array(jnp.inf, dtype), jnp.array(0))

    def update(self, error: Scalar) -> "StallTracker":
        better = error < self.best
        return StallTracker(
            jnp.where(better, error, self.best),
            jnp.where(better, 0, self.since_best + 1),
        )

    def stalled(self, patience: int | None) -> Bool[Array, ""]:
        if patience is None:
            return jnp.array(False)
        return self.since_best >= patience


def terminate_on(
    error: Scalar, tracker: StallTracker, patience: int | None
) -> tuple[Bool[Array, ""], optx.RESULTS]:
    """Stop when converged (`error < 1`) or stalled. Inside `optx.fixed_point` a stall can only
    be reported with an optimistix code (`nonlinear_divergence`); `curax.fixed_point` turns it
    into `curax.RESULTS.stalled` through the `stalled` entry of the stats."""
    converged = error < 1
    stalled = tracker.stalled(patience) & ~converged
    result = optx.RESULTS.where(stalled, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful)
    return converged | stalled, result


def solver_stats(
    num_map_evals: Int[Array, ""], error: Scalar, tracker: StallTracker, patience: int | None
) -> dict[str, Array]:
    """The statistics every curax fixed-point solver reports from `postprocess`;
    `curax.fixed_point` reads `stalled` to return `RESULTS.stalled`."""
    return {
        "num_map_evals": num_map_evals,
        "stalled": tracker.stalled(patience) & ~(error < 1),
    }
