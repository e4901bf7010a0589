import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int


# Trapezoid rule in u = log t (docs/finite_k.md): node spacing and the left end of the
# double-exponential grid (u_min solves u - exp(-u) = log 1e-14).
QUAD_STEP = 0.3
QUAD_U_MIN = -3.362916422617345
# Reward spread (in nats, after temperature) that the default node count covers when the rewards
# are not concrete at construction (e.g. built inside `jax.grad`).
DEFAULT_SPREAD = 64.0
# Bin width (nats) of the finite-K rows' point order (`CurationProblem.finite_order`).
_ORDER_BIN = 0.05
# Most quadrature nodes a problem may ask for (about 2,440 nats of scaled-reward spread). One
# block of the finite-K map holds rewards x nodes x 128 points, so this bounds its memory to
# ~8 MB per finite-K reward row. It refuses absurd requests (a temperature of 1e-6 asks for
# ~1e8 nodes, hundreds of GB) before anything is allocated.
MAX_QUADRATURE_NODES = 8192
# Widest scaled-reward spread (nats) the finite-K map can evaluate in float32 before `exp`
# overflows.
FLOAT32_FINITE_K_SPREAD = 80.0


def nodes_for_spread(spread: float) -> int:
    """Number Q of quadrature nodes that evaluate the exact finite-K map to ~1e-13 relative
    error when the scaled rewards span `spread` nats on the support of `p`:
    `Q = ceil((spread + log(spread + 32.2) - u_min) / 0.3) + 1`, e.g. 24 at 0 nats, 28 at 1,
    59 at 10 and 194 at 50. It does not depend on K. [`curax.CurationProblem`][] accepts at
    most 8192 nodes (about 2,440 nats).

    !!! Example

        ```python
        curax.nodes_for_spread(10.0)  # 59
        ```
    """
    spread = max(float(spread), 0.0)
    return math.ceil((spread + math.log(spread + 32.2) - QUAD_U_MIN) / QUAD_STEP) + 1


def _check_finite_k_spread(spread: float, dtype: Any, k: Any, quadrature_nodes: int | None) -> None:
    """Refuse, at construction, finite-K problems whose scaled rewards are too wide to
    evaluate: float32 beyond `FLOAT32_FINITE_K_SPREAD` nats, or (when the node count is not
    given) more quadrature nodes than `MAX_QUADRATURE_NODES`."""
    if not math.isfinite(spread):  # e.g. rewards / temperature overflowed
        spread = math.inf
    remedy = (
        "use K = infinity (`k=None`), raise `temperature`, or rescale `rewards` (they enter "
        "as `rewards / temperature`)"
    )
    if jnp.finfo(dtype).bits < 64 and spread > FLOAT32_FINITE_K_SPREAD:
        raise ValueError(
            f"`rewards / temperature` spans {spread:.4g} nats in float32, but the finite-K map "
            f"(`k`={k!r}) overflows float32 beyond {FLOAT32_FINITE_K_SPREAD:.0f} nats: pass "
            f"float64 `rewards`, or {remedy}."
        )
    if quadrature_nodes is None:
        nodes = nodes_for_spread(spread) if math.isfinite(spread) else math.inf
        if nodes > MAX_QUADRATURE_NODES:
            nodes_text = f"{nodes:.3g}" if math.isfinite(nodes) else "infinitely many"
            raise ValueError(
                f"`rewards / temperature` spans {spread:.4g} nats, so the exact finite-K map "
                f"(`k`={k!r}) would need {nodes_text} quadrature nodes, more than the limit of "
                f"{MAX_QUADRATURE_NODES} (about {spread_for_nodes(MAX_QUADRATURE_NODES):.0f} "
                f"nats): {remedy}."
            )


def spread_for_nodes(nodes: int) -> float:
    """The largest reward spread (nats) that `nodes` quadrature nodes cover (inverse of
    [`curax.nodes_for_spread`][]).

    !!! Example

        ```python
        curax.spread_for_nodes(curax.nodes_for_spread(10.0))  # >= 10
        ```
    """
    u_max = QUAD_U_MIN + (nodes - 1) * QUAD_STEP
    lo, hi = 0.0, max(u_max, 0.0)
    if u_max < math.log(32.2):
        return 0.0
    for _ in range(100):  # bisection on spread + log(spread + 32.2) = u_max
        mid = 0.5 * (lo + hi)
        if mid + math.log(mid + 32.2) <= u_max:
            lo = mid
        else:
            hi = mid
    return lo


