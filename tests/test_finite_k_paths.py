"""The finite-K kernel's fast paths (node skipping, single-formula phi passes, Taylor tables,
windowed passes over ordered points, block interpolants) against exact references: every
(K-1)-tuple enumerated, the multinomial sum over count vectors, the dense two-formula
quadrature node for node, and extended precision."""

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from curax import _maps
from curax._problem import canonical_k, k_bucket

from .helpers import (
    brute_force_growth,
    default_cases,
    flat_dirichlet,
    key_rng,
    multinomial_growth,
    random_case,
)


# The kernel and its parts compiled as the entry points compile them, one program per call:
# run op by op they would compile every primitive, and each loop and branch, as its own
# program (a hundred small compilations per call).
_static_laplace_growth = jax.jit(
    _maps._laplace_growth,
    static_argnums=(2, 3),
    static_argnames=("phi_mode", "table", "windows", "check_spread"),
)


def _laplace_growth(s, p, ks, num_nodes, **kwargs):
    # The kernel as every entry point calls it (`canonical_k`): each row's static K is its
    # bucket's upper bound and the true K an array, so one program serves a bucket's Ks.
    buckets = tuple(k_bucket(k)[1] for k in ks)
    k_values = jnp.asarray(ks, s.dtype)
    return _static_laplace_growth(s, p, buckets, num_nodes, k_values=k_values, **kwargs)


_growth_windowed = jax.jit(_maps._growth_windowed)
_chebyshev_low = jax.jit(_maps._chebyshev_low)
_order_pays = jax.jit(_maps._order_pays)
_reward_growths = eqx.filter_jit(_maps.reward_growths)


def _atoms_on_labels(seed, n, spread, p_atoms):
    # Random rewards over n labels, mass on three of them (one at the lowest reward): the
    # exact multinomial sum gives H at every label, on and off the support.
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.0, spread, n)
    r[0], r[1] = 0.0, spread
    atoms = np.array([0, 2 + rng.integers(n - 2), 1])
    p = np.zeros(n)
    p[atoms] = p_atoms
    return r, p, atoms


@pytest.mark.parametrize(
    "k, spread, p_atoms, mode",
    [
        (2, 50.0, [0.2, 0.3, 0.5], "direct"),
        (8, 30.0, [1e-9, 0.5, 0.5 - 1e-9], "direct"),  # peaked p, mass at the lowest reward
        (65, 50.0, [0.6, 0.3, 0.1], "direct"),  # largest K summed directly
        (66, 50.0, [0.6, 0.3, 0.1], "both"),
        (300, 50.0, [0.001, 0.009, 0.99], "expm1"),
        (300, 5.0, [0.3, 0.3, 0.4], "expm1"),
    ],
)
# Default: both sides of the direct/series boundary (K = 65, 66), the peaked p, one expm1 case.
@default_cases(lambda id: id.startswith(("8-", "65-", "66-", "300-50.0")))
def test_fast_paths_match_multinomial_sum(k, spread, p_atoms, mode):
    # n = 3000 labels in blocks of 1024 points: the phi pass skips nodes per block (Taylor
    # series below t w = 1, nothing above the cut, most blocks without mass) and the growth
    # factors come from the Taylor tables in log w; every label is checked, with the
    # formula for log phi that the static choice makes for this K (asserted).
    from curax._maps import _phi_mode

    n = 3000
    r, p, atoms = _atoms_on_labels(k, n, spread, p_atoms)
    nodes = curax.nodes_for_spread(spread)
    assert _phi_mode((k,), nodes, jnp.float64) == mode
    g = _static_laplace_growth(
        jnp.asarray(r)[None], jnp.asarray(p), (k,), nodes, table=True, windows=True
    )
    w = np.exp(r - r.max())
    expected = multinomial_growth(p[atoms], w[atoms], w, k)
    np.testing.assert_allclose(np.asarray(g[0]), expected, rtol=1e-12, atol=0)
    # Curated distribution: mass 1, as the exact map.
    # (the dense two-formula rule gives the same 1.3e-13 at K = 300, peaked p).
    assert abs(float(jnp.sum(jnp.asarray(p) * g[0])) - 1) <= 5e-13


