"""Helpers shared by curax's fixed-point solvers (private): pytree arithmetic, the scaled
residual, the contraction-aware error estimate and stall detection."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar


# Default window of the stall test (see `Monitor.stalled`). Long, because slow is not
# stalled: on replicator maps near a face SQUAREM's best residual can stay flat for hundreds
# of steps while the FW gap still falls (measured on two quadratic rewards at +-1, n = 2001).
DEFAULT_PATIENCE = 1024

# The contraction estimate keeps the secant ratios of this many recent steps.
WINDOW = 16
# Smallest `1 - rho` the error estimate believes: the estimated error is at most this many
# times the residual. Slower maps (rho > 1 - 1e-6) are under-estimated by that factor.
MIN_SECANT = 1e-6
# A stall needs the best residual to have improved by less than this factor over `patience`
# steps (and the acceleration to have been rejected on at least half of them).
PROGRESS_FACTOR = 0.99


# ------------------------------------------------------------------------------------------
# Pytree arithmetic (leafwise, real or complex)
# ------------------------------------------------------------------------------------------


def tree_where(pred: Bool[Array, ""], a: PyTree, b: PyTree) -> PyTree:
    return jtu.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return (ω(a) - ω(b)).ω


def tree_sum_squares(x: PyTree) -> Scalar:
    """`sum |x|^2` over every leaf (real even for complex leaves)."""
    leaves = [jnp.sum(jnp.real(v * jnp.conj(v))) for v in jtu.tree_leaves(x)]
    if not leaves:
        return jnp.array(0.0)
    with jax.numpy_dtype_promotion("standard"):
        return sum(leaves[1:], leaves[0])


def tree_allfinite(x: PyTree) -> Bool[Array, ""]:
    leaves = [jnp.all(jnp.isfinite(v)) for v in jtu.tree_leaves(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def squarem_extrapolation(
    constraint: Any, p0: PyTree, p1: PyTree, p2: PyTree, step_max: Scalar
) -> tuple[Scalar, PyTree, PyTree, Bool[Array, ""]]:
    """SQUAREM's (scheme S3) extrapolation from two plain steps `p0 -> p1 -> p2`: with
    `r = p1 - p0` and `v = p2 - 2 p1 + p0`, the step `alpha = -||r|| / ||v||`, clipped to
    `[-step_max, -1]` (`-1` when `v = 0`), through `constraint.extrapolate`.

    Returns `(alpha, r, p_ext, ok)`; a non-finite `p_ext` is replaced by `p2` (never hand one to
    the map) and `ok` says whether it was finite.
    """
    r = tree_sub(p1, p0)
    v = tree_sub(tree_sub(p2, p1), r)
    rn = jnp.sqrt(tree_sum_squares(r))
    vn = jnp.sqrt(tree_sum_squares(v))
    alpha = -rn / jnp.where(vn > 0, vn, 1.0)
    alpha = jnp.clip(jnp.where(vn > 0, alpha, -1.0), -step_max, -1.0).astype(step_max.dtype)
    p_ext = constraint.extrapolate(p0, p1, p2, alpha)
    ok = tree_allfinite(p_ext)
    return alpha, r, tree_where(ok, p_ext, p2), ok


def real_dtype(y: PyTree) -> Any:
    """The real dtype of the norms of `y` (float64 for complex128 leaves)."""
    leaves = jtu.tree_leaves(y)
    if not leaves:
        return jnp.result_type(float)
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*leaves)
    return jnp.finfo(dtype).dtype


def check_inexact(y: PyTree, name: str = "y0") -> None:
    for leaf in jtu.tree_leaves(y):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(f"`{name}` must hold floating or complex arrays, got {leaf.dtype}.")


# ------------------------------------------------------------------------------------------
# Residuals and error estimates
# ------------------------------------------------------------------------------------------


def scaled_error(
    y: PyTree[Array],
    fy: PyTree[Array],
    rtol: float,
    atol: float,
    norm: Callable[[PyTree], Scalar],
) -> Scalar:
    """optimistix's fixed-point error `norm((y - f(y)) / (atol + rtol |f(y)|))`, leafwise on
    pytrees (complex leaves through `|.|`); `< 1` is a small residual."""
    with jax.numpy_dtype_promotion("standard"):
        scale = (atol + rtol * ω(fy).call(jnp.abs)).ω
        return norm(((ω(y) - ω(fy)) / ω(scale)).ω)


def secant_ratio(
    dx: PyTree[Array], dg: PyTree[Array], y: PyTree[Array], norm: Callable[[PyTree], Scalar]
) -> tuple[Scalar, Bool[Array, ""]]:
    """`norm(dg) / norm(dx)` for a step `dx` that changed the residual `g = f(y) - y` by
    `dg = (J - I) dx` (to first order): an estimate of `1 - rho` along `dx`. Valid only when
    `dx` is well above rounding, where `dg` is still signal."""
    ndx = norm(dx)
    ndg = norm(dg)
    eps = jnp.finfo(ndx.dtype).eps
    valid = jnp.isfinite(ndx) & jnp.isfinite(ndg) & (ndx > 1e3 * eps * norm(y))
    ratio = ndg / jnp.where(ndx > 0, ndx, 1.0)
    return jnp.where(valid, ratio, jnp.inf), valid


class Monitor(eqx.Module):
    """What every general solver tracks between steps: the scaled residual of the current
    iterate, a window of secant ratios (the observed contraction), and the state of the stall
    test."""

    residual: Scalar  # scaled residual norm of the current iterate
    secants: Float[Array, " window"]  # recent `1 - rho` estimates (inf: none yet)
    slot: Int[Array, ""]
    best: Scalar  # best scaled residual so far
    anchor: Scalar  # best scaled residual when the current no-progress window started
    since_progress: Int[Array, ""]
    rejected: Int[Array, ""]  # steps in that window whose acceleration was rejected

    @staticmethod
    def init(residual: Scalar) -> "Monitor":
        dtype = residual.dtype
        return Monitor(
            residual,
            jnp.full((WINDOW,), jnp.inf, dtype),
            jnp.array(0),
            residual,
            residual,
            jnp.array(0),
            jnp.array(0),
        )

    def update(
        self,
        residual: Scalar,
        secant: Scalar,
        rejected: Bool[Array, ""] | bool = False,
    ) -> "Monitor":
        """Record a step: the new iterate's scaled residual, the step's secant ratio (`inf` if
        none was measured) and whether the solver's acceleration was rejected."""
        residual = jnp.where(jnp.isnan(residual), jnp.inf, residual).astype(self.residual.dtype)
        measured = jnp.isfinite(secant)
        secants = jnp.where(
            measured,
            self.secants.at[self.slot].set(secant.astype(self.secants.dtype)),
            self.secants,
        )
        slot = jnp.where(measured, (self.slot + 1) % WINDOW, self.slot)
        best = jnp.minimum(self.best, residual)
        progress = best < PROGRESS_FACTOR * self.anchor
        return Monitor(
            residual,
            secants,
            slot,
            best,
            jnp.where(progress, best, self.anchor),
            jnp.where(progress, 0, self.since_progress + 1),
            jnp.where(progress, 0, self.rejected + jnp.where(rejected, 1, 0)),
        )

    def error(self) -> Scalar:
        """The error estimate `r / (1 - rho_hat)` (scaled): `rho_hat` from the smallest recent
        secant ratio, capped at `1 - MIN_SECANT`, never below the residual itself; with no
        ratio measured yet, the most cautious `1 / MIN_SECANT`."""
        sigma = jnp.clip(jnp.min(self.secants), MIN_SECANT, 1.0)
        return self.residual / sigma

    def converged(self) -> Bool[Array, ""]:
        # The residual of an exact fixed point is 0, whatever the estimate of rho.
        return (self.error() < 1) | (self.residual == 0)

    def stalled(self, patience: int | None) -> Bool[Array, ""]:
        if patience is None:
            return jnp.array(False)
        return (
            (self.since_progress >= patience)
            & (2 * self.rejected >= self.since_progress)
            & ~self.converged()
        )

    def terminate(self, patience: int | None) -> tuple[Bool[Array, ""], optx.RESULTS]:
        """Stop when the error estimate is below tolerance, or on a stall. Inside
        `optx.fixed_point` a stall can only be reported with an optimistix code
        (`nonlinear_divergence`); `curax.fixed_point` turns it into `curax.RESULTS.stalled`
        through the `stalled` entry of the stats."""
        converged = self.converged()
        stalled = self.stalled(patience)
        result = optx.RESULTS.where(
            stalled, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
        )
        return converged | stalled, result

    def stats(self, num_map_evals: Int[Array, ""], patience: int | None) -> dict[str, Array]:
        sigma = jnp.clip(jnp.min(self.secants), MIN_SECANT, 1.0)
        return {
            "num_map_evals": num_map_evals,
            "stalled": self.stalled(patience),
            "scaled_residual": self.residual,
            "error_estimate": self.error(),
            "contraction_estimate": 1 - sigma,
        }


# ------------------------------------------------------------------------------------------
# Kept for `ActiveSetNewton` (which certifies through its own FW gap, not the estimate above)
# ------------------------------------------------------------------------------------------


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
    """Stop when converged (`error < 1`) or stalled (see `Monitor.terminate`)."""
    converged = error < 1
    stalled = tracker.stalled(patience) & ~converged
    result = optx.RESULTS.where(stalled, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful)
    return converged | stalled, result


def solver_stats(
    num_map_evals: Int[Array, ""], error: Scalar, tracker: StallTracker, patience: int | None
) -> dict[str, Array]:
    """The statistics `ActiveSetNewton` reports from `postprocess`; `curax.fixed_point` reads
    `stalled` to return `RESULTS.stalled`."""
    return {
        "num_map_evals": num_map_evals,
        "stalled": tracker.stalled(patience) & ~(error < 1),
    }
