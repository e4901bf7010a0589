"""Weighted Nash bargaining: the objective that the K -> infinity dynamics maximise.

`BargainingProblem` states a bargaining problem with linear-in-`p` utilities
`u_i(p) = (U p)_i` (exp-rewards `U = e^{r / tau}`, or linear rewards `U = r`), weights `alpha`,
a disagreement point `d` and a feasible set (the simplex, or a mixture family). Its objective is
the log weighted Nash product `sum_i alpha_i log(u_i(p) - d_i)`.
"""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._jit import filter_jit
from ._nash_solver import row_argmax, solve_nash
from ._problem import (
    _as_float,
    check_matrix,
    check_probability_vector,
    check_value,
    CurationProblem,
    exp_normalised,
    is_concrete,
    simplex_tolerance,
)
from ._solution import RESULTS, Solution, throw_if_failed


Utility = Literal["exp", "linear", "matrix"]

# Compiled once per shape: the anchors of a concrete problem, found at construction, would
# otherwise compile each of the search's operations as its own program.
_row_argmax = jax.jit(row_argmax)


class BargainingProblem(eqx.Module):
    """A weighted Nash bargaining problem over distributions on `n` support points.

    Utilities are linear in `p`: `u_i(p) = exp(log_scale_i) * (utilities @ p)_i`. Maximise
    the log weighted Nash product

    `Phi(p) = sum_i weights_i * log(u_i(p) - exp(log_scale_i) * disagreement_i)`

    over the feasible set: the whole simplex (`family=None`), or the mixture family
    `{a @ family : a in the simplex}` spanned by the rows of `family` (e.g. two basin
    conditionals `P_1, P_2`). The internal matrix is normalised (each exp-utility row has
    maximum 1, `log_scale` holds the shift) so that rewards spanning hundreds of nats neither
    overflow nor underflow; `disagreement` is stored in the same normalised units.

    Build one with [`curax.BargainingProblem.from_rewards`][] (`utility="exp"`: the K -> infinity
    dynamics' utilities `E_p[e^{r_i / tau}]`; `utility="linear"`: `E_p[r_i]` as in Falahati et
    al.'s Theorem 3.7) or [`curax.BargainingProblem.from_curation`][].

    **Attributes:**

    - `utilities`: `Float[Array, "m n"]`, the normalised utility matrix `U`.
    - `weights`: `Float[Array, " m"]`, bargaining weights alpha (a probability vector; a zero
        weight drops that utility out).
    - `disagreement`: `Float[Array, " m"]`, disagreement point `d` in normalised units.
    - `family`: `Float[Array, "f n"]` or `None`, distributions spanning the feasible mixture
        family (`None`: the whole simplex).
    - `log_scale`: `Float[Array, " m"]`, `log` of each row's scale (utility in the user's units
        is `exp(log_scale) * (U p)`).
    - `anchors`: `Int[Array, " m"]`, a column where each utility is largest (used to start
        solvers with every utility positive; `row_argmax`'s choice among tied columns).
    - `utility`: static, `"exp"`, `"linear"` or `"matrix"` (given directly).
    - `infinite_k_limit`: static bool, True when converted from a `CurationProblem` with finite
        K: the problem is then the K -> infinity limit, not the finite-K dynamics' objective
        (finite K has no known potential).
    """

    utilities: Float[Array, "m n"]
    weights: Float[Array, " m"]
    disagreement: Float[Array, " m"]
    family: Float[Array, "f n"] | None
    log_scale: Float[Array, " m"]
    anchors: Int[Array, " m"]
    utility: str = eqx.field(static=True)
    infinite_k_limit: bool = eqx.field(static=True)

    def __init__(
        self,
        utilities: ArrayLike,
        weights: ArrayLike | None = None,
        disagreement: ArrayLike | None = None,
        family: ArrayLike | None = None,
        *,
        log_scale: ArrayLike | None = None,
        utility: str = "matrix",
        infinite_k_limit: bool = False,
    ):
        utilities = check_matrix(utilities, "utilities", "utility")
        m, n = utilities.shape
        dtype = utilities.dtype
        weights = check_probability_vector(weights, m, "weights", dtype, "utilities")
        if disagreement is None:
            disagreement = jnp.asarray(np.zeros((m,), dtype))  # (no JAX program per shape)
        disagreement = _as_float(disagreement, "disagreement").astype(dtype)
        if disagreement.shape == ():
            disagreement = jnp.broadcast_to(disagreement, (m,))
        if disagreement.shape != (m,):
            raise ValueError(
                f"`disagreement` must be a scalar or have shape ({m},), got {disagreement.shape}."
            )
        disagreement = check_value(
            disagreement,
            lambda xp, d: ~xp.all(xp.isfinite(d)),
            "`disagreement` must be finite.",
        )
        if family is not None:
            family = _as_float(family, "family").astype(dtype)
            if family.ndim != 2 or family.shape[1] != n or family.shape[0] < 1:
                raise ValueError(
                    f"`family` must have shape (f, {n}): one distribution on the support per "
                    f"row, got {family.shape}."
                )
            family = _check_rows(family, n)
        if log_scale is None:
            log_scale = jnp.zeros((m,), dtype)
        log_scale = _as_float(log_scale, "log_scale").astype(dtype)
        if log_scale.shape != (m,):
            raise ValueError(f"`log_scale` must have shape ({m},), got {log_scale.shape}.")
        if utility not in ("exp", "linear", "matrix"):
            raise ValueError(f"`utility` must be 'exp', 'linear' or 'matrix', got {utility!r}.")
        self.utilities = utilities
        self.weights = weights
        self.disagreement = disagreement
        self.family = family
        self.log_scale = log_scale
        self.anchors = _row_argmax(utilities)
        self.utility = utility
        self.infinite_k_limit = bool(infinite_k_limit)

    @property
    def num_utilities(self) -> int:
        """m, the number of utilities (players)."""
        return self.utilities.shape[0]

    @property
    def size(self) -> int:
        """n, the number of support points."""
        return self.utilities.shape[1]

    @classmethod
    def from_rewards(
        cls,
        rewards: ArrayLike,
        weights: ArrayLike | None = None,
        *,
        utility: str = "exp",
        temperature: ArrayLike = 1.0,
        disagreement: ArrayLike | None = None,
        family: ArrayLike | None = None,
    ) -> "BargainingProblem":
        """Bargaining problem of `m` rewards on `n` points.

        **Arguments:**

        - `rewards`: `(m, n)` or `(n,)` rewards.
        - `weights`: `(m,)` bargaining weights (default uniform).
        - `utility`: keyword only. `"exp"` (default): `u_i(p) = E_p[exp(r_i / temperature)]`,
            the K -> infinity dynamics' utilities. `"linear"`: `u_i(p) = E_p[r_i]` (Falahati
            et al., Theorem 3.7; `temperature` is ignored).
        - `temperature`: keyword only, scalar or `(m,)`.
        - `disagreement`: keyword only, `(m,)` disagreement point in the utilities' own units
            (default 0).
        - `family`: keyword only, `(f, n)` distributions spanning a mixture family (default:
            the whole simplex).

        **Returns:**

        A [`curax.BargainingProblem`][].

        !!! Example

            ```python
            x = curax.grid_1d(-3.0, 3.0, 201)
            r = jnp.stack([-(x - 1) ** 2, -(x + 1) ** 2])
            bp = curax.BargainingProblem.from_rewards(r, jnp.array([0.3, 0.7]))
            ```
        """
        rewards = _as_float(rewards, "rewards")
        if rewards.ndim == 1:
            rewards = rewards[None, :]
        if rewards.ndim != 2:
            raise ValueError(f"`rewards` must have shape (m, n) or (n,), got {rewards.shape}.")
        rewards = check_value(
            rewards, lambda xp, r: ~xp.all(xp.isfinite(r)), "`rewards` contains NaN or inf."
        )
        m = rewards.shape[0]
        dtype = rewards.dtype
        if disagreement is not None:
            disagreement = jnp.broadcast_to(
                _as_float(disagreement, "disagreement").astype(dtype), (m,)
            )
        if utility == "exp":
            temperature = _as_float(temperature, "temperature").astype(dtype)
            if temperature.shape not in ((), (m,)):
                raise ValueError(
                    f"`temperature` must be a scalar or have shape ({m},), got {temperature.shape}."
                )
            temperature = check_value(
                temperature,
                lambda xp, t: ~xp.all(xp.isfinite(t) & (t > 0)),
                "`temperature` must be finite and > 0.",
            )
            u, shift = exp_normalised(rewards, temperature)
            return _from_normalised(u, shift, weights, disagreement, family, False)
        if utility == "linear":
            return cls(rewards, weights, disagreement, family, utility="linear")
        raise ValueError(f"`utility` must be 'exp' or 'linear', got {utility!r}.")

    @classmethod
    def from_curation(cls, problem: CurationProblem) -> "BargainingProblem":
        """The K -> infinity bargaining problem of a [`curax.CurationProblem`][]: utilities
        `E_p[exp(r_i / tau_i)]`, weights `problem.weights`, disagreement point 0, the whole
        simplex. Its maximiser is the stable point of the K -> infinity dynamics without
        reference data.

        For a problem with finite `k` this is still the K -> infinity limit (finite K has no
        known potential); the result says so through `infinite_k_limit=True`, which
        [`curax.nash_solution`][] reports in its stats. The reference data are ignored (see
        [`curax.mixing_fixed_point`][] for the stable point with reference data).

        !!! Example

            ```python
            x, problem = curax.two_basin_problem(n=401, q=0.3)
            bp = curax.BargainingProblem.from_curation(problem)
            ```
        """
        finite = problem.has_finite_k
        if not finite and problem.tilt_weights is not None:
            # K = infinity on every row: the problem's cached `exp(s - max s)` is this problem's
            # utility matrix (no exponentials recomputed, and bit-for-bit the matrix that
            # `nash_solution(problem)` solves on).
            shift = jax.lax.stop_gradient(jnp.max(problem.scaled_rewards, axis=1))
            return BargainingProblem(
                problem.tilt_weights, problem.weights, log_scale=shift, utility="exp"
            )
        u, shift = exp_normalised(problem.rewards, problem.temperature)
        return _from_normalised(u, shift, problem.weights, None, None, finite)

    def objective(self, p: Float[Array, " n"]) -> Float[Array, ""]:
        """The log weighted Nash product `sum_i alpha_i log(u_i(p) - d_i)` in the utilities'
        own units (for exp-utilities of a curation problem this equals
        [`curax.potential`][]); `-inf` where some `u_i <= d_i` with `alpha_i > 0`."""
        return _objective(self, self.utilities @ p)