@default_cases(1)
@pytest.mark.parametrize("ks", [(2, 8, 64), (300, 300, 300)])
def test_fast_paths_match_dense_quadrature(ks, getkey):
    # Grid rewards with random centres and curvatures (smooth: blocks see few nodes) and a
    # random p: node skipping, the single-formula phi pass and the Taylor tables against the
    # dense two-formula quadrature of the design notes, node for node the same rule.
    n = 5000
    x = jnp.linspace(-1.0, 1.0, n)
    c = jr.uniform(getkey(), (3, 1), minval=-1.0, maxval=1.0)
    a = jr.uniform(getkey(), (3, 1), minval=1.0, maxval=12.0)
    s = -a * (x[None, :] - c) ** 2
    p = flat_dirichlet(getkey(), n)
    nodes = curax.nodes_for_spread(float(jnp.max(jnp.max(s, 1) - jnp.min(s, 1))))
    fast = _laplace_growth(s, p, ks, nodes, table=True, windows=True)
    dense = _laplace_growth(s, p, ks, nodes, phi_mode="both", table=False, windows=False)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(dense), rtol=1e-12, atol=0)


def _ordered(r):
    # The problem's cached order of the points (by reward), as `curax.curate` passes it.
    order = curax.CurationProblem(jnp.asarray(r)[None], k=2).finite_order
    assert order is not None
    return order


@default_cases(lambda id: id in ("5.0-5", "50.0-2", "50.0-64"))
@pytest.mark.parametrize("k", [2, 3, 5, 8, 64])
@pytest.mark.parametrize("spread", [5.0, 50.0])
def test_ordered_paths_match_enumeration(k, spread):
    # Tiny supports, one block holding every point (its rewards spread over the whole range:
    # several windows and the Chebyshev part over a wide range of w), forced on; every
    # (k-1)-tuple enumerated, points off the support included.
    for seed in range(2):
        n = 5 + seed
        r, p = random_case(seed, n, spread, zero_mass=True)
        nodes = curax.nodes_for_spread(spread)
        expected = brute_force_growth(p, np.exp(r - r.max()), min(k, 6))
        g = _laplace_growth(
            jnp.asarray(r)[None],
            jnp.asarray(p),
            (min(k, 6),),
            nodes,
            windows=True,
            table=False,
            order=_ordered(r),
        )
        np.testing.assert_allclose(np.asarray(g[0]), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "k, spread",
    [(2, 20.0), (8, 20.0), (8, 50.0), (64, 50.0), (300, 50.0), (300, 1.0), (2, 100.0)],
)
@default_cases(lambda id: id in ("True-2-20.0", "True-300-50.0", "True-2-100.0"))
@pytest.mark.parametrize("table", [False, True])
def test_ordered_paths_match_multinomial_sum_on_labels(k, spread, table):
    # Random rewards over 3000 labels (no geometry), ordered by reward: blocks of 1024 points,
    # two atoms in the top block (the Chebyshev interpolation sums two distinct weights), one
    # at the lowest reward. Both second passes (windows on ordered points, Taylor tables).
    n = 3000
    rng = np.random.default_rng(k)
    r = rng.uniform(0.0, spread, n)
    r[0], r[1] = 0.0, spread
    order = np.asarray(_ordered(r))
    atoms = np.array([0, order[0, 300], 1])
    p = np.zeros(n)
    p[atoms] = [0.5, 0.3, 0.2]
    nodes = curax.nodes_for_spread(spread)
    g = _laplace_growth(
        jnp.asarray(r)[None],
        jnp.asarray(p),
        (k,),
        nodes,
        windows=True,
        table=table,
        order=jnp.asarray(order),
    )
    w = np.exp(r - r.max())
    expected = multinomial_growth(p[atoms], w[atoms], w, k)
    np.testing.assert_allclose(np.asarray(g[0]), expected, rtol=1e-12, atol=0)


@default_cases(1)
@pytest.mark.parametrize("ks", [(2, 8, 64), (300, 300, 300)])
def test_ordered_paths_match_dense_quadrature_on_labels(ks, getkey):
    # Random labels with a full-support random p: every block of the ordered points carries
    # mass. The ordered paths (and a random order: any order gives the same map) against the
    # dense two-formula quadrature, node for node the same rule.
    n = 5000
    s = jr.uniform(getkey(), (3, n), minval=0.0, maxval=40.0)
    p = flat_dirichlet(getkey(), n)
    problem = curax.CurationProblem(s, k=ks)
    nodes = problem.quadrature_nodes
    dense = _laplace_growth(s, p, ks, nodes, phi_mode="both", table=False, windows=False)
    shuffled = jnp.stack([jr.permutation(getkey(), n) for _ in range(3)]).astype(jnp.int32)
    for order in (problem.finite_order, shuffled):
        fast = _laplace_growth(s, p, ks, nodes, windows=True, table=False, order=order)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(dense), rtol=1e-12, atol=0)