def is_concrete(*xs: Any) -> bool:
    """Whether every array is a concrete value (not a tracer), so checks can run eagerly."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def check_value(x: Array, bad: Any, message: str) -> Array:
    """Refuse a bad runtime value: a `ValueError` now when `x` is concrete, else an
    `eqx.error_if` that fires when the traced computation runs. `bad` is a boolean array, or
    a function `bad(xp, x)` of an array module and `x`: numpy for a concrete `x` (a check then
    compiles no JAX operation, each ~0.05 s for every new shape), jax.numpy inside a trace."""
    if callable(bad):
        bad = _predicates(bad, x)
    if is_concrete(x, bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
        return x
    return eqx.error_if(x, bad, message)


def _predicates(fn: Callable[[Any, Any], Any], x: Any) -> Any:
    """`fn(xp, x)`: by numpy (`xp = np`) when `x` is concrete and held by this process, so that
    a check compiles no JAX operation (each ~0.05 s for every new shape); by jax.numpy inside a
    trace, or for an array spread over processes (reduced by JAX, the verdict replicated)."""
    if not (is_concrete(x) and getattr(x, "is_fully_addressable", True)):
        return fn(jnp, x)
    with np.errstate(all="ignore"):  # inf and NaN are what the checks look for
        return fn(np, np.asarray(x))


@jax.jit
def exp_normalised(rewards: Array, temperature: Array) -> tuple[Array, Array]:
    """`(exp(s - max s), max s)` row by row, for the scaled rewards `s = rewards /
    temperature` (a scalar or one per row), the maximum held constant under
    differentiation. One compiled program per shape (run op by op at construction, each
    operation would compile on its own), shared by both Nash entries so that they see the
    same bits."""
    t = temperature[:, None] if temperature.ndim else temperature
    s = rewards / t
    shift = jax.lax.stop_gradient(jnp.max(s, axis=-1))
    return jnp.exp(s - shift[:, None]), shift


def safe_spread(dtype: Any) -> float:
    """Largest reward spread (nats) over which `exp(s - max s)` cannot underflow."""
    return 690.0 if jnp.finfo(dtype).bits == 64 else 80.0


def simplex_tolerance(dtype: Any) -> float:
    """How far from the simplex a distribution may be (sum, negative entries) and still be
    accepted: 1e-6 in float64, ~1e-4 in float32."""
    return max(1e-6, 1000 * float(jnp.finfo(dtype).eps))


def _as_float(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be a real array, got dtype {x.dtype}.")
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        x = x.astype(jnp.result_type(float))
    return x


def check_matrix(x: ArrayLike, name: str, row: str) -> Array:
    """Validate a finite real matrix with one `row` per row, shape (m, n) with m, n >= 1; a
    1-D array is one row."""
    x = _as_float(x, name)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have shape (m, n) (one {row} per row) or (n,), got {x.shape}."
        )
    return check_value(
        x,
        lambda xp, v: ~xp.all(xp.isfinite(v)),
        f"`{name}` contains NaN or inf; every {row} must be finite.",
    )


def check_probability_vector(
    x: ArrayLike | None, m: int, name: str, dtype: Any, over: str
) -> Array:
    """Validate a probability vector of length `m` (default uniform): shape, finite,
    non-negative, summing to 1 within [`simplex_tolerance`][]; returns it renormalised."""
    if x is None:
        return jnp.full((m,), 1.0 / m, dtype)
    x = _as_float(x, name).astype(dtype)
    if x.shape != (m,):
        raise ValueError(
            f"`{name}` must have shape ({m},), one probability for each of the {m} {over}, got "
            f"{x.shape}."
        )
    x = check_value(
        x,
        lambda xp, v: ~xp.all(xp.isfinite(v)) | xp.any(v < 0),
        f"`{name}` must be finite and non-negative (a probability vector over {over}).",
    )
    x = check_value(
        x,
        lambda xp, v: xp.abs(xp.sum(v) - 1) > simplex_tolerance(dtype),
        f"`{name}` must sum to 1 (a probability vector over {over}).",
    )
    return x / jnp.sum(x)


def _distribution_checks(p: Any, name: str, xp: Any = jnp) -> tuple[list[Any], list[str]]:
    # `xp` is jnp (traced checks) or np (eager checks of a concrete `p`, without dispatching
    # jax operations).
    tol = simplex_tolerance(p.dtype)
    preds = [
        ~xp.all(xp.isfinite(p)),
        xp.any(p < -tol),
        xp.abs(xp.sum(p) - 1) > tol,
    ]
    msgs = [
        f"`{name}` contains NaN or inf.",
        f"`{name}` must be non-negative (a distribution on the simplex).",
        f"`{name}` must sum to 1 (a distribution on the simplex); its sum is off by more "
        f"than {tol:.0e}.",
    ]
    return preds, msgs


def _check_branches(x: Any, preds: list[Any], msgs: list[str]) -> Any:
    """Like [`check_value`][] for several conditions at once: the first that holds is
    reported. Traced, they become one `eqx.branched_error_if` on `x` (keep `x` small: the
    check passes `x` through, and a large array may be copied)."""
    if is_concrete(preds):
        for bad, msg in zip(preds, msgs):
            if bool(np.any(np.asarray(bad))):
                raise ValueError(msg)
        return x
    flags = jnp.stack([jnp.asarray(b) for b in preds])
    return eqx.branched_error_if(x, jnp.any(flags), jnp.argmax(flags), msgs)


def _distribution_shape(p: ArrayLike, n: int, name: str, dtype: Any) -> Array:
    p = _as_float(p, name)
    if dtype is not None and p.dtype != dtype:
        p = p.astype(dtype)
    if p.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},) to match the support, got {p.shape}.")
    return p


def check_distribution(p: ArrayLike, n: int, name: str = "p", dtype: Any = None) -> Array:
    """Validate a distribution on `n` points: shape `(n,)`, finite, non-negative and summing to 1
    (within [`simplex_tolerance`][]); returns it as an array (inside `jit` via `eqx.error_if`)."""
    p = _distribution_shape(p, n, name, dtype)
    preds, msgs = _predicates(lambda xp, v: _distribution_checks(v, name, xp), p)
    return _check_branches(p, preds, msgs)


def check_input_distribution(p: Any, n: int, name: str = "p", dtype: Any = None) -> Any:
    """Validate a user's distribution where it enters a public entry point, outside the
    entry point's `jit`: a concrete bad `p` is a `ValueError` now (checked with numpy, no JAX
    program), a traced one (the user's own `jit` or `vmap`) gets the checks of
    [`check_distribution`][] as `eqx.error_if` in the user's program. Returns `p` (concrete:
    unchanged; traced: through the checks).

    The jitted kernels behind the entry points then carry no runtime checks of their own:
    `eqx.error_if` is a host callback, and JAX never writes a program with a host callback to
    its persistent compilation cache, so a checked kernel would recompile in every process."""
    checked = check_distribution(p, n, name, dtype)
    return p if is_concrete(p) else checked


def normalised_distribution(
    p: ArrayLike, n: int, name: str = "p", dtype: Any = None, *, checked: bool = True
) -> Array:
    """[`check_distribution`][], then put `p` exactly on the simplex (clip rounding-level
    negatives, renormalise). The checks hang on the scalar mass, so `p` is not copied.
    `checked=False` skips the checks (for a `p` already validated by
    [`check_input_distribution`][]); the shape is checked either way."""
    p = _distribution_shape(p, n, name, dtype)
    if not checked:
        p = jnp.clip(p, 0.0)
        return p / jnp.sum(p)
    preds, msgs = _distribution_checks(p, name)
    p = jnp.clip(p, 0.0)
    return p / _check_branches(jnp.sum(p), preds, msgs)


class RewardGroups(NamedTuple):
    """Reward rows by how they are curated: K = infinity (exponential tilt), K = 1 (no
    selection) and finite K >= 2 (the exact Laplace quadrature)."""

    infinite: tuple[int, ...]
    one: tuple[int, ...]
    finite: tuple[int, ...]


def reward_groups(ks: tuple[int | None, ...]) -> RewardGroups:
    return RewardGroups(
        tuple(i for i, k in enumerate(ks) if k is None),
        tuple(i for i, k in enumerate(ks) if k == 1),
        tuple(i for i, k in enumerate(ks) if k is not None and k > 1),
    )


# Finite K >= 2 in buckets that share compiled code: K - 1 in [1, 64] (the finite-K map's
# "direct" formula for phi, whose error grows like K - 1, serves all of them), then K - 1 in
# (2^j, 2^(j + 1)] for j >= 6. The finite-K map's static choices are made from a bucket's
# bounds and hold for every K inside it (see `_laplace_growth` in _maps.py).
_DIRECT_BUCKET_HI = 65


def k_bucket(k: int) -> tuple[int, int]:
    """The bucket `(lo, hi)` of a finite K >= 2: the Ks, `lo <= K <= hi`, whose finite-K map
    is one compiled program (`[2, 65]`, then `K - 1` in `(2^j, 2^(j+1)]`: `[66, 129]`,
    `[130, 257]`, ...)."""
    if k - 1 <= _DIRECT_BUCKET_HI - 1:
        return 2, _DIRECT_BUCKET_HI
    top = 1 << (k - 2).bit_length()  # smallest power of two >= k - 1
    return top // 2 + 2, top + 1


def k_bucket_bounds(hi: int) -> tuple[int, int]:
    """`(lo, hi)` of the bucket whose upper bound is `hi` (as `canonical_k` stores it)."""
    lo, top = k_bucket(hi)
    if top != hi:
        raise ValueError(f"{hi} is not the upper bound of a bucket of K.")
    return lo, hi


def _normalise_k(k: Any, m: int) -> int | None | tuple[int | None, ...]:
    def one(kk: Any, where: str) -> int | None:
        if kk is None or (isinstance(kk, float) and math.isinf(kk)):
            return None
        if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)):
            raise ValueError(
                f"`k`{where} must be a positive int (candidates per round) or None for K -> "
                f"infinity, got {kk!r}."
            )
        if kk < 1:
            raise ValueError(f"`k`{where} must be >= 1 (candidates per round), got {kk}.")
        return int(kk)

    if isinstance(k, (list, tuple, np.ndarray)):
        if len(k) != m:
            raise ValueError(
                f"`k` given per reward must have length m={m} (one K per curator type), got "
                f"length {len(k)}."
            )
        ks = tuple(one(kk, f"[{i}]") for i, kk in enumerate(k))
        return ks[0] if len(set(ks)) == 1 else ks
    return one(k, "")


class CurationProblem(eqx.Module):
    """A discretised curation problem: what one retraining round does to a distribution `p` on
    `n` support points.

    Each round draws `k` candidates from `p`, picks reward `i` with probability `weights[i]`,
    keeps one candidate with Bradley-Terry/Luce probability proportional to
    `exp(rewards[i] / temperature)`, refits to the kept sample and mixes in reference ("real")
    data: `p' = reference_weight * reference + (1 - reference_weight) * curated(p)`.

    A heterogeneous curator population (Zhao, Fu, Pham 2025) is the same object with one row of
    `rewards` per curator type, its share in `weights` and, if the types differ in how many
    candidates they compare, a tuple `k` with one entry per type.

    **Attributes:**

    - `rewards`: `Float[Array, "m n"]`, one reward per row (a 1-D array is one reward).
    - `weights`: `Float[Array, " m"]`, the probability of each reward (curator type), alpha.
    - `k`: candidates per round: a positive int, `None` for K -> infinity, or a tuple of
        those, one per reward row. Static (it changes the computation, not just the data),
        but curax's entry points compile one program per *bucket* of finite K, not per K:
        K from 2 to 65, then K - 1 in (64, 128], (128, 256], ... (K = 1 and K = infinity
        are buckets of their own). Solving for K = 2, 3, 5 and 8 compiles once.
    - `k_values`: `Float[Array, " m"]` or `None`: the K of each reward row as a traced
        value (infinity for K = infinity). `None` for a problem as constructed (K is read
        from the static `k`); curax's entry points set it, on a copy whose static `k` holds
        each finite K's bucket, before their `jit`, and never return that copy.
    - `temperature`: `Float[Array, ""]` or `Float[Array, " m"]`; rewards enter as
        `rewards / temperature`.
    - `reference`: `Float[Array, " n"]` or `None`, the real-data distribution.
    - `reference_weight`: `Float[Array, ""]`, the real-data fraction in [0, 1] (0 = none).
        Ferbach et al.'s synthetic-to-real ratio `lambda` corresponds to
        `reference_weight = 1 / (1 + lambda)`; see [`curax.reference_weight_from_ratio`][].
    - `quadrature_nodes`: static int, nodes Q of the exact finite-K map
        (see [`curax.nodes_for_spread`][]); 0 when every reward has K = infinity. At most
        8192 (about 2,440 nats of spread): wider finite-K problems are refused at
        construction with a `ValueError` (use K = infinity, raise the temperature or rescale
        the rewards); so are float32 finite-K problems spanning more than 80 nats.
    - `tilt_weights`: `Float[Array, "r n"]` or `None`, a cache of `exp(s_i - max s_i)` for
        the `r` rows with K = infinity (`s = rewards / temperature`), so that the K -> infinity
        map reads the weights twice per round and computes no exponential. Gradients flow
        through `rewards` and `temperature`, never through this cache; do not replace
        `rewards` with `eqx.tree_at` (use the constructor, or
        [`curax.CurationProblem.map_points`][] to index or reshard the support).
    - `narrow`: static bool or `None`: whether every row of the scaled rewards spans less than
        the range where `exp` cannot underflow (690 nats in float64, 80 in float32), so that the
        K -> infinity map needs no underflow guard; `None` when the rewards were not concrete at
        construction. A bool, not the spread itself, so that problems with other rewards of the
        same shapes reuse compiled code.
    - `finite_order`: `Int[Array, "f n"]` or `None`, a cache for the `f` rows with finite K:
        the support points of each row in order of decreasing scaled reward (in bins of 0.05
        nats), so that the exact finite-K map sums over blocks of points with nearly equal
        rewards and skips most quadrature nodes even when the rewards have no geometry. Any
        order gives the same map (it is only faster sorted); `None` when the rewards were not
        concrete at construction.
    - `spread_checked`: static bool: whether the rewards were concrete at construction and
        the quadrature covers the spread of every finite-K row (always `True` without finite
        K). Then the finite-K map needs no runtime check of the spread (a host callback,
        which would keep its compiled program out of JAX's persistent cache); otherwise it
        checks when it runs.

    !!! Example

        ```python
        import jax.numpy as jnp
        import curax

        x = curax.grid_1d(-3.0, 3.0, 201)
        rewards = jnp.stack([-(x - 1.5) ** 2, -(x + 1.5) ** 2])
        problem = curax.CurationProblem(rewards, weights=jnp.array([0.3, 0.7]), k=4)
        p1 = curax.curate(jnp.full(201, 1 / 201), problem)
        ```
    """

    rewards: Float[Array, "m n"]
    weights: Float[Array, " m"]
    temperature: Float[Array, ""] | Float[Array, " m"]
    reference: Float[Array, " n"] | None
    reference_weight: Float[Array, ""]
    tilt_weights: Float[Array, "r n"] | None
    finite_order: Int[Array, "f n"] | None
    k_values: Float[Array, " m"] | None
    k: int | None | tuple[int | None, ...] = eqx.field(static=True)
    quadrature_nodes: int = eqx.field(static=True)
    narrow: bool | None = eqx.field(static=True)
    spread_checked: bool = eqx.field(static=True)

    def __init__(
        self,
        rewards: ArrayLike,
        weights: ArrayLike | None = None,
        k: int | float | None | Sequence[int | None] = None,
        temperature: ArrayLike = 1.0,
        reference: ArrayLike | None = None,
        reference_weight: ArrayLike = 0.0,
        *,
        quadrature_nodes: int | None = None,
    ):
        rewards = check_matrix(rewards, "rewards", "reward")
        m, n = rewards.shape
        dtype = rewards.dtype

        weights = check_probability_vector(weights, m, "weights", dtype, "reward rows")

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

        reference_weight = _as_float(reference_weight, "reference_weight").astype(dtype)
        if reference_weight.shape != ():
            raise ValueError(
                f"`reference_weight` must be a scalar, got shape {reference_weight.shape}."
            )
        reference_weight = check_value(
            reference_weight,
            lambda xp, w: ~((w >= 0) & (w <= 1)),
            "`reference_weight` (the real-data fraction) must lie in [0, 1].",
        )
        if reference is None:
            reference_weight = check_value(
                reference_weight,
                lambda xp, w: w > 0,
                "`reference_weight` > 0 needs a `reference` distribution.",
            )
        else:
            reference = check_distribution(reference, n, "reference", dtype)

        k = _normalise_k(k, m)
        ks = k if isinstance(k, tuple) else (k,) * m
        finite = [i for i, kk in enumerate(ks) if kk is not None and kk > 1]
        # The largest per-row spread of the scaled rewards, when known at construction: it
        # sizes the quadrature and lets the K -> infinity map skip its underflow guard.
        spreads = None
        if is_concrete(rewards, temperature):
            # In numpy (no JAX operation compiled per shape); IEEE division, the same values.
            # An overflow to inf is refused below with its cause.
            t_np = np.asarray(temperature)
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = np.asarray(rewards) / (t_np[:, None] if t_np.ndim else t_np)
                spreads = np.ptp(scaled, axis=1)
        if quadrature_nodes is not None and (
            isinstance(quadrature_nodes, bool)
            or not isinstance(quadrature_nodes, (int, np.integer))
            or not 2 <= quadrature_nodes <= MAX_QUADRATURE_NODES
        ):
            raise ValueError(
                f"`quadrature_nodes` must be an int in [2, {MAX_QUADRATURE_NODES}], got "
                f"{quadrature_nodes!r}."
            )
        if finite and spreads is not None:
            _check_finite_k_spread(float(np.max(spreads[finite])), dtype, k, quadrature_nodes)
        if quadrature_nodes is None:
            if not finite:
                quadrature_nodes = 0
            elif spreads is not None:
                quadrature_nodes = nodes_for_spread(float(np.max(spreads[finite])))
            else:
                quadrature_nodes = nodes_for_spread(DEFAULT_SPREAD)
        quadrature_nodes = int(quadrature_nodes)
        finite_order = None
        # After the refusals above: the spread is then finite and within the nodes' range.
        if finite and spreads is not None:
            # A radix sort of 16-bit bin indices: O(n), unlike a float argsort; blocks of
            # consecutive points then span ~0.05 nats each.
            top = np.max(scaled[finite], axis=1, keepdims=True)
            bins = np.minimum((top - scaled[finite]) / _ORDER_BIN, np.iinfo(np.int16).max)
            order = np.argsort(bins.astype(np.int16), axis=1, kind="stable")
            finite_order = jnp.asarray(order.astype(np.int32))

        self.rewards = rewards
        self.weights = weights
        self.temperature = temperature
        self.reference = reference
        self.reference_weight = reference_weight
        self.k = k
        self.k_values = None
        infinite = reward_groups(ks).infinite
        if infinite:
            if len(infinite) < m:  # (all rows: no gather to compile)
                rows = np.array(infinite)
                rewards_inf = rewards[rows]
                t = temperature[rows] if temperature.ndim else temperature
            else:
                rewards_inf, t = rewards, temperature
            self.tilt_weights, _ = exp_normalised(rewards_inf, t)
        else:
            self.tilt_weights = None
        self.finite_order = finite_order
        self.quadrature_nodes = quadrature_nodes
        self.narrow = None if spreads is None else bool(np.max(spreads) <= safe_spread(dtype))
        # Construction refused a float32 spread over 80 nats and sized the default node count
        # to the spread; an explicit node count may still fall short (checked at run time).
        self.spread_checked = not finite or (
            spreads is not None
            and float(np.max(spreads[finite])) <= spread_for_nodes(quadrature_nodes) + 1e-9
        )

    @property
    def num_rewards(self) -> int:
        """m, the number of reward rows (curator types)."""
        return self.rewards.shape[0]

    @property
    def size(self) -> int:
        """n, the number of support points."""
        return self.rewards.shape[1]

    @property
    def ks(self) -> tuple[int | None, ...]:
        """K for each reward row (`None` = infinity); with `k_values` set, the upper bound of
        each finite K's bucket."""
        return self.k if isinstance(self.k, tuple) else (self.k,) * self.num_rewards

    @property
    def has_finite_k(self) -> bool:
        """Whether some reward row has a finite K (that row's map is then the finite-K
        quadrature; with none, every row is the K = infinity limit)."""
        return any(k is not None for k in self.ks)

    @property
    def scaled_rewards(self) -> Float[Array, "m n"]:
        """`rewards / temperature`, the log-weights that curation uses."""
        t = self.temperature[:, None] if self.temperature.ndim else self.temperature
        return self.rewards / t

    def with_k(self, k: int | None | Sequence[int | None]) -> "CurationProblem":
        """The same problem with another number of candidates `k`."""
        return CurationProblem(
            self.rewards,
            self.weights,
            k,
            self.temperature,
            self.reference,
            self.reference_weight,
        )

    def map_points(self, fn: Callable[[Array], Array]) -> "CurationProblem":
        """The same problem with `fn` applied to every array indexed by the support
        (`rewards`, `reference`, the cached `tilt_weights`) along its last axis: restrict to
        a subset of points (`lambda a: a[..., idx]`) or reshard across devices. Nothing is
        re-validated or recomputed; `fn` must keep the last axis a support axis and only select
        or move points, not change values (the construction-time checks, e.g. that the
        finite-K quadrature covers the rewards' spread, are kept)."""
        problem = eqx.tree_at(lambda pr: pr.rewards, self, fn(self.rewards))
        if self.reference is not None:
            problem = eqx.tree_at(lambda pr: pr.reference, problem, fn(self.reference))
        if self.tilt_weights is not None:
            problem = eqx.tree_at(lambda pr: pr.tilt_weights, problem, fn(self.tilt_weights))
        if self.finite_order is not None:
            # Indices into the old support: dropped (the map is the same without them).
            problem = eqx.tree_at(lambda pr: pr.finite_order, problem, None)
        return problem

    def uniform(self) -> Float[Array, " n"]:
        """The uniform distribution on the support (a full-support starting point)."""
        return jnp.asarray(np.full((self.size,), 1.0 / self.size, self.rewards.dtype))


def canonical_k(problem: Any) -> Any:
    """The problem that curax's jitted kernels receive, so that one compiled program serves
    every finite K of a bucket ([`k_bucket`][]): the static `k` holds each finite K's bucket
    (its upper bound), and `k_values` the true K values as an array (a traced value inside
    `jit`). K = 1 and K = infinity stay as they are: the map's structure
    ([`reward_groups`][]) is the same for the copy. Anything that is not a problem, a problem
    without finite K >= 2, or one already canonical is returned unchanged.

    Only for computations that use K as a number (the maps and the solvers and certificates
    built on them); sampling draws K candidates, a shape, and keeps the static K. Never hand
    the copy back to a user: its `k` is not theirs."""
    if not isinstance(problem, CurationProblem) or problem.k_values is not None:
        return problem
    ks = problem.ks
    if not any(kk is not None and kk > 1 for kk in ks):
        return problem
    buckets = tuple(kk if kk is None or kk == 1 else k_bucket(kk)[1] for kk in ks)
    values = np.array([np.inf if kk is None else kk for kk in ks], dtype=problem.rewards.dtype)
    # A copy with a new static field: eqx.tree_at only replaces leaves. (This is how
    # equinox itself rebuilds modules when unflattening: no __init__, fields set directly.)
    new = object.__new__(CurationProblem)
    for field in dataclasses.fields(problem):
        object.__setattr__(new, field.name, getattr(problem, field.name))
    object.__setattr__(new, "k", buckets[0] if len(set(buckets)) == 1 else buckets)
    object.__setattr__(new, "k_values", jnp.asarray(values))
    return new


def reference_weight_from_ratio(ratio: ArrayLike) -> Array:
    """Convert Ferbach et al.'s synthetic-to-real ratio `lambda` into curax's
    `reference_weight` (the real-data fraction): `1 / (1 + lambda)`.

    !!! Example

        ```python
        curax.reference_weight_from_ratio(1.0)  # half real, half synthetic: 0.5
        ```
    """
    ratio = jnp.asarray(ratio)
    return 1.0 / (1.0 + ratio)


def support_size(p: Float[Array, " n"], threshold: float = 1e-12) -> Int[Array, ""]:
    """Number of points carrying more than `threshold` mass."""
    return jnp.sum(p > threshold)
