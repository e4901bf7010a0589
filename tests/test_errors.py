"""Bad input is refused early and clearly: unworkable problems at construction, a concrete bad
`p` as a `ValueError` naming it, a traced one through `eqx.error_if` (NaN outputs under
`EQX_ON_ERROR=nan`)."""

import os
import subprocess
import sys
import textwrap

import curax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _rewards(dtype=jnp.float64):
    x = curax.grid_1d(-3.0, 3.0, 41)
    return jnp.stack([curax.quadratic_reward(x, -1.0), curax.quadratic_reward(x, 1.0)]).astype(
        dtype
    )


def test_too_many_quadrature_nodes_refused_at_construction():
    rewards = _rewards()
    spread = float(jnp.max(jnp.ptp(rewards, axis=1)))
    # The case: K = 4 at temperature 1e-6 asked for ~1e8 nodes and then ~500 GB.
    with pytest.raises(ValueError, match=r"temperature`.*quadrature nodes.*`k=None`") as e:
        curax.CurationProblem(rewards, k=4, temperature=1e-6)
    assert "`k`=4" in str(e.value) and "rescale `rewards`" in str(e.value)
    # The limit is where the documented node count crosses it, on either side.
    limit = curax.spread_for_nodes(8192)
    assert curax.nodes_for_spread(limit) <= 8192 < curax.nodes_for_spread(limit + 1.0)
    ok = curax.CurationProblem(rewards, k=4, temperature=spread / (limit - 1.0))
    assert ok.quadrature_nodes <= 8192
    with pytest.raises(ValueError, match="quadrature nodes"):
        curax.CurationProblem(rewards, k=4, temperature=spread / (limit + 1.0))
    # A temperature so small that rewards / temperature overflows is refused the same way.
    with pytest.raises(ValueError, match="quadrature nodes"):
        curax.CurationProblem(1e10 * rewards, k=[None, 3], temperature=1e-300)
    # K = 1 and K = infinity need no quadrature: the same rewards are fine.
    for k in (None, 1):
        assert curax.CurationProblem(rewards, k=k, temperature=1e-6).quadrature_nodes == 0
    with pytest.raises(ValueError, match="quadrature_nodes"):
        curax.CurationProblem(rewards, k=4, quadrature_nodes=10**8)


def test_float32_wide_spread_refused_at_construction():
    r32 = 6.0 * _rewards(jnp.float32)  # 96 nats
    with pytest.raises(ValueError, match=r"float32.*float64 `rewards`"):
        curax.CurationProblem(r32, k=3)
    with pytest.raises(ValueError, match="float32"):
        curax.CurationProblem(_rewards(jnp.float32), k=3, temperature=0.1)
    # The same spread is fine in float64, or with K = infinity in float32.
    p64 = curax.CurationProblem(r32.astype(jnp.float64), k=3)
    p32 = curax.CurationProblem(r32, k=None)
    out = curax.curate(p32.uniform(), p32)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert abs(float(jnp.sum(curax.curate(p64.uniform(), p64))) - 1) < 1e-12


def test_traced_rewards_checked_at_run_time():
    # Rewards traced at construction cannot size the quadrature; the default covers 64 nats,
    # and a wider spread is an error when the map runs (with a static node count, nothing
    # larger is ever allocated).
    @jax.jit
    def f(scale):
        problem = curax.CurationProblem(scale * _rewards(), k=3)
        return curax.curate(problem.uniform(), problem)

    assert abs(float(jnp.sum(f(1.0))) - 1) < 1e-12
    with pytest.raises(Exception, match="quadrature"):
        f(10.0)


_BAD_P = [
    (np.ones(41), "sum to 1"),
    (np.r_[-0.5, 1.5, np.zeros(39)], "non-negative"),
    (np.r_[np.nan, np.ones(40) / 40], "NaN"),
]

_FUNCTIONS = {
    "curate": curax.curate,
    "growth": curax.growth,
    "fw_gap": curax.fw_gap,
    "potential": curax.potential,
    "expected_exp_rewards": curax.expected_exp_rewards,
    "trajectory": lambda p, problem: curax.trajectory(p, problem, 3),
    "CurationMap.growth": curax.CurationMap().growth,
}


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
@pytest.mark.parametrize("k", [None, 3])
def test_concrete_bad_p_is_value_error(name, k):
    problem = curax.CurationProblem(_rewards(), k=k)
    fn = _FUNCTIONS[name]
    jitted = eqx.filter_jit(fn)
    for bad, match in _BAD_P:
        with pytest.raises(ValueError, match=rf"`p0?`.*{match}|{match}.*`p0?`"):
            fn(jnp.asarray(bad), problem)
        # Under jit the same check is an eqx.error_if with the same message.
        with pytest.raises(Exception, match=match):
            jitted(jnp.asarray(bad), problem)


def test_bad_p_shape_is_value_error_under_jit():
    problem = curax.CurationProblem(_rewards())
    with pytest.raises(ValueError, match=r"`p` must have shape \(41,\)"):
        jax.jit(curax.curate)(jnp.ones(40) / 40, problem)


_NAN_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, curax
    x = curax.grid_1d(-3.0, 3.0, 41)
    r = jnp.stack([curax.quadratic_reward(x, -1.0), curax.quadratic_reward(x, 1.0)])
    bad = jnp.ones(41)
    ref = jnp.ones(41) / 41
    for problem in (curax.CurationProblem(r),
                    curax.CurationProblem(r, k=3, reference=ref, reference_weight=0.2)):
        def all_of(p, pr):
            return (curax.curate(p, pr), curax.growth(p, pr), curax.fw_gap(p, pr),
                    curax.potential(p, pr), curax.trajectory(p, pr, 2)[1:])
        for name, out in zip(["curate", "growth", "fw_gap", "potential", "trajectory"],
                             jax.jit(all_of)(bad, problem)):
            assert np.all(np.isnan(np.asarray(out))), (name, problem.k, out)
        good = jax.jit(all_of)(problem.uniform(), problem)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in good), problem.k
    print("NAN-OK")
    """
)


def test_eqx_on_error_nan_gives_nan_outputs():
    env = dict(os.environ, EQX_ON_ERROR="nan")
    proc = subprocess.run(
        [sys.executable, "-c", _NAN_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert "NAN-OK" in proc.stdout, proc.stdout + proc.stderr


def test_concrete_bad_p_other_entry_points():
    # The same promise for every public function that takes a distribution.
    problem = curax.CurationProblem(_rewards(), k=3)
    bad = jnp.ones(41)
    key = jax.random.key(0)
    solver = curax.PlainIteration(rtol=1e-6, atol=1e-6)
    calls = {
        "`p`": [
            lambda: curax.sample_round(key, bad, problem, 10),
            lambda: curax.stability(bad, problem),
        ],
        "`p0`": [lambda: curax.simulate_histogram(key, problem, 2, 10, p0=bad)],
        "`y0`": [lambda: curax.fixed_point(curax.curate, solver, bad, problem)],
        "`point`": [lambda: curax.compare(bad, problem)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=f"{name} must sum to 1"):
                fn()
