import itertools

import numpy as np


def brute_force_growth(p, w, k):
    """H(x) = E[k w(x) / (w(x) + sum_{j<k} w(y_j))] by enumerating every (k-1)-tuple of the
    other candidates (exact, O(n^(k-1))), in float64 numpy; `w` is any positive vector."""
    p = np.asarray(p, np.float64)
    w = np.asarray(w, np.float64)
    n = p.shape[0]
    h = np.zeros(n)
    for tup in itertools.product(range(n), repeat=k - 1):
        prob = np.prod(p[list(tup)]) if tup else 1.0
        if prob == 0.0:
            continue
        rest = w[list(tup)].sum() if tup else 0.0
        h += prob * k * w / (w + rest)
    return h


def brute_force_curate(p, rewards, weights, k, temperature=1.0, reference=None, rw=0.0):
    rewards = np.atleast_2d(np.asarray(rewards, np.float64)) / temperature
    g = np.zeros(rewards.shape[1])
    for a, r in zip(weights, rewards):
        w = np.exp(r - r.max())
        if k is None:
            g += a * w / (w @ p)
        else:
            g += a * brute_force_growth(p, w, k)
    out = np.asarray(p) * g
    if reference is not None:
        out = rw * np.asarray(reference) + (1 - rw) * out
    return out


def multinomial_growth(p_atoms, w_atoms, w_eval, k):
    """Exact H at points of weight `w_eval` when p has few atoms (weights `w_atoms`, masses
    `p_atoms`): sum over all count vectors c (sum c = k - 1) of the multinomial probability times
    k w / (w + c . w_atoms). Independent of the Laplace quadrature; O(k^(atoms-1))."""
    from scipy.special import gammaln

    p_atoms = np.asarray(p_atoms, np.float64)
    w_atoms = np.asarray(w_atoms, np.float64)
    w_eval = np.asarray(w_eval, np.float64)
    a = len(p_atoms)
    assert a in (2, 3)
    n = k - 1
    if a == 2:
        c0 = np.arange(n + 1)
        counts = np.stack([c0, n - c0], axis=1)
    else:
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        counts = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1)
    logprob = gammaln(n + 1) - gammaln(counts + 1).sum(axis=1)
    with np.errstate(divide="ignore"):
        logprob = logprob + (counts * np.log(p_atoms)).sum(axis=1)
    prob = np.exp(logprob)
    rest = counts @ w_atoms
    # A product with the probabilities per slice of the points: no (counts, points) products
    # held at once (at K = 300 there are 45,150 count vectors).
    out = np.empty_like(w_eval)
    for i in range(0, w_eval.size, 256):
        w = w_eval[i : i + 256]
        out[i : i + 256] = k * w * (prob @ (1.0 / (w[None, :] + rest[:, None])))
    return out


def central_difference(f, x, dx, h):
    """`(f(x + h dx) - f(x - h dx)) / 2h`: the directional derivative the JVP tests compare
    against."""
    return (f(x + h * dx) - f(x - h * dx)) / (2 * h)


def default_cases(keep):
    """The cases of a parametrised test that run by default: the first `keep` (an int, in
    collection order) or those whose pytest id satisfies `keep(id)`. The others are marked
    `study` (tests/conftest.py): the same property on further families, seeds or solvers, run
    by CI after the default suite and by `pytest -m study`."""

    def mark(fn):
        fn._default_cases = keep
        return fn

    return mark


def key_rng(key):
    """A numpy generator seeded by a (raw uint32) JAX key: test data drawn on the host, not by
    JAX programs compiled for every shape."""
    return np.random.default_rng(np.asarray(key).tolist())


def flat_dirichlet(key, n, shape=()):
    """Flat Dirichlet draws on the n-simplex, shape `(*shape, n)`, seeded by a JAX key: the
    distribution of `jr.dirichlet(key, jnp.ones(n), shape)`, drawn by numpy (JAX compiles its
    gamma sampler anew for every shape, ~2.4 s)."""
    import jax.numpy as jnp

    return jnp.asarray(key_rng(key).dirichlet(np.ones(n), shape or None))


def random_case(seed, n, spread, zero_mass=False):
    """Rewards uniform on [0, spread] (both ends attained) and a flat-Dirichlet p on n points;
    with `zero_mass`, one point carries no mass (off the support)."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.0, spread, n)
    r[0], r[-1] = 0.0, spread
    p = rng.dirichlet(np.ones(n))
    if zero_mass:
        p[rng.integers(n)] = 0.0
        p /= p.sum()
    return r, p
