import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._custom_types import Aux
from .._maps import CurationMap, mixed_growth
from .._problem import CurationProblem
from ._misc import scaled_error, solver_stats, StallTracker, terminate_on
from .newton_krylov import NewtonKrylov


class AbstractSupportGrowth(eqx.Module):
    """The growth factor on a small support: `G(p)[idx]` for `p = scatter(q, idx)`."""

    # Whether a call costs O(|idx|) (a reduced problem) rather than a full map evaluation.
    reduced: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(
        self, q: Float[Array, " s"], idx: Int[Array, " s"], n: int, args: PyTree
    ) -> Float[Array, " s"]:
        """`G(scatter(q, idx))[idx]`."""


class _CurationSupportGrowth(AbstractSupportGrowth):
    """For [`curax.curate`][]: the growth on the support only needs the rewards there, so the
    reduced system costs O(|S| Q), not O(n Q)."""

    reduced = True

    def __call__(self, q, idx, n, args: CurationProblem):
        del n
        return mixed_growth(q, args.map_points(lambda x: x[..., idx]))


class _FullSupportGrowth(AbstractSupportGrowth):
    """Any replicator map: evaluate the full growth factor and read it on the support."""

    growth: Callable[[Array, PyTree], Array]
    reduced = False

    def __call__(self, q, idx, n, args):
        p = jnp.zeros((n,), q.dtype).at[idx].add(q)
        return self.growth(p, args)[idx]


def support_growth_for(fn: Any, growth: Callable) -> AbstractSupportGrowth:
    """The cheapest support-restricted growth for the map `fn`."""
    if isinstance(fn, CurationMap):
        return _CurationSupportGrowth()
    return _FullSupportGrowth(growth)


class _ActiveSetState(eqx.Module):
    idx: Int[Array, " slots"]
    q: Float[Array, " slots"]
    active: Bool[Array, " slots"]
    error: Scalar
    gap: Scalar
    tracker: StallTracker
    num_map_evals: Int[Array, ""]
    num_support_evals: Int[Array, ""]
    num_inner: Int[Array, ""]


def _local_max(g: Float[Array, " n"]) -> Bool[Array, " n"]:
    left = jnp.concatenate([g[:1] - 1, g[:-1]])
    right = jnp.concatenate([g[1:], g[-1:] - 1])
    return (g >= left) & (g >= right)


