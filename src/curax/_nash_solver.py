"""Exact certified weighted-Nash solve over the simplex: multilevel, fully corrective column
generation with a primal-dual interior-point restricted master (docs/nash_solver.md).

The problem is `max_q sum_i alpha_i log (E q)_i` over the simplex, `E >= 0` of shape (m, n).
Because `sum alpha = 1`, it is equivalent to `max_{q >= 0} sum_i alpha_i log (E q)_i - sum q`
(the optimum has `sum q = 1`), whose KKT conditions are `g = E^T (alpha / E q) <= 1` with
equality on the support. `max g - 1` is the Frank-Wolfe gap, an upper bound on `Phi* - Phi`.
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


# Tile width of the two-stage "top tiles, then argmax inside a tile" candidate search: a global
# top_k over n is a full sort on CPU.
_TILE = 256
# A coarser level (stride 8 per grid dimension) is built while it keeps this many points.
_MIN_COARSE_POINTS = 2000
_STRIDE = 8
# Gap at which a coarse level hands its support to the next finer level, and the most passes
# a coarse level may take (its passes are cheap: 1/8 or 1/64 of a fine read).
_COARSE_TOL = 1e-9
_COARSE_PASSES = 4
# Warm start of the restricted master (`solve_master`): weight of the uniform point mixed
# into the previous weights, and the starting dual margin `lam - max g`.
_WARM_MIX = 0.1
_WARM_MARGIN = 0.1
# Steps without halving the best restricted gap after which the master restarts cold (once).
_STALL_STEPS = 5
# Smallest stride of a 1-D coarse level (see `_levels`).
_MIN_1D_STRIDE = 64


def _stencil_offsets(ndim: int) -> list[tuple[int, ...]]:
    # Without the stencil the method creeps towards each peak one near-duplicate neighbouring
    # column per pass (docs/nash_solver.md, "Column generation").
    # In 2-D fewer distances: every stencil point is a master slot, and the windows searched
    # between passes (`_window_offsets`) cover the other scales.
    if ndim == 0:
        return [()]
    if ndim == 1:
        return [(0,)] + [(s * d,) for s in (1, 2, 4, 8) for d in (-1, 1)]
    dirs = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]
    return [(0, 0)] + [(s * a, s * b) for s in (1, 3) for (a, b) in dirs]


def _safe_ratio(alpha: Array, u: Array) -> Array:
    # A reward with zero weight drops out even where its utility is 0 (0 / 0 would be NaN).
    ok = alpha > 0
    return jnp.where(ok, alpha / jnp.where(ok & (u > 0), u, 1.0), 0.0)


# ------------------------------------------------------------------------------------------
# Restricted master: primal-dual interior point (Mehrotra predictor-corrector).
# ------------------------------------------------------------------------------------------


def solve_master(
    a: Float[Array, "m k"],
    alpha: Float[Array, " m"],
    valid: Bool[Array, " k"],
    *,
    max_iters: int = 60,
    tol: float = 1e-14,
    solve: str = "partitioned",
    num_active: int | None = None,
    q_init: Float[Array, " k"] | None = None,
) -> tuple[Float[Array, " k"], Int[Array, ""]]:
    """Maximise `sum_i alpha_i log (a q)_i` over `q` in the simplex on the valid columns.

    Primal-feasible, primal-dual interior point (Mehrotra predictor-corrector): `q` stays
    in the open simplex, so every utility stays bounded and positive. KKT:
    `g - lam + z = 0`, `q z = mu`, `1^T q = 1`, with `g = a^T (alpha / a q)`. The Newton
    matrix is `D + C^T C` with `D = z / q` (k diagonal) and `C = diag(sqrt(alpha) / u) a`
    (m x k), factorised once per iteration: the `num_active` columns with the smallest
    `z / q` by an r x r Schur complement, the rest by Woodbury (one m x m Cholesky), so a step
    costs O(k m^2 + r^3). The iterate with the smallest restricted Frank-Wolfe gap
    `max_S g - 1` is returned. A warm start (`q_init`) that stalls (the gap not halved in
    `_STALL_STEPS` steps) restarts once from the cold start; a cold trajectory that stalls
    ends. Returns `(q, iterations)`.
    """
    m, k = a.shape
    dtype = a.dtype
    if num_active is None:
        num_active = 2 * m + 4
    num_active = min(num_active, k)
    if num_active == k:
        solve = "direct"
    # A reward whose row is zero on every valid column cannot be served by this master (its
    # utility would be 0): it is left out here; the caller's anchors rule this out on the
    # finest level.
    reachable = jnp.max(jnp.where(valid[None, :], a, 0.0), axis=1) > 0
    alpha = jnp.where(reachable, alpha, 0.0)
    alpha = alpha / jnp.maximum(jnp.sum(alpha), jnp.finfo(dtype).tiny)
    a = jnp.where(valid[None, :], a, 0.0)
    nv = jnp.maximum(jnp.sum(valid), 1).astype(dtype)
    sqrt_alpha = jnp.sqrt(alpha)
    eye = jnp.eye(m, dtype=dtype)

    def grad(q):
        u = a @ q
        return u, _safe_ratio(alpha, u) @ a

    q_cold = jnp.where(valid, 1.0 / nv, 0.0)
    q0 = q_cold
    margin = 1.0
    # A cold start has no cold start to restart from: its stall ends the solve.
    restartable = jnp.array(False)
    if q_init is not None:
        # Warm start from the previous round's weights (on the columns it kept), mixed with
        # the uniform point so that every column starts interior, and a dual margin
        # lam - max g of 0.1 instead of 1: ~16% fewer interior-point steps over a solve
        # (n = 1e5, m = 8, seven families). Without previous weights: the cold start.
        qi = jnp.where(valid, q_init, 0.0)
        total = jnp.sum(qi)
        warm = total > 0
        q_warm = (1 - _WARM_MIX) * qi / jnp.where(warm, total, 1.0) + _WARM_MIX / nv
        q0 = jnp.where(warm & valid, q_warm, q0)
        margin = jnp.where(warm, _WARM_MARGIN, 1.0)
        restartable = warm

    def dual_start(q, margin):
        # Dual-feasible start: z = lam - g >= margin.
        _, g = grad(q)
        lam = jnp.max(jnp.where(valid, g, 0.0)) + margin
        return jnp.where(valid, lam - g, 0.0), lam

    z0, lam0 = dual_start(q0, margin)

    def residuals(q, z, lam):
        u, g = grad(q)
        rd = jnp.where(valid, g - lam + z, 0.0)
        mu = jnp.sum(q * z) / nv
        return u, rd, mu

    def factor(q, z, u):
        """Factorise the Newton matrix `D + C^T C` once per iteration (shared by the predictor
        and the corrector); returns a solver `v -> (D + C^T C)^{-1} v` on the valid slots."""
        qs = jnp.where(valid, q, 1.0)
        # Invalid slots: a huge diagonal so that they never count as active.
        d = jnp.where(valid, z / qs, 1e200)
        c = (jnp.where(u > 0, sqrt_alpha / jnp.where(u > 0, u, 1.0), 0.0))[:, None] * a
        if solve == "direct":
            chol = jnp.linalg.cholesky(jnp.diag(d) + c.T @ c)

            def msolve(v):
                return jnp.where(valid[:, None], jax.scipy.linalg.cho_solve((chol, True), v), 0.0)

            return msolve
        # Partitioned: the `num_active` columns with the smallest z / q (the ones the optimum
        # uses) are solved directly through an r x r Schur complement; the rest (large
        # diagonal, well conditioned) by Woodbury with one m x m factorisation. Plain
        # Woodbury over all columns cancels catastrophically in (v - C^T y) / d on the active
        # columns, whose d is ~1e-16; a dense k x k solve costs O(k^3).
        order = jnp.argsort(d)
        act, ina = order[:num_active], order[num_active:]
        c_a, c_i = c[:, act], c[:, ina]
        d_a, d_i = d[act], d[ina]
        ci_d = c_i / d_i[None, :]
        w_chol = jnp.linalg.cholesky(eye + ci_d @ c_i.T)

        def wsolve(x):
            return jax.scipy.linalg.cho_solve((w_chol, True), x)

        s_mat = jnp.diag(d_a) + c_a.T @ wsolve(c_a)
        s_chol = jnp.linalg.cholesky(s_mat)

        def msolve(v):
            # `v` is (k, j): several right-hand sides share one traced solve (compile time).
            v_a, v_i = v[act], v[ina]
            x_a = jax.scipy.linalg.cho_solve((s_chol, True), v_a - c_a.T @ wsolve(ci_d @ v_i))
            r_i = v_i - c_i.T @ (c_a @ x_a)
            x_i = r_i / d_i[:, None] - ci_d.T @ wsolve(ci_d @ r_i)
            out = jnp.zeros_like(v).at[act].set(x_a).at[ina].set(x_i)
            return jnp.where(valid[:, None], out, 0.0)

        return msolve

    def newton(msolve, q, z, rd, rc, x_1=None):
        # x_1 = M^{-1} 1 depends only on the factorisation: solved with the predictor's
        # right-hand side and reused by the corrector.
        qs = jnp.where(valid, q, 1.0)
        b = jnp.where(valid, rd - rc / qs, 0.0)
        if x_1 is None:
            x = msolve(jnp.stack([b, valid.astype(dtype)], axis=1))
            x_b, x_1 = x[:, 0], x[:, 1]
        else:
            x_b = msolve(b[:, None])[:, 0]
        dlam = jnp.sum(x_b) / jnp.sum(x_1)
        dq = x_b - dlam * x_1
        dz = jnp.where(valid, (-rc - z * dq) / qs, 0.0)
        return dq, dz, dlam, x_1

    def max_step(x, dx):
        ratio = jnp.where(valid & (dx < 0), -x / jnp.where(dx < 0, dx, -1.0), jnp.inf)
        return jnp.minimum(1.0, jnp.min(ratio))

    def restricted_gap(q):
        # On the simplex q.g = 1 exactly, so max_S g - 1 >= 0 certifies the restricted
        # problem (its Frank-Wolfe gap): the merit that picks the returned iterate.
        _, g = grad(q)
        return jnp.max(jnp.where(valid, g, -jnp.inf)) - 1

    def cond(carry):
        it, done = carry[-2:]
        return (it < max_iters) & ~done

    def body(carry):
        q, z, lam, best_q, best_gap, run_gap, ref_gap, since, restarted, it, _ = carry
        u, rd, mu = residuals(q, z, lam)
        # Predictor (affine scaling).
        msolve = factor(q, z, u)
        dq_a, dz_a, _, x_1 = newton(msolve, q, z, rd, q * z)
        s_a = jnp.minimum(max_step(q, dq_a), max_step(z, dz_a))
        mu_a = jnp.sum((q + s_a * dq_a) * (z + s_a * dz_a)) / nv
        sigma = jnp.clip((mu_a / mu) ** 3, 0.0, 1.0)
        # Corrector.
        rc = q * z + dq_a * dz_a - sigma * mu
        dq, dz, dlam, _ = newton(msolve, q, z, rd, rc, x_1)
        frac = jnp.maximum(0.99, 1.0 - mu)
        s = frac * jnp.minimum(max_step(q, dq), max_step(z, dz))
        q_new = jnp.where(valid, jnp.maximum(q + s * dq, 0.0), 0.0)
        q_new = q_new / jnp.sum(q_new)
        z_new = jnp.where(valid, jnp.maximum(z + s * dz, 0.0), 0.0)
        lam_new = lam + s * dlam
        bad = ~(jnp.all(jnp.isfinite(q_new)) & jnp.all(jnp.isfinite(z_new)))
        gap_new = jnp.where(bad, jnp.inf, restricted_gap(q_new))
        # Once certified, later iterates are preferred: they carry less interior-point mass
        # (~mu / z) on the columns that the optimum does not use.
        better = gap_new <= jnp.maximum(best_gap, tol)
        best_q = jnp.where(better, q_new, best_q)
        best_gap = jnp.where(better, gap_new, best_gap)
        mu_new = jnp.sum(q_new * z_new) / nv
        # Past mu ~ 1e-30 the Newton systems are numerically meaningless (z / q spans 60
        # orders of magnitude); the best iterate so far is kept.
        done = ((best_gap <= tol) & (mu_new <= 1e-22)) | bad | (mu_new < 1e-30)
        # Stall guard. Mehrotra's method can jam in a cycle of short steps (measured on
        # warm starts: a period-4 cycle at mu ~ 1e-9, restricted gap stuck at 4e-8, for all
        # 60 steps, where the cold start certifies in 12). When the best restricted gap has
        # not halved in `_STALL_STEPS` steps, restart once from the cold start (the best
        # iterate is kept); a second stall ends the solve with the best iterate. Measured on
        # the current trajectory's best gap (`run_gap`), so that a restart is judged afresh.
        run_gap = jnp.minimum(run_gap, gap_new)
        improved = run_gap <= 0.5 * ref_gap
        ref_gap = jnp.where(improved, run_gap, ref_gap)
        since = jnp.where(improved, 0, since + 1)
        stalled = (since >= _STALL_STEPS) & (best_gap > tol) & ~done
        restart = stalled & ~restarted
        done = done | (stalled & restarted)
        q_new = jnp.where(restart, q_cold, q_new)
        z_new = jnp.where(restart, z_cold, z_new)
        lam_new = jnp.where(restart, lam_cold, lam_new)
        since = jnp.where(restart, 0, since)
        run_gap = jnp.where(restart, jnp.inf, run_gap)
        ref_gap = jnp.where(restart, jnp.inf, ref_gap)
        restarted = restarted | restart
        out = (q_new, z_new, lam_new, best_q, best_gap, run_gap, ref_gap, since, restarted)
        return out + (it + 1, done)

    z_cold, lam_cold = dual_start(q_cold, 1.0)
    gap0 = restricted_gap(q0)
    init = (
        q0,
        z0,
        lam0,
        q0,
        gap0,
        gap0,
        gap0,
        jnp.array(0),
        ~restartable,
        jnp.array(0),
        gap0 <= tol,
    )
    _, _, _, q, _, _, _, _, _, iters, _ = lax.while_loop(cond, body, init)
    return q, iters


# ------------------------------------------------------------------------------------------
# Pricing: local maxima of g on the grid, the largest few via tile maxima.
# ------------------------------------------------------------------------------------------


def _local_maxima(g: Array, shape: tuple[int, ...]) -> Array:
    """Mask of grid points whose g is >= every neighbour's (column order when `shape` is
    `(n,)`; the 8-neighbourhood in 2-D)."""
    x = g.reshape(shape)
    ok = jnp.ones(shape, bool)
    if len(shape) == 1:
        neighbours = [(-1,), (1,)]
    else:
        neighbours = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]
    padded = jnp.pad(x, 1, constant_values=-jnp.inf)
    for off in neighbours:
        sl = tuple(slice(1 + o, 1 + o + s) for o, s in zip(off, shape))
        ok = ok & (x >= padded[sl])
    return ok.reshape(-1)


def _top_candidates(score: Array, count: int) -> tuple[Array, Array]:
    """Indices of up to `count` large entries of `score` (at most one per tile of 256), and
    whether each is a real candidate (score > -inf). Tile maxima, the top tiles, then the
    argmax inside those tiles only: a global top_k over n is a full sort on CPU, and an
    argmax over every tile costs several times a read of E."""
    n = score.shape[0]
    tile = min(_TILE, n)
    full = n // tile
    rest = n - full * tile
    # Whole tiles come from a reshape of a slice; only the short tail is padded (padding all
    # of `score` is a copy of n entries, several times slower than the reduction itself).
    tiles2d = score[: full * tile].reshape(full, tile)
    tmax = jnp.max(tiles2d, axis=1)
    if rest:
        tail = jnp.pad(score[full * tile :], (0, tile - rest), constant_values=-jnp.inf)
        tmax = jnp.concatenate([tmax, jnp.max(tail)[None]])
    nt = tmax.shape[0]
    if nt < count:
        tmax = jnp.pad(tmax, (0, count - nt), constant_values=-jnp.inf)
    vals, tiles = lax.top_k(tmax, count)
    inner = jnp.argmax(tiles2d[jnp.minimum(tiles, full - 1)], axis=1)
    if rest:
        inner = jnp.where(tiles >= full, jnp.argmax(tail), inner)
    idx = jnp.minimum(tiles.astype(inner.dtype) * tile + inner, n - 1)
    return idx, vals > -jnp.inf


def _apply_stencil(
    idx: Array, ok: Array, shape: tuple[int, ...], stencil: bool
) -> tuple[Array, Array]:
    offsets = _stencil_offsets(len(shape) if stencil else 0)
    if len(offsets) == 1:
        return idx, ok
    coords = jnp.unravel_index(idx, shape)
    out = []
    for off in offsets:
        c = [jnp.clip(ci + o, 0, s - 1) for ci, o, s in zip(coords, off, shape)]
        out.append(jnp.ravel_multi_index(tuple(c), shape, mode="clip"))
    new = jnp.stack(out, axis=1).reshape(-1)
    return new, jnp.repeat(ok, len(offsets))


def _barycentres(idx: Array, q: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Grid cells around the weighted barycentres of each support atom with its nearest one
    and two other atoms: the corners of the cell that holds each barycentre.

    Near the optimum a mixture of close atoms `sum_j q_j e(x_j)` equals, to second order in
    their spread, the column at their barycentre `sum_j q_j x_j / sum_j q_j`. When the optimum
    puts one atom between two current atoms, the local maximum of `g` lies between them but not
    at that atom, and pricing it only halves the bracket per pass (~4x on the gap); the
    barycentre lands within the bracket's square of the atom, so the bracket collapses in one
    pass."""
    ndim = len(shape)
    k = idx.shape[0]
    coords = jnp.stack(jnp.unravel_index(idx, shape), axis=1).astype(q.dtype)  # (k, d)
    on = q > 0
    d2 = jnp.sum((coords[:, None, :] - coords[None, :, :]) ** 2, axis=-1)
    pair = on[:, None] & on[None, :] & ~jnp.eye(k, dtype=bool)
    d2 = jnp.where(pair, d2, jnp.inf)
    near = jnp.argsort(d2, axis=1)[:, :2]
    rows = jnp.arange(k)
    ok1 = on & jnp.isfinite(d2[rows, near[:, 0]])
    ok2 = ok1 & jnp.isfinite(d2[rows, near[:, 1]])
    w0, w1, w2 = q, q[near[:, 0]], q[near[:, 1]]
    c0, c1, c2 = coords, coords[near[:, 0]], coords[near[:, 1]]
    safe = jnp.where(ok1, w0 + w1, 1.0)
    b_pair = (w0[:, None] * c0 + w1[:, None] * c1) / safe[:, None]
    safe3 = jnp.where(ok2, w0 + w1 + w2, 1.0)
    b_tri = (w0[:, None] * c0 + w1[:, None] * c1 + w2[:, None] * c2) / safe3[:, None]
    centres = jnp.concatenate([b_pair, b_tri])  # (2k, d)
    ok = jnp.concatenate([ok1, ok2])
    base = jnp.floor(centres)
    corners = [tuple((c >> i) & 1 for i in range(ndim)) for c in range(2**ndim)]
    out = []
    for corner in corners:
        c = [
            jnp.clip(base[:, i] + corner[i], 0, shape[i] - 1).astype(idx.dtype) for i in range(ndim)
        ]
        out.append(jnp.ravel_multi_index(tuple(c), shape, mode="clip"))
    new = jnp.stack(out, axis=1).reshape(-1)
    return new, jnp.repeat(ok, len(corners))