def _check_rows(family: Array, n: int) -> Array:
    tol = simplex_tolerance(family.dtype)
    family = check_value(
        family, lambda xp, f: ~xp.all(xp.isfinite(f)), "`family` contains NaN or inf."
    )
    family = check_value(
        family,
        lambda xp, f: xp.any(f < -tol),
        "Every row of `family` must be a distribution (>= 0).",
    )
    return check_value(
        family,
        lambda xp, f: xp.any(xp.abs(xp.sum(f, axis=1) - 1) > tol),
        "Every row of `family` must be a distribution (sum to 1).",
    )


def _from_normalised(
    u: Array,
    shift: Array,
    weights: ArrayLike | None,
    disagreement: Array | None,
    family: ArrayLike | None,
    infinite_k_limit: bool,
) -> BargainingProblem:
    # `(u, shift)` from `exp_normalised`: u = exp(s - shift), the disagreement point rescaled
    # to the same units.
    d = None if disagreement is None else disagreement * jnp.exp(-shift)
    return BargainingProblem(
        u,
        weights,
        d,
        family,
        log_scale=shift,
        utility="exp",
        infinite_k_limit=infinite_k_limit,
    )


def _objective(problem: BargainingProblem, u: Array) -> Array:
    alpha = problem.weights
    gain = u - problem.disagreement
    ok = alpha > 0
    safe = jnp.where(ok & (gain > 0), gain, 1.0)
    terms = jnp.where(ok, alpha * (jnp.log(safe) + problem.log_scale), 0.0)
    feasible = jnp.all(~ok | (gain > 0))
    return jnp.where(feasible, jnp.sum(terms), -jnp.inf)


# ------------------------------------------------------------------------------------------
# Exact certified solver.
# ------------------------------------------------------------------------------------------


