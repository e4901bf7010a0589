import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from .helpers import brute_force_curate, brute_force_growth, default_cases, multinomial_growth


def _random_case(seed, n, spread, zero_mass=False):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.0, spread, n)
    r[0], r[-1] = 0.0, spread
    p = rng.dirichlet(np.ones(n))
    if zero_mass:
        p[rng.integers(n)] = 0.0
        p /= p.sum()
    return r, p


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("spread", [0.3, 5.0, 50.0])
@pytest.mark.parametrize("zero_mass", [False, True])
def test_finite_k_matches_enumeration(k, spread, zero_mass):
    # Every (k-1)-tuple enumerated: exact, independent of the quadrature. Includes points off
    # the support (zero mass) whose growth factor decides stability.
    for seed in range(3):
        n = 2 + (seed + k) % 4
        r, p = _random_case(seed, n, spread, zero_mass)
        problem = curax.CurationProblem(jnp.asarray(r), k=k)
        g = np.asarray(curax.growth(jnp.asarray(p), problem))
        expected = brute_force_growth(p, np.exp(r - r.max()), k)
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [2, 17, 100, 1000])
@pytest.mark.parametrize("spread", [1.0, 50.0])
def test_finite_k_matches_multinomial_sum_large_k(k, spread):
    # Three atoms: the exact multinomial sum over count vectors reaches K = 1,000.
    r_atoms = np.array([0.0, 0.4 * spread, spread])
    p_atoms = np.array([0.5, 0.3, 0.2])
    r_off = np.array([0.1 * spread, 0.7 * spread, 0.99 * spread])
    r = np.concatenate([r_atoms, r_off])
    p = np.concatenate([p_atoms, np.zeros(3)])
    problem = curax.CurationProblem(jnp.asarray(r), k=k)
    g = np.asarray(curax.growth(jnp.asarray(p), problem))
    w = np.exp(r - r.max())
    expected = multinomial_growth(p_atoms, w[:3], w, k)
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [2, 10, 1000, 100_000])
@pytest.mark.parametrize("spread", [1.0, 50.0])
def test_mass_sums_to_one(k, spread, getkey):
    x = curax.grid_1d(-1.0, 1.0, 3000)
    problem = curax.CurationProblem(spread * x**2, k=k)
    p = jr.dirichlet(getkey(), jnp.ones(3000))
    out = curax.curate(p, problem)
    # (K - 1) log(phi) amplifies the rounding of log(phi) by K: ~1e-13 is float64's floor at
    # K = 1e5 (measured 2e-14 ... 1.2e-13 over seeds).
    assert abs(float(jnp.sum(out)) - 1) <= (1e-13 if k <= 1000 else 5e-13)
    assert bool(jnp.all(out >= 0))


def test_quadrature_node_counts():
    # Design notes, section 7: Q does not depend on K and grows linearly with the spread.
    assert [curax.nodes_for_spread(d) for d in (0.0, 1.0, 10.0, 50.0)] == [24, 28, 59, 194]
    for d in (0.0, 1.0, 10.0, 50.0, 300.0):
        q = curax.nodes_for_spread(d)
        assert q <= (d + np.log(d + 32) + 5) / 0.3
        assert curax.spread_for_nodes(q) >= d
    x = curax.grid_1d(0.0, 1.0, 11)
    assert curax.CurationProblem(50 * x, k=7).quadrature_nodes == 194
    assert curax.CurationProblem(50 * x, k=None).quadrature_nodes == 0


def test_infinite_k_is_the_limit_of_finite_k():
    x = curax.grid_1d(-2.0, 2.0, 41)
    rewards = jnp.stack([-((x - 1) ** 2), -2 * (x + 1) ** 2])
    p = jnp.exp(-(x**2)) / jnp.sum(jnp.exp(-(x**2)))
    limit = curax.curate(p, curax.CurationProblem(rewards, jnp.array([0.4, 0.6])))
    ks = [4, 16, 64, 256, 1024, 4096]
    errs = [
        float(
            jnp.max(
                jnp.abs(
                    curax.curate(p, curax.CurationProblem(rewards, jnp.array([0.4, 0.6]), k))
                    - limit
                )
            )
        )
        for k in ks
    ]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    # The gap closes like 1/K (first-order expansion of E[1 / (w + S)] around S = (K-1) E[w]).
    slope = np.polyfit(np.log(ks[2:]), np.log(errs[2:]), 1)[0]
    assert -1.2 < slope < -0.8, slope