class ActiveSetNewton(optx.AbstractFixedPointSolver[Array, Aux, _ActiveSetState]):
    """Exact solver for the stable fixed point of a replicator map `p -> p * G(p)` (every
    curax curation map without reference data): support identification plus Newton on the
    small reduced system.

    At a stable fixed point `G = 1` on the support `S` and `G <= 1` off it. Each step
    (a *pass*):

    1. solves the reduced complementarity problem on the current slots `S`:
       `q >= 0`, `z = lambda - G(q) >= 0`, `q * z = 0`, `sum q = 1` by a primal-dual
       interior-point Newton method (Mehrotra's centring; a dense `(|S|+1)^2` system whose
       Jacobian comes from `jax.jacfwd` of the growth on the support). For K = infinity this
       is the KKT system of the Nash problem restricted to `S`; for finite K, where no
       potential is known, the same complementarity conditions characterise the fixed
       points of the restricted map that no slot would invade;
    2. drops slots whose mass fell below `drop_tol`;
    3. evaluates the full growth factor once (one map evaluation) and the map once (the
       residual): the Frank-Wolfe/KKT gap `max G - 1` verifies `G <= 1` off the support;
    4. adds the `num_add` largest local maxima (in index order, i.e. on the grid) with
       `G > 1`, each with the neighbours `stencil` (index offsets), into free slots.

    It stops when `max(scaled fixed-point residual, gap / (atol + rtol)) < 1`. Map
    evaluations per pass: 2, plus the reduced solve's calls of the growth on the slots:
    about 2 per Newton iteration (the reduced Jacobian is one batched call, `jax.jacfwd`,
    i.e. `vmap` of a Jacobian-vector product over the slots; its arithmetic is that of
    `max_support` evaluations done together). For a user's growth function every call
    evaluates `G` on the full support and is counted in `stats["num_map_evals"]`; for
    [`curax.curate`][] the reduced system is evaluated on the slots only (O(|S| Q)),
    counted separately in `stats["num_support_evals"]`.

    **Finite K.** Without a potential, the complementarity problem on the slots can have
    several solutions, and single atoms (which no slot can invade) are among them. Before
    the interior-point solve, `dynamics_steps` iterations of the dynamics restricted to the
    slots (from the previous pass's point, mixed with `warm_weight` of the uniform
    distribution on the slots) pick the solution that the dynamics reach; and slots that
    lost their mass stay in the reduced problem until their place is needed (those with the
    smallest growth factor go first), so that the support cannot cycle between atoms.

    **Growth factor.** Inside `optx.fixed_point` the map is closure-converted, so the solver
    cannot ask it for `G`: [`curax.fixed_point`][] passes it (in `options["growth"]`) when
    `fn` is a [`curax.AbstractReplicatorMap`][]; otherwise pass `growth=` here or
    `options={"growth": G}`.

    **Reference data.** A map that mixes in reference data (`reference_weight > 0`) has a
    fixed point with full support: nothing for an active set to exploit. Given such a
    [`curax.curate`][] problem, [`curax.fixed_point`][] runs `self.fallback` (a
    [`curax.NewtonKrylov`][] with the same tolerances) instead. Run directly on such a map
    (e.g. through `optx.fixed_point`) the fixed-point residual never converges and the solve
    reports a stall (`nonlinear_divergence` in optimistix, `RESULTS.stalled` in curax).

    Everything has a fixed number of slots (`max_support`), so it runs under `jit`/`vmap`.
    """

    rtol: float = 1e-12
    atol: float = 1e-12
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    growth: Callable[[Array, PyTree], Array] | None = None
    max_support: int = 64
    num_add: int = 4
    stencil: tuple[int, ...] = (0, 1, -1, 2, -2, 4, -4, 8, -8)
    drop_tol: float = 1e-13
    max_newton: int = 80
    patience: int = 8
    dynamics_steps: int | None = None
    warm_weight: float = 0.1

    def __check_init__(self):
        if self.num_add * len(self.stencil) > self.max_support:
            raise ValueError(
                f"`max_support` ({self.max_support}) must be at least num_add * len(stencil) "
                f"= {self.num_add * len(self.stencil)}."
            )
        if 0 not in self.stencil:
            raise ValueError("`stencil` must contain the offset 0 (the picked point itself).")

    @property
    def fallback(self) -> NewtonKrylov:
        """The solver used on maps with reference data (full support)."""
        return NewtonKrylov(rtol=self.rtol, atol=self.atol, norm=self.norm)

    def _growths(self, options: dict[str, Any]) -> tuple[Callable, AbstractSupportGrowth]:
        growth = self.growth if self.growth is not None else options.get("growth")
        if growth is None:
            raise ValueError(
                "`curax.ActiveSetNewton` needs the growth factor G of the replicator map "
                "p -> p * G(p): call it through `curax.fixed_point` with a "
                "`curax.AbstractReplicatorMap` (e.g. `curax.curate`), or pass "
                "`ActiveSetNewton(growth=G)` or `options={'growth': G}`."
            )
        support = options.get("support_growth")
        if support is None or self.growth is not None:
            support = _FullSupportGrowth(growth)
        return growth, support

    def _dynamics_steps(self, support: AbstractSupportGrowth, args: Any) -> int:
        if self.dynamics_steps is not None:
            return self.dynamics_steps
        # Curation problems with a finite K have no potential; K = infinity (concave
        # potential: the complementarity solution on the slots is unique) needs none.
        if isinstance(support, _CurationSupportGrowth) and isinstance(args, CurationProblem):
            if any(k is not None and k > 1 for k in args.ks):
                return 200
        return 0

    def _insert(self, g, idx, q, active, first: bool):
        """Put the best new candidates (local maxima of g with g > 1, plus stencil) into free
        slots with zero mass."""
        n = g.shape[0]
        slots = self.max_support
        in_supp = jnp.zeros((n,), bool).at[idx].max(active)
        eligible = _local_max(g) & ~in_supp
        if not first:
            eligible = eligible & (g > 1 + 0.5 * (self.atol + self.rtol))
        score = jnp.where(eligible, g, -jnp.inf)
        k = min(self.num_add, n)
        top, picks = lax.top_k(score, k)
        offsets = jnp.array(self.stencil, jnp.int32)
        cand = (picks.astype(jnp.int32)[:, None] + offsets[None, :]).reshape(-1)
        ok = jnp.repeat(jnp.isfinite(top), len(self.stencil))
        ok = ok & (cand >= 0) & (cand < n)
        cand = jnp.clip(cand, 0, n - 1)
        ok = ok & ~in_supp[cand]
        c = cand.shape[0]
        earlier = jnp.tril(cand[:, None] == cand[None, :], k=-1)
        ok = ok & ~jnp.any(earlier & ok[None, :], axis=1)
        rank = jnp.cumsum(ok) - 1
        # Free slots first, then slots without mass, those with the smallest growth factor
        # first: a point that held mass on an earlier pass stays available to the reduced
        # problem (for finite K, without a potential, forgetting them lets the support cycle
        # between single atoms). Slots with mass are never evicted.
        priority = jnp.where(~active, -jnp.inf, jnp.where(q > self.drop_tol, jnp.inf, g[idx]))
        order = jnp.argsort(priority)
        evictable = jnp.sum(priority < jnp.inf)
        free = jnp.where(jnp.arange(slots) < evictable, order, slots)
        slot = jnp.where(ok & (rank < slots), free[jnp.clip(rank, 0, slots - 1)], slots)
        del c
        idx = idx.at[slot].set(cand, mode="drop")
        active = active.at[slot].set(True, mode="drop")
        q = q.at[slot].set(0.0, mode="drop")
        return idx, q, active

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _ActiveSetState:
        del fn, f_struct, aux_struct, tags
        growth, _ = self._growths(options)
        slots = self.max_support
        if y.ndim != 1:
            raise ValueError("`curax.ActiveSetNewton` needs a distribution `y0` of shape (n,).")
        g = growth(y, args)
        idx = jnp.zeros((slots,), jnp.int32)
        q = jnp.zeros((slots,), y.dtype)
        active = jnp.zeros((slots,), bool)
        idx, q, active = self._insert(g, idx, q, active, first=True)
        return _ActiveSetState(
            idx,
            q,
            active,
            jnp.array(jnp.inf, y.dtype),
            jnp.array(jnp.inf, y.dtype),
            StallTracker.init(y.dtype),
            jnp.array(1),
            jnp.array(0),
            jnp.array(0),
        )

    def _reduced_solve(self, support: AbstractSupportGrowth, idx, q, active, n, args):
        """Primal-dual interior-point Newton on the complementarity problem on the slots."""
        dtype = q.dtype
        s = q.shape[0]
        a = active
        af = a.astype(dtype)
        num_active = jnp.maximum(jnp.sum(af), 1.0)

        def gs(qq):
            return support(qq, idx, n, args)

        # Warm start pulled towards the centre: every active slot gets some mass.
        q0 = jnp.where(a, (1 - self.warm_weight) * q + self.warm_weight / num_active, 0.0)
        q0 = q0 / jnp.sum(q0)
        steps = self._dynamics_steps(support, args)
        if steps > 0:
            # The restricted dynamics from there: without a potential (finite K) the
            # complementarity problem on the slots has several solutions, and the
            # interior-point method would pick any of them; the dynamics pick the one that
            # the dynamics reach, and the interior-point method then polishes it.
            def dyn(_, qq):
                qn = jnp.where(a, qq * gs(qq), 0.0)
                return qn / jnp.sum(qn)

            qd = lax.fori_loop(0, steps, dyn, q0)
            q0 = jnp.where(a, (1 - 1e-3) * qd + 1e-3 / num_active, 0.0)
            q0 = q0 / jnp.sum(q0)
        tol = 0.1 * min(self.atol, 1e-13)

        def value_and_jac(qq):
            # One batched `jax.jacfwd` call gives G and its Jacobian together: each loop below
            # evaluates the support growth at one call site, so its program (for curation
            # problems the whole finite-K quadrature) is compiled once per loop.
            def both(v):
                g = gs(v)
                return g, g

            jac, g = jax.jacfwd(both, has_aux=True)(qq)
            return g, jac

        def residuals(qq, zz, lam, g):
            r_d = jnp.where(a, zz - lam + g, 0.0)
            r_p = jnp.sum(qq) - 1
            comp = jnp.where(a, qq * zz, 0.0)
            return r_d, r_p, comp

        def cond(carry):
            i, qq, zz, lam, done = carry
            # One more iteration than Newton steps: the last one only tests convergence.
            return (i <= self.max_newton) & ~done

        def body(carry):
            i, qq, zz, lam, _ = carry
            g, jac = value_and_jac(qq)
            jac = jnp.where(a[:, None] & a[None, :], jac, 0.0)
            zz = jnp.where(i == 0, jnp.where(a, jnp.maximum(lam - g, 0.0) + 1e-2, 1.0), zz)
            r_d, r_p, comp = residuals(qq, zz, lam, g)
            converged = (
                (i > 0)
                & (jnp.max(jnp.abs(r_d)) <= tol)
                & (jnp.abs(r_p) <= tol)
                & (jnp.max(comp) <= tol * 1e-2)
            )
            mu = jnp.sum(comp) / num_active
            # (Z - Q J) dq + q dlam = -r_c + Q r_d;  1^T dq = -r_p  (inactive: dq = 0).
            top = jnp.diag(jnp.where(a, zz, 1.0)) - qq[:, None] * jac
            mat = jnp.zeros((s + 1, s + 1), dtype)
            mat = mat.at[:s, :s].set(top)
            mat = mat.at[:s, s].set(jnp.where(a, qq, 0.0))
            mat = mat.at[s, :s].set(af)
            scale = jnp.max(jnp.abs(mat))
            mat = mat.at[jnp.arange(s), jnp.arange(s)].add(1e-15 * scale)
            lu = jsl.lu_factor(mat)

            def direction(target):
                rhs_q = jnp.where(a, -(comp - target) + qq * r_d, 0.0)
                sol = jsl.lu_solve(lu, jnp.concatenate([rhs_q, -r_p[None]]))
                dq, dlam = jnp.where(a, sol[:s], 0.0), sol[s]
                dz = jnp.where(a, -r_d + dlam - jac @ dq, 0.0)
                return dq, dz, dlam

            def max_step(x, dx):
                ratio = jnp.where(a & (dx < 0), -x / jnp.where(dx < 0, dx, -1.0), jnp.inf)
                return jnp.minimum(1.0, 0.995 * jnp.min(ratio))

            dq, dz, _ = direction(jnp.zeros_like(qq))
            alpha_aff = jnp.minimum(max_step(qq, dq), max_step(zz, dz))
            mu_aff = jnp.sum(jnp.where(a, (qq + alpha_aff * dq) * (zz + alpha_aff * dz), 0.0))
            sigma = jnp.clip((mu_aff / num_active / jnp.maximum(mu, 1e-300)) ** 3, 0.0, 1.0)
            dq, dz, dlam = direction(sigma * mu)
            alpha = jnp.minimum(max_step(qq, dq), max_step(zz, dz))
            qn = jnp.maximum(jnp.where(a, qq + alpha * dq, 0.0), 0.0)
            zn = jnp.where(a, zz + alpha * dz, 1.0)
            lamn = lam + alpha * dlam
            ok = jnp.all(jnp.isfinite(qn)) & jnp.all(jnp.isfinite(zn)) & jnp.isfinite(lamn)
            move = ok & ~converged & (i < self.max_newton)
            qq, zz, lam = jax.tree.map(
                lambda new, old: jnp.where(move, new, old), (qn, zn, lamn), (qq, zz, lam)
            )
            return i + 1, qq, zz, lam, converged | ~ok

        lam0 = jnp.array(1.0, dtype)
        num, q1, z1, lam1, _ = lax.while_loop(
            cond, body, (jnp.array(0), q0, jnp.ones_like(q0), lam0, jnp.array(False))
        )
        # Strict complementarity tells the support apart: q >> z on it, z >> q off it
        # (there q ~ mu / z is a barrier artefact, not mass). Drop those slots exactly and
        # polish with plain Newton on G_S(q) = lambda, sum q = 1 (a few iterations).
        keep = a & (q1 > z1) & (q1 > self.drop_tol)
        q1 = jnp.where(keep, q1, 0.0)
        q1 = q1 / jnp.sum(q1)
        kf = keep.astype(dtype)

        def polish(carry, _):
            # Each iteration evaluates the previous candidate, keeps it if it lowers the
            # residual, and proposes the next Newton step from the point kept.
            qq, lam, g, jac, res, cand, cand_lam = carry
            g_c, jac_c = value_and_jac(cand)
            res_c = jnp.maximum(
                jnp.max(jnp.abs(jnp.where(keep, g_c - cand_lam, 0.0))),
                jnp.abs(jnp.sum(cand) - 1),
            )
            good = jnp.all(cand >= 0) & (res_c < res) & jnp.isfinite(res_c)
            qq, lam, g, jac, res = jax.tree.map(
                lambda new, old: jnp.where(good, new, old),
                (cand, cand_lam, g_c, jac_c, res_c),
                (qq, lam, g, jac, res),
            )
            jac_k = jnp.where(keep[:, None] & keep[None, :], jac, 0.0)
            r = jnp.concatenate([jnp.where(keep, g - lam, 0.0), (jnp.sum(qq) - 1)[None]])
            mat = jnp.zeros((s + 1, s + 1), dtype)
            mat = mat.at[:s, :s].set(jac_k + jnp.diag(1.0 - kf))
            mat = mat.at[:s, s].set(-kf)
            mat = mat.at[s, :s].set(kf)
            step = jnp.linalg.lstsq(mat, -r)[0]
            cand = jnp.where(keep, qq + step[:s], 0.0)
            return (qq, lam, g, jac, res, cand, lam + step[s]), None

        inf = jnp.array(jnp.inf, dtype)
        zero_jac = jnp.zeros((s, s), dtype)
        init = (q1, lam1, jnp.zeros_like(q1), zero_jac, inf, q1, lam1)
        # The start and three Newton steps; the fourth proposal is not evaluated.
        (q1, *_), _ = lax.scan(polish, init, None, length=4)
        # Calls of the support growth (each a value with its Jacobian from one batched
        # `jax.jacfwd` call, or a plain value in the dynamics): the dynamics, one per
        # interior-point iteration and four in the polish.
        calls = steps + num + 4
        return q1, num + 3, calls

    def step(self, fn, y, args, options, state, tags):
        del tags
        growth, support = self._growths(options)
        n = y.shape[0]
        q, num_inner, calls = self._reduced_solve(
            support, state.idx, state.q, state.active, n, args
        )
        keep = state.active & (q > self.drop_tol)
        q = jnp.where(keep, q, 0.0)
        q = q / jnp.sum(q)
        p = jnp.zeros((n,), y.dtype).at[state.idx].add(q)
        g = growth(p, args)
        fp, aux = fn(p, args)
        gap = jnp.max(g) - 1
        error = jnp.maximum(
            scaled_error(p, fp, self.rtol, self.atol, self.norm),
            jnp.maximum(gap, 0.0) / (self.atol + self.rtol),
        )
        idx, q, active = self._insert(g, state.idx, q, state.active, first=False)
        # Slots that held the same point twice (cannot happen after dedup, but a duplicate
        # would split mass harmlessly) are fine: p is built by scatter-add.
        # A user's growth function is evaluated on the full support by every call; a
        # reduced one (curation problems) costs O(|S| Q) and is counted separately.
        full_calls = 0 if support.reduced else calls
        new_state = _ActiveSetState(
            idx,
            q,
            active,
            error,
            gap,
            state.tracker.update(error),
            state.num_map_evals + 2 + full_calls,
            state.num_support_evals + calls,
            state.num_inner + num_inner,
        )
        return p, new_state, aux

    def terminate(self, fn, y, args, options, state, tags) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return terminate_on(state.error, state.tracker, self.patience)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        return (
            y,
            aux,
            {
                **solver_stats(state.num_map_evals, state.error, state.tracker, self.patience),
                "num_support_evals": state.num_support_evals,
                "num_newton": state.num_inner,
                "support_size": jnp.sum(y > 0),
            },
        )