def nash_solution(
    problem: BargainingProblem | CurationProblem,
    *,
    grid_shape: tuple[int, ...] | None = None,
    tol: float | None = None,
    max_passes: int = 64,
    multilevel: bool = True,
    throw: bool = True,
) -> Solution:
    """Exact, certified weighted Nash bargaining solution over the simplex (disagreement 0).

    Maximises `Phi(p) = sum_i alpha_i log (U p)_i` by fully corrective column generation: each
    pass reads `U` once to form the gradient `g = U^T (alpha / U p)` (the K -> infinity growth
    factor), stops when the Frank-Wolfe gap `max g - 1 <= tol` (which bounds `Phi* - Phi(p)`),
    else adds the largest local maxima of `g` (with a stencil of neighbours when `grid_shape`
    is given) to a small set of active columns and re-solves the restricted problem on them
    with a primal-dual interior-point method. Between passes, rounds that gather only a few
    columns re-price the pass's best candidates and, on a grid, a multi-scale window around
    every atom and the barycentres of neighbouring atoms: near-duplicate neighbouring columns
    no longer make the passes creep towards each peak, and one pass usually certifies what the
    rounds found. With `grid_shape`, a coarse level (stride `8^j` per dimension keeping
    >= 2,000 points; in 1-D from stride 64 only) hands its support to the fine one. The
    optimum has at most `m` atoms generically, so a fixed number of slots (`2 m + 4` kept
    columns) makes the solve `jit`- and `vmap`-able.

    From a [`curax.CurationProblem`][] with K = infinity on every row, the solve reads the
    problem's cached `exp(r / tau - max)` (the K -> infinity map's cache) instead of
    recomputing the exponentials: build the problem once and solve it as often as needed. It
    runs the same solve as from `curax.BargainingProblem.from_curation(problem)` (same passes,
    same `p`).

    A mixture-family feasible set `{a @ family}` is solved as the simplex problem of the
    matrix `U @ family.T` (no grid); `value` is then `a @ family`.

    !!! info

        Batches: `nash_solution` works under `jax.vmap`, but on CPU a vmapped while loop runs
        every problem until the slowest finishes and pays for masked work; `jax.lax.map` over
        a stacked batch of problems (one compiled call, problems solved in sequence) was
        fastest on a 2-core CPU (`benchmarks/RESULTS_nash.md`). On a GPU, prefer `vmap`.

        Only `u* = U p*` is unique: with duplicate columns `p*` is not. Compare solutions
        through `objective`, `u` and the gap. One utility (m = 1): a point mass on a maximiser
        of `U`. Identical columns (every `p` optimal): the point mass at `anchors[0]`.

    **Arguments:**

    - `problem`: a [`curax.BargainingProblem`][] with disagreement point 0 and non-negative
        utilities, or a [`curax.CurationProblem`][] (converted with
        [`curax.BargainingProblem.from_curation`][]; finite K is solved in its K -> infinity
        limit and `stats["infinite_k_limit"]` says so).
    - `grid_shape`: keyword only, the shape of the support as a grid, e.g. `(n,)` for a 1-D
        grid or `(n1, n2)` (row-major). Enables the stencil and the multilevel solve. Without
        it, columns have no geometry: single-level column generation, local maxima in column
        order.
    - `tol`: keyword only, certified Frank-Wolfe gap (default 1e-12 in float64, 1e-5 in
        float32).
    - `max_passes`: keyword only, the most passes over `U` on the finest level.
    - `multilevel`: keyword only, use coarse levels when `grid_shape` is given.
    - `throw`: keyword only, raise if the gap is not certified.

    **Returns:**

    A [`curax.Solution`][] with `value` the distribution `p` (n,), and `stats`: `u` (m,) the
    normalised utilities `U p`, `log_utilities` (m,) in the user's units, `objective` (`Phi`
    in the user's units, equal to [`curax.potential`][] for a curation problem), `fw_gap`,
    `support` (padded column indices) and `support_weights`, `num_passes` (reads of `U`,
    coarse levels counted by their size), `num_steps` (passes on the finest level),
    `master_iterations` (interior-point steps, all levels), `rounds` (restricted master
    solves between passes, all levels), `infinite_k_limit`. `result` is `certificate_failed` or
    `nonlinear_max_steps_reached` when the gap is above `tol`.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=201, q=0.3)
        sol = curax.nash_solution(problem, grid_shape=(201,))
        sol.stats["fw_gap"]  # <= 1e-12
        ```
    """
    if isinstance(problem, CurationProblem):
        if _all_infinite_k(problem):
            return _nash_from_curation(
                problem,
                grid_shape=grid_shape,
                tol=tol,
                max_passes=max_passes,
                multilevel=multilevel,
                throw=throw,
            )
        problem = BargainingProblem.from_curation(problem)
    if not isinstance(problem, BargainingProblem):
        raise ValueError(
            f"`problem` must be a BargainingProblem or CurationProblem, got {type(problem)}."
        )
    tol, grid_shape = _solve_options(
        problem.utilities.dtype, tol, max_passes, grid_shape, problem.family is not None
    )
    # The jitted core sees arrays only (not the problem's static labels), so problems that
    # differ only in `utility` or `infinite_k_limit` share one compilation.
    check_sign = problem.utility != "exp"
    # Concrete inputs are checked here (a ValueError); only traced ones need the checks
    # inside the `jit`, whose `eqx.error_if` would keep the program out of the persistent
    # compilation cache.
    validated = is_concrete(problem.disagreement, problem.utilities if check_sign else None)
    if validated:
        _check_solvable(problem.utilities, problem.weights, problem.disagreement, check_sign)
    out = _nash_solution_core(
        problem.utilities,
        problem.weights,
        problem.disagreement,
        problem.family,
        problem.log_scale,
        problem.anchors,
        None,
        grid_shape=grid_shape,
        tol=tol,
        max_passes=max_passes,
        multilevel=bool(multilevel),
        check_sign=check_sign,
        validated=validated,
    )
    return _finish(out, max_passes, problem.infinite_k_limit, throw)


def _all_infinite_k(problem: CurationProblem) -> bool:
    return problem.tilt_weights is not None and not problem.has_finite_k


def _solve_options(
    dtype: Any, tol: float | None, max_passes: int, grid_shape: Any, family: bool
) -> tuple[float, tuple[int, ...] | None]:
    if tol is None:
        tol = 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-5
    if not isinstance(max_passes, int) or max_passes < 1:
        raise ValueError(f"`max_passes` must be a positive int, got {max_passes!r}.")
    if family and grid_shape is not None:
        raise ValueError("`grid_shape` cannot be used with a mixture-family feasible set.")
    if grid_shape is not None:
        grid_shape = tuple(int(g) for g in grid_shape)
    return float(tol), grid_shape


def _finish(out: tuple, max_passes: int, infinite_k_limit: bool, throw: bool) -> Solution:
    p, u, objective, log_u, stats, result = out
    stats = dict(stats)
    stats.update(
        u=u,
        log_utilities=log_u,
        objective=objective,
        max_steps=jnp.array(max_passes),
        infinite_k_limit=jnp.array(infinite_k_limit),
    )
    sol = Solution(value=p, result=result, aux=None, stats=stats, state=None)
    return throw_if_failed(sol, throw)


def _nash_from_curation(
    problem: CurationProblem,
    *,
    grid_shape: Any,
    tol: float | None,
    max_passes: int,
    multilevel: bool,
    throw: bool,
) -> Solution:
    """K = infinity on every row: solve on the problem's cached `exp(s - max s)` (the same
    normalisation as `BargainingProblem.from_curation`, so the same certificate) instead of
    recomputing the exponentials of the whole reward matrix. The row shifts (`log_scale`)
    are recovered from the rewards at a few columns: `max s = s(x) - log E(x)`."""
    cache = problem.tilt_weights
    assert cache is not None
    m = problem.num_rewards
    tol, grid_shape = _solve_options(cache.dtype, tol, max_passes, grid_shape, False)
    # No anchors: the solver finds its start columns with the same rule (`row_argmax`) that
    # `BargainingProblem` used for its anchors, so both entries run the same solve.
    anchors = None
    # Renormalised as `BargainingProblem` renormalises its weights (x / sum x is not
    # idempotent in floating point): both entries then solve bit-identical problems.
    weights = problem.weights / jnp.sum(problem.weights)
    out = _nash_solution_core(
        cache,
        weights,
        jnp.zeros((m,), cache.dtype),
        None,
        None,
        anchors,
        (problem.rewards, problem.temperature),
        grid_shape=grid_shape,
        tol=tol,
        max_passes=max_passes,
        multilevel=bool(multilevel),
        check_sign=False,
        # Disagreement point 0 and positive utilities by construction: nothing to check.
        validated=True,
    )
    return _finish(out, max_passes, False, throw)


_NONZERO_DISAGREEMENT = (
    "`nash_solution` solves disagreement point 0; use `curax.nash_optimize` for another "
    "disagreement point."
)
_NEGATIVE_UTILITIES = (
    "`nash_solution` needs non-negative utilities (log u must be defined); shift linear "
    "rewards or use `curax.nash_optimize`."
)


def _check_solvable(e: Array, alpha: Array, disagreement: Array, check_sign: bool) -> Array:
    """What `nash_solution` needs of its utilities: a `ValueError` when the inputs checked are
    concrete (numpy, no JAX program), else `eqx.error_if`s attached to the small `alpha`,
    which every pass uses (an `error_if` on `E` itself would copy the whole matrix)."""
    if is_concrete(disagreement, e if check_sign else None):
        if np.any(np.asarray(disagreement) != 0):
            raise ValueError(_NONZERO_DISAGREEMENT)
        # (Skipped for exp utilities, positive by construction: this check is a read of E.)
        if check_sign and np.any(np.asarray(e) < 0):
            raise ValueError(_NEGATIVE_UTILITIES)
        return alpha
    alpha = check_value(alpha, jnp.any(disagreement != 0), _NONZERO_DISAGREEMENT)
    if check_sign:
        alpha = check_value(alpha, jnp.any(e < 0), _NEGATIVE_UTILITIES)
    return alpha