def test_several_rewards_temperature_reference_match_enumeration():
    rng = np.random.default_rng(3)
    n = 4
    rewards = rng.normal(size=(3, n)) * 3
    weights = np.array([0.2, 0.5, 0.3])
    p = rng.dirichlet(np.ones(n))
    ref = rng.dirichlet(np.ones(n))
    for k in (None, 1, 3, 5):
        problem = curax.CurationProblem(
            jnp.asarray(rewards), jnp.asarray(weights), k, 0.7, jnp.asarray(ref), 0.25
        )
        out = np.asarray(curax.curate(jnp.asarray(p), problem))
        expected = brute_force_curate(p, rewards, weights, k, 0.7, ref, 0.25)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


def test_heterogeneous_population_is_mixture_of_types():
    # Curator types with their own reward and K: the map is the alpha-mixture of each type's map.
    rng = np.random.default_rng(4)
    n = 5
    rewards = rng.normal(size=(3, n)) * 2
    weights = np.array([0.5, 0.3, 0.2])
    ks = (2, None, 4)
    p = rng.dirichlet(np.ones(n))
    problem = curax.CurationProblem(jnp.asarray(rewards), jnp.asarray(weights), k=ks)
    out = np.asarray(curax.curate(jnp.asarray(p), problem))
    expected = sum(
        a * brute_force_curate(p, rewards[i : i + 1], [1.0], ks[i]) for i, a in enumerate(weights)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_temperature_is_reward_scaling(getkey):
    r = jr.normal(getkey(), (2, 30))
    p = jr.dirichlet(getkey(), jnp.ones(30))
    for k in (None, 5):
        a = curax.curate(p, curax.CurationProblem(r, k=k, temperature=jnp.array([0.5, 2.0])))
        b = curax.curate(p, curax.CurationProblem(r / jnp.array([[0.5], [2.0]]), k=k))
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("k", [None, 2, 9])
def test_extreme_rewards_stay_finite_and_zero_mass_stays_zero(k):
    r = jnp.array([[-700.0, 0.0, 700.0, 350.0, -350.0]])
    p = jnp.array([0.3, 0.3, 0.0, 0.4, 0.0])
    problem = curax.CurationProblem(r[:, [0, 1, 3]], k=k)  # spread 1050 on the support
    p3 = np.array([0.3, 0.3, 0.4])
    out3 = curax.curate(jnp.asarray(p3), problem)
    assert bool(jnp.all(jnp.isfinite(out3)))
    # Rewards 1,050 nats apart: the best candidate always wins, so the law of the kept sample is
    # that of the maximum of K draws (K -> inf: a Dirac on the best point).
    if k is None:
        rr = np.array([-700.0, 0.0, 350.0])
        expected = p3 * np.exp(rr - 350.0) / (p3 @ np.exp(rr - 350.0))
    else:
        expected = np.diff(np.concatenate([[0.0], np.cumsum(p3) ** k]))
    np.testing.assert_allclose(out3, expected, rtol=1e-12, atol=1e-300)
    full = curax.CurationProblem(r, k=k)
    out = curax.curate(p, full)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(out[2]) == 0.0 and float(out[4]) == 0.0
    g = curax.growth(p, full)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(g[2]) > 1.0  # the point above the support would grow if given mass


@default_cases(1)
@pytest.mark.parametrize("k", [None, 3, 64])
def test_float32_accuracy(k, getkey):
    # float32 reaches ~1e-5 relative (documented in the README); float64 is the reference.
    r = 10 * jr.uniform(getkey(), (2, 200))
    p = jr.dirichlet(getkey(), jnp.ones(200))
    prob64 = curax.CurationProblem(r, jnp.array([0.3, 0.7]), k)
    prob32 = curax.CurationProblem(r.astype(jnp.float32), jnp.array([0.3, 0.7], jnp.float32), k)
    out64 = curax.curate(p, prob64)
    out32 = curax.curate(p.astype(jnp.float32), prob32)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32, np.float64), out64, rtol=2e-5, atol=1e-9)


