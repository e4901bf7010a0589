"""Constraints on the iterates of curax's general fixed-point solvers: one object that says
how to keep an iterate feasible, instead of simplex code inside every solver."""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from equinox.internal import ω
from jaxtyping import Array, PyTree, Scalar

from ._misc import log_extrapolate, to_simplex


class AbstractConstraint(eqx.Module):
    """Where the iterates of a fixed-point solver may go, and how its steps stay there.

    A constraint never changes what is tested for convergence: the residual is always
    `f(y) - y` of the map at the iterate `y`. It only decides how new iterates are built
    (projected, extrapolated, moved along a Newton direction).
    """

    @abc.abstractmethod
    def check(self, y: PyTree[Array]) -> None:
        """Raise a `ValueError` (at trace time) if `y` cannot carry this constraint."""

    @abc.abstractmethod
    def project(self, y: PyTree[Array]) -> PyTree[Array]:
        """The nearest feasible point (used on images `f(y)` before iterating them)."""

    @abc.abstractmethod
    def extrapolate(
        self, y0: PyTree[Array], y1: PyTree[Array], y2: PyTree[Array], alpha: Scalar
    ) -> PyTree[Array]:
        """SQUAREM's extrapolation `y0 - 2 alpha r + alpha^2 v`, `r = y1 - y0`,
        `v = y2 - 2 y1 + y0`, done so that the result is feasible."""

    @abc.abstractmethod
    def safeguard(self, candidate: PyTree[Array], fy: PyTree[Array]) -> PyTree[Array]:
        """Make a mixed (Anderson) candidate feasible, given the plain step `fy`."""

    @abc.abstractmethod
    def tangent(self, v: PyTree[Array]) -> PyTree[Array]:
        """Project a direction onto the tangent space of the feasible set."""

    @abc.abstractmethod
    def retract(self, y: PyTree[Array], direction: PyTree[Array], t: Scalar) -> PyTree[Array]:
        """Move from `y` by `t * direction` (to first order), staying feasible."""


class Unconstrained(AbstractConstraint):
    """No constraint: iterates are any pytree of real or complex arrays, and nothing is ever
    projected. The default of every general solver.

    !!! Example

        ```python
        solver = curax.Anderson(rtol=1e-8, atol=1e-8, constraint=curax.Unconstrained())
        ```
    """

    def check(self, y: PyTree[Array]) -> None:
        del y

    def project(self, y: PyTree[Array]) -> PyTree[Array]:
        return y

    def extrapolate(
        self, y0: PyTree[Array], y1: PyTree[Array], y2: PyTree[Array], alpha: Scalar
    ) -> PyTree[Array]:
        def ext(a, b, c):
            alpha_ = alpha.astype(a.dtype)
            return a - 2 * alpha_ * (b - a) + alpha_**2 * (c - 2 * b + a)

        return jtu.tree_map(ext, y0, y1, y2)

    def safeguard(self, candidate: PyTree[Array], fy: PyTree[Array]) -> PyTree[Array]:
        del fy
        return candidate

    def tangent(self, v: PyTree[Array]) -> PyTree[Array]:
        return v

    def retract(self, y: PyTree[Array], direction: PyTree[Array], t: Scalar) -> PyTree[Array]:
        return (ω(y) + ω(direction).call(lambda d: t.astype(d.dtype) * d)).ω


class Simplex(AbstractConstraint):
    """Iterates are probability distributions: a single real array `p >= 0` with
    `sum(p) = 1` (over all its entries).

    - images `f(p)` are clipped at zero and renormalised before they are iterated (the
        residual tested is still that of the map itself, `f(p) - p`, so a map that does not
        preserve mass is never reported as converged);
    - SQUAREM extrapolates in `log p` on the points with mass, so the iterate stays positive
        with the same support: for a replicator map `p -> p G(p)` the log-iterates move
        additively, and a point whose mass were clipped to zero could never regrow;
    - an Anderson candidate is floored at `floor * f(p)` entrywise, then renormalised;
    - Newton directions are projected onto the tangent space `sum(d) = 0`, and steps are
        limited to a trust region in `log p` (no entry more than doubles or shrinks by more
        than a factor `e` per step), so that they never leave the simplex.

    [`curax.fixed_point`][] chooses it for a replicator map such as [`curax.curate`][] when
    the solver has the default [`curax.Unconstrained`][].

    !!! Example

        ```python
        solver = curax.SQUAREM(rtol=1e-10, atol=1e-10, constraint=curax.Simplex())
        ```
    """

    floor: float = 1e-3

    def __check_init__(self):
        if not (0.0 <= self.floor < 1.0):
            raise ValueError(f"`floor` must lie in [0, 1), got {self.floor}.")

    def check(self, y: PyTree[Array]) -> None:
        leaves = jtu.tree_leaves(y)
        if (
            len(leaves) != 1
            or not isinstance(y, (jnp.ndarray, Array))
            or not jnp.issubdtype(y.dtype, jnp.floating)
        ):
            raise ValueError(
                "`curax.Simplex()` needs `y0` to be a single real floating array (a "
                f"distribution), got {jtu.tree_map(lambda v: jnp.result_type(v), y)}."
            )

    def project(self, y: Array) -> Array:
        return to_simplex(y)

    def extrapolate(self, y0: Array, y1: Array, y2: Array, alpha: Scalar) -> Array:
        return log_extrapolate(y0, y1, y2, alpha)

    def safeguard(self, candidate: Array, fy: Array) -> Array:
        return to_simplex(jnp.maximum(candidate, self.floor * fy))

    def tangent(self, v: Array) -> Array:
        return v - jnp.mean(v)

    def retract(self, y: Array, direction: Array, t: Scalar) -> Array:
        step = t * direction
        pos = y > 0
        ratio = jnp.where(pos, step / jnp.where(pos, y, 1.0), 0.0)
        # A trust region in log p: no entry more than doubles or loses more than a factor e
        # in one step. To first order the same step near a fixed point (small `ratio`); far
        # from it this keeps a Newton step from crushing the mass of the points where the
        # answer lives (from which a replicator map recovers only geometrically), and mass is
        # never driven through zero.
        grown = y + jnp.minimum(step, y)
        shrunk = y * jnp.exp(jnp.maximum(ratio, -1.0))
        new = jnp.where(ratio < 0, shrunk, grown)
        return to_simplex(jnp.where(pos, new, 0.0))


Unconstrained.__init__.__doc__ = """**Arguments:** none."""
Simplex.__init__.__doc__ = """**Arguments:**

- `floor`: an Anderson candidate is floored at `floor * f(p)` entrywise (no point loses more
    than a fraction `1 - floor` of its plain-step mass at once), default `1e-3`.
"""