@filter_jit
def _nash_solution_core(
    e: Array,
    alpha: Array,
    disagreement: Array,
    family: Array | None,
    log_scale: Array | None,
    anchors: Array | None,
    scaled_from: tuple[Array, Array] | None,
    *,
    grid_shape: tuple[int, ...] | None,
    tol: float,
    max_passes: int,
    multilevel: bool,
    check_sign: bool,
    validated: bool,
):
    utilities = e
    if not validated:
        alpha = _check_solvable(e, alpha, disagreement, check_sign)
    if family is not None:
        e = e @ family.T
        anchors = row_argmax(e)
    # A utility with positive weight that is 0 on every column (its maximum, at the anchor,
    # is 0): no feasible point has all utilities above the disagreement point 0. (No anchors:
    # positive exp-utilities, feasible by construction.)
    if anchors is None:
        infeasible = jnp.array(False)
    else:
        infeasible = jnp.any((alpha > 0) & (e[jnp.arange(e.shape[0]), anchors] <= 0))
    res = solve_nash(
        e,
        alpha,
        anchors,
        grid_shape=grid_shape,
        tol=tol,
        max_passes=max_passes,
        multilevel=multilevel,
    )
    p = res.p
    if family is not None:
        p = p @ family
        u = utilities @ p
    else:
        u = res.u  # = E p on the active columns: no extra read of E
    if log_scale is None:
        assert scaled_from is not None
        log_scale = _row_shift(scaled_from, res.anchors, res.anchor_values)
    ok = alpha > 0
    safe_u = jnp.where(u > 0, u, 1.0)
    log_u = jnp.where(u > 0, jnp.log(safe_u), -jnp.inf) + log_scale
    objective = jnp.where(
        jnp.all(~ok | (u > 0)), jnp.sum(jnp.where(ok, alpha * log_u, 0.0)), -jnp.inf
    )
    # p is the scatter of the support weights: checking them is checking p (a read of n
    # entries fewer).
    finite = jnp.all(jnp.isfinite(res.weights)) & jnp.all(jnp.isfinite(u)) & jnp.isfinite(res.gap)
    result = RESULTS.where(
        res.gap <= tol,
        RESULTS.successful,
        RESULTS.where(
            res.fine_passes >= max_passes,
            RESULTS.nonlinear_max_steps_reached,
            RESULTS.certificate_failed,
        ),
    )
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    result = RESULTS.where(infeasible, RESULTS.infeasible, result)
    stats = {
        "fw_gap": res.gap,
        "support": res.support,
        "support_weights": res.weights,
        "num_passes": res.passes,
        "num_steps": res.fine_passes,
        "master_iterations": res.master_iters,
        "rounds": res.rounds,
    }
    return p, u, objective, log_u, stats, result


def _row_shift(scaled_from: tuple[Array, Array], anchors: Array, values: Array) -> Array:
    """The row maxima `max_x s_i(x)` of the scaled rewards behind `e = exp(s - max s)`, from
    one column per row: `s_i(x) - log e_i(x)` at its anchor (exact where `e_i(x) = 1`, else
    within rounding of `log`; `e_i(x) > 0` because the anchors' rewards cannot underflow)."""
    rewards, temperature = scaled_from
    rows = jnp.arange(rewards.shape[0])
    s = rewards[rows, anchors] / temperature
    return s - jnp.log(values)


# ------------------------------------------------------------------------------------------
# Direct optimisation with optax.
# ------------------------------------------------------------------------------------------


def _feasible_matrix(problem: BargainingProblem) -> Array:
    """Utilities as a function of the optimisation variable's simplex: `U` (simplex) or
    `U @ family.T` (mixture weights)."""
    if problem.family is None:
        return problem.utilities
    return problem.utilities @ problem.family.T


def _smooth_log(x: Array, eps: Array) -> Array:
    # log x for x >= eps, its second-order Taylor extension below: concave, C^2 and finite
    # everywhere, so an infeasible start (u <= d) is pulled into the feasible region.
    safe = jnp.maximum(x, eps)
    t = (x - eps) / eps
    return jnp.where(x >= eps, jnp.log(safe), jnp.log(eps) + t - 0.5 * t**2)


def _nash_gap(problem: BargainingProblem, mat: Array, a: Array) -> tuple[Array, Array, Array]:
    """`(gap, u, g)`: the Frank-Wolfe gap `max_j g_j - a.g` of the concave objective over the
    simplex of `a`, with `g` its gradient; it bounds `Phi* - Phi(a)`."""
    alpha = problem.weights
    u = mat @ a
    gain = u - problem.disagreement
    ok = alpha > 0
    w = jnp.where(ok, alpha / jnp.where(ok & (gain > 0), gain, 1.0), 0.0)
    g = w @ mat
    return jnp.max(g) - a @ g, u, g


def nash_optimize(
    problem: BargainingProblem | CurationProblem,
    optimizer=None,
    *,
    parametrisation: str = "square",
    max_steps: int = 2000,
    tol: float | None = None,
    throw: bool = True,
) -> Solution:
    """Maximise the log weighted Nash product directly with an optax optimiser.

    Independent of the dynamics and of [`curax.nash_solution`][] (a cross-check), and more
    general: any disagreement point, linear or exp utilities, the simplex or a mixture family.
    The feasible point is parametrised by an unconstrained `theta`:
    `"square"` (default): `a = theta^2 / |theta|^2` (Hadamard parametrisation: the gradient in
    a vanishing coordinate is proportional to `theta_j`, so off-support mass decays
    geometrically and L-BFGS reaches the exact sparse optimum); `"softmax"`:
    `a = softmax(theta)` (off-support mass decays only like 1/t; for a smooth interior optimum).
    Below the disagreement point `log` is replaced by its quadratic extension, so an
    infeasible start is pulled into the feasible region. Stops when the Frank-Wolfe gap
    `max_j g_j - a.g` (g the gradient in `a`, bounding `Phi* - Phi`) is below `tol`.

    **Arguments:**

    - `problem`: a [`curax.BargainingProblem`][] (or a [`curax.CurationProblem`][], converted).
    - `optimizer`: an `optax.GradientTransformation`; default `optax.lbfgs()`. Optimisers
        without line search (Adam, SGD) are wrapped with `optax.with_extra_args_support`.
    - `parametrisation`: keyword only, `"square"` or `"softmax"`.
    - `max_steps`: keyword only, optimiser steps.
    - `tol`: keyword only, Frank-Wolfe gap to stop at (default 1e-13 in float64, 1e-5 in
        float32).
    - `throw`: keyword only, raise if not converged or infeasible.

    **Returns:**

    A [`curax.Solution`][]: `value` the distribution `p` (n,) (for a mixture family, also
    `stats["mixture_weights"]`), `stats` with `u`, `objective`, `fw_gap`, `num_steps`. `result`
    is `infeasible` when no point with every utility above the disagreement point was found.

    !!! Example

        ```python
        import optax

        # Falahati et al.'s Theorem 3.7: linear utilities on the mixtures of two basins.
        x = curax.grid_1d(-3.0, 3.0, 201)
        r = jnp.stack([-((x + 1.5) ** 2), -((x - 1.5) ** 2)])
        p1, p2 = jnp.where(x < 0, 1.0, 0.0), jnp.where(x > 0, 1.0, 0.0)
        p1, p2 = p1 / p1.sum(), p2 / p2.sum()  # the two basin distributions
        d = jnp.stack([r[0] @ p2, r[1] @ p1])  # each reward's value on the other basin
        bp = curax.BargainingProblem.from_rewards(r, jnp.array([0.3, 0.7]), utility="linear",
                                                  disagreement=d, family=jnp.stack([p1, p2]))
        sol = curax.nash_optimize(bp, optax.lbfgs())
        sol.stats["mixture_weights"]  # (0.3, 0.7): a* = q
        ```
    """
    # Converted and checked before the `jit` (a concrete bad input is a ValueError), and
    # `throw` applied after it: the compiled solve then has no host callback and can be
    # persistently cached.
    if isinstance(problem, CurationProblem):
        problem = BargainingProblem.from_curation(problem)
    out = _nash_optimize(
        problem, optimizer, parametrisation=parametrisation, max_steps=max_steps, tol=tol
    )
    return throw_if_failed(out, throw)


