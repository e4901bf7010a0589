"""Fixed-point problems for `bench_general.py`: general maps (not curation maps) plus two
curation problems of the main suite, each with a TRUE fixed point computed independently of
every solver that is benchmarked (a dense linear solve, Newton in float64, policy iteration,
a certified power iteration, curax's certified Nash / mixing solvers).

A problem is a `Problem`: a jittable map `fn(y, args) -> y'` on a flat float64 array, its
arguments, a start `y0`, the true fixed point `truth` (numpy) and a certificate of the truth
(`truth_residual`: `max |f(y*) - y*| / max |y*|`, plus an error bound where one is known).
"""

import dataclasses
import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)


@dataclasses.dataclass
class Problem:
    name: str
    fn: Callable[[jax.Array, Any], jax.Array]  # module-level, hashable: a static jit argument
    args: Any  # pytree of arrays
    y0: jax.Array
    truth: np.ndarray
    truth_method: str
    max_evals: int  # map-evaluation budget of every solver on this problem
    atol_scale: float = 1.0  # magnitude of the answer: solvers get `atol = tol * atol_scale`
    curation: Any = None  # the curax.CurationProblem, for curation maps
    truth_residual: float = np.nan
    truth_error_bound: float = np.nan
    note: str = ""

    @property
    def n(self) -> int:
        return int(self.y0.size)


def rel_error(y: Any, truth: np.ndarray) -> float:
    """THE error of this benchmark: relative max-norm `max |y - y*| / max |y*|` (inf for a
    non-finite `y`)."""
    y = np.asarray(y, np.float64)
    if y.shape != truth.shape or not np.all(np.isfinite(y)):
        return float("inf")
    return float(np.max(np.abs(y - truth)) / np.max(np.abs(truth)))


def rel_error_jax(y: jax.Array, truth: jax.Array) -> jax.Array:
    """`rel_error` inside jit (non-finite -> inf)."""
    e = jnp.max(jnp.abs(y - truth)) / jnp.max(jnp.abs(truth))
    return jnp.where(jnp.isfinite(e), e, jnp.inf)


CACHE = pathlib.Path(__file__).resolve().parent / "results" / "truths"


def _cached(problem: Any, solve: Callable[[], np.ndarray]) -> np.ndarray:
    """`solve()`, cached on disk under a hash of the problem's data (curax's certified solvers
    take a minute to compile on a loaded 2-core machine; the cache is git-ignored)."""
    h = hashlib.sha1()
    for leaf in jax.tree_util.tree_leaves(problem):
        h.update(np.asarray(leaf).tobytes())
    path = CACHE / f"{h.hexdigest()}.npy"
    if path.exists():
        return np.load(path)
    truth = np.asarray(solve(), np.float64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, truth)
    return truth


def _certify(problem: Problem) -> Problem:
    f = jax.jit(problem.fn)
    t = jnp.asarray(problem.truth)
    problem.truth_residual = rel_error(f(t, problem.args), problem.truth)
    return problem


# --------------------------------------------------------------------------------------
# Linear contraction y -> A y + b, spectral radius 0.99
# --------------------------------------------------------------------------------------


def linear_map(y, args):
    A, b = args
    return A @ y + b


