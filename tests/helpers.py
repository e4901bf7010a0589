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