@filter_jit
def _nash_optimize(
    problem: BargainingProblem,
    optimizer: Any,
    *,
    parametrisation: str,
    max_steps: int,
    tol: float | None,
) -> Solution:
    import optax

    if parametrisation not in ("square", "softmax"):
        raise ValueError(
            f"`parametrisation` must be 'square' or 'softmax', got {parametrisation!r}."
        )
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    if optimizer is None:
        optimizer = optax.lbfgs()
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        optimizer = optax.with_extra_args_support(optimizer)
    mat = _feasible_matrix(problem)
    dtype = mat.dtype
    if tol is None:
        tol = 1e-13 if jnp.finfo(dtype).bits == 64 else 1e-5
    k = mat.shape[1]
    alpha = problem.weights
    eps = 1e-10 * jnp.maximum(jnp.max(jnp.abs(mat)), 1e-300)

    def to_simplex(theta):
        if parametrisation == "square":
            t2 = theta**2
            return t2 / jnp.sum(t2)
        return jax.nn.softmax(theta)

    def loss(theta):
        gain = mat @ to_simplex(theta) - problem.disagreement
        return -jnp.sum(jnp.where(alpha > 0, alpha * _smooth_log(gain, eps), 0.0))

    theta0 = jnp.ones((k,), dtype) if parametrisation == "square" else jnp.zeros((k,), dtype)
    # Optimisers with a line search (L-BFGS) keep the last value and gradient in their
    # state; reuse them. Others get a plain `jax.value_and_grad`.
    with jax.numpy_dtype_promotion("standard"):
        opt_state0 = optimizer.init(theta0)
    if optax.tree_utils.tree_get(opt_state0, "value", default=None) is not None:
        value_and_grad = optax.value_and_grad_from_state(loss)
    else:
        plain = jax.value_and_grad(loss)

        def value_and_grad(theta, state):
            del state
            return plain(theta)

    def cond(carry):
        _, _, step, gap, _, _ = carry
        return (step < max_steps) & ~(gap <= tol)

    def body(carry):
        theta, state, step, _, best, best_gap = carry
        # optax's L-BFGS mixes int32 and int64 counters internally: not strict-promotion safe.
        with jax.numpy_dtype_promotion("standard"):
            value, grad = value_and_grad(theta, state=state)
            updates, state = optimizer.update(
                grad, state, theta, value=value, grad=grad, value_fn=loss
            )
            theta = optax.apply_updates(theta, updates)
        a = to_simplex(theta)
        gap, u, _ = _nash_gap(problem, mat, a)
        feasible = jnp.all((alpha <= 0) | (u - problem.disagreement > 0))
        gap = jnp.where(feasible & jnp.all(jnp.isfinite(a)), gap, jnp.inf)
        better = gap <= best_gap
        best = jnp.where(better, a, best)
        best_gap = jnp.where(better, gap, best_gap)
        return theta, state, step + 1, gap, best, best_gap

    a0 = to_simplex(theta0)
    inf = jnp.array(jnp.inf, dtype)
    init = (theta0, opt_state0, jnp.array(0), inf, a0, inf)
    _, _, steps, _, a, gap = jax.lax.while_loop(cond, body, init)
    p = a if problem.family is None else a @ problem.family
    u = problem.utilities @ p
    gain = u - problem.disagreement
    feasible = jnp.all((alpha <= 0) | (gain > 0))
    result = RESULTS.where(gap <= tol, RESULTS.successful, RESULTS.nonlinear_max_steps_reached)
    result = RESULTS.where(feasible, result, RESULTS.infeasible)
    stats = {
        "u": u,
        "objective": _objective(problem, u),
        "fw_gap": gap,
        "num_steps": steps,
        "max_steps": jnp.array(max_steps),
    }
    if problem.family is not None:
        stats["mixture_weights"] = a
    return Solution(value=p, result=result, aux=None, stats=stats, state=None)


# ------------------------------------------------------------------------------------------
# Reference mixing: the unique fixed point through an m-dimensional convex dual.
# ------------------------------------------------------------------------------------------


def mixing_fixed_point(
    problem: CurationProblem,
    *,
    tol: float | None = None,
    max_steps: int = 100,
    throw: bool = True,
) -> Solution:
    """The unique fixed point of the K -> infinity dynamics with reference data.

    With real-data fraction `rw = reference_weight > 0`, the map
    `p -> rw p_ref + (1 - rw) p * G(p)`, `G = sum_i alpha_i w_i / Z_i`, `Z_i = E_p[w_i]`,
    `w_i = e^{r_i / tau}`, has the fixed point

    `p(x) = rw p_ref(x) / (1 - (1 - rw) sum_i alpha_i w_i(x) / Z_i)`,

    with `Z` solving the m consistency equations `Z_i = sum_x w_i(x) p(x)`. It maximises the
    strictly concave `(1 - rw) sum_i alpha_i log E_p[w_i] + rw sum_x p_ref(x) log p(x)`, whose
    dual in `y_i = (1 - rw) alpha_i / Z_i` is the m-dimensional convex problem

    `min_y -(1 - rw) sum_i alpha_i log y_i - rw sum_x p_ref(x) log(1 - (E^T y)(x))`,

    solved here by damped Newton (O(n m^2) per step; the consistency equation is its gradient
    `Z_i(y) = (1 - rw) alpha_i / y_i`). The synthetic-data fraction is `eta = 1 - rw`.
    Finite K is solved in its K -> infinity limit (`stats["infinite_k_limit"]`).

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][] with `reference` and `reference_weight > 0`.
    - `tol`: keyword only, the certified residual `max |f(p) - p|` of the K -> infinity map
        (default 1e-12 in float64, 1e-5 in float32).
    - `max_steps`: keyword only, Newton steps.
    - `throw`: keyword only, raise if not certified.

    **Returns:**

    A [`curax.Solution`][] with `value` the fixed point `p` (n,), `stats`: `z` (m,)
    (`E_p[w_i]` in the normalised units `w_i = e^{r_i/tau - max}`), `residual`,
    `newton_decrement`, `num_steps`, `max_growth_off_reference` (`(1 - rw) G` where
    `p_ref = 0`; above 1 the formula's point is not the stable one, `result` is then
    `unstable_fixed_point`), `infinite_k_limit`.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, q=0.3)
        problem = curax.CurationProblem(problem.rewards, problem.weights,
                                        reference=problem.uniform(), reference_weight=0.2)
        sol = curax.mixing_fixed_point(problem)
        ```
    """
    if not isinstance(problem, CurationProblem):
        raise ValueError(f"`problem` must be a CurationProblem, got {type(problem)}.")
    if problem.reference is None:
        raise ValueError(
            "`mixing_fixed_point` needs reference data: `problem.reference` is None (without "
            "it the stable point is `curax.nash_solution(problem)`)."
        )
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    # Checked before the `jit` and thrown after it: the compiled solve then carries no host
    # callback and can be persistently cached.
    out = _mixing_fixed_point(checked_reference_weight(problem), tol=tol, max_steps=max_steps)
    return throw_if_failed(out, throw)