def linear(n: int = 1000, rho: float = 0.99, seed: int = 0) -> Problem:
    """Symmetric `A = Q diag(lam) Q^T`, eigenvalues uniform on [-0.5 rho, rho] with the
    largest exactly `rho` (so `||A||_2 = rho`: a contraction in l2 with rate rho, like a
    damped Jacobi / diffusion iteration). Truth: dense solve of `(I - A) y = b`."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = rng.uniform(-0.5 * rho, rho, n)
    lam[0] = rho
    A = (Q * lam) @ Q.T
    b = rng.normal(size=n)
    truth = np.linalg.solve(np.eye(n) - A, b)
    scale = float(np.max(np.abs(truth)))
    p = Problem(
        f"linear rho={rho} n={n}",
        linear_map,
        (jnp.asarray(A), jnp.asarray(b)),
        jnp.zeros(n),
        truth,
        "dense LU solve of (I - A) y = b",
        max_evals=6000,
        atol_scale=scale,
        note="symmetric A, eigenvalues in [-0.495, 0.99]",
    )
    # ||y - y*|| <= ||f(y) - y|| / (1 - rho) in l2.
    p = _certify(p)
    p.truth_error_bound = p.truth_residual * np.sqrt(n) / (1 - rho)
    return p


# --------------------------------------------------------------------------------------
# tanh deep-equilibrium layer y -> tanh(W y + U x + b)
# --------------------------------------------------------------------------------------


def deq_map(y, args):
    W, c = args
    return jnp.tanh(W @ y + c)


def deq(n: int = 256, norm: float = 0.9, seed: int = 1) -> Problem:
    """`W` Gaussian scaled to `||W||_2 = norm`; `c = U x + b` for a random input `x` (d = 64)
    and random `U`, `b`. Truth: Newton in float64 from a long plain iteration, to a residual
    at rounding level."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n))
    W *= norm / np.linalg.norm(W, 2)
    U = rng.normal(size=(n, 64)) / 8.0
    x = rng.normal(size=64)
    c = U @ x + 0.5 * rng.normal(size=n)
    y = np.zeros(n)
    for _ in range(400):
        y = np.tanh(W @ y + c)
    for _ in range(20):
        z = W @ y + c
        r = y - np.tanh(z)
        J = np.eye(n) - (1 - np.tanh(z) ** 2)[:, None] * W
        y = y - np.linalg.solve(J, r)
        if np.max(np.abs(y - np.tanh(W @ y + c))) < 1e-16:
            break
    p = Problem(
        f"tanh DEQ n={n}",
        deq_map,
        (jnp.asarray(W), jnp.asarray(c)),
        jnp.zeros(n),
        y,
        "400 plain iterations + Newton (dense Jacobian) in float64",
        max_evals=3000,
        atol_scale=float(np.max(np.abs(y))),
        note=f"||W||_2 = {norm}",
    )
    p = _certify(p)
    p.truth_error_bound = p.truth_residual * np.sqrt(n) / (1 - norm)
    return p


# --------------------------------------------------------------------------------------
# EM for mixture weights
# --------------------------------------------------------------------------------------


def em_map(w, args):
    (L,) = args
    return w * (L.T @ (1.0 / (L @ w))) / L.shape[0]


def em(num_data: int = 2000, k: int = 10, spacing: float = 1.2, seed: int = 2) -> Problem:
    """Mixture weights of `k` fixed unit-variance Gaussians with means `spacing` apart
    (strongly overlapping: EM is slow), data drawn from a mixture with Dirichlet(5) weights.
    `L[j, c]` is the density of component `c` at data point `j`. Truth: the maximum-likelihood
    weights, by equality-constrained Newton on `-mean log(L w)` over `sum w = 1` (damped,
    from many EM steps), checked to be interior (every weight > 0), so the fixed point of EM is
    that maximiser."""
    rng = np.random.default_rng(seed)
    means = spacing * np.arange(k)
    w_true = rng.dirichlet(5.0 * np.ones(k))
    comp = rng.choice(k, size=num_data, p=w_true)
    data = means[comp] + rng.normal(size=num_data)
    L = np.exp(-0.5 * (data[:, None] - means[None, :]) ** 2) / np.sqrt(2 * np.pi)
    w = np.full(k, 1.0 / k)
    for _ in range(2000):
        w = w * (L.T @ (1.0 / (L @ w))) / num_data
    ones = np.ones(k)
    for _ in range(50):
        q = L @ w
        g = -(L.T @ (1.0 / q)) / num_data
        H = (L / q[:, None]).T @ (L / q[:, None]) / num_data
        # KKT system of the equality-constrained Newton step.
        K = np.block([[H, ones[:, None]], [ones[None, :], np.zeros((1, 1))]])
        step = np.linalg.solve(K, np.concatenate([-g, [0.0]]))[:k]
        t = 1.0
        while np.any(w + t * step <= 0):
            t /= 2
        w = w + t * step
        if np.max(np.abs(step)) < 1e-16:
            break
    if not np.all(w > 1e-6):
        raise RuntimeError("EM truth is not interior; pick another seed.")
    p = Problem(
        f"EM weights k={k} N={num_data}",
        em_map,
        (jnp.asarray(L),),
        jnp.full(k, 1.0 / k),
        w,
        "2000 EM steps + equality-constrained Newton on the log-likelihood",
        max_evals=20000,
        atol_scale=float(np.max(w)),
        note=f"interior MLE; min weight {w.min():.3g}",
    )
    return _certify(p)


