"""Old against new finite-K kernel, interleaved in one process (robust to machine load).

Loads `_laplace_growth` from another checkout's `src/curax/_maps.py` (e.g. main) next to this
checkout's (called with the problem's cached point order, as `curax.curate` calls it), and
times both on the families of `bench_maps.py`, best of 5 interleaved repeats, with one
`E @ p` + `E.T @ w` pass as the unit.

    PYTHONPATH=src python benchmarks/ab_maps.py --old-src /path/to/old/src --families 0 8 5 7 6
"""

import argparse
import importlib.util
import os
import pathlib
import sys
import time

import curax._maps as M
import jax
import jax.numpy as jnp
import numpy as np


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_maps as B  # noqa: E402


def load_old(src):
    """The other checkout's `_maps` module, imported inside this checkout's `curax` package
    (its relative imports resolve here)."""
    path = pathlib.Path(src) / "curax" / "_maps.py"
    spec = importlib.util.spec_from_file_location("curax._maps_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._laplace_growth


def once(f, *a):
    t0 = time.perf_counter()
    f(*a).block_until_ready()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-src", required=True)
    ap.add_argument("--families", type=int, nargs="+", default=[0])
    ap.add_argument("--divide-n", type=int, default=1)
    args = ap.parse_args()
    old_lg = load_old(args.old_src)
    key = jax.random.PRNGKey(0)
    one_pass = jax.jit(lambda E, p, w: jnp.concatenate([E @ p, E.T @ w]))
    for i in args.families:
        name, build, n, m, k = B.FAMILIES[i]
        pr = build(n // args.divide_n, m, k, key)
        s, p, q, n = pr.scaled_rewards, pr.uniform(), pr.quadrature_nodes, pr.size
        ks = (k,) * m
        E = jax.random.uniform(key, (m, n))
        pe, we = jnp.full((n,), 1.0 / n), jnp.full((m,), 1.0 / m)
        old = jax.jit(lambda s, p: old_lg(s, p, ks, q))
        # As `curax.curate` calls it: with the problem's cached point order.
        new = jax.jit(lambda s, p, o: M._laplace_growth(s, p, ks, q, order=o))
        t0 = time.perf_counter()
        g_old = old(s, p).block_until_ready()
        compile_old = time.perf_counter() - t0
        t0 = time.perf_counter()
        g_new = new(s, p, pr.finite_order).block_until_ready()
        compile_new = time.perf_counter() - t0
        err = float(jnp.max(jnp.abs(g_new - g_old) / g_old))
        one_pass(E, pe, we).block_until_ready()
        fl, to, tn = [], [], []
        for _ in range(5):
            fl.append(min(once(one_pass, E, pe, we) for _ in range(7)))
            to.append(once(old, s, p))
            tn.append(once(new, s, p, pr.finite_order))
        f, o, w = min(fl), min(to), min(tn)
        print(
            f"[{i}] {name} n={n} m={m} K={k} Q={q} pass_ms={1e3 * f:.3f} old_ms={1e3 * o:.1f} "
            f"new_ms={1e3 * w:.1f} old/Q={o / f / q:.2f} new/Q={w / f / q:.2f} "
            f"speedup(best)={o / w:.2f} "
            f"speedup(median)={np.median(np.array(to) / np.array(tn)):.2f} "
            f"new-vs-old={err:.1e} first_call_s old={compile_old:.1f} new={compile_new:.1f} "
            f"load={os.getloadavg()[0]:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
