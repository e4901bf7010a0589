"""Finite-sample retraining: sample, curate with K-candidate Bradley-Terry choice, refit.

The population maps of [`curax.curate`][] are the N -> infinity limit of this loop. Here each
round draws `N * K` candidates from the current model, forms `N` groups of `K`, draws a reward
per group (probabilities `weights`), keeps one candidate per group with Luce/Bradley-Terry
probability `softmax(r_i / tau)` over the group, mixes in reference samples (each kept sample
is replaced by a reference draw with probability `reference_weight`), and refits the model by
maximum likelihood to the `N` kept samples:

- [`curax.simulate_histogram`][]: the model is a distribution on the problem's support, and
  its MLE is the histogram of the kept samples (exact model class: the finite-sample
  trajectory approaches the population trajectory like `N^{-1/2}`).
- [`curax.simulate_mixture`][]: the model is a [`curax.GaussianMixture`][] on R^d, refitted by
  maximum likelihood with optax (warm-started from the previous round).

Randomness comes only from the JAX keys passed in.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._maps import _simplex, prepare_distribution, trajectory
from ._problem import check_input_distribution, CurationProblem


def _finite_ks(ks: Sequence[int | None], name: str = "problem.k") -> tuple[int, ...]:
    if any(k is None for k in ks):
        raise ValueError(
            f"finite-sample curation draws K candidates per kept sample: `{name}` must be a "
            f"finite int for every reward (got {ks!r})."
        )
    return tuple(int(k) for k in ks)  # pyright: ignore[reportArgumentType]


def _choose(
    key: PRNGKeyArray,
    cand_rewards: Float[Array, "m N K"],
    weights: Float[Array, " m"],
    ks: Int[Array, " m"],
) -> Int[Array, " N"]:
    """For each of N groups: draw a reward row, then a candidate with Luce probabilities under
    that row (candidates beyond that row's K are masked out). Returns the chosen position."""
    m, n_groups, k_max = cand_rewards.shape
    k_rew, k_pick = jr.split(key)
    which = jr.categorical(k_rew, jnp.log(weights), shape=(n_groups,))
    logits = jnp.take_along_axis(cand_rewards, which[None, :, None], axis=0)[0]  # (N, K)
    live = jnp.arange(k_max)[None, :] < ks[which][:, None]
    logits = jnp.where(live, logits, -jnp.inf)
    return jr.categorical(k_pick, logits, axis=-1)


def _kept_histogram(
    key: PRNGKeyArray,
    p: Array,
    problem: CurationProblem,
    max_samples: int,
    num_samples: Array,
) -> Array:
    """Histogram of the first `num_samples` (traced) of `max_samples` (static) kept samples:
    one compiled function serves every sample size up to `max_samples`."""
    ks = _finite_ks(problem.ks)
    n = problem.size
    k_max = max(ks)
    k_cand, k_choose, k_ref, k_refx = jr.split(key, 4)
    cand = jr.categorical(k_cand, jnp.log(p), shape=(max_samples, k_max))
    s = problem.scaled_rewards
    pos = _choose(k_choose, s[:, cand], problem.weights, jnp.array(ks))
    kept = jnp.take_along_axis(cand, pos[:, None], axis=1)[:, 0]
    if problem.reference is not None:
        use_ref = jr.bernoulli(k_ref, problem.reference_weight, (max_samples,))
        ref = jr.categorical(k_refx, jnp.log(problem.reference), shape=(max_samples,))
        kept = jnp.where(use_ref, ref, kept)
    used = (jnp.arange(max_samples) < num_samples).astype(s.dtype)
    counts = jnp.zeros((n,), s.dtype).at[kept].add(used)
    return counts / num_samples.astype(s.dtype)


def sample_round(
    key: PRNGKeyArray, p: Float[Array, " n"], problem: CurationProblem, num_samples: int
) -> Float[Array, " n"]:
    """One finite-sample retraining round on the support: draw `num_samples * K` candidates
    from `p`, keep one per group of K by Bradley-Terry choice under a random reward, mix in
    reference samples, and return the histogram (the maximum-likelihood refit).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `p`: `Float[Array, " n"]`, the current model.
    - `problem`: a [`curax.CurationProblem`][] with finite `k`.
    - `num_samples`: N, the number of kept (training) samples per round (static).

    **Returns:**

    `Float[Array, " n"]`, the refitted model (counts / N).

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=101, k=4)
        p1 = curax.sample_round(jax.random.key(0), problem.uniform(), problem, 1000)
        ```
    """
    _finite_ks(problem.ks)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    # A concrete bad `p` is a ValueError here; a traced one meets eqx.error_if, in the
    # caller's program: the jitted kernel has no host callback, so it can be cached.
    p = check_input_distribution(p, problem.size, "p", problem.rewards.dtype)
    return _sample_round(key, p, problem, num_samples)


@eqx.filter_jit
def _sample_round(key: PRNGKeyArray, p: Array, problem: CurationProblem, num_samples: int) -> Array:
    p = _simplex(p, problem)
    return _kept_histogram(key, p, problem, num_samples, jnp.array(num_samples))


def _histogram_run(
    key: PRNGKeyArray,
    problem: CurationProblem,
    rounds: int,
    max_samples: int,
    num_samples: Array,
    p0: Array,
) -> Array:
    def body(p, k):
        p_next = _kept_histogram(k, p, problem, max_samples, num_samples)
        return p_next, p_next

    _, ps = lax.scan(body, p0, jr.split(key, rounds))
    return jnp.concatenate([p0[None], ps], axis=0)


def simulate_histogram(
    key: PRNGKeyArray,
    problem: CurationProblem,
    rounds: int,
    num_samples: int,
    p0: Float[Array, " n"] | None = None,
) -> Float[Array, "T n"]:
    """Finite-sample retraining with a histogram model on the support for `rounds` rounds.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `problem`: a [`curax.CurationProblem`][] with finite `k`.
    - `rounds`: number of rounds (static).
    - `num_samples`: N, kept samples per round (static).
    - `p0`: initial model (default uniform).

    **Returns:**

    `Float[Array, "T n"]`, the model after each round (row 0 is `p0`).

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=101, k=4)
        ps = curax.simulate_histogram(jax.random.key(0), problem, 20, 4000)
        ```
    """
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"`rounds` must be a non-negative int, got {rounds!r}.")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    _finite_ks(problem.ks)
    if p0 is not None:
        p0 = check_input_distribution(p0, problem.size, "p0", problem.rewards.dtype)
    return _simulate_histogram(key, problem, rounds, num_samples, p0)