def checked_reference_weight(problem: CurationProblem) -> CurationProblem:
    """`problem`, its `reference_weight` checked to be > 0 (what the mixing fixed point needs):
    a `ValueError` when it is concrete, else an `eqx.error_if` in the caller's program."""
    rw = problem.reference_weight
    checked = check_value(
        rw,
        lambda xp, w: w <= 0,
        "`mixing_fixed_point` needs `reference_weight > 0` (the real-data fraction).",
    )
    if checked is rw:
        return problem
    return eqx.tree_at(lambda pr: pr.reference_weight, problem, checked)


@filter_jit
def _mixing_fixed_point(problem: CurationProblem, *, tol: float | None, max_steps: int) -> Solution:
    s = problem.scaled_rewards
    dtype = s.dtype
    if tol is None:
        tol = 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-5
    rw = problem.reference_weight
    e = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    pref = problem.reference
    alpha = problem.weights
    m = e.shape[0]
    on = alpha > 0
    eta = 1 - rw
    insupp = pref > 0

    def parts(y):
        t = y @ e  # (E^T y)(x)
        slack = 1 - t
        ok = jnp.all(jnp.where(insupp, slack > 0, True)) & jnp.all(jnp.where(on, y > 0, True))
        safe = jnp.where(insupp & (slack > 0), slack, 1.0)
        p = jnp.where(insupp, rw * pref / safe, 0.0)
        return t, safe, p, ok

    def dual(y):
        _, safe, _, ok = parts(y)
        ys = jnp.where(on & (y > 0), y, 1.0)
        val = -eta * jnp.sum(jnp.where(on, alpha * jnp.log(ys), 0.0)) - rw * jnp.sum(
            jnp.where(insupp, pref * jnp.log(safe), 0.0)
        )
        return jnp.where(ok, val, jnp.inf)

    def newton_dir(y):
        _, safe, p, _ = parts(y)
        ys = jnp.where(on, y, 1.0)
        grad = jnp.where(on, e @ p - eta * alpha / ys, 0.0)
        h = jnp.where(insupp, rw * pref / safe**2, 0.0)
        hess = (e * h[None, :]) @ e.T + jnp.diag(jnp.where(on, eta * alpha / ys**2, 1.0))
        hess = jnp.where(on[:, None] & on[None, :], hess, jnp.eye(m, dtype=dtype))
        dy = -jnp.linalg.solve(hess, grad)
        return dy, -grad @ dy

    def certificate(y):
        # The fixed-point residual of the K -> infinity map at the primal point of y.
        _, _, p, _ = parts(y)
        p = p / jnp.sum(p)
        g = _safe_ratio_nash(alpha, e @ p) @ e
        return jnp.max(jnp.abs(rw * pref + eta * p * g - p))

    def cond(carry):
        _, step, dec, res, moved, _ = carry
        return (step < max_steps) & (res > 0.25 * tol) & (dec > 0) & moved

    def body(carry):
        y, step, _, _, _, evals = carry
        dy, dec = newton_dir(y)
        f0 = dual(y)

        # Backtracking (Armijo) that also keeps y in the dual's domain.
        def ls_cond(c):
            t, it = c
            return (dual(y + t * dy) > f0 - 0.25 * t * dec) & (it < 60)

        t, num_ls = jax.lax.while_loop(
            ls_cond,
            lambda c: (0.5 * c[0], c[1] + 1),
            (jnp.array(1.0, dtype), jnp.array(0)),
        )
        y_new = jnp.where(dual(y + t * dy) < jnp.inf, y + t * dy, y)
        moved = jnp.any(y_new != y)
        dec = jnp.where(jnp.isfinite(dec), dec, 0.0)
        # Each pass over the (m, n) rewards costs about one map evaluation: the Newton
        # direction, the dual at y, the line search (num_ls + 2) and the certificate.
        evals = evals + num_ls + 5
        return y_new, step + 1, dec, certificate(y_new), moved, evals

    y0 = jnp.where(on, eta * alpha, 0.0)
    inf = jnp.array(jnp.inf, dtype)
    init = (y0, jnp.array(0), inf, certificate(y0), jnp.array(True), jnp.array(1))
    y, steps, dec, _, _, evals = jax.lax.while_loop(cond, body, init)

    def residual_at(p):
        z = e @ p
        g = _safe_ratio_nash(alpha, z) @ e
        return jnp.max(jnp.abs(rw * pref + eta * p * g - p)), z, g

    # The polish is accurate to ulps in p where the dual point loses digits (large n, one
    # reward); with several rewards its slack sums can cancel instead. Keep it when it is
    # certified or no worse than the dual point; the certificate is the residual of the one
    # returned, either way.
    def primal_polish(p, _):
        # Newton on the primal stationarity condition: drives the map's own residual to
        # rounding level where the slack sums of the root polish cancel.
        u = e @ p
        ps = jnp.where(insupp, p, 1.0)
        grad = jnp.where(insupp, eta * (_safe_ratio_nash(alpha, u) @ e) + rw * pref / ps - 1, 0.0)
        dinv = jnp.where(insupp, ps**2 / (rw * jnp.where(insupp, pref, 1.0)), 0.0)
        c = (jnp.sqrt(eta * alpha) / jnp.where(u > 0, u, 1.0))[:, None] * e
        cd = c * dinv[None, :]
        small = jnp.eye(m, dtype=dtype) + cd @ c.T
        dp = dinv * grad - cd.T @ jnp.linalg.solve(small, cd @ grad)
        new = jnp.where(insupp, p + dp, 0.0)
        ok = jnp.all(new >= 0) & jnp.all(jnp.isfinite(new))
        return jnp.where(ok, new / jnp.sum(new), p), None

    p_pol = _mixing_polish(s, pref, alpha, rw, y)
    _, _, p_dual, _ = parts(y)
    p_dual, _ = jax.lax.scan(primal_polish, p_dual / jnp.sum(p_dual), None, length=2)
    r_pol, z_pol, g_pol = residual_at(p_pol)
    r_dual, z_dual, g_dual = residual_at(p_dual)
    use_pol = (r_pol <= tol) | ~(r_pol > r_dual)
    p = jnp.where(use_pol, p_pol, p_dual)
    residual = jnp.where(use_pol, r_pol, r_dual)
    z = jnp.where(use_pol, z_pol, z_dual)
    g = jnp.where(use_pol, g_pol, g_dual)
    off = jnp.max(jnp.where(insupp, -jnp.inf, eta * g))
    result = RESULTS.where(
        residual <= tol,
        RESULTS.successful,
        RESULTS.where(
            steps >= max_steps,
            RESULTS.nonlinear_max_steps_reached,
            RESULTS.certificate_failed,
        ),
    )
    result = RESULTS.where(off > 1 + 1e-12, RESULTS.unstable_fixed_point, result)
    result = RESULTS.where(jnp.all(jnp.isfinite(p)), result, RESULTS.nonfinite)
    stats = {
        "z": z,
        "residual": residual,
        "newton_decrement": dec,
        "num_steps": steps,
        "max_steps": jnp.array(max_steps),
        # + the two polishes (about 2 passes per step) and the two final residuals
        "num_map_evals": evals + 2 * _POLISH_STEPS + 8,
        "max_growth_off_reference": off,
        "infinite_k_limit": jnp.array(problem.has_finite_k),
    }
    return Solution(value=p, result=result, aux=None, stats=stats, state=None)


# Newton steps of the root-based polish of the mixing fixed point.
_POLISH_STEPS = 4