def test_trajectory_is_iterated_curate():
    x, problem = curax.two_basin_problem(n=51, separation=2.0, q=0.3, k=3)
    ps = curax.trajectory(problem.uniform(), problem, 5)
    assert ps.shape == (6, 51)
    p = problem.uniform()
    for t in range(1, 6):
        p = curax.curate(p, problem)
        np.testing.assert_allclose(ps[t], p, rtol=1e-13, atol=1e-16)


def test_potential_and_fw_gap_certify_suboptimality():
    # Phi* - Phi(p) <= fw_gap(p); Phi* bounded below by a dense search over the 2-simplex.
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.normal(size=(2, 3)) * 2)
    problem = curax.CurationProblem(rewards, jnp.array([0.35, 0.65]))
    g = np.linspace(0, 1, 401)
    a, b = np.meshgrid(g, g, indexing="ij")
    keep = a + b <= 1
    simplex = jnp.asarray(np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1))
    phis = jax.vmap(lambda q: curax.potential(q, problem))(jnp.clip(simplex, 0.0))
    phi_star_lb = float(jnp.max(phis))
    for seed in range(5):
        p = jnp.asarray(np.random.default_rng(seed).dirichlet(np.ones(3)))
        gap = float(curax.fw_gap(p, problem))
        assert gap >= 0
        assert phi_star_lb - float(curax.potential(p, problem)) <= gap + 1e-12


def test_jit_vmap_grad(getkey):
    x, problem = curax.two_basin_problem(n=31, separation=2.0, q=0.4, k=4)
    ps = jr.dirichlet(getkey(), jnp.ones(31), (5,))
    batched = jax.vmap(curax.curate, in_axes=(0, None))(ps, problem)
    for i in range(5):
        np.testing.assert_allclose(batched[i], curax.curate(ps[i], problem), rtol=1e-13)

    def make(q):
        return curax.CurationProblem(problem.rewards, jnp.stack([q, 1 - q]), k=4)

    qs = jnp.linspace(0.1, 0.9, 4)
    out = jax.vmap(lambda q: curax.curate(ps[0], make(q)))(qs)
    for i, q in enumerate(qs):
        np.testing.assert_allclose(out[i], curax.curate(ps[0], make(q)), rtol=1e-13)

    # Gradient through the exact map w.r.t. the rewards, against central differences.
    v = jr.normal(getkey(), problem.rewards.shape)

    def f(rewards):
        prob = curax.CurationProblem(
            rewards, problem.weights, k=4, quadrature_nodes=curax.nodes_for_spread(40.0)
        )
        return jnp.sum(curax.curate(ps[0], prob) * x)

    grad = jax.grad(f)(problem.rewards)
    eps = 1e-6
    fd = (f(problem.rewards + eps * v) - f(problem.rewards - eps * v)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(grad * v), fd, rtol=1e-6)


def test_replicator_map_wraps_user_growth():
    E = jnp.array([[1.0, 2.0, 0.5], [0.5, 1.0, 3.0]])
    fn = curax.ReplicatorMap(lambda p, E: E.T @ (jnp.array([0.5, 0.5]) / (E @ p)))
    p = jnp.array([0.2, 0.3, 0.5])
    problem = curax.CurationProblem(jnp.log(E))
    np.testing.assert_allclose(fn(p, E), curax.curate(p, problem), rtol=1e-14)
    np.testing.assert_allclose(fn.growth(p, E), curax.curate.growth(p, problem), rtol=1e-14)


# ---------------------------------------------------------------------------- bad input


