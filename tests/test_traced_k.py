"""Finite K as a traced value: one compiled program serves every K of a bucket
(`curax._problem.k_bucket`), and the shared program computes the same map as the one compiled
for the static K."""

import logging
import re

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from curax._maps import _curate, _fw_gap, _growth
from curax._problem import canonical_k, k_bucket
from curax._stable_point import _stable_point, stable_point_method

from .helpers import brute_force_growth, default_cases, multinomial_growth


class _Compiles(logging.Handler):
    """Counts the programs JAX compiles (`jax_log_compiles`), by function name."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        m = re.match(r"Compiling jit\((\w+)\)", record.getMessage())
        if m:
            self.names.append(m.group(1))

    def count(self, name):
        return self.names.count(name)


@pytest.fixture
def compiles():
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    # Programs other tests of this process compiled must not hide a compilation here.
    eqx.clear_caches()
    jax.clear_caches()
    try:
        yield handler
    finally:
        jax.config.update("jax_log_compiles", old)
        logger.removeHandler(handler)


def _random_labels(n, spread, seed=0):
    # Rewards with no geometry: every point's reward drawn independently.
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.0, spread, n)
    r[0], r[-1] = 0.0, spread
    return jnp.asarray(r)


def _anisotropic_bump(spread):
    # Two rewards on a 9 x 7 grid: a tilted, elongated bump and a plane.
    x, y = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 0.5, 7), indexing="ij")
    x, y = x.ravel(), y.ravel()
    bump = -(3.0 * (x - 0.3) ** 2 + 0.4 * (y + 0.2) ** 2 + 1.1 * (x - 0.3) * (y + 0.2))
    plane = 0.7 * x - 1.3 * y
    r = np.stack([bump, plane])
    r = (r - r.min(axis=1, keepdims=True)) / np.ptp(r, axis=1, keepdims=True)
    return jnp.asarray(spread * r)


def test_buckets():
    assert k_bucket(2) == k_bucket(65) == (2, 65)
    assert k_bucket(66) == k_bucket(129) == (66, 129)
    assert k_bucket(130) == (130, 257)
    for k in range(2, 3000):
        lo, hi = k_bucket(k)
        assert lo <= k <= hi and k_bucket(lo) == k_bucket(hi) == (lo, hi)
    problem = curax.CurationProblem(_anisotropic_bump(5.0), k=(7, None))
    canonical = canonical_k(problem)
    assert canonical.k == (65, None) and problem.k == (7, None)
    np.testing.assert_array_equal(np.asarray(canonical.k_values), [7.0, np.inf])
    assert canonical_k(canonical) is canonical
    infinite = curax.CurationProblem(_anisotropic_bump(5.0))
    assert canonical_k(infinite) is infinite


def test_one_compilation_per_bucket(compiles):
    x = curax.grid_1d(-3.0, 3.0, 41)
    rewards = jnp.stack([-((x - 1.0) ** 2), -((x + 1.5) ** 2)])
    weights = jnp.array([0.4, 0.6])
    for k in (2, 3, 5, 8):
        problem = curax.CurationProblem(rewards, weights, k=k)
        assert problem.k == k
        curax.curate(problem.uniform(), problem)
        sol = curax.stable_point(problem, throw=False)
        assert sol.result == curax.RESULTS.successful
    assert compiles.count("_curate") == 1
    assert compiles.count("_stable_point") == 1
    # Another bucket is another program.
    problem = curax.CurationProblem(rewards, weights, k=100)
    curax.curate(problem.uniform(), problem)
    assert compiles.count("_curate") == 2


def _static_maps(p, problem):
    # The kernels with the problem as constructed: its static K is compiled in.
    return _curate(p, problem), _growth(p, problem), _fw_gap(p, problem)


_static_maps_jit = jax.jit(_static_maps)


def _assert_close(a, b, rtol):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.maximum(np.abs(b), np.finfo(b.dtype).tiny)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert np.max(np.abs(a - b) / scale) <= rtol, np.max(np.abs(a - b) / scale)


_KS = (2, 3, 7, 64, 65, 66, 100, 300)


@default_cases(1)
@pytest.mark.parametrize(
    "shape, ks",
    [
        ("bump", _KS),
        # One K per bucket on the larger problems (each K is a compilation of the static path).
        ("labels-narrow", (3, 100, 300)),
        ("labels-wide", (64, 66, 300)),
        pytest.param("labels-narrow", _KS, marks=pytest.mark.slow),
        pytest.param("labels-wide", _KS, marks=pytest.mark.slow),
    ],
)
def test_canonical_matches_static(shape, ks):
    if shape == "bump":
        rewards, weights = _anisotropic_bump(23.0), jnp.array([0.35, 0.65])
    else:
        # Narrow: the Taylor-table pass 2; wide (50 nats, at the quadrature's coverage): the
        # windowed passes on points ordered by reward.
        spread = 1.0 if shape == "labels-narrow" else 50.0
        rewards, weights = _random_labels(4000, spread), None
    rng = np.random.default_rng(1)
    for k in ks:
        problem = curax.CurationProblem(rewards, weights, k=k)
        spread = float(np.max(np.ptp(np.asarray(problem.scaled_rewards), axis=1)))
        assert spread <= curax.spread_for_nodes(problem.quadrature_nodes) < spread + 0.6
        p = jnp.asarray(rng.dirichlet(np.ones(problem.size)))
        # The same kernels on what the public functions pass them (one program per bucket).
        shared = _static_maps_jit(p, canonical_k(problem))
        curated, growth, gap = _static_maps_jit(p, problem)
        _assert_close(shared[0], curated, 1e-14)
        _assert_close(shared[1], growth, 1e-14)
        np.testing.assert_allclose(shared[2], gap, rtol=0, atol=1e-14)


@pytest.mark.study
@pytest.mark.parametrize(
    "shape, k",
    [("bump", 7)]
    + [pytest.param(s, k, marks=pytest.mark.slow) for s in ("bump", "labels") for k in _KS],
)
def test_stable_point_canonical_matches_static(shape, k):
    if shape == "bump":
        problem = curax.CurationProblem(_anisotropic_bump(12.0), jnp.array([0.35, 0.65]), k=k)
    else:
        problem = curax.CurationProblem(_random_labels(200, 12.0, seed=5), k=k)
    canonical = curax.stable_point(problem, throw=False)
    static = _stable_point(
        problem,
        problem.uniform(),
        method=stable_point_method(problem),
        tol=1e-10,
        max_steps=256,
        grid_shape=None,
    )
    assert canonical.result == static.result == curax.RESULTS.successful
    np.testing.assert_allclose(canonical.value, static.value, rtol=0, atol=1e-12)
    # The certificate of each point, computed by the other path's map.
    assert float(curax.fw_gap(static.value, problem)) <= 1e-10
    assert float(_static_maps_jit(canonical.value, problem)[2]) <= 1e-10


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_canonical_matches_enumeration(k):
    # Every (k-1)-tuple enumerated (exact, independent of the quadrature), points off the
    # support included; small K is the lower end of the first bucket.
    rng = np.random.default_rng(k)
    for n, spread in ((5, 0.4), (6, 30.0)):
        r = rng.uniform(0.0, spread, n)
        p = rng.dirichlet(np.ones(n))
        p[1] = 0.0
        p /= p.sum()
        problem = curax.CurationProblem(jnp.asarray(r), k=k)
        g = np.asarray(curax.growth(jnp.asarray(p), problem))
        np.testing.assert_allclose(g, brute_force_growth(p, np.exp(r - r.max()), k), rtol=1e-12)


@pytest.mark.parametrize("k", [64, 65, 66, 129, 130, 257, 258])
@pytest.mark.parametrize("spread", [1.0, 40.0])
def test_canonical_matches_multinomial_sum_across_buckets(k, spread):
    # Three atoms: the exact multinomial sum over count vectors, at both ends of buckets.
    r_atoms = np.array([0.0, 0.4 * spread, spread])
    p_atoms = np.array([0.5, 0.3, 0.2])
    r = np.concatenate([r_atoms, [0.1 * spread, 0.7 * spread, 0.99 * spread]])
    p = np.concatenate([p_atoms, np.zeros(3)])
    problem = curax.CurationProblem(jnp.asarray(r), k=k)
    g = np.asarray(curax.growth(jnp.asarray(p), problem))
    w = np.exp(r - r.max())
    np.testing.assert_allclose(g, multinomial_growth(p_atoms, w[:3], w, k), rtol=1e-12)


def test_user_jit_and_vmap_over_k():
    problem = curax.CurationProblem(_anisotropic_bump(8.0), jnp.array([0.5, 0.5]), k=4)
    p = jnp.asarray(np.random.default_rng(3).dirichlet(np.ones(problem.size)))
    # A user's own `jit` around a public function, the problem an argument.
    jitted = jax.jit(curax.curate)(p, problem)
    _assert_close(jitted, _static_maps_jit(p, problem)[0], 1e-14)
    # K as data: a batch of K values of one bucket through one program.
    ks = (2, 9, 40, 65)
    canonical = canonical_k(problem)
    k_values = jnp.array([[k, k] for k in ks], dtype=jnp.float64)
    batched = jax.vmap(
        lambda kv: curax.growth(p, eqx.tree_at(lambda pr: pr.k_values, canonical, kv))
    )(k_values)
    for row, k in zip(batched, ks):
        _assert_close(row, _static_maps_jit(p, problem.with_k(k))[1], 1e-14)
