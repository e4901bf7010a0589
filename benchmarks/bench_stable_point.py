"""`curax.stable_point` on two-basin problems over (K, separation, q): is every point certified,
with how many map evaluations, and is it attracting (support radius)?

    PYTHONPATH=src python benchmarks/bench_stable_point.py --ks 2,3,4 --n 401 > out.jsonl

One JSON line per problem: `ok` (certified: FW gap <= tol over all points), `gap`,
`residual`, `evals` (map evaluations, certificate included), `support` (atoms),
`support_radius` (spectral radius of the Jacobian along the support; > 1: the iterates
oscillate around the point instead of converging to it, e.g. K = 2, a zero-sum game), `secs`
(wall time of the call, compilation included for the first problem of each K).
"""

import argparse
import json
import time

import curax
import jax
from curax._problem import nodes_for_spread


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="2,3,4,5,6,7,8")
    ap.add_argument("--separations", default="2,3,4,5,6")
    ap.add_argument("--qs", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--n", type=int, default=401)
    ap.add_argument("--tol", type=float, default=1e-10)
    args = ap.parse_args()
    seps = [float(s) for s in args.separations.split(",")]
    # One quadrature size for every separation, so that each K compiles once: the grid
    # spans [-d, d] and the wells sit at +-d/2, so the rewards span 4 (1.5 d)^2 nats.
    nodes = nodes_for_spread(4.0 * (1.5 * max(seps)) ** 2)
    for k in (int(s) for s in args.ks.split(",")):
        for sep in seps:
            for q in (float(s) for s in args.qs.split(",")):
                _, base = curax.two_basin_problem(n=args.n, separation=sep, q=q, k=k)
                problem = curax.CurationProblem(
                    base.rewards, base.weights, k, quadrature_nodes=nodes
                )
                t = time.perf_counter()
                sol = curax.stable_point(problem, tol=args.tol, throw=False)
                jax.block_until_ready(sol.value)
                secs = time.perf_counter() - t
                row = {
                    "k": k,
                    "separation": sep,
                    "q": q,
                    "ok": bool(sol.result == curax.RESULTS.successful),
                    "gap": float(sol.stats["fw_gap"]),
                    "residual": float(sol.stats["residual"]),
                    "evals": int(sol.stats["num_map_evals"]),
                    "support": int(sol.stats["support_size"]),
                    "support_radius": float(sol.stats["support_radius"]),
                    "fallback": bool(sol.stats["fallback_used"]),
                    "secs": round(secs, 2),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