def _prob():
    return curax.CurationProblem(jnp.zeros((2, 3)), jnp.array([0.5, 0.5]), k=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=jnp.zeros((2, 3, 4))), "rewards"),
        (dict(rewards=jnp.array([[0.0, jnp.nan, 1.0]])), "NaN or inf"),
        (dict(rewards=jnp.array([[0.0, jnp.inf, 1.0]])), "NaN or inf"),
        (dict(rewards=jnp.zeros((2, 3)), weights=jnp.array([0.5, 0.6])), "sum to 1"),
        (dict(rewards=jnp.zeros((2, 3)), weights=jnp.array([1.5, -0.5])), "non-negative"),
        (dict(rewards=jnp.zeros((2, 3)), weights=jnp.array([1.0])), r"shape \(2,\)"),
        (dict(rewards=jnp.zeros((1, 3)), k=0), ">= 1"),
        (dict(rewards=jnp.zeros((1, 3)), k=2.5), "positive int"),
        (dict(rewards=jnp.zeros((2, 3)), k=(2,)), "length m=2"),
        (dict(rewards=jnp.zeros((1, 3)), temperature=0.0), "temperature"),
        (dict(rewards=jnp.zeros((1, 3)), temperature=-1.0), "temperature"),
        (dict(rewards=jnp.zeros((1, 3)), reference_weight=0.5), "needs a `reference`"),
        (
            dict(
                rewards=jnp.zeros((1, 3)),
                reference=jnp.array([0.5, 0.5, 0.5]),
                reference_weight=0.5,
            ),
            "reference",
        ),
        (
            dict(rewards=jnp.zeros((1, 3)), reference=jnp.ones(3) / 3, reference_weight=1.5),
            r"\[0, 1\]",
        ),
        (
            dict(rewards=jnp.zeros((1, 3)), reference=jnp.ones(4) / 4, reference_weight=0.5),
            r"shape \(3,\)",
        ),
    ],
)
def test_bad_problem_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        curax.CurationProblem(**kwargs)


@pytest.mark.parametrize(
    "p, match",
    [
        (jnp.array([-0.2, 0.6, 0.6]), "non-negative"),
        (jnp.array([0.2, 0.2, 0.2]), "sum to 1"),
        (jnp.array([0.5, jnp.nan, 0.5]), "NaN"),
    ],
)
def test_bad_distribution_is_refused_eagerly_and_under_jit(p, match):
    problem = _prob()
    with pytest.raises(Exception, match=match):
        curax.curate(p, problem)
    with pytest.raises(Exception, match=match):
        jax.jit(curax.curate)(p, problem)
    with pytest.raises(Exception, match=match):
        jax.vmap(curax.curate, in_axes=(0, None))(jnp.stack([jnp.ones(3) / 3, p]), problem)


def test_wrong_shape_distribution_is_refused():
    with pytest.raises(ValueError, match=r"`p` must have shape \(3,\)"):
        curax.curate(jnp.ones(4) / 4, _prob())


def test_traced_problem_values_are_checked_inside_jit():
    @jax.jit
    def f(w):
        prob = curax.CurationProblem(jnp.zeros((2, 3)), w, k=2)
        return curax.curate(jnp.ones(3) / 3, prob)

    # Traced rewards get the default node count (64 nats): still exact to the 1e-12 budget.
    np.testing.assert_allclose(f(jnp.array([0.5, 0.5])), jnp.ones(3) / 3, rtol=1e-12)
    with pytest.raises(Exception, match="sum to 1"):
        f(jnp.array([0.5, 0.7]))


def test_spread_beyond_quadrature_is_refused():
    prob = curax.CurationProblem(jnp.array([[0.0, 10.0, 40.0]]), k=3, quadrature_nodes=40)
    with pytest.raises(Exception, match="quadrature_nodes"):
        curax.curate(jnp.ones(3) / 3, prob)


def test_error_if_is_not_dead_code_under_eqx_jit():
    f = eqx.filter_jit(lambda p: curax.curate(p, _prob()))
    with pytest.raises(Exception, match="non-negative"):
        f(jnp.array([-0.5, 1.0, 0.5]))


def test_grid_2d_rewards():
    pts = curax.grid_2d(-1.0, 1.0, (4, 5))
    assert pts.shape == (20, 2)
    r = curax.quadratic_reward(pts, jnp.array([0.5, 0.2]), curvature=2.0)
    expected = -2.0 * ((np.asarray(pts)[:, 0] - 0.5) ** 2 + (np.asarray(pts)[:, 1] - 0.2) ** 2)
    np.testing.assert_allclose(r, expected, rtol=1e-14)
    b = curax.gaussian_bump_reward(pts, jnp.array([0.0, 0.0]), width=0.5)
    assert float(b.max()) <= 1.0 and b.shape == (20,)


