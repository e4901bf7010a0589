import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from ._problem import (
    canonical_k,
    check_input_distribution,
    CurationProblem,
    k_bucket_bounds,
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
# A node k whose phi_k^(K-1) is below exp(-(u_max + _RELEVANT_MARGIN)) changes no growth factor
# by more than 1e-17 relative: H(x) / K >= w(x) / (w(x) + (K - 1) E_p[w]) (Jensen), while the
# node's term is at most c_k phi_k^(K-1) t_k w(x) with t_k <= e^u_max / K, c_k <= 9, w <= 1
# (the rewards are shifted by their maximum; the margin allows w up to e 1e7 K), summed over
# <= e^7 nodes: 39 + 2.2 + 17 + 7 nats.
_RELEVANT_MARGIN = 65.0
# Largest K - 1 for which phi = E_p[e^{-tw}] summed directly is accurate enough for
# phi^(K-1): its relative error (a few eps) is multiplied by K - 1 (< 1e-13 at 64).
_DIRECT_MAX_K1 = 64
# Growth factors by Taylor tables in log w (float64): cells of width _CELL nats in log w,
# polynomials of degree _DEGREE in the cell's variable, nodes with t_k w_c > _TAIL dropped.
# Remainder <= x^(P+1)/(P+1)! e^(2x) with x = _TAIL (e^(_CELL/2) - 1) = 1.14: 3e-18 relative;
# dropped nodes: 3 * 44 e^-44 < 2e-17 relative (the kernel's docstring has the argument).
_CELL = 0.05
_DEGREE = 20
_TAIL = 45.0
# Pass 1 in blocks of _WINDOW_POINTS consecutive points (ordered by reward when the problem
# caches the order). Per block and reward, with W in [W_lo, W_lo + delta] on the block: the
# nodes with t_k delta <= _RHO1 (the "low" nodes: for ordered points nearly all of them) come
# from a Chebyshev interpolant in t from _CHEB1 points (one exponential per point each, error
# < 1e-18 relative, see `_chebyshev_low`); the nodes with t_k W_min > the cut are dropped (see
# `_phi_cut`); the rest are summed point by point, _WINDOW nodes at a time, only in the
# blocks that have such nodes (`_needy_groups`, _GROUP blocks at a time).
_WINDOW = 24
_WINDOW_POINTS = 1024
_RHO1 = 0.1
_CHEB1 = 8
_GROUP = 32
# Without a point order blocks span wide reward ranges and few nodes are low: below
# _WINDOW_MIN_NODES nodes the dense pass (Q exponentials per point) then costs no more.
_WINDOW_MIN_NODES = 64
# Pass 2 on ordered points, per block: nodes with t_k delta <= _RHO2 by a Chebyshev
# interpolant in W from _CHEB2 points (error < 2e-17 relative, see `_growth_windowed`); nodes
# with t_k W_min > _TAIL dropped; the rest exactly, _WINDOW2 at a time, in the blocks that
# have them.
_RHO2 = 2.0
_CHEB2 = 16
_WINDOW2 = 16
# The points' own order is kept when its blocks need on average at most this many nodes summed
# point by point (see `_order_pays`).
_ORIGINAL_NEED = 4.0


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


def _simplex(p: Array, problem: CurationProblem, name: str = "p") -> Array:
    """[`prepare_distribution`][] without the checks, inside the jitted kernels: the public
    functions validate `p` before their `jit` (`_check_p`), so the kernels carry no host
    callback and their compiled programs can be persistently cached."""
    return normalised_distribution(p, problem.size, name, problem.rewards.dtype, checked=False)


def _check_p(p: Any, problem: Any, name: str = "p") -> Any:
    # A concrete bad `p` is a ValueError before `jit`; a traced one (the user's `jit` or
    # `vmap`) meets the same checks as `eqx.error_if`, in the user's program.
    if isinstance(problem, CurationProblem):
        return check_input_distribution(p, problem.size, name, problem.rewards.dtype)
    return p


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
    """Split the last axis of `x` into zero-padded blocks: (..., n) -> (b, ..., size)."""
    n = x.shape[-1]
    nb = -(-n // size)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, nb * size - n)])
    return jnp.moveaxis(x.reshape(*x.shape[:-1], nb, size), -2, 0)


def _phi_mode(ks: tuple[int, ...], num_nodes: int, dtype: Any) -> str:
    """How pass 1 forms log phi_k (static): one transcendental per node and point where one
    formula is exact for every node that matters, both formulas otherwise.

    - "direct": `log(sum p e^{-tw})`; its few-eps relative error is multiplied by K - 1.
    - "expm1": `log1p(sum p expm1(-tw))`, exact where phi is near 1; where phi < 1/2 it loses
      accuracy, but when (K - 1) log 2 >= u_max + margin such nodes have negligible
      phi^(K-1) (see `_RELEVANT_MARGIN`).
    - "both": the two sums, log1p where t E_p[w] < 1 (docs/finite_k.md).

    `ks` may be bounds rather than the rows' K (a bucket of K, `_laplace_growth`): the choice
    holds for every K in [min(ks), max(ks)]. "direct" needs K - 1 <= 64 for each K, implied
    by max(ks) - 1 <= 64; "expm1" needs (K - 1) log 2 >= u_max + margin, which grows with K,
    so min(ks) suffices; "both" is exact for any K.
    """
    if jnp.finfo(dtype).bits < 64:
        return "both"
    u_max = QUAD_U_MIN + (num_nodes - 1) * QUAD_STEP
    if max(ks) - 1 <= _DIRECT_MAX_K1:
        return "direct"
    if (min(ks) - 1) * math.log(2.0) >= u_max + _RELEVANT_MARGIN:
        return "expm1"
    return "both"


def _table_cells(ks: tuple[int, ...], num_nodes: int) -> tuple[float, int]:
    """Top of the log-w grid of the Taylor tables and its cell count, down to the smallest
    -log t_max over the rewards (below it one bottom cell expands around w = 0). log w <= 0
    at every point: the rewards are shifted by their maximum whenever their spread is within
    the nodes' coverage, which the map checks (`error_if`) before using the tables. (Up to
    the former cap for points above the support, log(1e7 K) + 1, the grid was ~20 nats,
    40-50% of its cells, longer.)

    `ks` may be bounds of a bucket of K: a row's regular cells cover log w in
    (-log t_max(K), top], with -log t_max(K) = log K - u_max + e^-u_max increasing in K, so
    the grid down to the bottom of min(ks) covers every K >= min(ks) (cells below a row's
    -log t_max are unused; its points there read the bottom row, decided from the traced
    t_max). `_use_table` then only weighs the cost of that (larger) grid.
    """
    top = _CELL
    u_max = QUAD_U_MIN + (num_nodes - 1) * QUAD_STEP
    # Large K and narrow rewards: t_max w <= 1 everywhere and the bottom row serves all.
    bottom = min(-(u_max - math.exp(-u_max) - math.log(min(ks))), 0.0)
    return top, math.ceil((top - bottom) / _CELL) + 1


def _use_table(ks: tuple[int, ...], num_nodes: int, n: int, dtype: Any, linear: bool) -> bool:
    # Building the tables is ~(degree + 1) multiply-adds per cell and node, memory-bound;
    # measured on 2 cores it pays once the points outnumber the table's coefficients twice
    # (at n = 1e4 with ~1,000 cells the direct pass 2 was faster).
    if jnp.finfo(dtype).bits < 64 or not linear:
        return False
    _, cells = _table_cells(ks, num_nodes)
    return 2 * cells * (_DEGREE + 1) < n


def _taylor_table(
    a: Float[Array, "r q"],
    t: Float[Array, "r q"],
    log_tmax: Float[Array, " r"],
    top: float,
    cells: int,
) -> Float[Array, "r c d"]:
    """Coefficients D_j of H(x) / K = w sum_j zeta^j D_j, one row per cell of log w.

    Regular cell c (centre w_c): zeta = w / w_c - 1, D_j = sum_k a_k t_k e^{-y_k} (-y_k)^j / j!
    with y_k = t_k w_c (Taylor series of e^{-t_k w} around w_c), nodes with y_k > _TAIL
    dropped. Last row (t_max w <= 1): zeta = t_max w,
    D_j = (-1)^j / j! sum_k a_k t_k (t_k / t_max)^j.
    """
    log_wc = top - _CELL * (jnp.arange(cells, dtype=t.dtype) + 0.5)
    y = t[:, None, :] * jnp.exp(log_wc)[None, :, None]  # (r, c, q)
    keep = y <= _TAIL
    yneg = jnp.where(keep, -y, 0.0)
    at = a * t
    term = jnp.where(keep, at[:, None, :] * jnp.exp(-jnp.minimum(y, _TAIL)), 0.0)
    vneg = -t / jnp.exp(log_tmax)[:, None]  # (r, q), in [-1, 0)

    # A scan over the degree materialises each power once (unrolled, XLA would fuse the
    # whole product chain into every reduction: O(degree^2) work).
    def step(carry, j):
        term, bterm = carry
        term = term * yneg / j
        bterm = bterm * vneg / j
        return (term, bterm), (jnp.sum(term, axis=-1), jnp.sum(bterm, axis=-1))

    _, (cols, bcols) = lax.scan(step, (term, at), jnp.arange(1, _DEGREE + 1, dtype=t.dtype))
    table = jnp.concatenate(
        [jnp.sum(term, axis=-1)[..., None], jnp.moveaxis(cols, 0, -1)], axis=-1
    )  # (r, c, d)
    bcol = jnp.concatenate([jnp.sum(at, axis=-1)[:, None], bcols.T], axis=-1)  # (r, d)
    return jnp.concatenate([table, bcol[:, None, :]], axis=1)


def _table_growth(
    table: Float[Array, "r c d"],
    log_wq: Float[Array, "r n"],
    log_tmax: Float[Array, " r"],
    top: float,
    cells: int,
) -> Float[Array, "r n"]:
    """H(x) / K from the Taylor tables: a cell index, a gather of _DEGREE + 1 coefficients and
    a Horner sum per point and reward, in blocks of bounded memory."""
    r, n = log_wq.shape
    chunk = max(128, min(n, _BLOCK_ELEMENTS // (r * (_DEGREE + 1))))

    def block(lw):
        bottom = lw <= -log_tmax[:, None]
        cell = jnp.clip(jnp.floor((top - lw) / _CELL), 0, cells - 1)
        log_wc = top - _CELL * (cell + 0.5)
        zeta = jnp.where(bottom, jnp.exp(lw + log_tmax[:, None]), jnp.expm1(lw - log_wc))
        idx = jnp.where(bottom, cells, cell.astype(jnp.int32))
        coef = jnp.take_along_axis(table, idx[:, :, None], axis=1)  # (r, chunk, d)
        val = coef[:, :, _DEGREE]
        for j in range(_DEGREE - 1, -1, -1):
            val = val * zeta + coef[:, :, j]
        return jnp.exp(lw) * val

    h = lax.map(block, _blocks(log_wq, chunk))
    return jnp.moveaxis(h, 0, -2).reshape(r, -1)[:, :n]


def _chebyshev_matrix(dtype: Any, m: int) -> tuple[Array, Array]:
    """Chebyshev points of the first kind x_i in (-1, 1) (`m` of them) and the matrix
    taking values at them to the coefficients of the interpolant in T_0 .. T_{m-1}."""
    theta = (2 * jnp.arange(m, dtype=dtype) + 1) * (math.pi / (2 * m))
    coef_mat = (2.0 / m) * jnp.cos(jnp.arange(m, dtype=dtype)[:, None] * theta[None, :])
    return jnp.cos(theta), coef_mat.at[0].multiply(0.5)


def _clenshaw(a: Float[Array, "... m"], x: Float[Array, "... c"]) -> Float[Array, "... c"]:
    """sum_j a_j T_j(x), x in [-1, 1] (Clenshaw's recurrence)."""
    b1 = jnp.zeros_like(x)
    b2 = jnp.zeros_like(x)
    for j in range(a.shape[-1] - 1, 0, -1):
        b1, b2 = a[..., j : j + 1] + 2 * x * b1 - b2, b1
    return a[..., :1] + x * b1 - b2


def _block_size(n: int) -> int:
    """Points per block of the windowed passes: _WINDOW_POINTS, or the largest divisor of `n`
    not below half of it (n = 1e6: 1000), so that the blocks are a reshape and not a padded
    copy of the (r, n) arrays (one fresh (r, n) buffer costs as much as a few passes)."""
    if n <= _WINDOW_POINTS:
        return n
    for size in range(_WINDOW_POINTS, _WINDOW_POINTS // 2 - 1, -1):
        if n % size == 0:
            return size
    return _WINDOW_POINTS


def _order_pays(log_w: Float[Array, "r n"], p: Float[Array, " n"], t: Float[Array, "r q"]) -> Array:
    """Whether pass 1 and 2 should gather the points into the problem's reward order: False
    when blocks of consecutive points in their own order are already narrow (smooth rewards
    on a grid), i.e. need on average at most _ORIGINAL_NEED nodes summed point by point
    (t_k delta > _RHO1). Gathering costs two (r, n) gathers and a scatter, each like several
    passes over E; the map is the same either way (exact to rounding), only its cost differs."""
    r, n = log_w.shape
    chunk = _block_size(n)
    nb = -(-n // chunk)
    pad = [(0, 0), (0, nb * chunk - n)]
    lw = jnp.pad(log_w, pad, mode="edge").reshape(r, nb, chunk)
    zero = jnp.pad(p == 0, pad[1:], constant_values=True).reshape(1, nb, chunk)
    far = 1e300 * zero.astype(lw.dtype)
    lmax = jnp.max(lw - far, axis=-1)
    lmin = jnp.min(lw + far, axis=-1)
    delta = jnp.where(lmax < -1e299, 0.0, jnp.exp(lmax) - jnp.exp(lmin))  # (r, nb)
    need = jnp.sum(t[:, None, :] * delta[..., None] > _RHO1, axis=-1)
    return jnp.mean(need) > _ORIGINAL_NEED


def _needy_groups(
    k_lo: Int[Array, "r b"], k_hi: Int[Array, "r b"]
) -> tuple[Int[Array, "g G"], Int[Array, "g G"], Int[Array, "g G"]]:
    """The blocks (flattened `(r, b)` indices) in order of decreasing k_hi - k_lo (the nodes
    they need summed point by point), cut into groups of _GROUP, with their k_lo and k_hi; the
    padding of the last group repeats a block with k_hi = k_lo (nothing to add). The exact
    windows run group by group and skip groups with nothing to do, so that their cost follows
    the blocks that need them: a few blocks straddling two bins of the point order must not
    cost a window over every point."""
    lo = k_lo.reshape(-1)
    hi = k_hi.reshape(-1)
    size = lo.shape[0]
    group = min(_GROUP, size)
    groups = -(-size // group)
    idx = jnp.argsort(lo - hi)
    idx = jnp.concatenate([idx, jnp.full((groups * group - size,), idx[-1])])
    lo, hi = lo[idx], hi[idx]
    hi = jnp.where(jnp.arange(groups * group) < size, hi, lo)
    shape = (groups, group)
    return idx.reshape(shape), lo.reshape(shape), hi.reshape(shape)


def _needy_windows(
    groups: tuple[Int[Array, "g G"], Int[Array, "g G"], Int[Array, "g G"]],
    q: int,
    width: int,
    prepare: Callable[[Int[Array, " G"]], Any],
    window: Callable[[Any, Int[Array, "G L"], Bool[Array, "G L"], Any], Any],
    init: Any,
) -> Any:
    """The exact windows of both passes: for each group of `_needy_groups` with something to
    do, `prepare(blocks)` once (the group's gathers), then `window(ctx, idx, valid, carry)`
    for each run of `width` nodes from every block's k_lo until the group's widest k_hi - k_lo
    is covered (`idx` clipped to the nodes, `valid` marking those below each block's k_hi)."""
    ids, g_lo, g_hi = groups
    rounds = -(-q // width)

    def group(g, carry):
        ctx = prepare(ids[g])
        lo, hi = g_lo[g], g_hi[g]
        span = jnp.max(hi - lo)

        def run(i, carry):
            idx = lo[:, None] + i * width + jnp.arange(width)[None, :]  # (G, L)
            valid = idx < hi[:, None]
            return window(ctx, jnp.minimum(idx, q - 1), valid, carry)

        def more(i, carry):
            return lax.cond(i * width < span, lambda c: run(i, c), lambda c: c, carry)

        return lax.fori_loop(0, rounds, more, carry)

    def each(g, carry):
        return lax.cond(g_hi[g, 0] > g_lo[g, 0], lambda c: group(g, c), lambda c: c, carry)

    return lax.fori_loop(0, ids.shape[0], each, init)


def _growth_windowed(
    log_ws: Float[Array, "r n"],
    a: Float[Array, "r q"],
    t: Float[Array, "r q"],
    order: Int[Array, "r n"] | None = None,
) -> Float[Array, "r n"]:
    """Pass 2, H(x) / K = sum_k a_k t_k w e^{-t_k w}, on blocks of consecutive points
    (`log_ws` is log w in the order `order`, if given; the result is in the original order).
    Per block and reward, w in [w_lo, w_lo + delta]: nodes with t_k delta <= _RHO2
    by Chebyshev interpolation in w of s(w) = sum_k a_k t_k e^{-t_k w} on the block's range
    from _CHEB2 points; nodes with t_k w_lo > _TAIL dropped (as for the tables, < 2e-17
    relative); the rest exactly, _WINDOW2 nodes at a time, in the blocks that have them.

    Interpolation error: each term is positive, |d^M/dw^M| of node k's term is t_k^M times
    the term, and the term varies by at most e^{t_k delta} <= e^rho over the block, so (the
    Chebyshev remainder on an interval of length delta, 2 (delta/4)^M max|s^(M)| / M!) the
    error is <= 2 (rho/4)^M e^rho / M! times s(w) at any point of the block: 1.1e-17 at
    rho = 2, M = 16. (The interpolant's coefficients sum to at most e^rho times s in absolute
    value, so Clenshaw's rounding stays a few ulps.)"""
    r, n = log_ws.shape
    q = t.shape[1]
    dtype = t.dtype
    chunk = _block_size(n)
    nb = -(-n // chunk)
    # Edge padding: the padded points repeat the last one, so they widen no block's range.
    lw = jnp.pad(log_ws, [(0, 0), (0, nb * chunk - n)], mode="edge").reshape(r, nb, chunk)
    log_t = jnp.log(t)[:, None, :]  # (r, 1, q)
    nodes = jnp.arange(q)[None, None, :]
    lmax = jnp.max(lw, axis=-1)  # (r, nb)
    lmin = jnp.min(lw, axis=-1)
    # Not materialised: the exponential fuses into the Clenshaw sum (one per point) and into
    # the gathered rows of the exact windows.
    w = jnp.exp(lw)
    w_lo = jnp.exp(lmin)
    delta = jnp.maximum(jnp.exp(lmax) - w_lo, 0.0)
    k_lo = jnp.sum(t[:, None, :] * delta[..., None] <= _RHO2, axis=-1)
    k_hi = jnp.maximum(jnp.sum(log_t + lmin[..., None] <= math.log(_TAIL), axis=-1), k_lo)
    at = a * t
    x_i, coef_mat = _chebyshev_matrix(dtype, _CHEB2)
    w_i = w_lo[..., None] + delta[..., None] * ((1 + x_i) / 2)[None, None, :]  # (r, nb, M)
    at_low = jnp.where(nodes < k_lo[..., None], at[:, None, :], 0.0)  # (r, nb, q)
    s_i = jnp.sum(
        at_low[:, :, None, :] * jnp.exp(-t[:, None, None, :] * w_i[..., None]), axis=-1
    )  # (r, nb, M)
    coef = jnp.einsum("rbi,ji->rbj", s_i, coef_mat)
    tiny = jnp.finfo(dtype).tiny
    x = jnp.clip(2 * (w - w_lo[..., None]) / jnp.maximum(delta, tiny)[..., None] - 1, -1.0, 1.0)
    h = (w * _clenshaw(coef, x)).reshape(r * nb, chunk)

    w_f = w.reshape(r * nb, chunk)
    rows = jnp.repeat(jnp.arange(r), nb)

    def prepare(blocks):
        return blocks, w_f[blocks], t[rows[blocks]], at[rows[blocks]]  # (G, chunk), (G, q)

    def window(ctx, idx, valid, h):
        blocks, wg, tg, atg = ctx
        tl = jnp.where(valid, jnp.take_along_axis(tg, idx, axis=-1), 0.0)
        al = jnp.where(valid, jnp.take_along_axis(atg, idx, axis=-1), 0.0)
        tl, al = lax.optimization_barrier((tl, al))
        terms = al[..., None] * jnp.exp(-tl[..., None] * wg[:, None, :])  # (G, L, chunk)
        return h.at[blocks].add(wg * jnp.sum(terms, axis=1))

    h = _needy_windows(_needy_groups(k_lo, k_hi), q, _WINDOW2, prepare, window, h)
    h = h.reshape(r, nb * chunk)[:, :n]
    if order is None:
        return h
    return jax.vmap(lambda hr, o: jnp.zeros_like(hr).at[o].set(hr))(h, order)


def _phi_cut(ks: tuple[int, ...], num_nodes: int) -> float:
    """Pairs with t_k w > this cut change phi_k by < e^-cut absolutely. Where phi_k^(K-1)
    matters, phi_k >= exp(-(u_max + margin)) (`_RELEVANT_MARGIN`), so the relative change of
    phi_k^(K-1) is below K e^(-cut + u_max + margin) < 1e-16. With `ks` the bounds of a
    bucket of K the cut is made for max(ks): the cut increases with K (the cap included), so
    it is at least each K's own cut and drops no pair that K's own cut keeps."""
    u_max = QUAD_U_MIN + (num_nodes - 1) * QUAD_STEP
    return min(u_max + _RELEVANT_MARGIN + 37.0 + math.log(max(ks)), 740.0)


def _permute_rows(x: Float[Array, "r n"], order: Int[Array, "r n"]) -> Float[Array, "r n"]:
    """x[i, order[i]] per row: a batched gather (take_along_axis would build an (r, n, 2)
    index array)."""
    return jax.vmap(lambda xr, o: xr[o])(x, order)


def _chebyshev_low(
    d: Float[Array, "r b c"],
    pb: Float[Array, "#r b c"],
    delta: Float[Array, "r b"],
    t: Float[Array, "r q"],
) -> Float[Array, "r b q"]:
    """h(t_k) = sum_c pb expm1(-t_k d_c) / t_k for every node, valid where t_k delta <= _RHO1
    (the low nodes), with d = w - w_lo in [0, delta] the points' offsets in their block.
    h is interpolated on [0, T], T = _RHO1 / delta, from its values at _CHEB1 Chebyshev points
    (first kind), one exponential per point each, and evaluated at the nodes by Clenshaw.
    With h = -sum pb d phi1(t d), phi1(s) = (1 - e^-s)/s, |h^(M)| <= delta^M sum pb d / (M + 1)
    and |h| >= phi1(rho) sum pb d on [0, T] (t d <= rho = _RHO1), so the interpolation error
    (2 (T/4)^M max|h^(M)| / M!) is <= 2 (rho/4)^M rho / ((M + 1)! (1 - e^-rho)) relative:
    8.8e-19 at rho = 0.1, M = 8, whatever the block's range. The block's sums follow without
    cancellation: sum pb e^{-t w} = e^{-t w_lo} (mass + t h) with |t h| <= (1 - e^-rho) mass,
    and sum pb expm1(-t w) = e^{-t w_lo} t h + mass expm1(-t w_lo), two terms of one sign."""
    x_i, coef_mat = _chebyshev_matrix(t.dtype, _CHEB1)
    # A block whose points share one reward (delta = 0) is exact for every node: T = t_max.
    big_t = _RHO1 / jnp.maximum(delta, _RHO1 / t[:, -1:])  # (r, b)
    t_i = big_t[..., None] * ((1 + x_i) / 2)[None, None, :]  # (r, b, M)
    t_i = lax.optimization_barrier(t_i)
    h_i = jnp.sum(jnp.expm1(-t_i[..., None] * d[:, :, None, :]) * pb[:, :, None, :], axis=-1)
    a = jnp.einsum("rbi,ji->rbj", h_i / t_i, coef_mat)  # Chebyshev coefficients
    x = jnp.clip(2 * t[:, None, :] / big_t[..., None] - 1, -1.0, 1.0)  # (r, b, q)
    return _clenshaw(a, x)


def _phi_windowed(
    log_wq: Float[Array, "r n"],
    p: Float[Array, "r n"] | Float[Array, " n"],
    t: Float[Array, "r q"],
    mode: str,
    cut: float,
) -> Any:
    """Pass 1 (the sums over the points of e^{-t_k w} and/or expm1(-t_k w) at every node)
    skipping, per block of points and reward, the nodes where the block's terms are known
    without an exponential each: Chebyshev interpolation in t where t_k delta <= _RHO1, delta
    the block's range of w (`_chebyshev_low`), nothing (or minus the block's mass, for the
    expm1 sum) where t_k w > cut for every point with mass. With the points ordered by reward
    (`CurationProblem.finite_order`) a block spans a narrow range and most blocks need no
    other node: pass 1 then costs _CHEB1 exponentials per point, not Q. The remaining nodes
    are summed point by point, _WINDOW at a time, in the blocks that need them
    (`_needy_groups`). `p` is `(n,)` or, for points ordered per row, `(r, n)`."""
    r, n = log_wq.shape
    q = t.shape[1]
    chunk = _block_size(n)
    nb = -(-n // chunk)
    pad = [(0, 0), (0, nb * chunk - n)]
    lw = jnp.pad(log_wq, pad).reshape(r, nb, chunk)
    # One row of p for every reward (not broadcast: an (r, n) copy costs like a few passes).
    pr = 1 if p.ndim == 1 else r
    pb = jnp.pad(p.reshape(pr, n), pad).reshape(pr, nb, chunk)
    log_t = jnp.log(t)[:, None, :]  # (r, 1, q)
    nodes = jnp.arange(q)
    want = [
        f for f, on in ((jnp.exp, mode in ("direct", "both")), (jnp.expm1, mode != "direct")) if on
    ]

    # The block's range over its points with mass. (A select inside a reduction is ~5x
    # slower on the CPU than the additive mask; log w <= 0 is far above -1e300.)
    far = lax.optimization_barrier(1e300 * (pb == 0).astype(lw.dtype))  # (1 or r, nb, chunk)
    lmax = jnp.max(lw - far, axis=-1)  # (r, nb)
    lmin = jnp.min(lw + far, axis=-1)
    empty = lmax < -1e299
    lmax = jnp.where(empty, 0.0, lmax)
    lmin = jnp.where(empty, 0.0, lmin)
    # Materialised (a barrier), else XLA fuses the exponential into every node's sum.
    w = lax.optimization_barrier(jnp.exp(lw))
    w_lo = jnp.exp(lmin)
    delta = jnp.maximum(jnp.exp(lmax) - w_lo, 0.0)
    k_lo = jnp.where(empty, q, jnp.sum(t[:, None, :] * delta[..., None] <= _RHO1, axis=-1))
    k_hi = jnp.maximum(jnp.sum(log_t + lmin[..., None] <= math.log(cut), axis=-1), k_lo)
    mass = jnp.broadcast_to(jnp.sum(pb, axis=-1)[..., None], (r, nb, 1))
    # Offsets within the block, in [0, delta] (points without mass, clipped, add nothing).
    d = jnp.clip(w - w_lo[..., None], 0.0, delta[..., None])
    th = t[:, None, :] * _chebyshev_low(d, pb, delta, t)  # (r, nb, q)
    shift = -t[:, None, :] * w_lo[..., None]
    e_lo = jnp.exp(shift)
    low = nodes[None, None, :] < k_lo[..., None]
    high = nodes[None, None, :] >= k_hi[..., None]
    add_e = jnp.sum(jnp.where(low, e_lo * (mass + th), 0.0), axis=1)
    low_m1 = e_lo * th + mass * jnp.expm1(shift)
    add_m = jnp.sum(jnp.where(low, low_m1, jnp.where(high, -mass, 0.0)), axis=1)
    acc = tuple(a for a, f in ((add_e, jnp.exp), (add_m, jnp.expm1)) if f in want)

    w_f = w.reshape(r * nb, chunk)
    p_f = pb.reshape(pr * nb, chunk)
    rows_f = jnp.repeat(jnp.arange(r), nb)

    def prepare(blocks):
        rows = rows_f[blocks]
        return rows, w_f[blocks], p_f[blocks % (pr * nb)], t[rows]  # (G,), (G, chunk), (G, q)

    def window(ctx, idx, valid, acc):
        rows, wg, pg, tg = ctx
        tl = jnp.where(valid, jnp.take_along_axis(tg, idx, axis=-1), 0.0)
        tl = lax.optimization_barrier(tl)  # one gather per node, not per node and point
        tw = tl[..., None] * wg[:, None, :]  # (G, L, chunk), fused into the sums
        out = []
        for a, f in zip(acc, want):
            v = jnp.where(valid, jnp.sum(f(-tw) * pg[:, None, :], axis=-1), 0.0)
            out.append(a.at[rows[:, None], idx].add(v))
        return tuple(out)

    acc = _needy_windows(_needy_groups(k_lo, k_hi), q, _WINDOW, prepare, window, acc)
    return acc if mode == "both" else acc[0]


def _laplace_growth(
    s: Float[Array, "r n"],
    p: Float[Array, " n"],
    ks: tuple[int, ...],
    num_nodes: int,
    *,
    phi_mode: str | None = None,
    table: bool | None = None,
    windows: bool | None = None,
    order: Int[Array, "r n"] | None = None,
    check_spread: bool = True,
    k_values: Float[Array, " r"] | None = None,
) -> Float[Array, "r n"]:
    """Exact finite-K growth factor H(x) = E[K w(x) / (w(x) + sum_{j<K} w(y_j))], y_j ~ p.

    Laplace identity 1/s = int_0^inf e^{-ts} dt:
    H(x) = K w(x) int_0^inf e^{-t w(x)} phi(t)^{K-1} dt with phi(t) = E_p[e^{-t w}], by a
    double-exponential trapezoid rule in u (t = exp(-log K + u - e^{-u})).

    Pass 1 forms phi_k for all rewards and nodes at once, one transcendental per node and point
    where a single formula is exact (`_phi_mode`), fused with its reduction over the points.
    Pass 2 sums H(x) / K = sum_k a_k t_k w e^{-t_k w}, a_k = c_k phi_k^(K-1). As a function of
    log w it is smooth, so when n is large against the node count it is tabulated exactly:
    per cell of width 0.05 in log w a Taylor series of degree 20 (remainder < 1e-17
    relative, every node's term being positive), nodes with t_k w_c > 45 dropped (a_k does
    not increase with k and a node with t_j w in [e^-0.39, 1] exists, so they add < 2e-17
    relative). The points then cost a gather and a Horner sum each instead of Q exponentials.
    `phi_mode`, `table` and `windows` override the static choices (tests). `check_spread=False`
    drops the run-time check of the spread (already checked at construction). `k_values`:
    the rows' K as an array (traced), `ks` then being the upper bounds of their buckets
    (`canonical_k`), so that one compiled program serves every K of the buckets.
    """
    dtype = s.dtype
    r, n = s.shape
    if k_values is None:
        k = jnp.asarray(ks, dtype=dtype)
    else:
        k = k_values.astype(dtype)
        # From here on `ks` only makes static choices, each through min(ks) and max(ks) and
        # valid for every K between them (`_phi_mode`, `_table_cells`, `_phi_cut`): the
        # buckets' bounds serve every K inside them.
        ks = tuple(b for hi in ks for b in k_bucket_bounds(hi))
    spread = jnp.max(s, axis=-1) - jnp.min(s, axis=-1)
    covered = spread_for_nodes(num_nodes)
    # The checks hang on the small `k`: an error_if on the (r, n) rewards would copy them.
    if check_spread:
        k = eqx.error_if(
            k,
            jnp.any(spread > covered + 1e-9),
            f"The scaled rewards span more nats than the finite-K quadrature covers "
            f"({covered:.1f} nats with quadrature_nodes={num_nodes}); pass "
            f"`quadrature_nodes=curax.nodes_for_spread(spread)` to `CurationProblem`.",
        )
    if check_spread and jnp.finfo(dtype).bits < 64:
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
    # With the spread within the nodes' coverage (checked above) the shift is the rewards'
    # maximum, so log w <= 0 at every point: no point lies far above the support.
    log_wq = log_w

    u = QUAD_U_MIN + QUAD_STEP * jnp.arange(num_nodes, dtype=dtype)
    log_t = -jnp.log(k)[:, None] + (u - jnp.exp(-u))[None, :]  # (r, Q)
    c = QUAD_STEP * (1 + jnp.exp(-u))[None, :]  # trapezoid weight / t

    # t * w in linear space is one multiply, but overflows/underflows float64 beyond ~600
    # nats of spread; there it is formed in log space (one more exp per node and point).
    linear = covered <= 600.0
    mode = _phi_mode(ks, num_nodes, dtype) if phi_mode is None else phi_mode
    use_table = _use_table(ks, num_nodes, n, dtype, linear) if table is None else table
    chunk = max(128, min(n, _BLOCK_ELEMENTS // max(1, r * num_nodes)))
    p_blocks = _blocks(p, chunk)  # (b, chunk)
    t = jnp.exp(log_t)
    if linear:
        x_blocks = _blocks(jnp.exp(log_wq), chunk)  # (b, r, chunk)

        def times_w(xb):
            return t[:, :, None] * xb[:, None, :]  # (r, Q, chunk)

    else:
        x_blocks = _blocks(log_wq, chunk)

        def times_w(xb):
            return jnp.exp(log_t[:, :, None] + xb[:, None, :])

    # Pass 1: the sums over the points fuse with the exponentials (no (r, Q, chunk) buffer
    # goes through a matrix product).
    def pass1(carry, blk):
        xb, pb = blk
        tw = times_w(xb)
        if mode == "direct":
            return carry + jnp.sum(jnp.exp(-tw) * pb[None, None, :], axis=-1), None
        if mode == "expm1":
            return carry + jnp.sum(jnp.expm1(-tw) * pb[None, None, :], axis=-1), None
        return (
            carry[0] + jnp.sum(jnp.exp(-tw) * pb[None, None, :], axis=-1),
            carry[1] + jnp.sum(jnp.expm1(-tw) * pb[None, None, :], axis=-1),
        ), None

    zeros = jnp.zeros((r, num_nodes), dtype)
    tiny = jnp.finfo(dtype).tiny
    init = (zeros, zeros) if mode == "both" else zeros
    if windows is None:
        windows = (
            linear
            and jnp.finfo(dtype).bits == 64
            and n >= 2 * _WINDOW_POINTS
            and (num_nodes >= _WINDOW_MIN_NODES or order is not None)
        )
    if windows:
        cut = _phi_cut(ks, num_nodes)
        if order is None:
            sums = _phi_windowed(log_wq, p, t, mode, cut)
        else:
            # The sums over the points do not depend on their order; sorted by reward, each
            # block of points sees few nodes whatever the rewards' geometry. Where the points'
            # own blocks are already narrow, the gathers would cost more than they save.
            sort = _order_pays(log_wq, p, t)
            sums = lax.cond(
                sort,
                lambda: _phi_windowed(_permute_rows(log_wq, order), p[order], t, mode, cut),
                lambda: _phi_windowed(log_wq, p, t, mode, cut),
            )
    else:
        sums, _ = lax.scan(pass1, init, (x_blocks, p_blocks))
    if mode == "direct":
        # phi underflows to 0 at the largest nodes; flooring it keeps log (and its
        # derivative) finite, and tiny ** (K - 1) is 0 all the same.
        log_phi = jnp.log(jnp.maximum(sums, tiny))
    elif mode == "expm1":
        near = sums > -0.5
        log_phi = jnp.where(
            near,
            jnp.log1p(jnp.where(near, sums, 0.0)),
            jnp.log(jnp.maximum(1 + jnp.where(near, -0.5, sums), tiny)),
        )
    else:
        phi, phim1 = sums
        # log phi two ways: log1p of the expm1 sum where t E[w] < 1 (phi near 1), the log of
        # the direct sum elsewhere; either alone loses accuracy for peaked p or large K.
        log_ew = jax.nn.logsumexp(log_w, b=p[None, :], axis=-1)  # log E_p[w], (r,)
        small = log_t + log_ew[:, None] < 0
        log_phi = jnp.where(
            small,
            jnp.log1p(jnp.where(small, phim1, 0.0)),
            jnp.log(jnp.where(small, 1.0, jnp.maximum(phi, tiny))),
        )
    a = c * jnp.exp((k[:, None] - 1) * log_phi)  # (r, Q)

    # Pass 2: H(x) = K sum_k a_k (t_k w(x)) e^{-t_k w(x)}.
    # Ordered points: the blocked pass 2 (no table), unless a test asks for the tables.
    if windows and order is not None and not table:
        h = lax.cond(
            sort,
            lambda: _growth_windowed(_permute_rows(log_wq, order), a, t, order),
            lambda: _growth_windowed(log_wq, a, t),
        )
    elif use_table:
        top, cells = _table_cells(ks, num_nodes)
        log_tmax = log_t[:, -1]
        tab = _taylor_table(a, t, log_tmax, top, cells)
        h = _table_growth(tab, jnp.minimum(log_wq, top - 1e-9), log_tmax, top, cells)
    else:

        def pass2(xb):
            # In log space t w overflows to inf at large nodes; capped, tw e^-tw is 0 there
            # (not inf * 0).
            tw = jnp.minimum(times_w(xb), 800.0)
            return jnp.sum(a[:, :, None] * tw * jnp.exp(-tw), axis=1)

        h = jnp.moveaxis(lax.map(pass2, x_blocks), 0, -2).reshape(r, -1)[:, :n]
    h = k[:, None] * h
    return h


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
        h = _laplace_growth(
            s[idx],
            p,
            tuple(ks[i] for i in groups.finite),
            problem.quadrature_nodes,
            order=problem.finite_order,
            check_spread=not problem.spread_checked,
            k_values=None if problem.k_values is None else problem.k_values[idx],
        )
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
    return mixed_growth(_simplex(p, problem), problem)


@eqx.filter_jit
def _curate(p: Array, problem: CurationProblem) -> Array:
    return _curate_unchecked(_simplex(p, problem), problem)


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
    def growth(self, p: Float[ArrayLike, " n"], args: PyTree) -> Float[Array, " n"]:
        """The growth factor `G(p)`, shape `(n,)`."""

    @abc.abstractmethod
    def __call__(self, p: Float[ArrayLike, " n"], args: PyTree) -> Float[Array, " n"]:
        """The next distribution."""


class CurationMap(AbstractReplicatorMap):
    """One retraining round of a [`curax.CurationProblem`][]; the object behind
    [`curax.curate`][]. Call it as `curax.curate(p, problem)`.

    **Attributes:**

    - `checked`: static bool, whether `p` is validated (default `True`): a concrete bad `p`
        is a `ValueError`, a traced one an `eqx.error_if` (NaN under `EQX_ON_ERROR=nan`).
        curax's own solvers validate their start and then iterate `CurationMap(checked=False)`:
        their iterates stay on the simplex, and a program without `eqx.error_if` (a host
        callback) can be kept in JAX's persistent compilation cache.
    """

    checked: bool = eqx.field(default=True, static=True)

    def growth(self, p: Float[ArrayLike, " n"], args: CurationProblem) -> Float[Array, " n"]:
        """Growth factor `G(p) = sum_i alpha_i G_i(p)` of the curation step (before mixing in
        reference data), shape `(n,)`: the curated distribution is `p * G(p)`. At a stable
        fixed point without reference data, `G <= 1` everywhere with equality on the support.
        """
        if self.checked:
            p = _check_p(p, args)
        return _growth(p, canonical_k(args))

    def __call__(self, p: Float[ArrayLike, " n"], args: CurationProblem) -> Float[Array, " n"]:
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
        if self.checked:
            p = _check_p(p, args)
        return _curate(p, canonical_k(args))


def unchecked_map(fn: Any) -> Any:
    """`fn` itself, or for a checked [`curax.CurationMap`][] the one that does not validate
    `p`: for curax's solvers, which validate the user's start once, before their `jit`, and
    then iterate on points they keep on the simplex."""
    if isinstance(fn, CurationMap) and fn.checked:
        return CurationMap(checked=False)
    return fn


class ReplicatorMap(AbstractReplicatorMap):
    """Wrap a user's growth factor `growth_fn(p, args) -> G` as the map `p -> p * G(p)`, so
    that replicator-aware solvers can use it.

    !!! Example

        ```python
        fn = curax.ReplicatorMap(lambda p, E: E.T @ (0.5 / (E @ p)))
        ```
    """

    growth_fn: Callable[[Array, PyTree], Array]

    def growth(self, p: Float[ArrayLike, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.growth_fn(p, args)

    def __call__(self, p: Float[ArrayLike, " n"], args: PyTree) -> Float[Array, " n"]:
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


def growth(p: Float[ArrayLike, " n"], problem: CurationProblem) -> Float[Array, " n"]:
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
    p = _check_p(p, problem)
    return _growth(p, canonical_k(problem))


def trajectory(
    p0: Float[ArrayLike, " n"], problem: CurationProblem, rounds: int
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
    p0 = _check_p(p0, problem, "p0")
    return _trajectory(p0, canonical_k(problem), rounds)


@eqx.filter_jit
def _trajectory(p0: Array, problem: CurationProblem, rounds: int) -> Array:
    p0 = _simplex(p0, problem, "p0")

    def body(p, _):
        # Rounds after the first need no validation: the map keeps p on the simplex. The
        # finite-K map needs p renormalised (docs/finite_k.md).
        p_next = _curate_unchecked(p / jnp.sum(p), problem)
        return p_next, p_next

    _, ps = lax.scan(body, p0, None, length=rounds)
    return jnp.concatenate([p0[None], ps], axis=0)


def expected_exp_rewards(p: Float[ArrayLike, " n"], problem: CurationProblem) -> Float[Array, " m"]:
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
    p = _check_p(p, problem)
    return _expected_exp_rewards(p, canonical_k(problem))


@eqx.filter_jit
def _expected_exp_rewards(p: Array, problem: CurationProblem) -> Array:
    p = _simplex(p, problem)
    return jax.nn.logsumexp(problem.scaled_rewards, b=p[None, :], axis=-1)


def potential(p: Float[ArrayLike, " n"], problem: CurationProblem) -> Float[Array, ""]:
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
    p = _check_p(p, problem)
    return _potential(p, canonical_k(problem))


@eqx.filter_jit
def _potential(p: Array, problem: CurationProblem) -> Array:
    return problem.weights @ _expected_exp_rewards(p, problem)


def fw_gap(p: Float[ArrayLike, " n"], problem: CurationProblem) -> Float[Array, ""]:
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
    p = _check_p(p, problem)
    return _fw_gap(p, canonical_k(problem))


@eqx.filter_jit
def _fw_gap(p: Array, problem: CurationProblem) -> Array:
    return jnp.max(_growth(p, problem)) - 1