# --------------------------------------------------------------------------------------
# Value iteration, random MDP, discount 0.99
# --------------------------------------------------------------------------------------


def vi_map(v, args):
    P, R, gamma = args
    return jnp.max(R + gamma * (P @ v).T, axis=1)


def mdp(states: int = 200, actions: int = 8, gamma: float = 0.99, seed: int = 3) -> Problem:
    """`P[a, s, :]` sparse random transition rows (5 successors, Dirichlet weights), rewards
    uniform on [0, 1]. Map: Bellman optimality operator. Truth: policy iteration (exact linear
    solves), stopped when the greedy policy repeats."""
    rng = np.random.default_rng(seed)
    P = np.zeros((actions, states, states))
    for a in range(actions):
        for s in range(states):
            succ = rng.choice(states, 5, replace=False)
            P[a, s, succ] = rng.dirichlet(np.ones(5))
    R = rng.uniform(size=(states, actions))
    pol = np.zeros(states, int)
    for _ in range(200):
        Pp = P[pol, np.arange(states)]
        v = np.linalg.solve(np.eye(states) - gamma * Pp, R[np.arange(states), pol])
        q = R + gamma * (P @ v).T
        new = np.argmax(q, axis=1)
        # Keep the old action on ties (no cycling).
        new = np.where(q[np.arange(states), pol] >= q[np.arange(states), new], pol, new)
        if np.array_equal(new, pol):
            break
        pol = new
    p = Problem(
        f"value iteration S={states} A={actions} gamma={gamma}",
        vi_map,
        (jnp.asarray(P), jnp.asarray(R), jnp.asarray(gamma)),
        jnp.zeros(states),
        v,
        "policy iteration (exact solves) until the policy repeats",
        max_evals=8000,
        atol_scale=float(np.max(np.abs(v))),
    )
    p = _certify(p)
    p.truth_error_bound = p.truth_residual / (1 - gamma)
    return p


# --------------------------------------------------------------------------------------
# PageRank, damping 0.85, random sparse graph
# --------------------------------------------------------------------------------------


def pagerank_map(x, args):
    src, dst, inv_deg, d = args
    flow = jax.ops.segment_sum(x[src] * inv_deg[src], dst, num_segments=x.shape[0])
    return d * flow + (1 - d)