def test_two_basin_problem_traces_in_its_parameters():
    # Sweeps vary the separation inside jit/vmap.
    def gap(sep):
        _, problem = curax.two_basin_problem(n=41, separation=sep, q=0.3)
        return curax.fw_gap(problem.uniform(), problem)

    seps = jnp.array([2.0, 3.0])
    batched = jax.vmap(gap)(seps)
    for i, sep in enumerate([2.0, 3.0]):
        np.testing.assert_allclose(batched[i], gap(sep), rtol=1e-13)


def test_new_rewards_reuse_compiled_code():
    # Static fields must not encode the reward values, or every new reward set recompiles.
    x = curax.grid_1d(-1.0, 1.0, 50)
    a = curax.CurationProblem(jnp.stack([-(x**2), x]), k=None)
    b = curax.CurationProblem(jnp.stack([-3 * x**2, 2 * x]), k=None)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    traces = []

    @eqx.filter_jit
    def f(p, problem):
        traces.append(None)
        return curax.curate(p, problem)

    f(a.uniform(), a)
    f(b.uniform(), b)
    assert len(traces) == 1


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
def test_fast_paths_match_multinomial_sum(k, spread, p_atoms, mode):
    # n = 3000 labels in blocks of 1024 points: the phi pass skips nodes per block (Taylor
    # series below t w = 1, nothing above the cut, most blocks without mass) and the growth
    # factors come from the Taylor tables in log w; every label is checked, with the
    # formula for log phi that the static choice makes for this K (asserted).
    from curax._maps import _laplace_growth, _phi_mode

    n = 3000
    r, p, atoms = _atoms_on_labels(k, n, spread, p_atoms)
    nodes = curax.nodes_for_spread(spread)
    assert _phi_mode((k,), nodes, jnp.float64) == mode
    g = _laplace_growth(jnp.asarray(r)[None], jnp.asarray(p), (k,), nodes, table=True, windows=True)
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
    from curax._maps import _laplace_growth

    n = 5000
    x = jnp.linspace(-1.0, 1.0, n)
    c = jr.uniform(getkey(), (3, 1), minval=-1.0, maxval=1.0)
    a = jr.uniform(getkey(), (3, 1), minval=1.0, maxval=12.0)
    s = -a * (x[None, :] - c) ** 2
    p = jr.dirichlet(getkey(), jnp.ones(n))
    nodes = curax.nodes_for_spread(float(jnp.max(jnp.max(s, 1) - jnp.min(s, 1))))
    fast = _laplace_growth(s, p, ks, nodes, table=True, windows=True)
    dense = _laplace_growth(s, p, ks, nodes, phi_mode="both", table=False, windows=False)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(dense), rtol=1e-12, atol=0)


def _ordered(r):
    # The problem's cached order of the points (by reward), as `curax.curate` passes it.
    order = curax.CurationProblem(jnp.asarray(r)[None], k=2).finite_order
    assert order is not None
    return order


@pytest.mark.parametrize("k", [2, 3, 5, 8, 64])
@pytest.mark.parametrize("spread", [5.0, 50.0])
def test_ordered_paths_match_enumeration(k, spread):
    # Tiny supports, one block holding every point (its rewards spread over the whole range:
    # several windows and the Chebyshev part over a wide range of w), forced on; every
    # (k-1)-tuple enumerated, points off the support included.
    from curax._maps import _laplace_growth

    for seed in range(2):
        n = 5 + seed
        r, p = _random_case(seed, n, spread, zero_mass=True)
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
@default_cases(lambda id: id.startswith("True"))
@pytest.mark.parametrize("table", [False, True])
def test_ordered_paths_match_multinomial_sum_on_labels(k, spread, table):
    # Random rewards over 3000 labels (no geometry), ordered by reward: blocks of 1024 points,
    # two atoms in the top block (the Chebyshev interpolation sums two distinct weights), one
    # at the lowest reward. Both second passes (windows on ordered points, Taylor tables).
    from curax._maps import _laplace_growth

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
    from curax._maps import _laplace_growth

    n = 5000
    s = jr.uniform(getkey(), (3, n), minval=0.0, maxval=40.0)
    p = jr.dirichlet(getkey(), jnp.ones(n))
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
    from curax._maps import _laplace_growth

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
    x = jnp.linspace(-1.0, 1.0, n)
    c = jr.uniform(key, (m, 1), minval=-1.0, maxval=1.0)
    r = -((x[None, :] - c) ** 2)
    lo, hi = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
    return spread * (r - lo) / (hi - lo)


