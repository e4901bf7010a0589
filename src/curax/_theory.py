"""Numerical verification of the curation-dynamics theorems (docs/theory.md).

Every `check_*` function takes a [`curax.CurationProblem`][], computes the hypotheses of one
theorem from the rewards, says which of them hold, runs the dynamics and returns a
[`curax.theory.TheoremReport`][] with the hypothesis values, the predicted bound, the measured
value and a verdict. A hypothesis that fails is reported (verdict `"hypotheses-fail"`), never
asserted away: the measurement is still made, and `measured["consistent"]` says whether the
theorem's conclusion happened to hold anyway.

Every verdict about a *limit* is taken at a certified point: the stable point from
[`curax.stable_point`][] (Frank-Wolfe gap `max G - 1 <= tol`, or with real data a residual
and contraction-rate error bound), or, with `method="dynamics"`, the last point of a
trajectory whose own certificate holds. A point that is not certified gives the verdict
`"inconclusive"`, with its gap in `measured["limit"]`; unsettled mass never widens a
tolerance. Trajectories are reported as illustrations only.

Conventions (all in units of the *scaled* rewards `r_i / tau`, the log-weights of curation):

- `M_i = max_x r_i(x)`; the eps-optimal basin of reward `i` is `S_i = {x : r_i(x) >= M_i - eps}`.
- The gap of reward `i` is `Delta_i = M_i - max_{x in S_j, j != i} r_i(x)`: how much reward `i`
  loses on the best point of the *other* basin(s). `Delta_i > eps` makes the basins disjoint.
- The leakage factor is `kappa_i = exp(-(Delta_i - 2 eps))` (Falahati et al.). With this
  definition of `Delta_i`, a fixed point supported on `S_1 u S_2` satisfies Lemma 3.5's
  interval already with `exp(-(Delta_i - eps))`; the paper's `2 eps` is therefore conservative.
- Points outside every basin form the *outside* region `O`.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._maps import _potential, _trajectory, curate, growth, potential, trajectory
from ._problem import canonical_k, CurationProblem
from ._stability import stability


PASS = "pass"
FAIL = "fail"
HYPOTHESES_FAIL = "hypotheses-fail"
COMPROMISE = "compromise"
INCONCLUSIVE = "inconclusive"
VERDICTS = (PASS, FAIL, HYPOTHESES_FAIL, COMPROMISE, INCONCLUSIVE)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(x).tolist())
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _fmt(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4g}"
    if isinstance(x, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_fmt(v) for v in np.asarray(x).ravel().tolist()) + "]"
    return str(x)


@dataclasses.dataclass(frozen=True)
class TheoremReport:
    """The outcome of one theorem check.

    **Attributes:**

    - `name`: the result checked, e.g. `"Lemma 3.5 (non-collapse window)"`.
    - `statement`: the conclusion being checked, in words.
    - `hypotheses`: `dict[str, bool]`, each hypothesis and whether it holds for this problem.
    - `values`: the hypothesis quantities computed from the rewards (eps, Delta_i, kappa_i, the
        q-window, ...).
    - `predicted`: the theorem's prediction (a bound, an interval, a rate).
    - `measured`: what the dynamics did; `measured["consistent"]` says whether the
        prediction held.
    - `verdict`: `"pass"` (hypotheses hold and the prediction is met at a certified point),
        `"fail"` (hypotheses hold but the prediction is violated at a certified point),
        `"hypotheses-fail"` (some hypothesis fails: the theorem says nothing; see
        `measured`), `"compromise"` (outside-basin decay only: a point outside the basins
        absorbs mass), or `"inconclusive"` (the limit could not be certified; its gap is in
        `measured["limit"]`).
    - `notes`: free text (method used, caveats).
    """

    name: str
    statement: str
    hypotheses: dict[str, bool]
    values: dict[str, Any]
    predicted: dict[str, Any]
    measured: dict[str, Any]
    verdict: str
    notes: str = ""

    @property
    def hypotheses_hold(self) -> bool:
        """Whether every hypothesis holds."""
        return all(self.hypotheses.values())

    @property
    def passed(self) -> bool:
        """Whether the verdict is `"pass"`."""
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return _jsonable(dataclasses.asdict(self)) | {"hypotheses_hold": self.hypotheses_hold}

    def summary(self) -> str:
        """A few lines of plain text: name, verdict, hypotheses, prediction vs measurement."""
        hyp = ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in self.hypotheses.items())
        pred = ", ".join(f"{k}={_fmt(v)}" for k, v in self.predicted.items())
        meas = ", ".join(f"{k}={_fmt(v)}" for k, v in self.measured.items())
        lines = [
            f"{self.name}: {self.verdict.upper()}",
            f"  claim: {self.statement}",
            f"  hypotheses: {hyp}",
            f"  predicted: {pred}",
            f"  measured: {meas}",
        ]
        if self.notes:
            lines.append(f"  notes: {self.notes}")
        return "\n".join(lines)


def _verdict(hypotheses: dict[str, bool], consistent: bool, certified: bool = True) -> str:
    if not all(hypotheses.values()):
        return HYPOTHESES_FAIL
    if not certified:
        return INCONCLUSIVE
    return PASS if consistent else FAIL


@dataclasses.dataclass(frozen=True)
class Basins:
    """The eps-optimal basins of a problem's rewards and the quantities built on them
    (see the module docstring for the definitions).

    **Attributes:**

    - `eps`: the basin tolerance, in nats of the scaled reward.
    - `maxima`: `(m,)`, `M_i = max r_i`.
    - `masks`: `(m, n)` bool, `S_i = {r_i >= M_i - eps}`.
    - `outside`: `(n,)` bool, the points in no basin.
    - `gaps`: `(m,)`, `Delta_i = M_i - max_{x in S_j, j != i} r_i(x)` (`inf` when m = 1).
    - `kappas`: `(m,)`, `kappa_i = exp(-(Delta_i - 2 eps))` (0 when m = 1).
    - `disjoint`: whether the basins are pairwise disjoint.
    """

    eps: float
    maxima: np.ndarray
    masks: np.ndarray
    outside: np.ndarray
    gaps: np.ndarray
    kappas: np.ndarray
    disjoint: bool

    def window(self, q: float) -> tuple[float, float]:
        """Lemma 3.5's interval `[max(0, (q - kappa_1)/(1 - kappa_1)), min(1, q/(1 - kappa_2))]`
        for the mass of basin 1 (two rewards; `q` is the weight of reward 1)."""
        k1, k2 = float(self.kappas[0]), float(self.kappas[1])
        lo = max(0.0, (q - k1) / (1 - k1)) if k1 < 1 else 0.0
        hi = min(1.0, q / (1 - k2)) if k2 < 1 else 1.0
        return lo, hi


def basins(problem: CurationProblem, eps: float = 0.0) -> Basins:
    """Compute the eps-optimal basins, gaps `Delta_i` and leakage factors `kappa_i` of a
    problem's (scaled) rewards `r_i / tau`:

    - `S_i = {x : r_i(x) >= M_i - eps}`, `M_i = max r_i`;
    - `Delta_i = M_i - max_{x in S_j, j != i} r_i(x)`: what reward `i` loses on the best
        point of the other basin(s) (`inf` for a single reward);
    - `kappa_i = exp(-(Delta_i - 2 eps))`, Falahati et al.'s leakage factor.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].
    - `eps`: basin tolerance `>= 0`, in nats of `r_i / tau`.

    **Returns:**

    A [`curax.theory.Basins`][].

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(separation=3.0)
        b = curax.theory.basins(problem, eps=0.5)
        b.gaps, b.kappas
        ```
    """
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0, got {eps!r}.")
    s = np.asarray(problem.scaled_rewards, np.float64)
    m, _ = s.shape
    maxima = s.max(axis=1)
    masks = s >= (maxima - eps)[:, None]
    gaps = np.full(m, np.inf)
    for i in range(m):
        others = np.any(np.delete(masks, i, axis=0), axis=0) if m > 1 else np.zeros_like(masks[0])
        if others.any():
            gaps[i] = maxima[i] - s[i][others].max()
    kappas = np.where(np.isfinite(gaps), np.exp(-(gaps - 2 * eps)), 0.0)
    disjoint = bool(np.all(masks.sum(axis=0) <= 1))
    return Basins(
        eps=float(eps),
        maxima=maxima,
        masks=masks,
        outside=~np.any(masks, axis=0),
        gaps=gaps,
        kappas=kappas,
        disjoint=disjoint,
    )


def _start(problem: CurationProblem, p0: ArrayLike | None) -> Array:
    if p0 is None:
        return problem.uniform()
    return jnp.asarray(p0, problem.rewards.dtype)


def _run(problem: CurationProblem, p0: Array, rounds: int) -> np.ndarray:
    return np.asarray(trajectory(p0, problem, rounds))


def _no_reference(problem: CurationProblem) -> bool:
    return problem.reference is None or float(problem.reference_weight) == 0.0


def _all_k_inf(problem: CurationProblem) -> bool:
    return not problem.has_finite_k


def _fit_rate(values: np.ndarray, floor: float = 1e-280) -> float:
    """Geometric rate `rho` of a decaying sequence: `exp` of the least-squares slope of
    `log values` over its second half (entries above `floor`); nan if fewer than 3 usable."""
    v = np.asarray(values, np.float64)
    idx = np.arange(v.size)
    half = idx >= v.size // 2
    ok = half & (v > floor)
    if ok.sum() < 3:
        ok = v > floor
        ok[: max(0, int(ok.sum()) // 2)] = False
    if ok.sum() < 3:
        return float("nan")
    slope = np.polyfit(idx[ok], np.log(v[ok]), 1)[0]
    return float(np.exp(slope))


@dataclasses.dataclass(frozen=True)
class Limit:
    """Where a check takes its verdict: a point and the certificate that it is the limit.

    **Attributes:**

    - `p`: `(n,)`, the point.
    - `certified`: whether its certificate holds (then verdicts are taken at `p`; otherwise
        a check's verdict is `"inconclusive"`).
    - `method`: how it was found (`"curax.stable_point"` or `"dynamics (T rounds)"`).
    - `fw_gap`: `max G - 1` at `p` (the Frank-Wolfe/KKT gap; `<= tol` certifies a stable
        point without reference data).
    - `residual`: `max |f(p) - p|`.
    - `error_bound`: with reference data, a bound on the distance to the fixed point: the
        stable point's `stats["error_bound"]` (max norm), or for the dynamics the Banach
        bound `||f(p) - p||_1 / (1 - L)` (L1, `L` = [`curax.theory.contraction_bound`][]);
        `inf` when none is known.
    - `tol`: the certificate's tolerance.
    """

    p: np.ndarray
    certified: bool
    method: str
    fw_gap: float
    residual: float
    error_bound: float
    tol: float

    def to_dict(self) -> dict[str, Any]:
        """The certificate, without the point."""
        return {
            "method": self.method,
            "certified": self.certified,
            "fw_gap": self.fw_gap,
            "residual": self.residual,
            "error_bound": self.error_bound,
            "tol": self.tol,
        }


def _solve_stable_point(problem: CurationProblem, p0: Array, tol: float, max_steps: int):
    from ._stable_point import stable_point

    return stable_point(problem, p0, tol=tol, max_steps=max_steps, throw=False)


def _certificate(problem: CurationProblem, p: Array) -> tuple[float, float, float]:
    """`(fw_gap, residual, L1 error bound)` of a point, from the problem's own map."""
    g = float(jnp.max(growth(p, problem)) - 1)
    step = np.asarray(curate(p, problem)) - np.asarray(p)
    residual = float(np.max(np.abs(step)))
    bound = float("inf")
    if not _no_reference(problem):
        lip = contraction_bound(problem)
        if lip < 1:
            # Banach: ||p - p*|| <= ||f(p) - p|| / (1 - L) in total variation (L1 / 2).
            bound = float(np.abs(step).sum()) / (1 - lip)
    return g, residual, bound


def _limit_point(
    problem: CurationProblem,
    p0: Array,
    *,
    method: str,
    tol: float,
    rounds: int,
    max_chunks: int,
    max_steps: int = 2000,
) -> Limit:
    """The limit of the dynamics from `p0`, certified or marked as not certified.

    `method="stable_point"`: [`curax.stable_point`][] (certified iff its result is
    successful). `method="dynamics"`: plain iteration in chunks of `rounds` (at most
    `max_chunks`) until the trajectory's own certificate holds: `max G - 1 <= tol` without
    reference data, else the Banach error bound `<= tol` (which needs a contraction).
    """
    if method not in ("stable_point", "dynamics"):
        raise ValueError(f"`method` must be 'stable_point' or 'dynamics', got {method!r}.")
    if not tol > 0:
        raise ValueError(f"`tol` must be > 0, got {tol!r}.")
    if method == "stable_point":
        from ._solution import RESULTS

        sol = _solve_stable_point(problem, p0, tol, max_steps)
        p = jnp.asarray(sol.value)
        ok = bool(sol.result == RESULTS.successful)
        g, residual, bound = _certificate(problem, p)
        bound = float(sol.stats["error_bound"]) if "error_bound" in sol.stats else bound
        name = "curax.stable_point" + ("" if ok else f" ({RESULTS[sol.result]})")
        return Limit(np.asarray(p), ok, name, g, residual, bound, tol)
    if not (isinstance(rounds, int) and rounds >= 1 and isinstance(max_chunks, int)):
        raise ValueError(f"`rounds` and `max_chunks` must be positive ints, got {rounds!r}.")
    p = p0
    done, total = False, 0
    for _ in range(max(1, max_chunks)):
        p = trajectory(p, problem, rounds)[-1]
        total += rounds
        g, residual, bound = _certificate(problem, p)
        done = (g <= tol) if _no_reference(problem) else (bound <= tol)
        if done:
            break
    return Limit(np.asarray(p), bool(done), f"dynamics ({total} rounds)", g, residual, bound, tol)


# ----------------------------------------------------------------------------------------------
# Single-reward collapse
# ----------------------------------------------------------------------------------------------


def check_collapse(
    problem: CurationProblem,
    *,
    eps: float = 0.1,
    p0: ArrayLike | None = None,
    rounds: int = 300,
    method: str = "stable_point",
    tol: float = 1e-10,
    max_chunks: int = 10,
) -> TheoremReport:
    """Single-reward collapse (Falahati et al. for q in {0, 1}; Ferbach et al. for finite K):
    without real data, curating with one reward drives all mass onto `argmax r`.

    Hypotheses: one effective reward (m = 1 or one weight equal to 1), no reference data, and
    `p0` puts mass on the argmax set `A`. For K = infinity the prediction is exact:
    `p_t(x) / p_t(A) = p_0(x) / p_0(A) exp(-t (M - r(x)))`, so the mass outside the basin
    `S_eps` obeys `p_t(S_eps^c) <= p_0(S_eps^c) / p_0(A) * exp(-t delta)` with
    `delta = M - max_{x not in S_eps} r(x)`, checked at every round of the run. For finite K
    the limit is certified (see `method`) and must put all its mass (to `1e-9`) on `A`; an
    uncertified limit gives `"inconclusive"`. The trajectory (its fitted outside rate) is
    reported as an illustration.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].
    - `eps`: the basin tolerance defining "near the argmax". Keyword only argument.
    - `p0`: the initial distribution (default uniform). Keyword only argument.
    - `rounds`: number of retraining rounds. Keyword only argument.
    - `method`: how the finite-K limit is found: `"stable_point"` ([`curax.stable_point`][])
        or `"dynamics"` (chunks of `rounds`, at most `max_chunks`, until `max G - 1 <= tol`).
        Keyword only argument.
    - `tol`: the certificate's tolerance on the Frank-Wolfe gap. Keyword only argument.
    - `max_chunks`: see `method`. Keyword only argument.

    **Returns:**

    A [`curax.theory.TheoremReport`][].

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(q=1.0)
        curax.theory.check_collapse(problem).verdict  # "pass"
        ```
    """
    p0 = _start(problem, p0)
    w = np.asarray(problem.weights)
    dominant = int(np.argmax(w))
    single = problem.num_rewards == 1 or bool(np.isclose(w[dominant], 1.0, atol=1e-12))
    s = np.asarray(problem.scaled_rewards)[dominant]
    M = float(s.max())
    argmax_set = s >= M - 1e-12
    near = s >= M - eps
    p0n = np.asarray(p0)
    hypotheses = {
        "single_reward": single,
        "no_reference_data": _no_reference(problem),
        "p0_charges_argmax": bool(p0n[argmax_set].sum() > 0),
    }
    ps = _run(problem, p0, rounds)
    outside = ps[:, ~near].sum(axis=1)
    delta = float(M - s[~near].max()) if (~near).any() else float("inf")
    var_r = ps @ s**2 - (ps @ s) ** 2
    measured: dict[str, Any] = {
        "mass_near_argmax_final": float(1 - outside[-1]),
        "mass_on_argmax_final": float(ps[-1][argmax_set].sum()),
        "variance_reward_initial": float(var_r[0]),
        "variance_reward_final": float(max(var_r[-1], 0.0)),
        "outside_rate": _fit_rate(outside),
    }
    predicted: dict[str, Any] = {"limit_mass_near_argmax": 1.0}
    if _all_k_inf(problem) and hypotheses["p0_charges_argmax"]:
        bound = min(1.0, float(outside[0] / p0n[argmax_set].sum()) * math.exp(-rounds * delta))
        predicted["outside_mass_bound_final"] = bound
        predicted["rate"] = math.exp(-delta)
        consistent = outside[-1] <= bound * (1 + 1e-6) + 1e-12
        notes = "K = inf: exact exponential-tilt bound."
        certified = True
    else:
        lim = _limit_point(
            problem, p0, method=method, tol=tol, rounds=rounds, max_chunks=max_chunks
        )
        measured["limit"] = lim.to_dict()
        measured["limit_mass_on_argmax"] = float(lim.p[argmax_set].sum())
        consistent = measured["limit_mass_on_argmax"] >= 1 - 1e-9
        certified = lim.certified
        notes = f"finite K: limit from {lim.method} (FW gap {lim.fw_gap:.2e})."
    measured["outside_mass_final"] = float(outside[-1])
    measured["consistent"] = bool(consistent)
    return TheoremReport(
        name="Single-reward collapse",
        statement="with one reward and no real data, mass concentrates on argmax r and the "
        "reward variance vanishes",
        hypotheses=hypotheses,
        values={"eps": eps, "M": M, "delta": delta, "k": str(problem.ks[dominant])},
        predicted=predicted,
        measured=measured,
        verdict=_verdict(hypotheses, bool(consistent), certified),
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# Monotonicity of the expected (exponentiated) reward / potential
# ----------------------------------------------------------------------------------------------


def check_monotonicity(
    problem: CurationProblem,
    *,
    p0: ArrayLike | None = None,
    rounds: int = 200,
    rtol: float = 1e-12,
) -> TheoremReport:
    """Monotone improvement under curation (Ferbach et al.): with one reward and no real data,
    `E_{p_t}[e^{r/tau}]` is non-decreasing for every K (the growth factor `H` is increasing in
    `w` and `E_p[H] = 1`, so `E_p[w H] >= E_p[w]`). With several rewards and K = infinity the
    same holds for the potential `Phi(p) = sum_i alpha_i log E_p[e^{r_i/tau}]` (Cover's
    multiplicative algorithm / EM). The checked quantity is `log E_p[e^{r/tau}]` (m = 1) or
    `Phi` (m > 1).

    Hypotheses: no reference data, and either one effective reward (m = 1 or one weight
    equal to 1) or every K infinite. Measured: the largest
    decrease `max_t (Phi_t - Phi_{t+1})`, compared with `rtol * max(1, |Phi|)`.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].
    - `p0`: initial distribution (default uniform). Keyword only argument.
    - `rounds`: rounds to run. Keyword only argument.
    - `rtol`: relative slack for rounding. Keyword only argument.

    **Returns:**

    A [`curax.theory.TheoremReport`][].
    """
    p0 = _start(problem, p0)
    w = np.asarray(problem.weights)
    single = problem.num_rewards == 1 or bool(np.isclose(w.max(), 1.0, atol=1e-12))
    hypotheses = {
        "no_reference_data": _no_reference(problem),
        "single_reward_or_k_inf": single or _all_k_inf(problem),
    }
    ps = trajectory(p0, problem, rounds)
    # The rows are the map's own outputs: the unchecked kernel (a `vmap` of the public
    # function would trace its checks into an `eqx.error_if` program, never cached).
    canonical = canonical_k(problem)
    phi = np.asarray(jax.vmap(lambda p: _potential(p, canonical))(ps))
    drops = phi[:-1] - phi[1:]
    worst = float(drops.max()) if drops.size else 0.0
    tol = rtol * max(1.0, float(np.abs(phi).max()))
    consistent = worst <= tol
    return TheoremReport(
        name="Monotone expected reward (Ferbach) / potential (K = inf)",
        statement="log E_p[e^r] (m = 1) or Phi (m > 1, K = inf) never decreases along the dynamics",
        hypotheses=hypotheses,
        values={"m": problem.num_rewards, "k": [str(k) for k in problem.ks]},
        predicted={"max_decrease": 0.0, "tolerance": tol},
        measured={
            "max_decrease": worst,
            "phi_initial": float(phi[0]),
            "phi_final": float(phi[-1]),
            "consistent": bool(consistent),
        },
        verdict=_verdict(hypotheses, bool(consistent)),
    )


# ----------------------------------------------------------------------------------------------
# Two-reward results (Falahati et al.)
# ----------------------------------------------------------------------------------------------


def _two_reward_hypotheses(
    problem: CurationProblem, b: Basins
) -> tuple[dict[str, bool], dict[str, Any], float]:
    if problem.num_rewards != 2:
        raise ValueError(
            f"the two-reward theorems need a problem with m = 2 rewards, got m = "
            f"{problem.num_rewards}."
        )
    q = float(problem.weights[0])
    k1, k2 = (float(v) for v in b.kappas)
    lo, hi = b.window(q)
    hypotheses = {
        "k_infinite": _all_k_inf(problem),
        "no_reference_data": _no_reference(problem),
        "gaps_exceed_2eps": bool(np.all(b.gaps > 2 * b.eps)),
        "q_in_window": bool(k1 < q < 1 - k2),
    }
    dom = outside_domination(problem, b.eps)
    hypotheses["outside_domination"] = bool(dom["rho"] < 1)
    values = {
        "rho": dom["rho"],
        "q": q,
        "eps": b.eps,
        "Delta": b.gaps,
        "kappa": b.kappas,
        "window": [k1, 1 - k2],
        "interval": [lo, hi],
    }
    return hypotheses, values, q


def outside_domination(problem: CurationProblem, eps: float) -> dict[str, Any]:
    """The outside-domination constant of Lemma 3.3 (two rewards, K = infinity).

    At the stable point `p*` (the maximiser of the potential), the KKT condition
    `G*(x) = q w_1(x)/Z_1 + (1 - q) w_2(x)/Z_2 <= 1` at the maximisers of `r_1`, `r_2` gives
    `Z_1 >= q e^{M_1}` and `Z_2 >= (1 - q) e^{M_2}`, hence for every point
    `G*(x) <= rho(x) = e^{r_1(x) - M_1} + e^{r_2(x) - M_2}`.
    *Outside domination* is `rho = max_{x in O} rho(x) < 1` over the outside region `O` (points
    in no eps-basin). Then no outside point is in the support of `p*`, and the mass of every
    outside point decays asymptotically at least like `rho^t`. A point with `rho(x) >= 1`
    (within `log 2` of both maxima, say) is a candidate *compromise* point that both rewards
    like; the Nash comparison
    `q (r_1(x) - M_1) + (1 - q)(r_2(x) - M_2) > q log q + (1 - q) log(1 - q)` says whether a
    Dirac mass there beats the two-basin split with hard separation (compromise regime).

    **Arguments:**

    - `problem`: a two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance.

    **Returns:**

    A dict with `rho`, `outside` (the mask of `O`), `compromise_point` (index of the outside
    point with the best Nash score, -1 if `O` is empty) and `compromise_advantage` (its score
    minus the two-basin score; > 0 means a compromise beats the split).
    """
    b = basins(problem, eps)
    s = np.asarray(problem.scaled_rewards, np.float64)
    q = float(problem.weights[0])
    rel = s - b.maxima[:, None]
    outside = b.outside
    rho_x = np.exp(rel[0]) + np.exp(rel[1])
    rho = float(rho_x[outside].max()) if outside.any() else 0.0
    score = q * rel[0] + (1 - q) * rel[1]
    ent = sum(v * math.log(v) for v in (q, 1 - q) if v > 0)
    oidx = np.flatnonzero(outside)
    best = int(oidx[np.argmax(score[oidx])]) if oidx.size else -1
    adv = float(score[best] - ent) if best >= 0 else float("-inf")
    return {
        "rho": rho,
        "outside": outside,
        "compromise_point": best,
        "compromise_advantage": adv,
    }


def check_outside_decay(
    problem: CurationProblem,
    *,
    eps: float = 1.0,
    p0: ArrayLike | None = None,
    rounds: int = 1000,
    compromise_mass: float = 1e-3,
    rtol: float = 1e-9,
    method: str = "stable_point",
    tol: float = 1e-10,
    max_chunks: int = 20,
) -> TheoremReport:
    """Lemma 3.3 (Falahati et al.): the mass outside the basins decays geometrically — under
    an extra *outside-domination* assumption (see [`curax.theory.outside_domination`][]),
    without which a compromise point that both rewards like can absorb the mass.

    Hypotheses: two rewards, K = infinity, no reference data, `Delta_i > 2 eps`, q in the
    window, and outside domination `rho < 1`. Predicted: the asymptotic geometric rate of
    the outside mass `p_t(O)` is at most `rho`. Measured at the certified limit `p*`: the
    largest growth factor `G*(x)` over `O` (the asymptotic per-round factor of the slowest
    outside point). The rate fitted to `p_t(O)` along a run of `rounds` rounds is reported
    as an illustration. If the limit keeps at least `compromise_mass` outside the basins and
    outside domination fails, the verdict is `"compromise"` and the absorbing point is
    reported.

    **Arguments:**

    - `problem`: a two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance. Keyword only argument.
    - `p0`: initial distribution (default uniform). Keyword only argument.
    - `compromise_mass`: outside mass at the limit that counts as "absorbed". Keyword only
        argument.
    - `rtol`: relative slack on the rate bound (rounding). Keyword only argument.
    - `method`: where the limit is taken: `"stable_point"` (default,
        [`curax.stable_point`][]) or `"dynamics"` (plain iteration from `p0` in chunks of
        `rounds`, at most `max_chunks`, until its Frank-Wolfe gap is `<= tol`). An uncertified
        limit gives the verdict `"inconclusive"`. Keyword only argument.
    - `tol`: the certificate's tolerance (Frank-Wolfe gap). Keyword only argument.
    - `rounds`, `max_chunks`: the dynamics' settings (for `method="dynamics"`, and the
        illustrative trajectory). Keyword only arguments.

    **Returns:**

    A [`curax.theory.TheoremReport`][].
    """
    b = basins(problem, eps)
    hypotheses, values, q = _two_reward_hypotheses(problem, b)
    dom = outside_domination(problem, eps)
    values |= {"compromise_advantage": dom["compromise_advantage"]}
    p0 = _start(problem, p0)
    lim = _limit_point(problem, p0, method=method, tol=tol, rounds=rounds, max_chunks=max_chunks)
    p_end = lim.p
    ps = _run(problem, p0, rounds)
    out_mass = ps[:, dom["outside"]].sum(axis=1) if dom["outside"].any() else np.zeros(len(ps))
    not_basin = ~np.any(b.masks, axis=0)
    g_end = np.asarray(growth(jnp.asarray(p_end), problem))
    rate = float(g_end[dom["outside"]].max()) if dom["outside"].any() else 0.0
    x = np.asarray(problem.rewards)
    measured: dict[str, Any] = {
        "limit": lim.to_dict(),
        "non_basin_mass": float(p_end[not_basin].sum()),
        "rate": rate,
        "trajectory_outside_mass_final": float(out_mass[-1]),
        "trajectory_fitted_rate": _fit_rate(out_mass),
    }
    absorbed = float(p_end[not_basin].sum()) >= compromise_mass
    if absorbed:
        j = int(np.flatnonzero(not_basin)[np.argmax(p_end[not_basin])])
        measured |= {
            "compromise_index": j,
            "compromise_mass": float(p_end[j]),
            "compromise_rewards": x[:, j],
        }
        consistent = False
    else:
        consistent = rate <= dom["rho"] * (1 + rtol) and rate < 1
    measured["consistent"] = bool(consistent)
    verdict = _verdict(hypotheses, bool(consistent), lim.certified)
    if absorbed and lim.certified and not hypotheses["outside_domination"]:
        verdict = COMPROMISE
    return TheoremReport(
        name="Lemma 3.3 (outside-basin mass decay)",
        statement="mass outside the eps-basins decays at least like rho^t (needs outside "
        "domination rho < 1)",
        hypotheses=hypotheses,
        values=values,
        predicted={"rate_bound": dom["rho"]},
        measured=measured,
        verdict=verdict,
        notes=(
            "compromise regime detected: a point outside both basins absorbs the mass; "
            if absorbed
            else ""
        )
        + f"limit from {lim.method}",
    )


def check_non_collapse(
    problem: CurationProblem,
    *,
    eps: float = 0.5,
    p0: ArrayLike | None = None,
    rounds: int = 1000,
    atol: float = 1e-6,
    method: str = "stable_point",
    tol: float = 1e-10,
    max_chunks: int = 10,
) -> TheoremReport:
    """Lemma 3.5 (Falahati et al.): for `q in (kappa_1, 1 - kappa_2)` neither basin dies, and
    the limit mass of basin 1 lies in the leakage interval
    `max(0, (q - kappa_1)/(1 - kappa_1)) <= a_inf <= min(1, q/(1 - kappa_2))`.

    Hypotheses: two rewards (`q` = weight of reward 1), K = infinity, no reference data,
    `Delta_i > 2 eps` and q in the window. `a_inf = p*(S_1)` at the certified limit `p*`
    (see `method`); the prediction must hold to `atol`. Also reported: the limit's mass
    outside the basins (the lemma presumes it vanishes; see
    [`curax.theory.check_outside_decay`][]).

    **Arguments:**

    - `problem`: a two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance. Keyword only argument.
    - `p0`: initial distribution (default uniform). Keyword only argument.
    - `atol`: slack on the interval. Keyword only argument.
    - `method`: where the limit is taken: `"stable_point"` (default,
        [`curax.stable_point`][]) or `"dynamics"` (plain iteration from `p0` in chunks of
        `rounds`, at most `max_chunks`, until its Frank-Wolfe gap is `<= tol`). An uncertified
        limit gives the verdict `"inconclusive"`. Keyword only argument.
    - `tol`: the certificate's tolerance (Frank-Wolfe gap). Keyword only argument.
    - `rounds`, `max_chunks`: the dynamics' settings (for `method="dynamics"`, and the
        illustrative trajectory). Keyword only arguments.

    **Returns:**

    A [`curax.theory.TheoremReport`][].

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(separation=2.0, q=0.3)
        report = curax.theory.check_non_collapse(problem, eps=0.5)
        report.predicted["interval"], report.measured["a_inf"], report.verdict  # "pass"
        ```
    """
    b = basins(problem, eps)
    hypotheses, values, q = _two_reward_hypotheses(problem, b)
    p0 = _start(problem, p0)
    lim = _limit_point(problem, p0, method=method, tol=tol, rounds=rounds, max_chunks=max_chunks)
    a = float(lim.p[b.masks[0]].sum())
    a2 = float(lim.p[b.masks[1]].sum())
    lo, hi = values["interval"]
    consistent = lo - atol <= a <= hi + atol
    return TheoremReport(
        name="Lemma 3.5 (non-collapse window, leakage interval)",
        statement="for q in (kappa_1, 1 - kappa_2): (q-kappa_1)/(1-kappa_1) <= a_inf <= "
        "q/(1-kappa_2)",
        hypotheses=hypotheses,
        values=values,
        predicted={"interval": [lo, hi], "atol": atol},
        measured={
            "a_inf": a,
            "basin2_mass": a2,
            "outside_mass": float(max(0.0, 1 - a - a2)),
            "limit": lim.to_dict(),
            "consistent": bool(consistent),
        },
        verdict=_verdict(hypotheses, bool(consistent), lim.certified),
        notes=f"limit from {lim.method}",
    )


def check_variance(
    problem: CurationProblem,
    *,
    eps: float = 0.5,
    p0: ArrayLike | None = None,
    rounds: int = 1000,
    rtol: float = 1e-6,
    method: str = "stable_point",
    tol: float = 1e-10,
    max_chunks: int = 10,
) -> TheoremReport:
    """Theorem 3.6 (Falahati et al.), variance preservation:
    `Var_{p_inf}[r_i] >= a_inf (1 - a_inf) max(Delta_i - 2 eps, 0)^2` for i = 1, 2.

    Hypotheses as [`curax.theory.check_non_collapse`][] (two rewards, K = infinity, no
    reference data, `Delta_i > 2 eps`, q in the window). Rewards are the scaled `r_i / tau`.
    The variance and `a_inf` are taken at the certified limit (see `method`); the bound is
    also given at the worst `a` of the leakage interval (a bound that needs no dynamics).

    **Arguments:**

    - `problem`: a two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance. Keyword only argument.
    - `p0`: initial distribution (default uniform). Keyword only argument.
    - `rtol`: relative slack on the bound (rounding). Keyword only argument.
    - `method`: where the limit is taken: `"stable_point"` (default,
        [`curax.stable_point`][]) or `"dynamics"` (plain iteration from `p0` in chunks of
        `rounds`, at most `max_chunks`, until its Frank-Wolfe gap is `<= tol`). An uncertified
        limit gives the verdict `"inconclusive"`. Keyword only argument.
    - `tol`: the certificate's tolerance (Frank-Wolfe gap). Keyword only argument.
    - `rounds`, `max_chunks`: the dynamics' settings (for `method="dynamics"`, and the
        illustrative trajectory). Keyword only arguments.

    **Returns:**

    A [`curax.theory.TheoremReport`][].
    """
    b = basins(problem, eps)
    hypotheses, values, q = _two_reward_hypotheses(problem, b)
    p0 = _start(problem, p0)
    lim = _limit_point(problem, p0, method=method, tol=tol, rounds=rounds, max_chunks=max_chunks)
    p_end = lim.p
    s = np.asarray(problem.scaled_rewards, np.float64)
    a = float(p_end[b.masks[0]].sum())
    var = p_end @ s.T**2 - (p_end @ s.T) ** 2
    sep = np.maximum(b.gaps - 2 * eps, 0.0) ** 2
    lo, hi = values["interval"]
    worst_a = min(lo * (1 - lo), hi * (1 - hi))
    bound = a * (1 - a) * sep
    consistent = bool(np.all(var >= bound * (1 - rtol) - 1e-12))
    return TheoremReport(
        name="Theorem 3.6 (variance preservation)",
        statement="Var_{p_inf}[r_i] >= a_inf (1 - a_inf) max(Delta_i - 2 eps, 0)^2",
        hypotheses=hypotheses,
        values=values,
        predicted={"variance_bound": bound, "a_priori_bound": worst_a * sep},
        measured={"variance": var, "a_inf": a, "limit": lim.to_dict(), "consistent": consistent},
        verdict=_verdict(hypotheses, consistent, lim.certified),
        notes=f"limit from {lim.method}",
    )


def _nash_on_mixture(q: float, s: np.ndarray, P: list[np.ndarray]) -> float:
    """The maximiser over `a in [0, 1]` of the dynamics' Nash product on the mixture family,
    `f(a) = q log u_1(a) + (1 - q) log u_2(a)`, `u_i(a) = E_{p_a}[e^{r_i}]`,
    `p_a = a P_1 + (1 - a) P_2`, from the actual exponential utilities of the two basin
    distributions: bisection on the sign of the derivative `f'` of the concave `f` (to
    ~1e-16; no closed form used). It equals `q` only when each reward vanishes on the other
    basin (hard separation); otherwise leakage moves it."""
    mx = s.max(axis=1, keepdims=True)
    w = np.exp(s - mx)
    A = np.array([[Pj @ w[i] for Pj in P] for i in range(2)])  # A[i, j] = E_{P_j}[w_i]

    def slope(a: float) -> float:
        u1 = a * A[0, 0] + (1 - a) * A[0, 1]
        u2 = a * A[1, 0] + (1 - a) * A[1, 1]
        return q * (A[0, 0] - A[0, 1]) / u1 + (1 - q) * (A[1, 0] - A[1, 1]) / u2

    lo, hi = 0.0, 1.0
    if slope(hi) >= 0:
        return 1.0
    if slope(lo) <= 0:
        return 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def check_nash_bargaining(
    problem: CurationProblem,
    *,
    eps: float = 0.0,
    p0: ArrayLike | None = None,
    rounds: int = 1000,
    flat_tol: float = 1e-9,
    hard_tol: float = 1e-3,
    atol: float = 1e-6,
    method: str = "stable_point",
    tol: float = 1e-10,
    max_chunks: int = 10,
) -> TheoremReport:
    """Theorem 3.7 and Corollary 3.8 (Falahati et al.): on the mixture family
    `p_a = a P_1 + (1 - a) P_2` of the two basin distributions the weighted Nash product is
    maximised at `a* = q`; with flat, hard-separated basins the dynamics converge to
    `p_q = q P_1 + (1 - q) P_2`.

    `P_i` is `p0` restricted to the eps-basin `S_i`, renormalised. With the paper's linear
    utilities `U_i(p) = E_p[r_i]` and disagreement `d_1 = U_1(P_2)`, `d_2 = U_2(P_1)` the
    Nash product is `(a g_1)^q ((1 - a) g_2)^(1 - q)`, so `a* = q` holds identically (given
    positive gains `g_i`). The check therefore measures the maximiser `a*` of the *dynamics'*
    Nash product on the family, `q log E_{p_a}[e^{r_1}] + (1 - q) log E_{p_a}[e^{r_2}]`,
    computed from the actual utilities by bisection: it lies in Lemma 3.5's leakage
    interval `[a_lo, a_hi]` around `q`, and tends to `q` under hard separation.

    Corollary 3.8 is checked at the certified limit `p*` (see `method`): `a_inf = p*(S_1)`
    must lie in `[a_lo - atol, a_hi + atol]`, with no mass left outside the basins (to
    `atol`). Flat basins carry `p0`'s within-basin shape to the limit, so the limit's L1
    distance to `p_q` is the basin-mass distance `|a_inf - q| + |p*(S_2) - (1 - q)| +
    p*(outside)`, reported as `l1_to_p_q`.

    Hypotheses: those of Lemma 3.5; positive gains (Theorem 3.7); *flat* basins (each `r_i`
    varies by at most `flat_tol` on both basins) and *hard separation* (`kappa_i <=
    hard_tol`) for Corollary 3.8.

    **Arguments:**

    - `problem`: a two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance. Keyword only argument.
    - `p0`: initial distribution (default uniform). Keyword only argument.
    - `flat_tol`, `hard_tol`: the flatness and hard-separation thresholds. Keyword only
        arguments.
    - `atol`: slack on the interval and on the outside mass. Keyword only argument.
    - `method`: where the limit is taken: `"stable_point"` (default,
        [`curax.stable_point`][]) or `"dynamics"` (plain iteration from `p0` in chunks of
        `rounds`, at most `max_chunks`, until its Frank-Wolfe gap is `<= tol`). An uncertified
        limit gives the verdict `"inconclusive"`. Keyword only argument.
    - `tol`: the certificate's tolerance (Frank-Wolfe gap). Keyword only argument.
    - `rounds`, `max_chunks`: the dynamics' settings (for `method="dynamics"`, and the
        illustrative trajectory). Keyword only arguments.

    **Returns:**

    A [`curax.theory.TheoremReport`][].

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, separation=3.0, q=0.3)
        report = curax.theory.check_nash_bargaining(problem)
        report.verdict, report.measured["a_inf"]  # "pass", 0.3 to ~1e-4
        ```
    """
    b = basins(problem, eps)
    hypotheses, values, q = _two_reward_hypotheses(problem, b)
    s = np.asarray(problem.scaled_rewards, np.float64)
    p0 = _start(problem, p0)
    p0n = np.asarray(p0, np.float64)
    P = []
    for i in range(2):
        mass = p0n * b.masks[i]
        P.append(mass / mass.sum() if mass.sum() > 0 else mass)
    U = np.array([[P[j] @ s[i] for j in range(2)] for i in range(2)])  # U[i, j] = U_i(P_j)
    g1, g2 = U[0, 0] - U[0, 1], U[1, 1] - U[1, 0]
    hypotheses["positive_gains"] = bool(g1 > 0 and g2 > 0)
    spread_on_basins = max(
        float(np.ptp(s[i][b.masks[j]])) if b.masks[j].any() else 0.0
        for i in range(2)
        for j in range(2)
    )
    hypotheses["flat_basins"] = spread_on_basins <= flat_tol
    hypotheses["hard_separation"] = bool(np.all(b.kappas <= hard_tol))
    nonempty = all(Pi.sum() > 0 for Pi in P)
    a_star = _nash_on_mixture(q, s, P) if nonempty else float("nan")
    lim = _limit_point(problem, p0, method=method, tol=tol, rounds=rounds, max_chunks=max_chunks)
    a_inf = float(lim.p[b.masks[0]].sum())
    a2 = float(lim.p[b.masks[1]].sum())
    outside = float(max(0.0, 1 - a_inf - a2))
    lo, hi = values["interval"]
    dist = abs(a_inf - q) + abs(a2 - (1 - q)) + outside
    consistent = (
        lo - 1e-12 <= a_star <= hi + 1e-12 and lo - atol <= a_inf <= hi + atol and outside <= atol
    )
    values |= {"gains": [g1, g2], "basin_reward_spread": spread_on_basins}
    return TheoremReport(
        name="Theorem 3.7 / Corollary 3.8 (Nash bargaining, p_q)",
        statement="a* = q on the mixture family; flat hard-separated basins converge to p_q",
        hypotheses=hypotheses,
        values=values,
        predicted={"a_star": q, "interval": [lo, hi], "atol": atol},
        measured={
            "a_star_numeric": a_star,
            "a_inf": a_inf,
            "l1_to_p_q": dist,
            "outside_mass": outside,
            "limit": lim.to_dict(),
            "consistent": bool(consistent),
        },
        verdict=_verdict(hypotheses, bool(consistent), lim.certified),
        notes=f"limit from {lim.method}",
    )


# ----------------------------------------------------------------------------------------------
# Real data: uniqueness and stability (Ferbach et al.)
# ----------------------------------------------------------------------------------------------


def contraction_bound(problem: CurationProblem) -> float:
    """A Lipschitz constant, in total variation, of one retraining round (a sufficient
    condition for a unique, globally attracting fixed point when it is < 1, by Banach's
    theorem).

    Curating with K candidates is `K`-Lipschitz in total variation (the law of K i.i.d.
    candidates moves by at most `K * TV`, and the Bradley-Terry choice is a Markov kernel);
    the K = infinity tilt `p -> p w / E_p[w]` is `(3 e^R - 1) / 2`-Lipschitz, `R` the spread of
    the scaled reward. Mixing rewards averages the constants and real data scales them by
    `1 - reference_weight`. This is stricter than Ferbach et al.'s condition; failing it
    does not mean the fixed point is not unique.
    """
    s = np.asarray(problem.scaled_rewards, np.float64)
    w = np.asarray(problem.weights, np.float64)
    lips = []
    for i, k in enumerate(problem.ks):
        if k is None:
            lips.append((3 * math.exp(min(float(np.ptp(s[i])), 700.0)) - 1) / 2)
        else:
            lips.append(float(k))
    eta = 0.0 if problem.reference is None else float(problem.reference_weight)
    return float((1 - eta) * (w @ np.array(lips)))


def check_real_data_stability(
    problem: CurationProblem,
    *,
    key: PRNGKeyArray | None = None,
    num_starts: int = 4,
    rounds: int = 300,
    atol: float = 1e-8,
    tol: float = 1e-10,
) -> TheoremReport:
    """Ferbach et al.: with enough real data the retraining dynamics have a unique stable
    fixed point, reached from every start.

    Hypotheses: reference data present (`reference_weight > 0`) with full support, and the
    sufficient contraction condition [`curax.theory.contraction_bound`][] `L < 1`. The fixed
    point `p*` comes from [`curax.stable_point`][] (certified by its error bound). Measured:
    the largest L1 distance from `p*` of the points reached after `rounds` rounds from
    `num_starts` random starts (Dirichlet, from `key`) and the uniform start, which must be
    `<= atol`. Each end point is certified by the Banach bound
    `||f(p) - p||_1 / (1 - L) <= atol`; if `p*` or an end point is not certified, the
    verdict is `"inconclusive"`. The empirical contraction rate (geometric fit of the step
    sizes from the uniform start) is reported as an illustration.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][].
    - `key`: a JAX PRNG key for the random starts (default `jr.key(0)`). Keyword only
        argument.
    - `num_starts`: number of random starts. Keyword only argument.
    - `rounds`: rounds per start. Keyword only argument.
    - `atol`: L1 tolerance for "the same limit". Keyword only argument.
    - `tol`: tolerance of the fixed point's certificate. Keyword only argument.

    **Returns:**

    A [`curax.theory.TheoremReport`][].
    """
    key = jr.key(0) if key is None else key
    n = problem.size
    dtype = problem.rewards.dtype
    has_ref = problem.reference is not None and float(problem.reference_weight) > 0
    full = has_ref and bool(np.all(np.asarray(problem.reference) > 0))
    lip = contraction_bound(problem)
    hypotheses = {
        "real_data": has_ref,
        "reference_full_support": full,
        "contraction": lip < 1,
    }
    # Uniform Dirichlet draws as normalised exponentials (the same distribution; jr.dirichlet's
    # gamma sampler is a rejection loop that took 1.5 s to compile): on the simplex, so the
    # unchecked kernel (see above).
    starts = jr.exponential(key, (num_starts, n), dtype)
    starts = jnp.concatenate([problem.uniform()[None], starts / starts.sum(1, keepdims=True)])
    canonical = canonical_k(problem)
    runs = np.asarray(jax.vmap(lambda p: _trajectory(p, canonical, rounds))(starts))
    limits = runs[:, -1]
    spread = float(np.max(np.abs(limits[:, None] - limits[None]).sum(-1)))
    # Empirical contraction rate: geometric fit of the L1 step sizes from the uniform start.
    steps = np.abs(np.diff(runs[0], axis=0)).sum(-1)
    rate = _fit_rate(steps[: max(3, int(np.sum(steps > 1e-13)))], floor=1e-13)
    rate = 0.0 if not math.isfinite(rate) else rate
    lim = _limit_point(
        problem, problem.uniform(), method="stable_point", tol=tol, rounds=rounds, max_chunks=1
    )
    dist = float(np.max(np.abs(limits - lim.p[None]).sum(-1)))
    bounds = [_certificate(problem, jnp.asarray(p))[2] for p in limits]
    certified = lim.certified and max(bounds) <= atol
    consistent = dist <= atol
    return TheoremReport(
        name="Uniqueness and stability with real data (Ferbach)",
        statement="with enough real data, every start converges to one stable fixed point",
        hypotheses=hypotheses,
        values={
            "reference_weight": 0.0
            if problem.reference is None
            else float(problem.reference_weight),
            "contraction_bound": lip,
        },
        predicted={"distance_to_fixed_point": 0.0, "atol": atol},
        measured={
            "distance_to_fixed_point": dist,
            "limit_spread": spread,
            "end_point_error_bound": max(bounds),
            "limit": lim.to_dict(),
            "trajectory_contraction_rate": rate,
            "consistent": bool(consistent),
        },
        verdict=_verdict(hypotheses, bool(consistent), certified),
    )


# ----------------------------------------------------------------------------------------------
# Finite K: approach to K = infinity, and phase diagram
# ----------------------------------------------------------------------------------------------


def _fit_loglog(xs: np.ndarray, ys: np.ndarray, floor: float = 1e-13) -> float:
    ok = (ys > floor) & np.isfinite(ys)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs[ok]), np.log(ys[ok]), 1)[0])


NOT_CERTIFIED = "not certified"


def atoms(
    p: ArrayLike, x: ArrayLike | None = None, *, support_tol: float = 1e-9
) -> list[tuple[float, float]]:
    """The atoms of a distribution on a 1-D grid: maximal runs of consecutive grid points with
    mass above `support_tol`, each as `(position, mass)` (mass-weighted mean position, total
    mass of the run). A stable point of a discretised problem can spread one atom of the
    continuous problem over neighbouring grid points; this counts it once.

    **Arguments:**

    - `p`: `(n,)`, the distribution.
    - `x`: `(n,)`, the grid (default: the indices).
    - `support_tol`: mass above which a point is in the support. Keyword only argument.

    **Returns:**

    A list of `(position, mass)`, in grid order.

    !!! Example

        ```python
        curax.theory.atoms(jnp.array([0.0, 0.3, 0.2, 0.0, 0.5]))  # [(1.4, 0.5), (4.0, 0.5)]
        ```
    """
    p = np.asarray(p, np.float64)
    x = np.arange(p.size, dtype=np.float64) if x is None else np.asarray(x, np.float64)
    if x.shape != p.shape or p.ndim != 1:
        raise ValueError(f"`p` and `x` must be 1-D of the same shape, got {p.shape}, {x.shape}.")
    on = p > support_tol
    out, i = [], 0
    while i < p.size:
        if not on[i]:
            i += 1
            continue
        j = i
        while j + 1 < p.size and on[j + 1]:
            j += 1
        mass = float(p[i : j + 1].sum())
        out.append((float(p[i : j + 1] @ x[i : j + 1]) / mass, mass))
        i = j + 1
    return out


@dataclasses.dataclass(frozen=True)
class FiniteKStudy:
    """How the finite-K stable point approaches the K = infinity one.

    **Attributes:**

    - `ks`: the K values.
    - `log_u_distance`: `max_i |log u_i(p_K) - log u_i(p_inf)|`, `u_i = E_p[e^{r_i}]` (the
        unique part of the stable point); nan where `p_K` is not certified.
    - `phi_gap`: `Phi(p_inf) - Phi(p_K)` in the K = infinity potential (nan if not
        certified).
    - `basin_mass`: `p_K(S_1)` (two rewards) or nan.
    - `basin_mass_inf`: `p_inf(S_1)`.
    - `rate`: fitted exponent `c` in `log_u_distance ~ K^c`, over the certified K whose
        stable point has the same shape (two basins / one basin / compromise) as the
        K = infinity one.
    - `certified`: whether each finite-K point is certified ([`curax.stable_point`][]).
    - `fw_gaps`: certificate of each finite-K point (max growth factor - 1).
    - `stability`: [`curax.stability`][] verdict of each certified finite-K point
        (`"not certified"` otherwise).
    - `num_atoms`: number of atoms ([`curax.theory.atoms`][]) of each finite-K point.
    - `inf_certified`: whether the K = infinity point is certified.
    """

    ks: list[int]
    log_u_distance: list[float]
    phi_gap: list[float]
    basin_mass: list[float]
    basin_mass_inf: float
    rate: float
    certified: list[bool]
    fw_gaps: list[float]
    stability: list[str]
    num_atoms: list[int]
    inf_certified: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return _jsonable(dataclasses.asdict(self))

    def summary(self) -> str:
        """One line per K."""
        rows = [f"finite K -> K = inf (fitted rate K^{self.rate:.3g})"]
        for k, d, g, c, s in zip(
            self.ks, self.log_u_distance, self.phi_gap, self.certified, self.stability
        ):
            tag = s if c else NOT_CERTIFIED
            rows.append(f"  K={k}: |log u - log u_inf| = {d:.3e}, Phi gap = {g:.3e} ({tag})")
        return "\n".join(rows)


def finite_k_convergence(
    problem: CurationProblem,
    ks: Sequence[int] = (2, 4, 8, 16, 32, 64),
    *,
    eps: float = 0.5,
    method: str = "stable_point",
    tol: float = 1e-10,
    rounds: int = 1000,
    max_chunks: int = 10,
    check_stability: bool = True,
    max_steps: int = 2000,
    quadrature_nodes: int | None = None,
) -> FiniteKStudy:
    """Distance between the finite-K stable point and the K = infinity one (the Nash point)
    as K grows, with a fitted power-law rate. Every point comes from
    [`curax.stable_point`][] from the uniform start (or, with `method="dynamics"`, from a
    trajectory whose Frank-Wolfe gap reached `tol`); a point that is not certified is
    reported as such and left out of the distances and the fit.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][] (its own `k` is ignored).
    - `ks`: the finite K values.
    - `eps`: basin tolerance for the reported basin mass (two rewards). Keyword only
        argument.
    - `method`: `"stable_point"` or `"dynamics"`. Keyword only argument.
    - `tol`: the certificate's tolerance. Keyword only argument.
    - `rounds`, `max_chunks`: the dynamics' settings. Keyword only arguments.
    - `check_stability`: classify each finite-K point with [`curax.stability`][] (one
        compilation per bucket of K, see [`curax.CurationProblem`][]). Keyword only
        argument.
    - `max_steps`: step limit of the stable-point solver. Keyword only argument.
    - `quadrature_nodes`: finite K's quadrature size (default: from the reward spread); fix
        it to share compiled code with other studies of the same shapes. Keyword only
        argument.

    **Returns:**

    A [`curax.theory.FiniteKStudy`][].
    """
    if len(ks) < 2 or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"`ks` must hold at least two positive ints, got {ks!r}.")
    inf_problem = problem.with_k(None)
    kw = dict(method=method, tol=tol, rounds=rounds, max_chunks=max_chunks, max_steps=max_steps)
    lim_inf = _limit_point(inf_problem, problem.uniform(), **kw)
    p_inf = lim_inf.p
    s = np.asarray(problem.scaled_rewards, np.float64)
    mask = basins(problem, eps).masks[0] if problem.num_rewards == 2 else None

    def log_u(p: np.ndarray) -> np.ndarray:
        mx = s.max(axis=1, keepdims=True)
        return np.log(np.exp(s - mx) @ p) + mx[:, 0]

    lu_inf = log_u(p_inf)
    phi_inf = float(np.asarray(problem.weights) @ lu_inf)
    dist, gaps, masses, certs, oks, verdicts, points, natoms = [], [], [], [], [], [], [], []
    for k in ks:
        pk_problem = CurationProblem(
            problem.rewards,
            problem.weights,
            k,
            problem.temperature,
            problem.reference,
            problem.reference_weight,
            quadrature_nodes=quadrature_nodes,
        )
        lim = _limit_point(pk_problem, problem.uniform(), **kw)
        pk = lim.p
        ok = lim.certified and lim_inf.certified
        points.append(pk)
        lu = log_u(pk)
        dist.append(float(np.max(np.abs(lu - lu_inf))) if ok else float("nan"))
        gaps.append(phi_inf - float(np.asarray(problem.weights) @ lu) if ok else float("nan"))
        masses.append(float(pk[mask].sum()) if mask is not None else float("nan"))
        certs.append(lim.fw_gap)
        oks.append(lim.certified)
        natoms.append(len(atoms(pk)))
        if not lim.certified:
            verdicts.append(NOT_CERTIFIED)
        elif check_stability:
            verdicts.append(stability(jnp.asarray(pk), pk_problem).verdict)
        else:
            verdicts.append("not checked")
    # Fit over the K whose stable point has the K = inf shape (the small-K points can be in
    # another phase, e.g. one basin, where the distance does not scale).
    phase_inf = classify_stable_point(p_inf, problem, eps=eps) if mask is not None else ""
    same = np.array(
        [
            ok and (mask is None or classify_stable_point(pk, problem, eps=eps) == phase_inf)
            for pk, ok in zip(points, oks)
        ]
    ) & np.isfinite(np.array(dist))
    kk = np.array(ks, np.float64)
    rate = _fit_loglog(kk[same], np.array(dist)[same]) if same.sum() >= 2 else float("nan")
    return FiniteKStudy(
        ks=list(ks),
        log_u_distance=dist,
        phi_gap=gaps,
        basin_mass=masses,
        basin_mass_inf=float(p_inf[mask].sum()) if mask is not None else float("nan"),
        rate=rate,
        certified=oks,
        fw_gaps=certs,
        stability=verdicts,
        num_atoms=natoms,
        inf_certified=lim_inf.certified,
    )


PHASES = ("two basins", "one basin", "compromise")


def classify_stable_point(
    p: ArrayLike,
    problem: CurationProblem,
    *,
    eps: float = 0.25,
    threshold: float = 0.01,
) -> str:
    """Classify a two-reward stable point: `"two basins"` (each basin-only region keeps at
    least `threshold` mass), `"one basin"`, or `"compromise"` (at least half the mass lies
    outside the basin-only regions: between the basins or where they overlap).

    Basin-only regions are `S_1 \\ S_2` and `S_2 \\ S_1` for the eps-basins.

    **Arguments:**

    - `p`: `(n,)`, the stable point.
    - `problem`: its two-reward [`curax.CurationProblem`][].
    - `eps`: basin tolerance. Keyword only argument.
    - `threshold`: the mass a basin needs to count. Keyword only argument.

    **Returns:**

    One of [`curax.theory.PHASES`][].
    """
    b = basins(problem, eps)
    p = np.asarray(p)
    only1 = b.masks[0] & ~b.masks[1]
    only2 = b.masks[1] & ~b.masks[0]
    m1, m2 = float(p[only1].sum()), float(p[only2].sum())
    if 1 - m1 - m2 >= 0.5:
        return "compromise"
    if m1 >= threshold and m2 >= threshold:
        return "two basins"
    return "one basin"


@dataclasses.dataclass(frozen=True)
class PhaseDiagram:
    """The structure of the stable point of the two-well problem over (separation, K, q).

    **Attributes:**

    - `separations`, `ks` (`None` = infinity), `qs`: the axes; every other field is a
        nested list indexed `[separation][k][q]`.
    - `x`: the grid.
    - `certified`: whether [`curax.stable_point`][] certified the point.
    - `fw_gap`: its certificate, `max G - 1`.
    - `phases`: `"two basins"`, `"one basin"`, `"compromise"`
        ([`curax.theory.classify_stable_point`][]) or `"not certified"`.
    - `num_atoms`: number of atoms ([`curax.theory.atoms`][]).
    - `atoms`: the atoms, each `[position, mass]`.
    - `basin_mass`: `p(S_1)`.
    - `stability`: the [`curax.stability`][] verdict (`"not certified"` if not certified).
    - `radius`: the stability radius (the Jacobian's spectral radius on the simplex tangent
        space; nan if not certified).
    """

    separations: list[float]
    ks: list[int | None]
    qs: list[float]
    x: list[float]
    certified: list[list[list[bool]]]
    fw_gap: list[list[list[float]]]
    phases: list[list[list[str]]]
    num_atoms: list[list[list[int]]]
    atoms: list[list[list[list[list[float]]]]]
    basin_mass: list[list[list[float]]]
    stability: list[list[list[str]]]
    radius: list[list[list[float]]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return _jsonable(dataclasses.asdict(self))

    def summary(self) -> str:
        """One line per point: parameters, phase, atoms (position: mass), stability."""
        rows = []
        for i, sep in enumerate(self.separations):
            for j, k in enumerate(self.ks):
                for l, q in enumerate(self.qs):
                    at = ", ".join(f"{a:+.3f}: {m:.4f}" for a, m in self.atoms[i][j][l])
                    rows.append(
                        f"sep={sep:g} K={'inf' if k is None else k} q={q:g}: "
                        f"{self.phases[i][j][l]}, {self.num_atoms[i][j][l]} atom(s) [{at}], "
                        f"{self.stability[i][j][l]} (radius {self.radius[i][j][l]:.4g})"
                    )
        return "\n".join(rows)


def two_well_problem(
    separation: float,
    q: float,
    k: int | None,
    *,
    n: int = 101,
    half_width: float = 3.0,
    curvature: float = 1.0,
    quadrature_nodes: int | None = None,
) -> CurationProblem:
    """Quadratic wells at `-separation/2` and `+separation/2` on a fixed grid
    `[-half_width, half_width]` (so problems with different separations share shapes and
    compiled code), weights `(q, 1 - q)`.

    **Arguments:**

    - `separation`, `q`, `k`: the distance of the wells, the weight of the left reward, K
        (`None` = infinity).
    - `n`, `half_width`, `curvature`: the grid and the wells' curvature. Keyword only
        arguments.
    - `quadrature_nodes`: finite K's quadrature size (fix it to share compiled code across
        separations). Keyword only argument.

    **Returns:**

    A [`curax.CurationProblem`][].
    """
    x = jnp.linspace(-half_width, half_width, n)
    r = jnp.stack([-curvature * (x + separation / 2) ** 2, -curvature * (x - separation / 2) ** 2])
    return CurationProblem(
        r,
        jnp.array([q, 1 - q]),
        k,
        quadrature_nodes=quadrature_nodes if k is not None else None,
    )


def phase_diagram(
    separations: Sequence[float] = tuple(0.25 * i for i in range(1, 17)),
    ks: Sequence[int | None] = (2, 3, 4, 5, 8, None),
    qs: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    *,
    n: int = 101,
    curvature: float = 1.0,
    eps: float = 0.25,
    tol: float = 1e-10,
    max_steps: int = 2000,
    check_stability: bool = True,
) -> PhaseDiagram:
    """Phase diagram of the two-well problem ([`curax.theory.two_well_problem`][]): for each
    (separation, K, q), the stable point from [`curax.stable_point`][] (from the uniform
    start), its atoms ([`curax.theory.atoms`][]), its shape
    ([`curax.theory.classify_stable_point`][]) and its stability radius
    ([`curax.stability`][]). All points share one grid (`[-h, h]`, `h = max separation / 2
    + 2`) and one quadrature size, so each bucket of K compiles once (K = 2 to 65 is one
    bucket, see [`curax.CurationProblem`][]). The default grid (separations
    0.25 to 4 in steps of 0.25) runs from one compromise atom to two basins.

    **Arguments:**

    - `separations`, `ks`, `qs`: the axes (`None` in `ks` = infinity).
    - `n`, `curvature`: grid size and well curvature. Keyword only arguments.
    - `eps`: basin tolerance of the classification. Keyword only argument.
    - `tol`, `max_steps`: passed to [`curax.stable_point`][]. Keyword only arguments.
    - `check_stability`: compute the stability radius. Keyword only argument.

    **Returns:**

    A [`curax.theory.PhaseDiagram`][].

    !!! Example

        ```python
        ph = curax.theory.phase_diagram((0.5, 3.0), (4, None), (0.3,), n=101)
        print(ph.summary())
        ```
    """
    if not separations or not ks or not qs:
        raise ValueError("`separations`, `ks` and `qs` must be non-empty.")
    half_width = 0.5 * max(separations) + 2.0
    spread = curvature * (half_width + 0.5 * max(separations)) ** 2
    from ._problem import nodes_for_spread

    nodes = nodes_for_spread(spread)
    x = np.linspace(-half_width, half_width, n)
    fields: dict[str, list] = {
        f: []
        for f in (
            "certified",
            "fw_gap",
            "phases",
            "num_atoms",
            "atoms",
            "basin_mass",
            "stability",
            "radius",
        )
    }
    for sep in separations:
        per_sep: dict[str, list] = {f: [] for f in fields}
        for k in ks:
            per_k: dict[str, list] = {f: [] for f in fields}
            for q in qs:
                problem = two_well_problem(
                    sep,
                    q,
                    k,
                    n=n,
                    half_width=half_width,
                    curvature=curvature,
                    quadrature_nodes=nodes,
                )
                lim = _limit_point(
                    problem,
                    problem.uniform(),
                    method="stable_point",
                    tol=tol,
                    rounds=1,
                    max_chunks=1,
                    max_steps=max_steps,
                )
                at = atoms(lim.p, x)
                if lim.certified and check_stability:
                    rep = stability(jnp.asarray(lim.p), problem)
                    verdict, radius = rep.verdict, float(rep.radius)
                else:
                    verdict = NOT_CERTIFIED if not lim.certified else "not checked"
                    radius = float("nan")
                row = {
                    "certified": lim.certified,
                    "fw_gap": lim.fw_gap,
                    "phases": classify_stable_point(lim.p, problem, eps=eps)
                    if lim.certified
                    else NOT_CERTIFIED,
                    "num_atoms": len(at),
                    "atoms": [list(a) for a in at],
                    "basin_mass": float(lim.p[basins(problem, eps).masks[0]].sum()),
                    "stability": verdict,
                    "radius": radius,
                }
                for f in fields:
                    per_k[f].append(row[f])
            for f in fields:
                per_sep[f].append(per_k[f])
        for f in fields:
            fields[f].append(per_sep[f])
    return PhaseDiagram(
        separations=[float(s) for s in separations],
        ks=list(ks),
        qs=[float(q) for q in qs],
        x=x.tolist(),
        **fields,
    )


def nash_agreement(
    problem: CurationProblem,
    p_dynamics: ArrayLike,
    *,
    tol: float = 1e-10,
) -> dict[str, dict[str, Any]]:
    """Compare a point reached by the dynamics with independent solves of the K = infinity
    stable point (the weighted Nash bargaining solution with utilities `E_p[e^{r_i}]`),
    through the potential `Phi` and the Frank-Wolfe gap (the stable point is unique only
    through `u = E p` and `Phi`, not `p`).

    Each entry's `result` is a claim only where its certificate holds: the dynamics' point is
    `"certified"` when its Frank-Wolfe gap is `<= tol` and `"not converged"` otherwise (then
    its `stability` is `"not a fixed point"`: an unfinished trajectory is not called
    unstable); the solvers report their own [`curax.RESULTS`][] message.

    **Arguments:**

    - `problem`: a [`curax.CurationProblem`][] (its K is replaced by infinity).
    - `p_dynamics`: the point the dynamics reached.
    - `tol`: the gap at which the dynamics' point counts as certified. Keyword only argument.

    **Returns:**

    `{name: {"method", "phi", "fw_gap", "result", "stability"}}` for `"dynamics"`,
    `"nash_solution"` ([`curax.nash_solution`][]), `"nash_optimize"`
    ([`curax.nash_optimize`][]) and `"stable_point"` ([`curax.stable_point`][]).
    """
    from ._nash import nash_optimize, nash_solution
    from ._solution import RESULTS

    inf = problem.with_k(None)
    out: dict[str, dict[str, Any]] = {}
    p_dyn = jnp.asarray(p_dynamics)
    gap = float(jnp.max(growth(p_dyn, inf)) - 1)
    ok = gap <= tol
    out["dynamics"] = {
        "method": "retraining dynamics",
        "phi": float(potential(p_dyn, inf)),
        "fw_gap": gap,
        "result": "certified" if ok else "not converged",
        "stability": stability(p_dyn, inf).verdict if ok else "not a fixed point",
    }

    for name, solve in (
        ("nash_solution", nash_solution),
        ("nash_optimize", nash_optimize),
    ):
        sol = solve(inf, throw=False)
        ok = bool(sol.result == RESULTS.successful)
        out[name] = {
            "method": f"curax.{name}",
            "phi": float(potential(sol.value, inf)),
            "fw_gap": float(sol.stats["fw_gap"]),
            "result": "successful" if ok else RESULTS[sol.result],
            "stability": stability(sol.value, inf).verdict if ok else "not certified",
        }
    lim = _limit_point(inf, inf.uniform(), method="stable_point", tol=tol, rounds=1, max_chunks=1)
    out["stable_point"] = {
        "method": lim.method,
        "phi": float(potential(jnp.asarray(lim.p), inf)),
        "fw_gap": lim.fw_gap,
        "result": "successful" if lim.certified else "not certified",
        "stability": stability(jnp.asarray(lim.p), inf).verdict
        if lim.certified
        else "not certified",
    }
    return out
