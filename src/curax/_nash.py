"""Weighted Nash bargaining: the objective that the K -> infinity dynamics maximise.

`BargainingProblem` states a bargaining problem with linear-in-`p` utilities
`u_i(p) = (U p)_i` (exp-rewards `U = e^{r / tau}`, or linear rewards `U = r`), weights `alpha`,
a disagreement point `d` and a feasible set (the simplex, or a mixture family). Its objective is
the log weighted Nash product `sum_i alpha_i log(u_i(p) - d_i)`.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._nash_solver import solve_nash
from ._problem import _as_float, check_value, CurationProblem, simplex_tolerance
from ._solution import RESULTS, Solution, throw_if_failed


Utility = Literal["exp", "linear", "matrix"]


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
        solvers with every utility positive).
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
        utilities = _as_float(utilities, "utilities")
        if utilities.ndim == 1:
            utilities = utilities[None, :]
        if utilities.ndim != 2 or utilities.shape[0] < 1 or utilities.shape[1] < 1:
            raise ValueError(
                f"`utilities` must have shape (m, n) (one utility per row), got "
                f"{utilities.shape}."
            )
        m, n = utilities.shape
        dtype = utilities.dtype
        utilities = check_value(
            utilities, ~jnp.all(jnp.isfinite(utilities)), "`utilities` contains NaN or inf."
        )
        if weights is None:
            weights = jnp.full((m,), 1.0 / m, dtype)
        weights = _as_float(weights, "weights").astype(dtype)
        if weights.shape != (m,):
            raise ValueError(f"`weights` must have shape ({m},), got {weights.shape}.")
        weights = check_value(
            weights,
            ~jnp.all(jnp.isfinite(weights)) | jnp.any(weights < 0),
            "`weights` must be finite and non-negative (a probability vector).",
        )
        weights = check_value(
            weights,
            jnp.abs(jnp.sum(weights) - 1) > simplex_tolerance(dtype),
            "`weights` must sum to 1 (a probability vector over utilities).",
        )
        weights = weights / jnp.sum(weights)
        if disagreement is None:
            disagreement = jnp.zeros((m,), dtype)
        disagreement = _as_float(disagreement, "disagreement").astype(dtype)
        if disagreement.shape == ():
            disagreement = jnp.broadcast_to(disagreement, (m,))
        if disagreement.shape != (m,):
            raise ValueError(
                f"`disagreement` must be a scalar or have shape ({m},), got {disagreement.shape}."
            )
        disagreement = check_value(
            disagreement, ~jnp.all(jnp.isfinite(disagreement)), "`disagreement` must be finite."
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
        self.anchors = jnp.argmax(utilities, axis=1)
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
            rewards, ~jnp.all(jnp.isfinite(rewards)), "`rewards` contains NaN or inf."
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
                    f"`temperature` must be a scalar or have shape ({m},), got "
                    f"{temperature.shape}."
                )
            temperature = check_value(
                temperature,
                ~jnp.all(jnp.isfinite(temperature) & (temperature > 0)),
                "`temperature` must be finite and > 0.",
            )
            s = rewards / (temperature[:, None] if temperature.ndim else temperature)
            return _from_scaled(s, weights, disagreement, family, infinite_k_limit=False)
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
        finite = any(k is not None for k in problem.ks)
        return _from_scaled(
            problem.scaled_rewards, problem.weights, None, None, infinite_k_limit=finite
        )

    def objective(self, p: Float[Array, " n"]) -> Float[Array, ""]:
        """The log weighted Nash product `sum_i alpha_i log(u_i(p) - d_i)` in the utilities'
        own units (for exp-utilities of a curation problem this equals
        [`curax.potential`][]); `-inf` where some `u_i <= d_i` with `alpha_i > 0`."""
        return _objective(self, self.utilities @ p)


def _check_rows(family: Array, n: int) -> Array:
    tol = simplex_tolerance(family.dtype)
    family = check_value(family, ~jnp.all(jnp.isfinite(family)), "`family` contains NaN or inf.")
    family = check_value(
        family, jnp.any(family < -tol), "Every row of `family` must be a distribution (>= 0)."
    )
    return check_value(
        family,
        jnp.any(jnp.abs(jnp.sum(family, axis=1) - 1) > tol),
        "Every row of `family` must be a distribution (sum to 1).",
    )


def _from_scaled(
    s: Array,
    weights: ArrayLike | None,
    disagreement: Array | None,
    family: ArrayLike | None,
    *,
    infinite_k_limit: bool,
) -> BargainingProblem:
    shift = jax.lax.stop_gradient(jnp.max(s, axis=1))
    u = jnp.exp(s - shift[:, None])
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


@eqx.filter_jit
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
    else adds the largest local maxima of `g` (with a stencil of neighbours at distances
    1, 2, 4, 8 when `grid_shape` is given) to a small set of active columns and re-solves the
    restricted problem on them with a primal-dual interior-point method. With `grid_shape`,
    coarse levels (stride 8 per dimension, while >= 2,000 points remain) hand their support to
    finer ones. The optimum has at most `m` atoms generically, so a fixed number of slots
    (`2 m + 4` kept columns) makes the solve `jit`- and `vmap`-able.

    A mixture-family feasible set `{a @ family}` is solved as the simplex problem of the
    matrix `U @ family.T` (no grid); `value` is then `a @ family`.

    !!! info

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
    `master_iterations`, `infinite_k_limit`. `result` is `certificate_failed` or
    `nonlinear_max_steps_reached` when the gap is above `tol`.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=1001, q=0.3)
        sol = curax.nash_solution(problem, grid_shape=(1001,))
        sol.stats["fw_gap"]  # <= 1e-12
        ```
    """
    if isinstance(problem, CurationProblem):
        problem = BargainingProblem.from_curation(problem)
    if not isinstance(problem, BargainingProblem):
        raise ValueError(
            f"`problem` must be a BargainingProblem or CurationProblem, got {type(problem)}."
        )
    e = problem.utilities
    dtype = e.dtype
    if tol is None:
        tol = 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-5
    if not isinstance(max_passes, int) or max_passes < 1:
        raise ValueError(f"`max_passes` must be a positive int, got {max_passes!r}.")
    alpha = problem.weights
    e = check_value(
        e,
        jnp.any(problem.disagreement != 0),
        "`nash_solution` solves disagreement point 0; use `curax.nash_optimize` for another "
        "disagreement point.",
    )
    e = check_value(
        e,
        jnp.any(e < 0),
        "`nash_solution` needs non-negative utilities (log u must be defined); shift linear "
        "rewards or use `curax.nash_optimize`.",
    )
    anchors = problem.anchors
    if problem.family is not None:
        if grid_shape is not None:
            raise ValueError("`grid_shape` cannot be used with a mixture-family feasible set.")
        e = e @ problem.family.T
        anchors = jnp.argmax(e, axis=1)
    # A utility with positive weight that is 0 on every column: no feasible point has all
    # utilities above the disagreement point 0.
    infeasible = jnp.any((alpha > 0) & (jnp.max(e, axis=1) <= 0))
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
    if problem.family is not None:
        p = p @ problem.family
    u = problem.utilities @ p
    objective = _objective(problem, u)
    finite = jnp.all(jnp.isfinite(p)) & jnp.isfinite(res.gap)
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
    safe_u = jnp.where(u > 0, u, 1.0)
    stats = {
        "u": u,
        "log_utilities": jnp.where(u > 0, jnp.log(safe_u), -jnp.inf) + problem.log_scale,
        "objective": objective,
        "fw_gap": res.gap,
        "support": res.support,
        "support_weights": res.weights,
        "num_passes": res.passes,
        "num_steps": res.fine_passes,
        "max_steps": jnp.array(max_passes),
        "master_iterations": res.master_iters,
        "infinite_k_limit": jnp.array(problem.infinite_k_limit),
    }
    sol = Solution(value=p, result=result, aux=None, stats=stats, state=None)
    return throw_if_failed(sol, throw)