ActiveSetNewton.__init__.__doc__ = """**Arguments:**

- `rtol`, `atol`: stop when the scaled fixed-point residual
    `norm((p - f(p)) / (atol + rtol |f(p)|))` and the gap `(max G - 1) / (atol + rtol)` are
    both < 1. Defaults 1e-12.
- `norm`: the norm of the scaled residual (default `optx.max_norm`).
- `growth`: the growth factor `G(p, args)` of the map, if it is not given through
    [`curax.fixed_point`][] (which fills it in for [`curax.AbstractReplicatorMap`][]s).
- `max_support`: number of slots (static): the largest support the solver can hold,
    including candidates being tried.
- `num_add`: candidates (local maxima of `G` with `G > 1`) added per pass.
- `stencil`: index offsets added around each candidate (neighbours on a 1-D grid), which
    stops the support creeping towards a peak one point per pass.
- `drop_tol`: slots whose mass falls below this leave the support.
- `max_newton`: Newton iterations per reduced solve.
- `patience`: passes without a new best error before the solve is declared stalled.
- `dynamics_steps`: iterations of the restricted dynamics before each reduced solve (see
    above); default `None`: 200 for [`curax.curate`][] problems with a finite K > 1, 0
    otherwise (K = infinity and user maps, where each step would cost a full evaluation
    of `G`; set it for a user map without a potential).
- `warm_weight`: weight of the uniform distribution on the slots in the start of each
    reduced solve.
"""