def _dedup(idx: Array, ok: Array) -> Array:
    """Mark repeated indices (and invalid slots) as not ok; keeps the first occurrence."""
    big = jnp.iinfo(idx.dtype).max
    key = jnp.where(ok, idx, big)
    order = jnp.argsort(key, stable=True)
    sk = key[order]
    first = jnp.concatenate([jnp.array([True]), sk[1:] != sk[:-1]])
    keep_sorted = first & (sk != big)
    return jnp.zeros_like(ok).at[order].set(keep_sorted)


# ------------------------------------------------------------------------------------------
# Column generation on one level.
# ------------------------------------------------------------------------------------------


def _window_offsets(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Offsets of the window searched around every support atom between passes: every
    distance up to 8, then distances growing by sqrt(2) up to the grid's extent (2-D: along
    the 8 directions). Column evaluations there are gathers of `m` entries, not reads of E."""
    extent = max(shape)
    radii = list(range(1, 9))
    j = 1
    while True:
        r = int(round(8 * 2 ** (j / 2)))
        if r >= extent:
            break
        radii.append(r)
        j += 1
    if len(shape) == 1:
        return [(s * d,) for s in radii for d in (-1, 1)]
    dirs = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]
    return [(r * a, r * b) for r in radii for (a, b) in dirs]


def _shift(idx: Array, shape: tuple[int, ...], offsets: list[tuple[int, ...]]) -> Array:
    """`idx` moved by each offset (clipped to the grid): shape (len(idx) * len(offsets),)."""
    coords = jnp.unravel_index(idx, shape)
    off = jnp.asarray(offsets, idx.dtype)  # (o, d)
    c = [
        jnp.clip(ci[:, None] + off[None, :, i], 0, s - 1)
        for i, (ci, s) in enumerate(zip(coords, shape))
    ]
    return jnp.ravel_multi_index(tuple(c), shape, mode="clip").reshape(-1)


class _LevelState(eqx.Module):
    # Columns offered to the next master (support first, then new candidates).
    slots: Int[Array, " k"]
    slots_ok: Bool[Array, " k"]
    # Candidates from the last pass, re-priced (by gathers) during the rounds between passes.
    pool: Int[Array, " P"]
    pool_ok: Bool[Array, " P"]
    # Support after the last master, compacted (largest weights first).
    idx: Int[Array, " k"]
    q: Float[Array, " k"]
    u: Float[Array, " m"]
    g: Float[Array, " n"]
    gap: Float[Array, ""]
    passes: Int[Array, ""]
    master_iters: Int[Array, ""]
    rounds: Int[Array, ""]


def _column_generation(
    e: Float[Array, "m n"],
    alpha: Float[Array, " m"],
    shape: tuple[int, ...],
    init_idx: Int[Array, " s"],
    init_ok: Bool[Array, " s"],
    init_q: Float[Array, " keep"] | None = None,
    *,
    keep: int,
    candidates: int,
    pool_size: int,
    stencil: bool,
    tol: float,
    max_passes: int,
    max_rounds: int,
) -> _LevelState:
    """Fully corrective column generation on one level.

    Each pass (one read of E) forms `g` at the current iterate and prices its largest local
    maxima (with a stencil of neighbours on a grid). Between passes, rounds of restricted
    column generation re-price, by gathering columns only, a pool: the pass's `pool_size`
    best candidates and (on a grid) a multi-scale window around every support atom. A round
    costs `O(m * pool)` plus a master solve, against `O(m * n)` for a pass; the rounds move
    atoms to the optimum's grid points, which passes alone approach only by bisection
    (near-duplicate columns, docs/nash_solver.md), so a level typically needs one pass to
    certify what the rounds found. The gap `max g - 1` belongs to the returned iterate. `g` is
    carried in the loop state so that nothing reads `E` after the loop (XLA would copy the
    loop-carried `E`, ~2 reads, to use it afterwards).

    Slot layout: `keep` slots for the current support (smallest weights evicted), then
    `candidates * stencil` new columns, then the barycentre cells.
    """
    m, n = e.shape
    ndim = len(shape) if stencil else 0
    nstencil = len(_stencil_offsets(ndim))
    nbary = 2 * keep * 2**ndim if stencil else 0
    k = keep + candidates * nstencil + nbary
    window = _window_offsets(shape) if stencil else []
    # Column indices in the default integer type (what argmax and top_k return), whatever
    # the caller's anchors are.
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)
    init_idx = init_idx.astype(itype)

    def pad(x, size, fill):
        s = x.shape[0]
        return jnp.full((size,), fill, x.dtype).at[: min(s, size)].set(x[:size])

    def new_columns(cidx, cok, idx, q):
        """Slots for the next master: support, candidates with stencil, barycentre cells."""
        new_idx, new_ok = _apply_stencil(cidx, cok, shape, stencil)
        parts_idx = [idx[:keep], new_idx]
        parts_ok = [q[:keep] > 0, new_ok]
        if stencil:
            bidx, bok = _barycentres(idx[:keep], q[:keep], shape)
            parts_idx.append(bidx)
            parts_ok.append(bok)
        return jnp.concatenate(parts_idx), jnp.concatenate(parts_ok)

    def master(slots, ok, q_prev):
        ok = _dedup(slots, ok)
        a = e[:, slots]
        # The slots start with the previous support (`new_columns`), in the order of `q_prev`;
        # a repeated column keeps its first, support, slot (`_dedup`).
        q_init = jnp.zeros((slots.shape[0],), e.dtype).at[:keep].set(q_prev[:keep])
        q, iters = solve_master(a, alpha, ok, q_init=q_init)
        q = jnp.where(ok, q, 0.0)
        # Drop columns the master gave ~no weight (1e-15 of the largest).
        q = jnp.where(q > 1e-15 * jnp.max(q), q, 0.0)
        q = q / jnp.sum(q)
        # Compact: largest weights first, so the support fits in the `keep` slots.
        order = jnp.argsort(-q)
        slots, q = slots[order], q[order]
        return slots, q, e[:, slots] @ q, iters

    def rounds(slots, ok, pool, pool_ok, q_prev):
        """Master, then re-price the pool and the windows by gathers, until their gap is
        below `tol` or `max_rounds` masters ran."""

        def cond(c):
            _, _, _, _, _, lgap, r, _ = c
            return (r == 0) | ((lgap > tol) & (r < max_rounds))

        def body(c):
            slots, ok, _, q_prev, _, _, r, iters = c
            idx, q, u, it = master(slots, ok, q_prev)
            cand = [pool]
            cand_ok = [pool_ok]
            if stencil:
                cand.append(_shift(idx[:keep], shape, window))
                cand_ok.append(jnp.repeat(q[:keep] > 0, len(window)))
            cidx = jnp.concatenate(cand)
            cok = jnp.concatenate(cand_ok)
            gp = jnp.where(cok, _safe_ratio(alpha, u) @ e[:, cidx], -jnp.inf)
            lgap = jnp.max(gp) - 1
            vals, top = lax.top_k(gp, candidates)
            slots, ok = new_columns(cidx[top], vals > 1, idx, q)
            return slots, ok, idx, q, u, lgap, r + 1, iters + it

        z = jnp.zeros((k,), itype)
        init = (
            slots,
            ok,
            z,
            q_prev,
            jnp.zeros((m,), e.dtype),
            jnp.array(jnp.inf, e.dtype),
            jnp.array(0),
            jnp.array(0),
        )
        _, _, idx, q, u, _, r, iters = lax.while_loop(cond, body, init)
        return idx, q, u, iters, r

    def price(g, idx, q):
        if stencil:
            score = jnp.where(_local_maxima(g, shape) & (g > 1), g, -jnp.inf)
        else:
            score = jnp.where(g > 1, g, -jnp.inf)
        pidx, pok = _top_candidates(score, max(pool_size, candidates))
        slots, ok = new_columns(pidx[:candidates], pok[:candidates], idx, q)
        return slots, ok, pidx[:pool_size], pok[:pool_size]

    def cond(st: _LevelState):
        return (st.passes == 0) | ((st.gap > tol) & (st.passes < max_passes))

    def body(st: _LevelState):
        idx, q, u, iters, r = rounds(st.slots, st.slots_ok, st.pool, st.pool_ok, st.q)
        g = _safe_ratio(alpha, u) @ e
        gap = jnp.max(g) - 1
        # Pricing sweeps g several times (~1/3 of a one-pass time at n = 1e6): skipped once
        # the pass certified (or was the last).
        last = (gap <= tol) | (st.passes + 1 >= max_passes)
        slots, ok, pool, pool_ok = lax.cond(
            last,
            lambda: (st.slots, st.slots_ok, st.pool, st.pool_ok),
            lambda: price(g, idx, q),
        )
        return _LevelState(
            slots,
            ok,
            pool,
            pool_ok,
            idx,
            q,
            u,
            g,
            gap,
            st.passes + 1,
            st.master_iters + iters,
            st.rounds + r,
        )

    init = _LevelState(
        slots=pad(init_idx, k, 0),
        slots_ok=pad(init_ok, k, False),
        pool=jnp.zeros((pool_size,), itype),
        pool_ok=jnp.zeros((pool_size,), bool),
        idx=jnp.zeros((k,), itype),
        # Weights of the first `keep` initial columns, if known (a coarser level's support):
        # they warm-start the first master.
        q=jnp.zeros((k,), e.dtype) if init_q is None else pad(init_q, k, 0.0),
        u=jnp.zeros((m,), e.dtype),
        g=jnp.zeros((n,), e.dtype),
        gap=jnp.array(jnp.inf, e.dtype),
        passes=jnp.array(0),
        master_iters=jnp.array(0),
        rounds=jnp.array(0),
    )
    return lax.while_loop(cond, body, init)


# ------------------------------------------------------------------------------------------
# Multilevel driver.
# ------------------------------------------------------------------------------------------


def _levels(shape: tuple[int, ...], multilevel: bool) -> tuple[list[tuple[int, ...]], int]:
    """The fine grid and, with `multilevel`, one coarse grid: stride `8^j` per dimension for
    the largest `j` that keeps >= 2,000 points. Returns `(shapes, stride)`.

    One coarse level, not a chain of stride-8 levels: a stride-8 copy of a 1-D `E` touches
    every cache line (a full read, ~1 one-pass time measured at n = 1e6), while stride 64
    touches 1/8 of them; the multi-scale windows of the rounds bridge the larger stride on the
    fine level, and one level fewer is one copy fewer of the solver to compile."""
    if not multilevel:
        return [shape], 1
    j = 0
    while True:
        nxt = tuple(-(-s // _STRIDE ** (j + 1)) for s in shape)
        if math.prod(nxt) < _MIN_COARSE_POINTS or nxt == tuple(-(-s // _STRIDE**j) for s in shape):
            break
        j += 1
    # In 1-D a coarse level pays only from stride 64 on: at stride 8 its copy touches every
    # cache line of E (a read), its solve adds master steps (measured at n = 1e5, m = 8:
    # 1.12 passes and 59-88 master steps with it, 1.00 and 51-77 without), and it is a second
    # copy of the solver to compile. (In 2-D, stride 8 skips 7 of 8 rows.)
    if j == 0 or (len(shape) == 1 and _STRIDE**j < _MIN_1D_STRIDE):
        return [shape], 1
    stride = _STRIDE**j
    return [shape, tuple(-(-s // stride) for s in shape)], stride


def _coarsen(e: Array, shape: tuple[int, ...], stride: int) -> Array:
    m = e.shape[0]
    x = e.reshape((m,) + shape)
    sl = (slice(None),) + tuple(slice(None, None, stride) for _ in shape)
    return x[sl].reshape(m, -1)


def _refine_index(idx: Array, coarse: tuple[int, ...], fine: tuple[int, ...], stride: int) -> Array:
    coords = jnp.unravel_index(idx, coarse)
    return jnp.ravel_multi_index(tuple(c * stride for c in coords), fine, mode="clip")


# `row_argmax`: pieces folded per level, and the row length below which `jnp.argmax` is used.
_FOLD = 32
_FOLD_MIN = 2048


def row_argmax(e: Array) -> Array:
    """`jnp.argmax(e, axis=1)` for a wide `(m, n)` matrix at the cost of about one read of `e`.

    XLA's CPU argmax is a variadic (value, index) reduce, ~4 one-pass times at n = 1e6. Here
    each row is cut into `_FOLD` contiguous pieces whose elementwise maximum (one fused read)
    has the row's maximum at some position `j`; the same rule finds `j` in the folded rows
    (1/32 as long), and the maximiser is the best of the `_FOLD` columns `j + c * b`. Exact:
    the returned column holds the row's maximum. Ties may resolve to another maximiser than
    `jnp.argmax`'s first one, so every caller that must agree uses this function."""
    m, n = e.shape
    b = n // _FOLD
    if n <= _FOLD_MIN or b < 1:
        return jnp.argmax(e, axis=1)
    folded = e[:, :b]
    for c in range(1, _FOLD):
        folded = jnp.maximum(folded, e[:, c * b : (c + 1) * b])
    j = row_argmax(folded)
    cand = jnp.take_along_axis(e, j[:, None] + b * jnp.arange(_FOLD)[None], axis=1)
    idx = jnp.argmax(cand, axis=1) * b + j
    if _FOLD * b < n:
        tail = e[:, _FOLD * b :]
        best = jnp.take_along_axis(e, idx[:, None], axis=1)[:, 0]
        tail_idx = _FOLD * b + jnp.argmax(tail, axis=1)
        idx = jnp.where(jnp.max(tail, axis=1) > best, tail_idx, idx)
    return idx