def test_finite_order_cache():
    # A permutation of each finite-K row's points by decreasing reward (up to its 0.05-nat
    # bins); dropped by map_points (its indices refer to the old support) and absent when the
    # rewards are traced at construction; the map is the same without it.
    rng = np.random.default_rng(0)
    r = rng.uniform(0.0, 30.0, (3, 4000))
    problem = curax.CurationProblem(jnp.asarray(r), k=(4, None, 9), temperature=2.0)
    order = np.asarray(problem.finite_order)
    assert order.shape == (2, 4000)
    for row, o in zip(r[[0, 2]] / 2.0, order):
        assert np.array_equal(np.sort(o), np.arange(4000))
        assert np.all(np.diff(row[o]) <= 0.05 + 1e-12)
    assert problem.map_points(lambda a: a[..., :100]).finite_order is None
    seen = []

    @jax.jit
    def build(r):
        seen.append(curax.CurationProblem(r, k=4).finite_order is None)
        return r

    build(jnp.asarray(r))
    assert seen == [True]
    assert curax.CurationProblem(jnp.asarray(r), k=None).finite_order is None
    p = jnp.asarray(rng.dirichlet(np.ones(4000)))
    plain = eqx.tree_at(lambda pr: pr.finite_order, problem, None)
    np.testing.assert_allclose(
        np.asarray(curax.curate(p, problem)), np.asarray(curax.curate(p, plain)), rtol=1e-12
    )


@pytest.mark.study
def test_ordered_paths_differentiate_like_the_dense_quadrature():
    # Solvers differentiate the map (jacfwd in ActiveSetNewton, grad in sweeps): the ordered
    # paths (gathers, Chebyshev interpolation, scattered windows) against the dense rule.
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.uniform(0.0, 20.0, 3000))[None]
    problem = curax.CurationProblem(s, k=8)
    p = jnp.asarray(rng.dirichlet(np.ones(3000)))
    v = jnp.asarray(rng.normal(size=3000))
    v = v - jnp.mean(v)

    def fast(p):
        kw = dict(windows=True, table=False, order=problem.finite_order)
        return _laplace_growth(s, p, (8,), problem.quadrature_nodes, **kw)[0, :50]

    def dense(p):
        kw = dict(windows=False, table=False, phi_mode="both")
        return _laplace_growth(s, p, (8,), problem.quadrature_nodes, **kw)[0, :50]

    _, t_fast = jax.jvp(fast, (p,), (v,))
    _, t_dense = jax.jvp(dense, (p,), (v,))
    np.testing.assert_allclose(np.asarray(t_fast), np.asarray(t_dense), rtol=1e-11, atol=0)
    # Off the simplex the two formulas for log phi are different functions (log of a sum
    # with mass sum p, log1p of the expm1 sum): compare gradients along the simplex.
    g_fast = jax.grad(lambda p: jnp.sum(fast(p)))(p)
    g_dense = jax.grad(lambda p: jnp.sum(dense(p)))(p)
    g_fast, g_dense = g_fast - jnp.mean(g_fast), g_dense - jnp.mean(g_dense)
    scale = float(jnp.max(jnp.abs(g_dense)))
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_dense), rtol=0, atol=1e-12 * scale)


def _quadratic_spread(key, n, m, spread):
    # The benchmark's "quadratic, spread s" family: 1-D quadratic rewards with random centres,
    # rescaled to span exactly `spread` nats (smooth: consecutive points have close rewards).
    # Drawn by numpy from the key: test data, not JAX programs to compile for every shape.
    rng = key_rng(key)
    x = np.linspace(-1.0, 1.0, n)
    c = rng.uniform(-1.0, 1.0, (m, 1))
    r = -((x[None, :] - c) ** 2)
    lo, hi = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
    return jnp.asarray(spread * (r - lo) / (hi - lo))


def _random_p(key, n, support):
    # Random p with full support, or with a random `support` fraction of the points.
    rng = key_rng(key)
    p = rng.dirichlet(np.ones(n))
    if support < 1.0:
        p = np.where(rng.uniform(size=n) < support, p, 0.0)
    return jnp.asarray(p / p.sum())


