"""`curax.fixed_point`: optimistix's fixed-point loop plus the certificates that mean something
(map evaluations, residual of the returned point; for curation dynamics the Frank-Wolfe gap
and stability)."""

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, ArrayLike, PyTree

from ._jit import filter_jit
from ._maps import AbstractReplicatorMap, CurationMap, unchecked_map
from ._problem import canonical_k, check_input_distribution, CurationProblem, simplex_tolerance
from ._solution import RESULTS, Solution, throw_if_failed
from ._solver._base import AbstractGeneralSolver
from ._solver._constraint import Simplex, Unconstrained
from ._solver._misc import to_simplex, tree_allfinite
from ._solver.active_set import ActiveSetNewton, support_growth_for


# Matrix-free implicit differentiation: the default `lx.AutoLinearSolver` would build the
# dense n x n Jacobian. GMRES needs a restart length a little above the support size of a
# stable point (the Jacobian of f - id is -I off the support, plus a low-rank part on it).
DEFAULT_ADJOINT = optx.ImplicitAdjoint(
    linear_solver=lx.GMRES(rtol=1e-11, atol=1e-13, restart=64, stagnation_iters=64)
)


def _reference_active(fn: Callable, args: Any) -> Any:
    """Whether the map mixes in reference data (then its fixed point has full support and the
    growth factor is no stability certificate). Known statically except for the weight."""
    if (
        isinstance(fn, CurationMap)
        and isinstance(args, CurationProblem)
        and args.reference is not None
    ):
        return args.reference_weight > 0
    return jnp.array(False)


def _resolve(fn: Callable, solver: Any, args: Any, options: dict[str, Any]) -> Any:
    """Hand replicator-aware solvers what `optx.fixed_point` hides from them (it closure-
    converts `fn`): the growth factor, through `options`."""
    if isinstance(solver, ActiveSetNewton):
        if (
            isinstance(fn, CurationMap)
            and isinstance(args, CurationProblem)
            and args.reference is not None
        ):
            # Reference data: full support, nothing for an active set to exploit.
            return solver.fallback, options
        if isinstance(fn, AbstractReplicatorMap) and solver.growth is None:
            if "growth" not in options:
                options["growth"] = fn.growth
            if "support_growth" not in options:
                options["support_growth"] = support_growth_for(fn, options["growth"])
    return solver, options


def _with_simplex(fn: Callable, solver: Any) -> Any:
    """A replicator map lives on the simplex: give a general solver that was left at the
    default constraint the `Simplex` one."""
    if (
        isinstance(fn, AbstractReplicatorMap)
        and isinstance(solver, AbstractGeneralSolver)
        and isinstance(solver.constraint, Unconstrained)
    ):
        return eqx.tree_at(lambda s: s.constraint, solver, Simplex())
    return solver


def _on_simplex(fn: Callable, solver: Any) -> bool:
    return isinstance(fn, AbstractReplicatorMap) or (
        isinstance(solver, AbstractGeneralSolver) and isinstance(solver.constraint, Simplex)
    )


def _match_dtypes(fn: Callable, y0: PyTree, args: PyTree, has_aux: bool) -> PyTree:
    """Trace-time check that `fn(y0)` has the structure of `y0`. A lower-precision `y0`
    than the map's output (e.g. float32 into a float64 map) is cast up; anything else that
    does not match is a ValueError naming the argument."""

    def out_struct(y):
        out = fn(y, args)
        return out[0] if has_aux else out

    struct0 = jax.eval_shape(lambda: y0)
    out = jax.eval_shape(out_struct, y0)
    if jtu.tree_structure(out) != jtu.tree_structure(struct0):
        raise ValueError(
            "`fn(y0, args)` must return a pytree of the structure of `y0`; got "
            f"{jtu.tree_structure(out)} for `y0` of structure {jtu.tree_structure(struct0)}."
        )
    for a, b in zip(jtu.tree_leaves(struct0), jtu.tree_leaves(out)):
        if a.shape != b.shape:
            raise ValueError(
                f"`fn(y0, args)` must return arrays of the shapes of `y0`: got {b.shape} for a "
                f"`y0` leaf of shape {a.shape}."
            )
    if all(a.dtype == b.dtype for a, b in zip(jtu.tree_leaves(struct0), jtu.tree_leaves(out))):
        return y0
    if all(
        np.can_cast(a.dtype, b.dtype, casting="safe")
        for a, b in zip(jtu.tree_leaves(struct0), jtu.tree_leaves(out))
    ):
        cast = jtu.tree_map(lambda y, o: jnp.asarray(y, o.dtype), y0, out)
        if jax.eval_shape(out_struct, cast) == out:
            return cast
    raise ValueError(
        "`y0` must have the dtypes of `fn(y0, args)`: got "
        f"{[a.dtype.name for a in jtu.tree_leaves(struct0)]} in and "
        f"{[b.dtype.name for b in jtu.tree_leaves(out)]} out. Pass `y0` in the map's "
        "precision."
    )


