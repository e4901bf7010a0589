import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._problem import (
    check_concrete_distribution,
    CurationProblem,
    normalised_distribution,
    QUAD_STEP,
    QUAD_U_MIN,
    reward_groups,
    safe_spread,
    spread_for_nodes,
)


# Elements (rewards x nodes x points) in one block of the finite-K quadrature: the memory of a
# map evaluation is O(this), not O(Q * n).
_BLOCK_ELEMENTS = 2**19
# Above this many multiples of K, the growth factor of a point far above the support's maximum
# is K (1 - (K - 1) E_p[W] / W) to ~1e-14; below it the quadrature is exact.
_ASYMPTOTIC_RATIO = 1e7


def _exp_cap(dtype: Any) -> float:
    # Cap on log w for points far above the support's maximum, so that w / E_p[w] stays finite
    # (E_p[w] >= p(argmax) can be tiny). Such growth factors (> e^300) only mean "unstable".
    return 300.0 if jnp.finfo(dtype).bits == 64 else 40.0


def prepare_distribution(p: Array, problem: CurationProblem) -> Array:
    """Validate `p` against `problem` and put it exactly on the simplex (clip rounding-level
    negatives, renormalise): the finite-K map maps total mass c to ~c^K, so evaluating it off
    the simplex would amplify rounding errors every round (see the finite-K page of the docs,
    docs/finite_k.md)."""
    return normalised_distribution(p, problem.size, "p", problem.rewards.dtype)


def _check_p(p: Any, problem: Any) -> None:
    # A concrete bad `p` is a ValueError before `jit`; a traced one meets the same checks as
    # `eqx.error_if` inside it.
    if isinstance(problem, CurationProblem):
        check_concrete_distribution(p, problem.size, "p", problem.rewards.dtype)


def _support_max(s: Array, p: Array) -> Array:
    # The maps are invariant to a per-row shift, so the shift carries no gradient.
    return lax.stop_gradient(jnp.max(jnp.where(p > 0, s, -jnp.inf), axis=-1, keepdims=True))


@jax.custom_jvp
def _cached_exp(s: Array, cache: Array) -> Array:
    """`exp(s - max s)` read from the problem's cache. The tangent goes through `s` (so
    gradients w.r.t. rewards and temperature are right wherever the problem was built); the
    row maximum's tangent is dropped, the maps being invariant to the shift."""
    del s
    return cache


@_cached_exp.defjvp
def _cached_exp_jvp(primals, tangents):
    s, cache = primals
    ds, _ = tangents
    del s
    return cache, cache * ds


def _tilt_weights(
    s: Float[Array, "r n"], cache: Float[Array, "r n"], p: Float[Array, " n"], narrow: bool | None
) -> tuple[Float[Array, "r n"], Float[Array, " r"]]:
    """K -> infinity: the weights w_i (any per-row scale) and u_i = E_p[w_i], so that
    G_i = w_i / u_i."""

    def row_shift():
        return cache_w, cache_w @ p

    def support_shift():
        # Rewards spanning > 690 nats: the cached weights may underflow on the support. Shift
        # by the support's maximum so E_p[w] cannot, and cap points far above it so
        # w / E_p[w] stays finite.
        w = jnp.exp(jnp.minimum(s - _support_max(s, p), _exp_cap(s.dtype)))
        return w, w @ p

    # Below the underflow-safe spread the cached weights (shifted by the row maximum, which
    # depends on the rewards only) serve every p; wider rewards may underflow on the support.
    cache_w = _cached_exp(s, cache)
    if narrow:
        return row_shift()
    wide = jnp.any(jnp.max(s, axis=-1) - jnp.min(s, axis=-1) > safe_spread(s.dtype))
    return lax.cond(wide, support_shift, row_shift)