def _start_columns(e: Array, anchors: Array | None) -> Array:
    """One starting column per reward, where that reward is largest: the caller's `anchors`
    (`BargainingProblem` computes them with `row_argmax` when it is built) or `row_argmax`
    here (a `CurationProblem` has none), so both entries start, and solve, alike.

    Always the exact maximisers (measured, n = 1e5 and 1e6, m = 8): on label sets without
    geometry an argmax over ~2,000 strided columns missed the maximisers and cost up to 2 more
    passes over `E`; on grids the exact start needed 3-4% fewer master steps in total (22% on
    the 2-D families at n = 1e6) for one read of `E` from a `CurationProblem`."""
    return row_argmax(e) if anchors is None else anchors


class NashResult(eqx.Module):
    p: Float[Array, " n"]
    u: Float[Array, " m"]
    gap: Float[Array, ""]
    support: Int[Array, " k"]
    weights: Float[Array, " k"]
    anchors: Int[Array, " m"]
    anchor_values: Float[Array, " m"]
    passes: Float[Array, ""]
    fine_passes: Int[Array, ""]
    master_iters: Int[Array, ""]
    rounds: Int[Array, ""]
    num_slots: int = eqx.field(static=True)


def solve_nash(
    e: Float[Array, "m n"],
    alpha: Float[Array, " m"],
    anchors: Int[Array, " m"] | None,
    *,
    grid_shape: tuple[int, ...] | None,
    tol: float,
    max_passes: int,
    multilevel: bool = True,
    candidates: int | None = None,
    keep: int | None = None,
    pool_size: int | None = None,
    max_rounds: int = 8,
) -> NashResult:
    """Multilevel column generation (levels only with grid geometry). `anchors` are one column
    per reward where that reward's utility is largest (so no utility is ever 0), or `None` when
    every row's maximum is positive (exp-utilities normalised to maximum 1). The solve starts
    from `_start_columns` (every row's maximiser), so it does not depend on whether the caller
    knew the anchors; `NashResult.anchors` holds the columns used, in fine indices."""
    m, n = e.shape
    geometric = grid_shape is not None
    shape: tuple[int, ...] = tuple(grid_shape) if geometric else (n,)  # pyright: ignore
    if math.prod(shape) != n:
        raise ValueError(f"`grid_shape` {grid_shape} does not match the support size n={n}.")
    if candidates is None:
        candidates = max(2, 2 * m)
    if keep is None:
        keep = 2 * m + 4
    if pool_size is None:
        pool_size = 4 * candidates
    shapes, stride = _levels(shape, multilevel and geometric)
    mats = [e] + [_coarsen(e, shape, stride) for _ in shapes[1:]]
    top = len(shapes) - 1
    factors = [1, stride][: len(shapes)]

    # Coarsest level: start from the anchors mapped down.
    def down(idx: Array, level: int) -> Array:
        coords = jnp.unravel_index(idx, shape)
        f = factors[level]
        return jnp.ravel_multi_index(tuple(c // f for c in coords), shapes[level], mode="clip")

    anchors = _start_columns(e, anchors)
    init_idx = down(anchors, top)
    # Read before the loops: XLA copies a loop-carried E (~2 reads) that is used after them.
    anchor_values = e[jnp.arange(m), anchors]
    passes = jnp.array(0.0, e.dtype)
    master_iters = jnp.array(0)
    rounds = jnp.array(0)
    init_ok = alpha > 0
    init_q = None
    st: Any = None
    for level in range(top, -1, -1):
        finest = level == 0
        st = _column_generation(
            mats[level],
            alpha,
            shapes[level],
            init_idx,
            init_ok,
            init_q,
            keep=keep,
            candidates=candidates,
            pool_size=pool_size,
            max_rounds=max_rounds,
            stencil=geometric,
            tol=tol if finest else _COARSE_TOL,
            max_passes=max_passes if finest else _COARSE_PASSES,
        )
        passes = passes + st.passes.astype(e.dtype) * (math.prod(shapes[level]) / n)
        master_iters = master_iters + st.master_iters
        rounds = rounds + st.rounds
        if not finest:
            sup = st.q[:keep] > 0
            init_idx = _refine_index(st.idx[:keep], shapes[level], shapes[level - 1], stride)
            init_ok = sup
            init_q = jnp.where(sup, st.q[:keep], 0.0)
            if level - 1 == 0:
                # The finest level also gets the anchors, so every utility stays positive.
                init_idx = jnp.concatenate([init_idx, anchors])
                init_ok = jnp.concatenate([init_ok, alpha > 0])
    p = jnp.zeros((n,), e.dtype).at[st.idx].add(st.q)
    return NashResult(
        p=p,
        u=st.u,
        gap=st.gap,
        support=st.idx[:keep],
        weights=st.q[:keep],
        anchors=anchors,
        anchor_values=anchor_values,
        passes=passes,
        fine_passes=st.passes,
        master_iters=master_iters,
        rounds=rounds,
        num_slots=keep,
    )
