"""Stability of a fixed point of a curation map: Jacobian spectrum on the simplex tangent
space of its support, plus the growth factors off the support."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Int

from ._jit import filter_jit
from ._maps import AbstractReplicatorMap, curate, CurationMap, unchecked_map
from ._problem import canonical_k, check_input_distribution, CurationProblem
from ._solver._misc import to_simplex


_VERDICTS = ("stable", "marginal", "unstable")


class StabilityReport(eqx.Module):
    """What [`curax.stability`][] found about a fixed point `p`.

    **Attributes:**

    - `spectral_radius`: the largest `|lambda|` of the map's Jacobian on the tangent space of
        the simplex restricted to the support (directions `v` with `v = 0` off the support and
        `sum v = 0`), from Arnoldi iteration on Jacobian-vector products (exact when the
        support has at most `krylov_dim` points).
    - `max_growth_off_support`: the largest factor by which mass placed at a point off the
        support grows in one round, `(1 - reference_weight) G(x)`; `-inf` when the support
        is everything. These are the Jacobian's eigenvalues in those directions.
    - `radius`: `max(spectral_radius, max_growth_off_support)`, the spectral radius of the
        Jacobian on the whole tangent space.
    - `support_size`: number of points with mass above `support_tol`.
    - `ritz_values`: the Arnoldi eigenvalue estimates on the support.
    - `verdict_code`: 0 stable (`radius < 1 - tol`), 1 marginal, 2 unstable
        (`radius > 1 + tol`); `verdict` gives the word.
    - `residual`: `max |f(p) - p|`; the report is about a fixed point only if this is small.
    """

    spectral_radius: Float[Array, ""]
    max_growth_off_support: Float[Array, ""]
    radius: Float[Array, ""]
    support_size: Int[Array, ""]
    ritz_values: Complex[Array, " k"]
    verdict_code: Int[Array, ""]
    residual: Float[Array, ""]

    @property
    def verdict(self) -> str:
        """`"stable"`, `"marginal"` or `"unstable"` (needs a concrete report, not a traced
        one; inside `jit` use `verdict_code`)."""
        return _VERDICTS[int(np.asarray(self.verdict_code))]

    @property
    def is_stable(self) -> Array:
        return self.verdict_code == 0


def _arnoldi_ritz(matvec, v0: Array, k: int) -> Array:
    """Ritz values of `matvec` from a k-step Arnoldi process (modified Gram-Schmidt, twice),
    with breakdown handled by continuing with zero vectors (their Hessenberg rows are zero,
    adding zero eigenvalues that never exceed the true spectral radius)."""
    n = v0.shape[0]
    dtype = v0.dtype
    basis = jnp.zeros((k + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    hess = jnp.zeros((k + 1, k), dtype)

    def body(j, carry):
        basis, hess = carry
        w = matvec(basis[j])
        mask = (jnp.arange(k + 1) <= j).astype(dtype)
        h = (basis @ w) * mask
        w = w - h @ basis
        h2 = (basis @ w) * mask
        w = w - h2 @ basis
        h = h + h2
        norm = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.linalg.norm(h), 1.0)
        ok = norm > 1e-12 * scale
        hess = hess.at[:, j].set(h.at[j + 1].set(jnp.where(ok, norm, 0.0)))
        basis = basis.at[j + 1].set(jnp.where(ok, w / jnp.where(ok, norm, 1.0), 0.0))
        return basis, hess

    basis, hess = jax.lax.fori_loop(0, k, body, (basis, hess))
    return jnp.linalg.eigvals(hess[:k, :k])


@filter_jit
def _stability(p, problem, fn, support_tol, tol, krylov_dim):
    # `p` was validated before the `jit`; the map's own checks on the points it is
    # linearised at would only add host callbacks (no persistent caching).
    fn = unchecked_map(fn)
    n = p.shape[0]
    dtype = p.dtype
    support = p > support_tol
    sf = support.astype(dtype)
    count = jnp.maximum(jnp.sum(sf), 1.0)

    def proj(v):
        v = v * sf
        return (v - jnp.sum(v) / count) * sf

    def f(x):
        return fn(x, problem)

    fp, lin = jax.linearize(f, p)
    k = min(krylov_dim, n)
    # A fixed, generic start vector (no key needed): every support direction has a component.
    v0 = proj(jnp.sin(1.0 + 2.3 * jnp.arange(n, dtype=dtype)) + 0.5)
    v0 = jnp.where(jnp.linalg.norm(v0) > 0, v0, proj(jnp.ones((n,), dtype)))
    ritz = _arnoldi_ritz(lambda v: proj(lin(proj(v))), v0, k)
    # A one-point support has no tangent directions.
    rho_s = jnp.where(jnp.sum(sf) > 1, jnp.max(jnp.abs(ritz)), 0.0)

    g = fn.growth(p, problem)
    if isinstance(fn, CurationMap) and problem.reference is not None:
        g = (1 - problem.reference_weight) * g
    off = jnp.max(jnp.where(support, -jnp.inf, g))
    radius = jnp.maximum(rho_s, off)
    code = jnp.where(radius > 1 + tol, 2, jnp.where(radius < 1 - tol, 0, 1))
    return StabilityReport(
        spectral_radius=rho_s,
        max_growth_off_support=off,
        radius=radius,
        support_size=jnp.sum(support),
        ritz_values=ritz,
        verdict_code=code,
        residual=jnp.max(jnp.abs(fp - p)),
    )


def stability(
    p: ArrayLike,
    problem: CurationProblem,
    *,
    fn: AbstractReplicatorMap = curate,
    support_tol: float = 1e-10,
    tol: float = 1e-9,
    krylov_dim: int = 48,
) -> StabilityReport:
    """Classify a fixed point `p` of a curation map as stable, marginal or unstable.

    Linear stability of `p -> f(p)` on the simplex: the Jacobian `J = df/dp` at a fixed
    point `p` on the face with support `S` is block-triangular, with the directions off the
    support (eigenvalues `(1 - reference_weight) G(x)`, `x` not in `S`: mass placed there
    grows iff `G(x) > 1`) and the tangent directions of the face (`v` supported on `S`,
    `sum v = 0`). The latter's spectral radius comes from Arnoldi iteration on
    Jacobian-vector products (`jax.linearize`, never a dense n x n Jacobian); it is exact
    when `|S| <= krylov_dim`.

    A fixed point is `"stable"` if the overall radius is `< 1 - tol`, `"unstable"` if
    `> 1 + tol`, else `"marginal"` (e.g. a continuum of fixed points along duplicate
    columns, or a slowly attracting point).

    **Arguments:**

    - `p`: `Float[Array, " n"]`, the fixed point (e.g. `sol.value` of
        [`curax.fixed_point`][]); the report also gives its residual.
    - `problem`: the [`curax.CurationProblem`][] (or the `args` of `fn`).
    - `fn`: the replicator map, default [`curax.curate`][]. Keyword only argument.
    - `support_tol`: points with mass above this form the support. Keyword only argument.
    - `tol`: margin around 1 for the verdict. Keyword only argument.
    - `krylov_dim`: Arnoldi steps (static). Keyword only argument.

    **Returns:**

    A [`curax.StabilityReport`][].

    !!! Example

        ```python
        sol = curax.fixed_point(curax.curate, curax.ActiveSetNewton(), p0, problem)
        report = curax.stability(sol.value, problem)
        report.verdict, report.spectral_radius
        ```
    """
    if not isinstance(fn, AbstractReplicatorMap):
        raise ValueError(
            "`fn` must be a `curax.AbstractReplicatorMap` (e.g. `curax.curate` or "
            f"`curax.ReplicatorMap(G)`), got {type(fn).__name__}."
        )
    if not isinstance(krylov_dim, int) or krylov_dim < 1:
        raise ValueError(f"`krylov_dim` must be a positive int, got {krylov_dim!r}.")
    p = jnp.asarray(p)
    if p.ndim != 1:
        raise ValueError(f"`p` must be a distribution of shape (n,), got shape {p.shape}.")
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.result_type(float))
    p = to_simplex(check_input_distribution(p, p.shape[0], "p", p.dtype))
    if isinstance(fn, CurationMap):
        # curax's map reads K only as a number: one program per bucket of K. (A user's map
        # may read `args.k` itself, so its args are left alone.)
        problem = canonical_k(problem)
    return _stability(p, problem, fn, support_tol, tol, krylov_dim)