def test_block_interpolants_meet_their_bounds():
    # The two interpolants of the windowed passes at their worst case, every node at the top
    # of its range (t_k delta = rho): pass 1's Chebyshev interpolant in t of
    # sum p expm1(-t (w - w_lo)) / t (bound 8.8e-19 relative at rho = 0.1, 8 points) and pass
    # 2's interpolant in w of sum_k a_k t_k e^{-t_k w} (1.1e-17 at rho = 2, 16 points),
    # against the sums in extended precision. With rho = 1 for 8 points the first bound is
    # 1.3e-10; rho = 4 for 16 points gives 1.3e-12: an error in either bound shows here.
    from curax._maps import _RHO1, _RHO2

    rng = np.random.default_rng(0)
    c, q = 1000, 12
    for w_lo, delta in [(0.3, 0.05), (1e-6, 0.9), (0.999, 1e-3)]:
        w = w_lo + delta * np.sort(rng.uniform(size=c))
        w[0], w[-1] = w_lo, w_lo + delta
        p = rng.dirichlet(np.ones(c))
        p[rng.uniform(size=c) < 0.3] = 0.0
        t = (_RHO1 / delta) * np.sort(np.concatenate([[1.0], rng.uniform(size=q - 1)]))
        d = w - w_lo
        h = _chebyshev_low(
            jnp.asarray(d)[None, None],
            jnp.asarray(p)[None, None],
            jnp.asarray([[delta]]),
            jnp.asarray(t)[None],
        )[0, 0]
        ld = np.asarray(d, np.longdouble)
        exact = np.array(
            [np.sum(p * np.expm1(-tk * ld)) / tk for tk in np.asarray(t, np.longdouble)]
        )
        np.testing.assert_allclose(np.asarray(h), exact.astype(np.float64), rtol=1e-14, atol=0)

        t2 = (_RHO2 / delta) * np.sort(np.concatenate([[1.0], rng.uniform(size=q - 1)]))
        a = rng.uniform(0.1, 1.0, q)
        g = _growth_windowed(
            jnp.log(jnp.asarray(w))[None], jnp.asarray(a)[None], jnp.asarray(t2)[None]
        )[0]
        lw_, lt, la = (np.asarray(v, np.longdouble) for v in (w, t2, a))
        exact2 = np.sum(la[:, None] * lt[:, None] * lw_[None] * np.exp(-lt[:, None] * lw_[None]), 0)
        np.testing.assert_allclose(np.asarray(g), exact2.astype(np.float64), rtol=1e-14, atol=0)


@default_cases(lambda id: id in ("1.0-4", "0.2-300"))
@pytest.mark.parametrize("k", [2, 4, 64, 65, 300])
@pytest.mark.parametrize("support", [1.0, 0.2])
def test_spread_one_family_matches_dense_quadrature(k, support, getkey):
    # The benchmark's spread-1 family (Q = 28 < 64 nodes: the windowed passes run because the
    # problem caches a point order) with random p, full and sparse support, against the
    # dense two-formula quadrature: through `reward_growths` (the run-time choice of order)
    # and both orders explicitly (the points' own: no order given). K = 2, 4, 64, 65 sum phi
    # directly, 300 the expm1 sums: both formulas of `_chebyshev_low` are checked.
    n, m = 6000, 3
    s = _quadratic_spread(getkey(), n, m, 1.0)
    problem = curax.CurationProblem(s, k=k)
    q = problem.quadrature_nodes
    assert q < 64
    p = _random_p(getkey(), n, support)
    dense = _laplace_growth(s, p, (k,) * m, q, phi_mode="both", table=False, windows=False)
    for g in (
        _reward_growths(p, canonical_k(problem)),
        _laplace_growth(s, p, (k,) * m, q, windows=True),
        _laplace_growth(s, p, (k,) * m, q, windows=True, order=problem.finite_order),
    ):
        np.testing.assert_allclose(np.asarray(g), np.asarray(dense), rtol=1e-12, atol=0)


