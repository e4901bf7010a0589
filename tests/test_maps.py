import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from .helpers import (
    brute_force_curate,
    brute_force_growth,
    default_cases,
    flat_dirichlet,
    multinomial_growth,
    random_case,
)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("spread", [0.3, 5.0, 50.0])
@pytest.mark.parametrize("zero_mass", [False, True])
def test_finite_k_matches_enumeration(k, spread, zero_mass):
    # Every (k-1)-tuple enumerated: exact, independent of the quadrature. Includes points off
    # the support (zero mass) whose growth factor decides stability.
    for seed in range(3):
        n = 2 + (seed + k) % 4
        r, p = random_case(seed, n, spread, zero_mass)
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


@default_cases(lambda id: id in ("1.0-2", "50.0-100000"))
@pytest.mark.parametrize("k", [2, 10, 1000, 100_000])
@pytest.mark.parametrize("spread", [1.0, 50.0])
def test_mass_sums_to_one(k, spread, getkey):
    x = curax.grid_1d(-1.0, 1.0, 3000)
    problem = curax.CurationProblem(spread * x**2, k=k)
    p = flat_dirichlet(getkey(), 3000)
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
    p = flat_dirichlet(getkey(), 30)
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
    p = flat_dirichlet(getkey(), 200)
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
    ps = flat_dirichlet(getkey(), 31, (5,))
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