@eqx.filter_jit
def _simulate_histogram(
    key: PRNGKeyArray, problem: CurationProblem, rounds: int, num_samples: int, p0: Any
) -> Array:
    p0 = problem.uniform() if p0 is None else _simplex(p0, problem, "p0")
    return _histogram_run(key, problem, rounds, num_samples, jnp.array(num_samples), p0)


# Seeds x one N: module level, so callers with the same shapes reuse the compiled code.
_histogram_batch = eqx.filter_jit(
    jax.vmap(_histogram_run, in_axes=(0, None, None, None, None, None))
)


@dataclasses.dataclass(frozen=True)
class SampleSizeStudy:
    """Distance of the finite-sample (histogram) trajectory to the population trajectory.

    **Attributes:**

    - `num_samples`: the N values.
    - `distance`: mean over seeds and rounds of the L1 distance `||p_hat_t - p_t||_1`.
    - `distance_std`: its standard error over seeds.
    - `rate`: fitted exponent `c` in `distance ~ N^c` (theory: -1/2).
    """

    num_samples: list[int]
    distance: list[float]
    distance_std: list[float]
    rate: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)


def sample_size_study(
    key: PRNGKeyArray,
    problem: CurationProblem,
    num_samples: Sequence[int] = (250, 1000, 4000, 16000),
    *,
    rounds: int = 5,
    seeds: int = 8,
    p0: Float[Array, " n"] | None = None,
) -> SampleSizeStudy:
    """How far finite-sample retraining (histogram refit) is from the population map, as the
    number N of kept samples per round grows; the fitted exponent should be about -1/2.

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `problem`: a [`curax.CurationProblem`][] with finite `k`.
    - `num_samples`: the N values.
    - `rounds`: rounds per trajectory. Keyword only argument.
    - `seeds`: independent trajectories per N. Keyword only argument.
    - `p0`: initial model (default uniform). Keyword only argument.

    **Returns:**

    A [`curax.SampleSizeStudy`][].
    """
    _finite_ks(problem.ks)
    if len(num_samples) < 2 or any(not isinstance(v, int) or v < 1 for v in num_samples):
        raise ValueError(
            f"`num_samples` must hold at least two positive ints, got {num_samples!r}."
        )
    p0 = problem.uniform() if p0 is None else prepare_distribution(p0, problem)
    pop = np.asarray(trajectory(p0, problem, rounds))
    # One compiled simulator for every N: draw max(N) samples, use the first N.
    run = _histogram_batch
    n_max = max(num_samples)
    dist, err = [], []
    for i, n_s in enumerate(num_samples):
        keys = jr.split(jr.fold_in(key, i), seeds)
        ps = np.asarray(run(keys, problem, rounds, n_max, jnp.array(n_s), p0))
        d = np.abs(ps[:, 1:] - pop[None, 1:]).sum(-1).mean(-1)  # (seeds,)
        dist.append(float(d.mean()))
        err.append(float(d.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else float("nan"))
    rate = float(np.polyfit(np.log(num_samples), np.log(dist), 1)[0])
    return SampleSizeStudy(list(num_samples), dist, err, rate)


# ----------------------------------------------------------------------------------------------
# Parametric model: a Gaussian mixture fitted with optax
# ----------------------------------------------------------------------------------------------

_MIN_LOG_SCALE = math.log(1e-4)


class GaussianMixture(eqx.Module):
    """A mixture of `c` axis-aligned Gaussians on R^d.

    **Attributes:**

    - `logits`: `Float[Array, " c"]`, unnormalised log mixture weights.
    - `means`: `Float[Array, "c d"]`.
    - `log_scales`: `Float[Array, "c d"]`, log standard deviations (clamped at log 1e-4).

    !!! Example

        ```python
        model = curax.GaussianMixture.init(jax.random.key(0), 4, 2, scale=2.0)
        x = model.sample(jax.random.key(1), 1000)
        ```
    """

    logits: Float[Array, " c"]
    means: Float[Array, "c d"]
    log_scales: Float[Array, "c d"]

    @staticmethod
    def init(key: PRNGKeyArray, components: int, dim: int, scale: float = 1.0) -> "GaussianMixture":
        """Random means `~ N(0, scale^2)`, unit-ish scales `scale / 2`, equal weights."""
        means = scale * jr.normal(key, (components, dim))
        return GaussianMixture(
            jnp.zeros((components,)),
            means,
            jnp.full((components, dim), math.log(scale / 2)),
        )

    def log_prob(self, x: Float[Array, "N d"]) -> Float[Array, " N"]:
        """Log density of each row of `x`."""
        ls = jnp.maximum(self.log_scales, _MIN_LOG_SCALE)
        z = (x[:, None, :] - self.means[None]) / jnp.exp(ls)[None]
        d = x.shape[-1]
        comp = -0.5 * jnp.sum(z**2, -1) - jnp.sum(ls, -1)[None] - 0.5 * d * math.log(2 * math.pi)
        return jax.nn.logsumexp(comp + jax.nn.log_softmax(self.logits)[None], axis=-1)

    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num d"]:
        """`num` samples."""
        k_c, k_z = jr.split(key)
        c = jr.categorical(k_c, self.logits, shape=(num,))
        ls = jnp.maximum(self.log_scales, _MIN_LOG_SCALE)
        z = jr.normal(k_z, (num, self.means.shape[1]), self.means.dtype)
        return self.means[c] + jnp.exp(ls[c]) * z


def fit_mixture(
    model: GaussianMixture,
    x: Float[Array, "N d"],
    *,
    steps: int = 200,
    learning_rate: float = 0.05,
) -> GaussianMixture:
    """Maximum-likelihood refit of a [`curax.GaussianMixture`][] to samples `x` by Adam
    (optax), warm-started at `model`.

    **Arguments:**

    - `model`: the starting mixture.
    - `x`: `Float[Array, "N d"]`, the training samples.
    - `steps`: Adam steps (static). Keyword only argument.
    - `learning_rate`: Adam learning rate. Keyword only argument.

    **Returns:**

    The fitted mixture.
    """
    opt = optax.adam(learning_rate)

    def loss(m: GaussianMixture) -> Array:
        return -jnp.mean(m.log_prob(x))

    def step(carry, _):
        m, state = carry
        grads = jax.grad(loss)(m)
        updates, state = opt.update(grads, state, m)
        m = optax.apply_updates(m, updates)
        m = eqx.tree_at(lambda mm: mm.log_scales, m, jnp.maximum(m.log_scales, _MIN_LOG_SCALE))
        return (m, state), None

    # optax's Adam raises its int32 step count to float powers (bias correction), which the
    # strict dtype-promotion mode refuses; the mixing is intended.
    with jax.numpy_dtype_promotion("standard"):
        (model, _), _ = lax.scan(step, (model, opt.init(model)), None, length=steps)
    return model


@eqx.filter_jit
def simulate_mixture(
    key: PRNGKeyArray,
    model: GaussianMixture,
    reward_fn: Callable[[Array], Array],
    weights: ArrayLike,
    k: int | None,
    rounds: int,
    num_samples: int,
    *,
    fit_steps: int = 200,
    learning_rate: float = 0.05,
) -> tuple[GaussianMixture, Float[Array, "T N d"]]:
    """Finite-sample retraining of a Gaussian mixture on R^d: each round draws
    `num_samples * k` candidates from the model, keeps one per group of `k` by Bradley-Terry
    choice under a reward row drawn with probabilities `weights`, and refits by maximum
    likelihood ([`curax.fit_mixture`][]).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `model`: the initial [`curax.GaussianMixture`][].
    - `reward_fn`: maps points `(M, d)` to scaled rewards `(m, M)`.
    - `weights`: `(m,)` reward probabilities.
    - `k`: candidates per kept sample (static int >= 1).
    - `rounds`: number of rounds (static).
    - `num_samples`: N, kept samples per round (static).
    - `fit_steps`, `learning_rate`: the refit's Adam settings. Keyword only arguments.

    **Returns:**

    `(models, samples)`: the model after each round, stacked along a leading axis of size
    `rounds + 1` (index 0 is the initial model), and the kept samples of each round
    (`samples[0]` are draws from the initial model).
    """
    (k,) = _finite_ks((k,), "k")
    weights = jnp.asarray(weights, model.means.dtype)
    ks = jnp.array([k] * weights.shape[0])

    def body(m, key):
        k_draw, k_choose, k_fit = jr.split(key, 3)
        cand = m.sample(k_draw, num_samples * k)  # (N K, d)
        rew = reward_fn(cand).reshape(weights.shape[0], num_samples, k)
        pos = _choose(k_choose, rew, weights, ks)
        kept = cand.reshape(num_samples, k, -1)[jnp.arange(num_samples), pos]
        del k_fit
        m_next = fit_mixture(m, kept, steps=fit_steps, learning_rate=learning_rate)
        return m_next, (m_next, kept)

    k0, key = jr.split(key)
    x0 = model.sample(k0, num_samples)
    _, (models, kept) = lax.scan(body, model, jr.split(key, rounds))
    models = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), model, models)
    return models, jnp.concatenate([x0[None], kept])