def _blocks(x: Array, size: int) -> Array:
    """Split the last axis of `x` into blocks of `size` (zero-padded): (..., n) -> (b, ..., size)."""
    n = x.shape[-1]
    nb = -(-n // size)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, nb * size - n)])
    return jnp.moveaxis(x.reshape(*x.shape[:-1], nb, size), -2, 0)


def _laplace_growth(
    s: Float[Array, "r n"],
    p: Float[Array, " n"],
    k: Float[Array, " r"],
    num_nodes: int,
) -> Float[Array, "r n"]:
    """Exact finite-K growth factor H(x) = E[K w(x) / (w(x) + sum_{j<K} w(y_j))], y_j ~ p.

    Laplace identity 1/s = int_0^inf e^{-ts} dt:
    H(x) = K w(x) int_0^inf e^{-t w(x)} phi(t)^{K-1} dt with phi(t) = E_p[e^{-t w}], by a
    double-exponential trapezoid rule in u (t = exp(-log K + u - e^{-u})), two passes of
    O(r * Q * n) in blocks of bounded memory.
    """
    dtype = s.dtype
    r, n = s.shape
    spread = jnp.max(s, axis=-1) - jnp.min(s, axis=-1)
    covered = spread_for_nodes(num_nodes)
    # The checks hang on the small `k`: an error_if on the (r, n) rewards would copy them.
    k = eqx.error_if(
        k,
        jnp.any(spread > covered + 1e-9),
        f"The scaled rewards span more nats than the finite-K quadrature covers "
        f"({covered:.1f} nats with quadrature_nodes={num_nodes}); pass "
        f"`quadrature_nodes=curax.nodes_for_spread(spread)` to `CurationProblem`.",
    )
    if jnp.finfo(dtype).bits < 64:
        k = eqx.error_if(
            k,
            jnp.any(spread > 80.0),
            "The finite-K map in float32 overflows for reward spreads above 80 nats; use "
            "float64 rewards.",
        )
    # Shift by the global maximum so that every point, on the support or not, has w <= 1 and
    # the quadrature is accurate everywhere; but never more than `covered` nats above the
    # support's minimum, so that the support stays inside the quadrature's range.
    smin_support = lax.stop_gradient(-jnp.max(jnp.where(p > 0, -s, -jnp.inf), axis=-1))
    shift = jnp.maximum(
        jnp.minimum(lax.stop_gradient(jnp.max(s, axis=-1)), smin_support + covered),
        _support_max(s, p)[:, 0],
    )
    log_w = s - shift[:, None]
    log_ew = jax.nn.logsumexp(log_w, b=p[None, :], axis=-1)  # log E_p[w], (r,)
    # Points far above the support's maximum (only when the spread exceeds the node coverage)
    # take the asymptotic expansion below; capping them keeps every product finite.
    log_far = jnp.log(_ASYMPTOTIC_RATIO * k)
    log_wq = jnp.minimum(log_w, log_far[:, None] + 1)

    u = QUAD_U_MIN + QUAD_STEP * jnp.arange(num_nodes, dtype=dtype)
    log_t = -jnp.log(k)[:, None] + (u - jnp.exp(-u))[None, :]  # (r, Q)
    c = QUAD_STEP * (1 + jnp.exp(-u))[None, :]  # trapezoid weight / t

    # t * w in linear space is one multiply, but overflows/underflows float64 beyond ~600
    # nats of spread; there it is formed in log space (one more exp per node and point).
    linear = covered <= 600.0
    chunk = max(128, min(n, _BLOCK_ELEMENTS // max(1, r * num_nodes)))
    p_blocks = _blocks(p, chunk)  # (b, chunk)
    if linear:
        t = jnp.exp(log_t)
        x_blocks = _blocks(jnp.exp(log_wq), chunk)  # (b, r, chunk)

        def times_w(xb):
            return t[:, :, None] * xb[:, None, :]  # (r, Q, chunk)

    else:
        x_blocks = _blocks(log_wq, chunk)

        def times_w(xb):
            return jnp.exp(log_t[:, :, None] + xb[:, None, :])

    # Pass 1: phi_k = E_p[e^{-t_k w}] and E_p[expm1(-t_k w)] for every node.
    def pass1(carry, blk):
        xb, pb = blk
        tw = times_w(xb)
        return (carry[0] + jnp.exp(-tw) @ pb, carry[1] + jnp.expm1(-tw) @ pb), None

    zeros = jnp.zeros((r, num_nodes), dtype)
    (phi, phim1), _ = lax.scan(pass1, (zeros, zeros), (x_blocks, p_blocks))
    # log phi two ways: log1p of the expm1 sum where t E[w] < 1 (phi near 1), the log of the
    # direct sum elsewhere; either alone loses accuracy for peaked p or large K.
    small = log_t + log_ew[:, None] < 0
    log_phi = jnp.where(
        small,
        jnp.log1p(jnp.where(small, phim1, 0.0)),
        # phi underflows to 0 at the largest nodes; flooring it keeps log (and its
        # derivative) finite, and tiny ** (K - 1) is 0 all the same.
        jnp.log(jnp.where(small, 1.0, jnp.maximum(phi, jnp.finfo(dtype).tiny))),
    )
    a = c * jnp.exp((k[:, None] - 1) * log_phi)  # (r, Q)

    # Pass 2: H(x) = K sum_k a_k (t_k w(x)) e^{-t_k w(x)}.
    def pass2(xb):
        tw = times_w(xb)
        return jnp.einsum("rq,rqc->rc", a, tw * jnp.exp(-tw))

    h = jnp.moveaxis(lax.map(pass2, x_blocks), 0, -2).reshape(r, -1)[:, :n]
    h = k[:, None] * h
    far = log_w >= log_far[:, None]
    asym = k[:, None] * (
        1 - (k[:, None] - 1) * jnp.exp(log_ew[:, None] - jnp.where(far, log_w, 0.0))
    )
    return jnp.where(far, asym, h)


def _grouped_growths(p: Array, problem: CurationProblem, mixed: bool) -> Array:
    s = problem.scaled_rewards
    ks = problem.ks
    groups = reward_groups(ks)
    alpha = problem.weights
    parts: list[Array] = []
    order: list[int] = []
    if groups.infinite:
        idx = jnp.array(groups.infinite)
        w, u = _tilt_weights(s[idx], problem.tilt_weights, p, problem.narrow)
        # Mixed: sum_i alpha_i w_i / u_i as one pass over w, without the (r, n) rows.
        parts.append((alpha[idx] / u) @ w if mixed else w / u[:, None])
    if groups.one:
        idx = jnp.array(groups.one)
        ones = jnp.ones((len(groups.one), problem.size), s.dtype)
        parts.append(jnp.sum(alpha[idx]) * ones[0] if mixed else ones)
    if groups.finite:
        idx = jnp.array(groups.finite)
        k = jnp.array([ks[i] for i in groups.finite], dtype=s.dtype)
        h = _laplace_growth(s[idx], p, k, problem.quadrature_nodes)
        parts.append(alpha[idx] @ h if mixed else h)
    order = list(groups.infinite) + list(groups.one) + list(groups.finite)
    if mixed:
        return sum(parts[1:], parts[0])
    g = jnp.concatenate(parts, axis=0)
    if order != list(range(len(ks))):
        g = g[jnp.argsort(jnp.array(order))]
    return g


def reward_growths(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, "m n"]:
    """Growth factor of each reward row, `G_i(x)`, before mixing over rewards: the curated
    distribution under reward `i` alone is `p * G_i`. `p` must already be on the simplex."""
    return _grouped_growths(p, problem, mixed=False)


def mixed_growth(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, " n"]:
    """`sum_i alpha_i G_i(x)`, the growth factor of one round (before reference mixing).
    `p` must already be on the simplex."""
    return _grouped_growths(p, problem, mixed=True)


@eqx.filter_jit
def _growth(p: Array, problem: CurationProblem) -> Array:
    return mixed_growth(prepare_distribution(p, problem), problem)


@eqx.filter_jit
def _curate(p: Array, problem: CurationProblem) -> Array:
    return _curate_unchecked(prepare_distribution(p, problem), problem)


def _curate_unchecked(p: Array, problem: CurationProblem) -> Array:
    # Zero-mass points stay exactly zero, even where their growth factor is huge. (`p == 0`,
    # not `p > 0`: a `p` that a failed check turned into NaN under EQX_ON_ERROR=nan must give
    # NaN, not zeros.)
    curated = jnp.where(p == 0, 0.0, p * mixed_growth(p, problem))
    if problem.reference is None:
        return curated
    rw = problem.reference_weight
    return rw * problem.reference + (1 - rw) * curated


class AbstractReplicatorMap(eqx.Module):
    """A map on the simplex of replicator form `p -> p * G(p)` (optionally mixed with a fixed
    reference distribution). Solvers that exploit this structure (e.g.
    [`curax.ActiveSetNewton`][]) read the growth factor `G` through `growth`.
    """

    @abc.abstractmethod
    def growth(self, p: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        """The growth factor `G(p)`, shape `(n,)`."""

    @abc.abstractmethod
    def __call__(self, p: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        """The next distribution."""


class CurationMap(AbstractReplicatorMap):
    """One retraining round of a [`curax.CurationProblem`][]; the object behind
    [`curax.curate`][]. Call it as `curax.curate(p, problem)`."""

    def growth(self, p: Float[Array, " n"], args: CurationProblem) -> Float[Array, " n"]:
        """Growth factor `G(p) = sum_i alpha_i G_i(p)` of the curation step (before mixing in
        reference data), shape `(n,)`: the curated distribution is `p * G(p)`. At a stable
        fixed point without reference data, `G <= 1` everywhere with equality on the support.
        """
        _check_p(p, args)
        return _growth(p, args)

    def __call__(self, p: Float[Array, " n"], args: CurationProblem) -> Float[Array, " n"]:
        """One retraining round: `p -> reference_weight * reference +
        (1 - reference_weight) * p * G(p)`.

        **Arguments:**

        - `p`: `Float[Array, " n"]`, the current model, a distribution on the support.
        - `args`: the [`curax.CurationProblem`][].

        **Returns:**

        The next model, `Float[Array, " n"]`, on the simplex.

        Finite `k` is evaluated exactly (no sampling, no enumeration) through the Laplace
        identity, with `problem.quadrature_nodes` nodes: O(n Q) work, O(Q * 2^19 / Q) memory.
        The signature `fn(y, args)` is optimistix's, so `curax.curate` can be handed to any
        fixed-point solver.

        !!! Example

            ```python
            p1 = curax.curate(problem.uniform(), problem)
            ```
        """
        _check_p(p, args)
        return _curate(p, args)


class ReplicatorMap(AbstractReplicatorMap):
    """Wrap a user's growth factor `growth_fn(p, args) -> G` as the map `p -> p * G(p)`, so
    that replicator-aware solvers can use it.

    !!! Example

        ```python
        fn = curax.ReplicatorMap(lambda p, E: E.T @ (0.5 / (E @ p)))
        ```
    """

    growth_fn: Callable[[Array, PyTree], Array]

    def growth(self, p: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.growth_fn(p, args)

    def __call__(self, p: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return p * self.growth_fn(p, args)


curate = CurationMap()
"""One retraining round, `curate(p, problem) -> p'`: the [`curax.CurationMap`][] instance that
curax's solvers and examples use (see [`curax.CurationMap.__call__`][]). Its signature is
optimistix's `fn(y, args)`, so it can be handed to any fixed-point solver.

!!! Example

    ```python
    p1 = curax.curate(problem.uniform(), problem)
    ```
"""


def growth(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, " n"]:
    """Growth factor `G(p)` of one curation round (see [`curax.CurationMap.growth`][]).

    **Arguments:**

    - `p`: `Float[Array, " n"]`, a distribution on the support.
    - `problem`: the [`curax.CurationProblem`][].

    **Returns:**

    `Float[Array, " n"]`: `G` such that the curated distribution is `p * G`.

    !!! Example

        ```python
        g = curax.growth(problem.uniform(), problem)
        ```
    """
    _check_p(p, problem)
    return _growth(p, problem)


def trajectory(
    p0: Float[Array, " n"], problem: CurationProblem, rounds: int
) -> Float[Array, "steps n"]:
    """Run the dynamics for `rounds` retraining rounds (a `lax.scan`).

    **Arguments:**

    - `p0`: `Float[Array, " n"]`, the initial model.
    - `problem`: the [`curax.CurationProblem`][].
    - `rounds`: number of rounds (static int).

    **Returns:**

    `Float[Array, "rounds+1 n"]`, row `t` the model after `t` rounds (row 0 is `p0`).

    !!! Example

        ```python
        ps = curax.trajectory(problem.uniform(), problem, 100)
        ```
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"`rounds` must be a non-negative int, got {rounds!r}.")
    if isinstance(problem, CurationProblem):
        check_concrete_distribution(p0, problem.size, "p0", problem.rewards.dtype)
    return _trajectory(p0, problem, rounds)


@eqx.filter_jit
def _trajectory(p0: Array, problem: CurationProblem, rounds: int) -> Array:
    p0 = normalised_distribution(p0, problem.size, "p0", problem.rewards.dtype)

    def body(p, _):
        # Rounds after the first need no validation: the map keeps p on the simplex. The
        # finite-K map needs p renormalised (docs/finite_k.md).
        p_next = _curate_unchecked(p / jnp.sum(p), problem)
        return p_next, p_next

    _, ps = lax.scan(body, p0, None, length=rounds)
    return jnp.concatenate([p0[None], ps], axis=0)


def expected_exp_rewards(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, " m"]:
    """`log u_i = log E_p[exp(r_i / tau)]` for each reward, computed stably.

    **Arguments:**

    - `p`: `Float[Array, " n"]`, a distribution on the support.
    - `problem`: the [`curax.CurationProblem`][].

    **Returns:**

    `Float[Array, " m"]`, the log utilities of the K -> infinity Nash problem.

    !!! Example

        ```python
        log_u = curax.expected_exp_rewards(problem.uniform(), problem)
        ```
    """
    _check_p(p, problem)
    return _expected_exp_rewards(p, problem)


@eqx.filter_jit
def _expected_exp_rewards(p: Array, problem: CurationProblem) -> Array:
    p = prepare_distribution(p, problem)
    return jax.nn.logsumexp(problem.scaled_rewards, b=p[None, :], axis=-1)


def potential(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, ""]:
    """The log Nash product `Phi(p) = sum_i alpha_i log E_p[exp(r_i / tau)]`.

    Concave; non-decreasing along the K -> infinity dynamics without reference data, and
    maximised at their stable point (the weighted Nash bargaining solution with
    utilities `E_p[e^{r_i/tau}]`, disagreement point 0 and weights alpha).

    **Arguments:**

    - `p`: `Float[Array, " n"]`, a distribution on the support.
    - `problem`: the [`curax.CurationProblem`][] (its `k` and reference are ignored).

    **Returns:**

    A scalar.

    !!! Example

        ```python
        phi = curax.potential(problem.uniform(), problem)
        ```
    """
    _check_p(p, problem)
    return _potential(p, problem)


@eqx.filter_jit
def _potential(p: Array, problem: CurationProblem) -> Array:
    return problem.weights @ _expected_exp_rewards(p, problem)


def fw_gap(p: Float[Array, " n"], problem: CurationProblem) -> Float[Array, ""]:
    """The Frank-Wolfe / KKT gap `max_x G(x) - 1` of `p`, with `G` the problem's growth
    factor (reference data ignored).

    For K -> infinity, `G = sum_i alpha_i w_i / E_p[w_i]` is the gradient of the potential and
    the gap bounds the suboptimality: `0 <= Phi* - Phi(p) <= fw_gap(p)`. For finite K it is the
    largest growth factor minus one: 0 exactly at a stable fixed point, > 0 at a fixed point
    that is unstable (mass placed at the argmax grows) or at a point that is not fixed.
    Always >= 0, since `E_p[G] = 1`.

    **Arguments:**

    - `p`: `Float[Array, " n"]`, a distribution on the support.
    - `problem`: the [`curax.CurationProblem`][].

    **Returns:**

    A scalar, >= 0.

    !!! Example

        ```python
        gap = curax.fw_gap(problem.uniform(), problem)
        ```
    """
    _check_p(p, problem)
    return _fw_gap(p, problem)


@eqx.filter_jit
def _fw_gap(p: Array, problem: CurationProblem) -> Array:
    return jnp.max(_growth(p, problem)) - 1