def _random_p(key, n, support):
    # Random p with full support, or with a random `support` fraction of the points.
    k1, k2 = jr.split(key)
    p = jr.dirichlet(k1, jnp.ones(n))
    if support < 1.0:
        p = jnp.where(jr.uniform(k2, (n,)) < support, p, 0.0)
    return p / jnp.sum(p)


def test_block_interpolants_meet_their_bounds():
    # The two interpolants of the windowed passes at their worst case, every node at the top
    # of its range (t_k delta = rho): pass 1's Chebyshev interpolant in t of
    # sum p expm1(-t (w - w_lo)) / t (bound 8.8e-19 relative at rho = 0.1, 8 points) and pass
    # 2's interpolant in w of sum_k a_k t_k e^{-t_k w} (1.1e-17 at rho = 2, 16 points),
    # against the sums in extended precision. With rho = 1 for 8 points the first bound is
    # 1.3e-10; rho = 4 for 16 points gives 1.3e-12: an error in either bound shows here.
    from curax._maps import _chebyshev_low, _growth_windowed, _RHO1, _RHO2

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


@pytest.mark.parametrize("k", [2, 4, 64, 65, 300])
@pytest.mark.parametrize("support", [1.0, 0.2])
def test_spread_one_family_matches_dense_quadrature(k, support, getkey):
    # The benchmark's spread-1 family (Q = 28 < 64 nodes: the windowed passes run because the
    # problem caches a point order) with random p, full and sparse support, against the
    # dense two-formula quadrature: through `reward_growths` (the run-time choice of order)
    # and both orders explicitly (the points' own: no order given). K = 2, 4, 64, 65 sum phi
    # directly, 300 the expm1 sums: both formulas of `_chebyshev_low` are checked.
    from curax._maps import _laplace_growth, reward_growths

    n, m = 6000, 3
    s = _quadratic_spread(getkey(), n, m, 1.0)
    problem = curax.CurationProblem(s, k=k)
    q = problem.quadrature_nodes
    assert q < 64
    p = _random_p(getkey(), n, support)
    dense = _laplace_growth(s, p, (k,) * m, q, phi_mode="both", table=False, windows=False)
    for g in (
        reward_growths(p, problem),
        _laplace_growth(s, p, (k,) * m, q, windows=True),
        _laplace_growth(s, p, (k,) * m, q, windows=True, order=problem.finite_order),
    ):
        np.testing.assert_allclose(np.asarray(g), np.asarray(dense), rtol=1e-12, atol=0)


def test_order_choice_follows_block_widths(getkey):
    # The run-time choice between the points' own order and the cached order by reward: kept
    # for the smooth spread-1 family at the benchmark's n = 1e6 (blocks of 1,000 grid points
    # span ~0.002 nats), gathered for random labels with full support (own blocks span the
    # whole range), kept for three atoms (no block holds two rewards).
    from curax._maps import _order_pays

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


@pytest.mark.parametrize("k", [2, 4, 64, 65, 300])
@pytest.mark.parametrize("spread", [0.1, 1.0, 3.0])
def test_windowed_paths_match_multinomial_sum_narrow_spreads(k, spread):
    # Narrow random labels (spreads 0.1 to 3 nats, Q = 25 to 35), three atoms: the exact
    # multinomial sum at every label against both windowed orders, the labels' own (wide
    # blocks: most nodes summed point by point, in groups of needy blocks) and the cached
    # order by reward (as `curax.curate` passes it; the map then chooses at run time).
    from curax._maps import _laplace_growth

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


@pytest.mark.parametrize("family", ["spread 1", "labels"])
def test_windowed_paths_differentiate_like_the_dense_quadrature(family, getkey):
    # Derivatives w.r.t. p (along the simplex) and w.r.t. the rewards through both branches
    # of the run-time order choice (points' own order for the smooth family, the cached
    # order for labels, sparse p), against the dense rule.
    from curax._maps import _laplace_growth

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