def fixed_point(
    fn: Callable[[PyTree[Array], PyTree], PyTree[Array]],
    solver: optx.AbstractFixedPointSolver,
    y0: PyTree[ArrayLike],
    args: PyTree = None,
    options: dict[str, Any] | None = None,
    *,
    has_aux: bool = False,
    max_steps: int | None = 4096,
    adjoint: optx.AbstractAdjoint = DEFAULT_ADJOINT,
    throw: bool = True,
    gap_tol: float | None = None,
    tags: frozenset[object] = frozenset(),
) -> Solution:
    """Find a fixed point `y = fn(y, args)` and say what is certified about it.

    `fn` may be any JAX map on a pytree of real or complex arrays; curation maps (any
    [`curax.AbstractReplicatorMap`][], e.g. [`curax.curate`][]) live on the probability
    simplex and get more checks. This runs `optx.fixed_point` (any optimistix fixed-point
    solver works, and curax's solvers work inside `optx.fixed_point` too) and adds what a
    number alone does not say:

    - `stats["num_map_evals"]`: evaluations of `fn` made by the solver (a Jacobian-vector
        product counts as one; `-1` for an optimistix solver that does not count them);
    - `stats["residual"]`: `max |fn(y) - y|` at the returned point (over every leaf);
    - for a replicator map: the general solvers ([`curax.SQUAREM`][], [`curax.Anderson`][],
        ...) get the [`curax.Simplex`][] constraint if they were left at the default
        [`curax.Unconstrained`][]; `y0` must be a distribution, and the returned point must
        lie on the simplex (`RESULTS.left_simplex` otherwise);
    - `stats["fw_gap"]` (replicator maps only): `max G(p) - 1`, the Frank-Wolfe / KKT gap.
        A point where the solver converged but some point off its support (mass
        `<= max(solver.atol, 1e-12)`) has `G > 1 + gap_tol` is an *unstable* fixed point (a
        face optimum or a vertex: mass put there would grow): `RESULTS.unstable_fixed_point`.
        If the gap is only attained where there is mass, the solver merely stopped too
        early: `RESULTS.certificate_failed`. With reference data (`reference_weight > 0`)
        the fixed point has full support and the gap is reported but not used.

    A stall (the residual stopped decreasing) gives `RESULTS.stalled`; running out of steps
    `RESULTS.nonlinear_max_steps_reached`. How curax's own solvers decide that they have
    converged (an error estimate that accounts for the observed contraction rate) is
    described in [`curax.AbstractGeneralSolver`][].

    **Arguments:**

    - `fn`: the map, called as `fn(y, args)`, returning a pytree of the structure, shapes
        and dtypes of `y` (or `(value, aux)` with `has_aux=True`).
    - `solver`: a fixed-point solver, e.g. [`curax.SQUAREM`][], [`curax.Anderson`][],
        [`curax.ActiveSetNewton`][] or `optx.FixedPointIteration`.
    - `y0`: the initial guess, a pytree of arrays. For a replicator map (or a solver with
        the [`curax.Simplex`][] constraint) a distribution `Float[Array, " n"]`; start from a
        full-support one: mass that is zero stays zero under a replicator map. A `y0` of
        lower precision than `fn`'s output is cast up.
    - `args`: passed to `fn`, e.g. a [`curax.CurationProblem`][].
    - `options`: solver-specific runtime options. `"growth"`: the growth factor
        `G(p, args)` for [`curax.ActiveSetNewton`][] (filled in automatically when `fn` is
        an [`curax.AbstractReplicatorMap`][]).
    - `has_aux`: whether `fn` returns `(value, aux)`. Keyword only argument.
    - `max_steps`: maximum number of solver steps. Keyword only argument.
    - `adjoint`: how to differentiate the solution; default implicit differentiation
        through a matrix-free GMRES solve (`optx.ImplicitAdjoint(lx.GMRES(...))`). Keyword
        only argument.
    - `throw`: raise on failure (`True`) or report it in `result` (`False`). Keyword only
        argument. (Inside `jit`, raising follows equinox's `EQX_ON_ERROR` setting.)
    - `gap_tol`: tolerance on the FW gap for replicator maps; default
        `solver.rtol + solver.atol` (the gap is a relative growth rate, `G ~ 1`). Keyword
        only argument.
    - `tags`: lineax tags for the Jacobian of `fn(y) - y`. Keyword only argument.

    **Returns:**

    A [`curax.Solution`][] with `value` the fixed point, `result`, and `stats` as above
    (plus `num_steps`, `max_steps` and the solver's own statistics).

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, q=0.3)
        sol = curax.fixed_point(
            curax.curate, curax.SQUAREM(rtol=1e-10, atol=1e-10), problem.uniform(), problem
        )
        sol.value, sol.stats["fw_gap"]
        ```
    """
    if _on_simplex(fn, solver):
        y0 = jnp.asarray(y0)
        if y0.ndim != 1:
            raise ValueError(
                f"`y0` must be a distribution of shape (n,) on the simplex, got shape {y0.shape}."
            )
        if not jnp.issubdtype(y0.dtype, jnp.floating):
            y0 = y0.astype(jnp.result_type(float))
        y0 = _match_dtypes(fn, y0, args, has_aux)
        # Checked here, outside `jit`, so that a concrete bad `y0` is a ValueError and the
        # jitted solve iterates an unchecked map (no host callback: cacheable). A
        # `CurationMap(checked=False)` means the caller has validated `y0`.
        if not (isinstance(fn, CurationMap) and not fn.checked):
            y0 = check_input_distribution(y0, y0.shape[0], "y0", y0.dtype)
    else:
        y0 = jtu.tree_map(_inexact, y0)
        y0 = _match_dtypes(fn, y0, args, has_aux)
    if isinstance(fn, CurationMap) and not (options and "growth" in options):
        # curax's map reads K only as a number: one program per bucket of K. (A user's map or
        # growth may read `args.k` itself.) The Solution holds no `args`.
        args = canonical_k(args)
    out = _fixed_point(
        fn,
        solver,
        y0,
        args,
        options,
        has_aux=has_aux,
        max_steps=max_steps,
        adjoint=adjoint,
        gap_tol=gap_tol,
        tags=tags,
    )
    # Outside the `jit`: an `eqx.error_if` inside it would keep the compiled solve out of the
    # persistent cache (inside the user's own `jit` it is part of their program, as before).
    return throw_if_failed(out, throw)