def _mixing_polish(s: Array, pref: Array, alpha: Array, rw: Array, y: Array) -> Array:
    """The mixing fixed point to full relative accuracy, from the dual solution `y`.

    `p = rw p_ref / slack` with `slack = 1 - sum_i y_i w_i` loses digits to cancellation
    where the slack is small (the peak of `p`: there `1 - slack ~ 1` and the relative error
    of `p` is eps / slack, e.g. 1e-7 at slack 1e-9). Instead take the slack at the point
    `x0` where it is smallest as an unknown `s0` and write
    `slack(x) = s0 + sum_i y_i d_i(x)`, `d_i(x) = w_i(x0) - w_i(x)`, with
    `d_i = w_i(x0) (-expm1(r_i(x) - r_i(x0)))` formed without cancellation. The m + 1
    unknowns `(s0, y)` solve `y_i E_p[w_i] = (1 - rw) alpha_i` and `sum p = 1` (which together
    imply `s0 = 1 - sum_i y_i w_i(x0)`), by Newton in O(n m^2) per step. For one reward,
    `d >= 0` and every `slack(x)` is a sum of non-negative terms: `p` is accurate to a few
    ulps everywhere (this is Wei et al.'s Prop. 3.8 with `Z - eta e^{r_max}` as the unknown).
    """
    dtype = s.dtype
    m = s.shape[0]
    eta = 1 - rw
    on = alpha > 0
    insupp = pref > 0
    smax = jnp.max(s, axis=1, keepdims=True)
    w = jnp.exp(s - smax)
    slack = 1 - y @ w
    x0 = jnp.argmin(jnp.where(insupp, slack, jnp.inf))
    d = w[:, x0][:, None] * -jnp.expm1(s - s[:, x0][:, None])  # (m, n)
    s0 = jnp.maximum(slack[x0], jnp.finfo(dtype).tiny)
    rp = jnp.where(insupp, rw * pref, 0.0)
    target = jnp.where(on, eta * alpha, 0.0)

    def evaluate(s0, y):
        sl = s0 + y @ d
        ok = jnp.all(jnp.where(insupp, sl > 0, True)) & (s0 > 0)
        sl = jnp.where(insupp & (sl > 0), sl, 1.0)
        p = jnp.where(insupp, rp / sl, 0.0)
        res = jnp.concatenate([jnp.where(on, y * (w @ p) - target, 0.0), (jnp.sum(p) - 1)[None]])
        return p, sl, res, ok

    def step(carry, _):
        s0, y = carry
        p, sl, res, _ = evaluate(s0, y)
        dp = jnp.where(insupp, p / sl, 0.0)  # -dp/ds0; -dp/dy_i = dp * d_i
        z = w @ p
        # d res_i / d s0 = -y_i w_i . dp;  d res_i / d y_j = delta_ij z_i - y_i w_i . (dp d_j)
        wd = (w * dp[None, :]) @ d.T  # (m, m): w_i . (dp d_j)
        jac = jnp.zeros((m + 1, m + 1), dtype)
        jac = jac.at[:m, 0].set(-y * (w @ dp))
        jac = jac.at[:m, 1:].set(jnp.diag(z) - y[:, None] * wd)
        jac = jac.at[m, 0].set(-jnp.sum(dp))
        jac = jac.at[m, 1:].set(-(d @ dp))
        keep = jnp.concatenate([jnp.array([True]), on])
        jac = jnp.where(keep[:, None] & keep[None, :], jac, jnp.eye(m + 1, dtype=dtype))
        delta = jnp.linalg.solve(jac, -res)
        old = jnp.max(jnp.abs(res))

        def try_step(t):
            s1 = s0 + t * delta[0]
            y1 = jnp.where(on, y + t * delta[1:], y)
            _, _, r1, ok = evaluate(s1, y1)
            return s1, y1, ok & (jnp.max(jnp.abs(r1)) <= old)

        # Halve until the slack stays positive and the residual does not grow.
        def ls_cond(c):
            t, _, _, good, it = c
            return ~good & (it < 30)

        def ls_body(c):
            t, _, _, _, it = c
            t = 0.5 * t
            s1, y1, good = try_step(t)
            return t, s1, y1, good, it + 1

        s1, y1, good = try_step(jnp.array(1.0, dtype))
        _, s1, y1, good, _ = jax.lax.while_loop(
            ls_cond, ls_body, (jnp.array(1.0, dtype), s1, y1, good, jnp.array(0))
        )
        return (jnp.where(good, s1, s0), jnp.where(good, y1, y)), None

    (s0, y), _ = jax.lax.scan(step, (s0, y), None, length=_POLISH_STEPS)
    p, _, _, _ = evaluate(s0, y)
    return p / jnp.sum(p)


_COMPARE_VERDICTS = ("stable", "marginal", "unstable", "not a fixed point")


def _safe_ratio_nash(alpha: Array, u: Array) -> Array:
    ok = alpha > 0
    return jnp.where(ok, alpha / jnp.where(ok & (u > 0), u, 1.0), 0.0)


# ------------------------------------------------------------------------------------------
# Stable point vs Nash solution.
# ------------------------------------------------------------------------------------------