def test_order_choice_follows_block_widths(getkey):
    # The run-time choice between the points' own order and the cached order by reward: kept
    # for the smooth spread-1 family at the benchmark's n = 1e6 (blocks of 1,000 grid points
    # span ~0.002 nats), gathered for random labels with full support (own blocks span the
    # whole range), kept for three atoms (no block holds two rewards).
    def pays(s, p, k):
        u = -3.362916422617345 + 0.3 * jnp.arange(curax.nodes_for_spread(3.0), dtype=jnp.float64)
        t = jnp.exp(-jnp.log(1.0 * k) + u - jnp.exp(-u))[None].repeat(s.shape[0], 0)
        return bool(_order_pays(s - jnp.max(s, axis=1, keepdims=True), p, t))

    smooth = _quadratic_spread(getkey(), 1_000_000, 2, 1.0)
    assert not pays(smooth, _random_p(getkey(), 1_000_000, 1.0), 4)
    n = 200_000
    labels = jr.uniform(getkey(), (2, n), minval=0.0, maxval=3.0)
    assert pays(labels, _random_p(getkey(), n, 1.0), 4)
    atoms = jnp.zeros(n).at[jnp.array([0, 5000, 150_000])].set(jnp.array([0.5, 0.3, 0.2]))
    assert not pays(labels, atoms, 4)


@default_cases(lambda id: id in ("0.1-4", "3.0-300"))
@pytest.mark.parametrize("k", [2, 4, 64, 65, 300])
@pytest.mark.parametrize("spread", [0.1, 1.0, 3.0])
def test_windowed_paths_match_multinomial_sum_narrow_spreads(k, spread):
    # Narrow random labels (spreads 0.1 to 3 nats, Q = 25 to 35), three atoms: the exact
    # multinomial sum at every label against both windowed orders, the labels' own (wide
    # blocks: most nodes summed point by point, in groups of needy blocks) and the cached
    # order by reward (as `curax.curate` passes it; the map then chooses at run time).
    n = 4000
    r, p, atoms = _atoms_on_labels(k + int(10 * spread), n, spread, [0.5, 0.3, 0.2])
    nodes = curax.nodes_for_spread(spread)
    w = np.exp(r - r.max())
    expected = multinomial_growth(p[atoms], w[atoms], w, k)
    for order in (None, _ordered(r)):
        g = _laplace_growth(
            jnp.asarray(r)[None], jnp.asarray(p), (k,), nodes, windows=True, order=order
        )
        np.testing.assert_allclose(np.asarray(g[0]), expected, rtol=1e-12, atol=0)


@default_cases(lambda id: id == "labels")  # the gathered, scattered branch
@pytest.mark.parametrize("family", ["spread 1", "labels"])
def test_windowed_paths_differentiate_like_the_dense_quadrature(family, getkey):
    # Derivatives w.r.t. p (along the simplex) and w.r.t. the rewards through both branches
    # of the run-time order choice (points' own order for the smooth family, the cached
    # order for labels, sparse p), against the dense rule.
    n = 3000
    if family == "spread 1":
        s = _quadratic_spread(getkey(), n, 2, 1.0)
        p = _random_p(getkey(), n, 1.0)
    else:
        s = jr.uniform(getkey(), (2, n), minval=0.0, maxval=3.0)
        p = _random_p(getkey(), n, 0.3)
    problem = curax.CurationProblem(s, k=4)
    q = problem.quadrature_nodes
    v = jnp.where(p > 0, jr.normal(getkey(), (n,)), 0.0)
    v = v - p * jnp.sum(v) / jnp.sum(p)
    ds = jr.normal(getkey(), s.shape)

    def fast(s, p):
        return _laplace_growth(s, p, (4, 4), q, order=problem.finite_order)[:, ::37]

    def dense(s, p):
        kw = dict(windows=False, table=False, phi_mode="both")
        return _laplace_growth(s, p, (4, 4), q, **kw)[:, ::37]

    for args in [(s, p)]:
        _, t_fast = jax.jvp(fast, args, (ds, v))
        _, t_dense = jax.jvp(dense, args, (ds, v))
        scale = float(jnp.max(jnp.abs(t_dense)))
        np.testing.assert_allclose(
            np.asarray(t_fast), np.asarray(t_dense), rtol=0, atol=1e-11 * scale
        )
    # Rewards gradient: 1e-10 of its largest entry. (At a block's extreme point, where the
    # sorted pass 2 evaluates its interpolant at the interval's end, the measured error is
    # ~2.4e-11 of it; the previous kernel's was 4e-12.)
    g_fast = jax.grad(lambda s: jnp.sum(fast(s, p)))(s)
    g_dense = jax.grad(lambda s: jnp.sum(dense(s, p)))(s)
    scale = float(jnp.max(jnp.abs(g_dense)))
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_dense), rtol=0, atol=1e-10 * scale)