def _inexact(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


# curax's options for curation maps only: a user's map may be run-time bound, and XLA's
# default code generator made faster code for large elementwise work.
@filter_jit(when=lambda fn, *args, **kwargs: isinstance(fn, AbstractReplicatorMap))
def _fixed_point(
    fn: Callable,
    solver: optx.AbstractFixedPointSolver,
    y0: PyTree[Array],
    args: PyTree,
    options: dict[str, Any] | None,
    *,
    has_aux: bool,
    max_steps: int | None,
    adjoint: optx.AbstractAdjoint,
    gap_tol: float | None,
    tags: frozenset[object],
) -> Solution:
    simplex = _on_simplex(fn, solver)
    if simplex:
        y0 = to_simplex(y0)
    # `y0` was validated before the `jit`; the iterates need no checks.
    fn = unchecked_map(fn)
    options = {} if options is None else dict(options)
    solver, options = _resolve(fn, solver, args, options)
    solver = _with_simplex(fn, solver)
    with warnings.catch_warnings():
        if isinstance(solver, AbstractGeneralSolver):
            # curax's general solvers use Hermitian inner products and |.| norms.
            warnings.filterwarnings("ignore", message="Complex support in Optimistix")
        sol = optx.fixed_point(
            fn,
            solver,
            y0,
            args,
            options,
            has_aux=has_aux,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=False,
            tags=tags,
        )
    result = RESULTS.promote(sol.result)
    stats = dict(sol.stats)
    if "stalled" in stats:
        result = RESULTS.where(
            (result == RESULTS.nonlinear_divergence) & stats["stalled"],
            RESULTS.stalled,
            result,
        )
    if "num_map_evals" not in stats:
        if isinstance(solver, optx.FixedPointIteration):
            stats["num_map_evals"] = sol.stats["num_steps"]
        else:
            stats["num_map_evals"] = jnp.array(-1)

    p = lax.stop_gradient(sol.value)
    fp = fn(p, args)
    if has_aux:
        fp = fp[0]
    stats["residual"] = optx.max_norm((ω(fp) - ω(p)).ω)
    # A solver may "succeed" on garbage (e.g. with EQX_ON_ERROR=nan inside the map): the
    # returned point itself must be finite (and on the simplex, for a distribution).
    finite = tree_allfinite(p) & jnp.isfinite(stats["residual"])
    if simplex:
        tol_simplex = simplex_tolerance(p.dtype)
        on_simplex = (jnp.min(p) >= -tol_simplex) & (jnp.abs(jnp.sum(p) - 1) <= tol_simplex)
    else:
        on_simplex = jnp.array(True)
    result = RESULTS.where(
        result == RESULTS.successful,
        RESULTS.where(
            finite, RESULTS.where(on_simplex, result, RESULTS.left_simplex), RESULTS.nonfinite
        ),
        result,
    )
    if isinstance(fn, AbstractReplicatorMap):
        g = fn.growth(p, args)
        gap = jnp.max(g) - 1
        stats["fw_gap"] = gap
        tol = solver.rtol + solver.atol if gap_tol is None else gap_tol
        # Off the support = mass below what the step residual can resolve.
        off_support = p <= max(solver.atol, 1e-12)
        gap_off = jnp.max(jnp.where(off_support, g, -jnp.inf)) - 1
        # `~(gap <= tol)`: a NaN gap is a failed certificate, not a pass.
        check = (result == RESULTS.successful) & ~_reference_active(fn, args) & ~(gap <= tol)
        result = RESULTS.where(
            check,
            RESULTS.where(gap_off > tol, RESULTS.unstable_fixed_point, RESULTS.certificate_failed),
            result,
        )
    # Arrays only (Solution's annotation); `max_steps=None` (unbounded) is reported as -1.
    stats = {k: jnp.asarray(-1 if v is None else v) for k, v in stats.items()}
    return Solution(value=sol.value, result=result, aux=sol.aux, stats=stats, state=sol.state)