class NashComparison(eqx.Module):
    """What [`curax.compare`][] found: a stable point of the dynamics against the weighted Nash
    bargaining solution of the same problem (K -> infinity utilities `E_p[e^{r_i/tau}]`).

    **Attributes:**

    - `point`, `nash`: `Float[Array, " n"]`, the two distributions.
    - `log_utilities_point`, `log_utilities_nash`: `Float[Array, " m"]`, `log E_p[e^{r_i/tau}]`.
    - `utility_difference`: `max_i |log u_i(point) - log u_i(nash)|`.
    - `objective_point`, `objective_nash`: the log Nash product `Phi` of each.
    - `objective_difference`: `Phi(nash) - Phi(point)` (>= -`nash_fw_gap`; 0 when the point
        is the Nash solution).
    - `fw_gap_point`: the point's K -> infinity Frank-Wolfe gap, an upper bound on
        `Phi* - Phi(point)`.
    - `nash_fw_gap`: the Nash solution's certified gap.
    - `support_point`, `support_nash`: number of points with mass above `support_tol`.
    - `support_overlap`: Jaccard index of the two supports (1 = the same points).
    - `nash_mass_on_point_support`: how much of the Nash solution's mass lies on the point's
        support.
    - `point_residual`: `max |f(p) - p|` of the problem's own map at the point (for a
        [`curax.BargainingProblem`][], `max_x p(x) |G(x) - 1|` with the K -> infinity growth
        `G`): the point is a fixed point, and gets a stability verdict, only if this is
        `<= tol`.
    - `stability_code`: 0 stable, 1 marginal, 2 unstable, 3 not a fixed point (the point's
        residual exceeds `tol`, e.g. the end of an unfinished trajectory: no stability claim
        is made). Codes 0-2 come from [`curax.stability`][] (the Jacobian spectrum and
        off-support growth of the problem's own map, any K); for a
        [`curax.BargainingProblem`][] from the K -> infinity growth factors alone (stable iff
        `fw_gap_point <= tol`, unstable otherwise).
    - `stability_radius`: the point's Jacobian spectral radius on the simplex tangent space
        (or `1 + fw_gap_point` for a bargaining problem: the largest growth factor); nan when
        the point is not a fixed point.
    - `nash_certified`: whether [`curax.nash_solution`][] certified the Nash side.
    - `infinite_k_limit`: the Nash side is the K -> infinity limit of a finite-K problem.
    """

    point: Float[Array, " n"]
    nash: Float[Array, " n"]
    log_utilities_point: Float[Array, " m"]
    log_utilities_nash: Float[Array, " m"]
    utility_difference: Float[Array, ""]
    objective_point: Float[Array, ""]
    objective_nash: Float[Array, ""]
    objective_difference: Float[Array, ""]
    fw_gap_point: Float[Array, ""]
    nash_fw_gap: Float[Array, ""]
    support_point: Int[Array, ""]
    support_nash: Int[Array, ""]
    support_overlap: Float[Array, ""]
    nash_mass_on_point_support: Float[Array, ""]
    point_residual: Float[Array, ""]
    stability_code: Int[Array, ""]
    stability_radius: Float[Array, ""]
    nash_certified: Bool[Array, ""]
    infinite_k_limit: bool = eqx.field(static=True)

    @property
    def verdict(self) -> str:
        """`"stable"`, `"marginal"`, `"unstable"` or `"not a fixed point"` (needs a concrete
        report)."""
        return _COMPARE_VERDICTS[int(self.stability_code)]

    def summary(self) -> str:
        """A plain-text table of the comparison, for a report or a paper's appendix."""
        if int(self.stability_code) == 3:
            verdict = f"not a fixed point (residual {float(self.point_residual):.2e})"
        else:
            verdict = f"{self.verdict} (radius {float(self.stability_radius):.6g})"
        nash = (
            "certified" if bool(self.nash_certified) else "NOT certified"
        ) + f" (gap {float(self.nash_fw_gap):.1e})"
        rows = [
            ("status", verdict, nash),
            (
                "objective Phi",
                f"{float(self.objective_point):.15g}",
                f"{float(self.objective_nash):.15g}",
            ),
            ("Phi(nash) - Phi(point)", f"{float(self.objective_difference):.3e}", ""),
            (
                "Frank-Wolfe gap",
                f"{float(self.fw_gap_point):.3e}",
                f"{float(self.nash_fw_gap):.3e}",
            ),
            ("max |log u difference|", f"{float(self.utility_difference):.3e}", ""),
            ("support size", str(int(self.support_point)), str(int(self.support_nash))),
            ("support overlap (Jaccard)", f"{float(self.support_overlap):.4f}", ""),
        ]
        for i, (a, b) in enumerate(zip(self.log_utilities_point, self.log_utilities_nash)):
            rows.append((f"log u_{i}", f"{float(a):.12g}", f"{float(b):.12g}"))
        # Only a stable or marginal fixed point is called a stable point.
        name = "stable point" if int(self.stability_code) in (0, 1) else "point"
        head = f"{'':28s}{name:>36s}{'Nash solution':>26s}"
        lines = [head] + [f"{r[0]:28s}{r[1]:>36s}{r[2]:>26s}" for r in rows]
        if self.infinite_k_limit:
            lines.append("(Nash side: K -> infinity limit of a finite-K problem)")
        return "\n".join(lines)


def compare(
    point: Solution | ArrayLike,
    problem: CurationProblem | BargainingProblem,
    *,
    grid_shape: tuple[int, ...] | None = None,
    support_tol: float = 1e-10,
    tol: float = 1e-9,
) -> NashComparison:
    """Compare a stable point of the dynamics with the weighted Nash bargaining solution.

    Solves the problem's bargaining problem exactly ([`curax.nash_solution`][]), evaluates
    both points' utilities, objective, Frank-Wolfe gap and supports, and, if the point is a
    fixed point (residual `<= tol`), classifies it with [`curax.stability`][] (for a
    [`curax.CurationProblem`][]; the map of the problem's own K). A point that is not a fixed
    point (an unfinished trajectory) gets no stability verdict (`"not a fixed point"`). What a
    user quotes: "the point is the Nash solution to `objective_difference`, certified by
    `fw_gap_point`"; for a certified stable point use [`curax.stable_point`][].

    **Arguments:**

    - `point`: a [`curax.Solution`][] (e.g. from [`curax.fixed_point`][]) or a distribution
        `(n,)`.
    - `problem`: the [`curax.CurationProblem`][] (or a [`curax.BargainingProblem`][] with
        disagreement point 0 on the simplex).
    - `grid_shape`: keyword only, passed to [`curax.nash_solution`][].
    - `support_tol`: keyword only, mass above which a point is in a support.
    - `tol`: keyword only, margin of the stability verdict and the largest residual at
        which the point counts as a fixed point.

    **Returns:**

    A [`curax.NashComparison`][]; `print(report.summary())` for a table.

    !!! Example

        ```python
        sol = curax.stable_point(problem)            # certified
        report = curax.compare(sol, problem)
        print(report.summary())
        ```
    """
    p = point.value if isinstance(point, Solution) else jnp.asarray(point)
    bp = (
        problem
        if isinstance(problem, BargainingProblem)
        else BargainingProblem.from_curation(problem)
    )
    if p.ndim != 1 or p.shape[0] != bp.size:
        raise ValueError(f"`point` must be a distribution of shape ({bp.size},), got {p.shape}.")
    if bp.family is not None:
        raise ValueError("`compare` works on the simplex; `problem.family` must be None.")
    p = _check_point(p.astype(bp.utilities.dtype), bp.size)
    nash = nash_solution(bp, grid_shape=grid_shape, throw=False)
    return _compare(p, nash, bp, problem, support_tol, tol)


def _check_point(p: Array, n: int) -> Array:
    from ._problem import check_distribution

    return check_distribution(p, n, "point")


def _compare(
    p: Array,
    nash: Solution,
    bp: BargainingProblem,
    problem: CurationProblem | BargainingProblem,
    support_tol: float,
    tol: float,
) -> NashComparison:
    q = nash.value
    up = bp.utilities @ p
    uq = bp.utilities @ q
    safe = jnp.where(up > 0, up, 1.0)
    lup = jnp.where(up > 0, jnp.log(safe), -jnp.inf) + bp.log_scale
    luq = nash.stats["log_utilities"]
    on = bp.weights > 0
    phi_p = _objective(bp, up)
    phi_q = nash.stats["objective"]
    g = _safe_ratio_nash(bp.weights, up) @ bp.utilities
    gap_p = jnp.max(g) - 1
    sp = p > support_tol
    sq = q > support_tol
    inter = jnp.sum(sp & sq)
    union = jnp.maximum(jnp.sum(sp | sq), 1)
    if isinstance(problem, CurationProblem):
        from ._stability import stability

        report = stability(p, problem, support_tol=support_tol, tol=tol)
        residual = report.residual
        code = report.verdict_code
        radius = report.radius
    else:
        residual = jnp.max(p * jnp.abs(g - 1))
        code = jnp.where(gap_p <= tol, 0, 2)
        radius = 1 + gap_p
    fixed = residual <= tol
    code = jnp.where(fixed, code, 3)
    radius = jnp.where(fixed, radius, jnp.nan)
    del uq
    return NashComparison(
        point=p,
        nash=q,
        log_utilities_point=lup,
        log_utilities_nash=luq,
        utility_difference=jnp.max(jnp.where(on, jnp.abs(lup - luq), 0.0)),
        objective_point=phi_p,
        objective_nash=phi_q,
        objective_difference=phi_q - phi_p,
        fw_gap_point=gap_p,
        nash_fw_gap=nash.stats["fw_gap"],
        support_point=jnp.sum(sp),
        support_nash=jnp.sum(sq),
        support_overlap=inter / union,
        nash_mass_on_point_support=jnp.sum(jnp.where(sp, q, 0.0)),
        point_residual=jnp.asarray(residual),
        stability_code=jnp.asarray(code),
        stability_radius=jnp.asarray(radius),
        nash_certified=jnp.asarray(nash.result == RESULTS.successful),
        infinite_k_limit=bp.infinite_k_limit,
    )