def pagerank(n: int = 100_000, d: float = 0.85, cluster: int = 100, seed: int = 4) -> Problem:
    """A random directed graph in clusters of `cluster` nodes (99% of links stay inside the
    cluster, like the host structure of the web, so that the random walk mixes slowly and
    the power iteration converges at nearly the damping rate; on an unclustered random graph
    it converges in ~20 steps), out-degrees uniform on 1..15 (no dangling nodes). PageRank
    scaled to mean 1: `x -> d M x + (1 - d)`, `M` column-stochastic; a `segment_sum`
    matvec. Truth: numpy power iteration until the certified l1 bound
    `d / (1 - d) ||x_k - x_{k-1}||_1` is at rounding level."""
    rng = np.random.default_rng(seed)
    deg = rng.integers(1, 16, n)
    src = np.repeat(np.arange(n), deg)
    local = rng.uniform(size=src.size) < 0.99
    home = (src // cluster) * cluster
    dst = np.where(
        local,
        home + rng.integers(0, cluster, src.size),
        rng.integers(0, n, src.size),
    )
    dst = np.minimum(dst, n - 1)
    inv_deg = 1.0 / deg
    x = np.ones(n)
    bound = np.inf
    for _ in range(1000):
        x_new = d * np.bincount(dst, weights=x[src] * inv_deg[src], minlength=n) + (1 - d)
        bound = d / (1 - d) * np.sum(np.abs(x_new - x))
        x = x_new
        if bound < 1e-15 * n:
            break
    p = Problem(
        f"PageRank n={n:.0e} d={d}",
        pagerank_map,
        (jnp.asarray(src), jnp.asarray(dst), jnp.asarray(inv_deg), jnp.asarray(d)),
        jnp.ones(n),
        x,
        "power iteration to a certified l1 error bound",
        max_evals=1000,
        atol_scale=float(np.max(x)),
        note=f"{src.size} edges",
    )
    p = _certify(p)
    p.truth_error_bound = bound / np.max(x)
    return p


# --------------------------------------------------------------------------------------
# Curation problems of the main suite (benchmarks/run.py)
# --------------------------------------------------------------------------------------


def curation_map(p, problem):
    """curax's K = inf curation map without its simplex check (generic accelerators
    extrapolate off the simplex); the same map as `baselines.unchecked_map`."""
    from curax._maps import reward_growths

    curated = p * (problem.weights @ reward_growths(p, problem))
    if problem.reference is None:
        return curated
    rw = problem.reference_weight
    return rw * problem.reference + (1 - rw) * curated


def two_basin(n: int = 1000, q: float = 0.3) -> Problem:
    """`curax.two_basin_problem(n, separation=3, q)` (K = inf), as in `run.py`. Truth:
    `curax.nash_solution` (certified FW gap), the limit of the dynamics from the uniform
    start."""
    import curax

    _, problem = curax.two_basin_problem(n=n, separation=3.0, q=q)
    truth = _cached(problem, lambda: curax.nash_solution(problem, tol=1e-13).value)
    gap = float(curax.fw_gap(jnp.asarray(truth), problem))
    p = Problem(
        f"curation two-basin K=inf n={n}",
        curation_map,
        problem,
        problem.uniform(),
        truth,
        f"curax.nash_solution(tol=1e-13) (certified FW gap {gap:.1e})",
        max_evals=20000,
        atol_scale=float(np.max(truth)),
        curation=problem,
    )
    return _certify(p)


def reference_data(n: int = 1000, rw: float = 0.2) -> Problem:
    """`curax.two_basin_problem(n, separation=3, q=0.3, reference_weight=rw)` (real-data
    mixing, K = inf), as in `run.py`. Truth: `curax.mixing_fixed_point` (closed form up to an
    m-dimensional Newton solve)."""
    import curax

    _, problem = curax.two_basin_problem(n=n, separation=3.0, q=0.3, reference_weight=rw)
    truth = _cached(problem, lambda: curax.mixing_fixed_point(problem, tol=1e-14).value)
    p = Problem(
        f"curation real data rw={rw} n={n}",
        curation_map,
        problem,
        problem.uniform(),
        truth,
        "curax.mixing_fixed_point(tol=1e-14)",
        max_evals=4000,
        atol_scale=float(np.max(truth)),
        curation=problem,
    )
    return _certify(p)


def build(quick: bool = False) -> list[Problem]:
    if quick:
        return [
            linear(n=200),
            deq(n=64),
            em(num_data=500, k=6),
            mdp(states=50, actions=4),
            pagerank(n=10_000),
            two_basin(n=100),
            reference_data(n=200),
        ]
    # two-basin at n = 200 (not run.py's 1,000): plain iteration needs ~1e4 evaluations
    # there, and ~25x more at n = 1,000 (the mass next to an atom decays at 1 - O(h^2)).
    return [linear(), deq(), em(), mdp(), pagerank(), two_basin(n=200), reference_data()]
