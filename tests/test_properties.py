"""Hypothesis property tests of the curation maps: the simplex is preserved, the maps are invariant
to shifting a reward row, the K -> infinity map never decreases the potential, and one reward's
map never decreases E_p[e^r] (for every K: E_{p'}[w] = E[sum w_j^2 / sum w_j] >= E_p[w])."""

import curax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st


_settings = settings(max_examples=15, deadline=None)


@st.composite
def cases(draw, m=None, k="any", reference=None):
    n = draw(st.sampled_from([3, 8]))
    m = draw(st.sampled_from([1, 3])) if m is None else m
    k = draw(st.sampled_from([None, 1, 3, 64])) if k == "any" else k
    rewards = np.array(
        draw(st.lists(st.floats(-15, 15), min_size=m * n, max_size=m * n)), np.float64
    ).reshape(m, n)
    weights = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=m, max_size=m)))
    weights /= weights.sum()
    mass = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    mass[draw(st.integers(0, n - 1))] += 0.5  # never all zero
    p = mass / mass.sum()
    temperature = draw(st.floats(0.3, 3.0))
    use_ref = draw(st.booleans()) if reference is None else reference
    ref = np.full(n, 1.0 / n) if use_ref else None
    rw = draw(st.floats(0.0, 1.0)) if use_ref else 0.0
    return p, (rewards, weights, k, temperature, ref, rw)


def _build(case):
    # Built outside the strategy: JAX's tracing machinery touches the `random` module, which
    # hypothesis forbids inside strategies.
    p, (rewards, weights, k, temperature, ref, rw) = case
    problem = curax.CurationProblem(
        jnp.asarray(rewards),
        jnp.asarray(weights),
        k,
        temperature,
        None if ref is None else jnp.asarray(ref),
        rw,
    )
    return jnp.asarray(p), problem


@_settings
@given(cases())
def test_map_keeps_p_on_the_simplex(case):
    p, problem = _build(case)
    out = curax.curate(p, problem)
    assert bool(jnp.all(out >= 0))
    assert abs(float(jnp.sum(out)) - 1) <= 1e-12
    # Zero-mass points stay at zero without reference data.
    if problem.reference is None:
        assert bool(jnp.all(jnp.where(p == 0, out == 0, True)))


@_settings
@given(cases(), st.lists(st.floats(-300, 300), min_size=3, max_size=3))
def test_map_is_invariant_to_shifting_a_reward_row(case, shifts):
    p, problem = _build(case)
    c = jnp.asarray(shifts[: problem.num_rewards])[:, None]
    shifted = curax.CurationProblem(
        problem.rewards + c,
        problem.weights,
        problem.k,
        problem.temperature,
        problem.reference,
        problem.reference_weight,
    )
    np.testing.assert_allclose(
        curax.curate(p, shifted), curax.curate(p, problem), rtol=1e-10, atol=1e-13
    )


@_settings
@given(cases(k=None, reference=False))
def test_potential_never_decreases_for_infinite_k(case):
    p, problem = _build(case)
    p1 = curax.curate(p, problem)
    p2 = curax.curate(p1, problem)
    phis = [float(curax.potential(q, problem)) for q in (p, p1, p2)]
    assert phis[1] >= phis[0] - 1e-12 and phis[2] >= phis[1] - 1e-12


@_settings
@given(cases(m=1, reference=False))
def test_single_reward_never_decreases_expected_exp_reward(case):
    p, problem = _build(case)
    before = curax.expected_exp_rewards(p, problem)[0]
    after = curax.expected_exp_rewards(curax.curate(p, problem), problem)[0]
    assert float(after) >= float(before) - 1e-12
