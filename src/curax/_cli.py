"""The `curax` command line: `reproduce`, `solve`, `bench`.

Thin by design: it parses arguments, calls the public API (the suite lives in
`curax._reproduce`) and writes files. Bad input gives a one-line error on stderr and a
non-zero exit status, never a traceback.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


class CLIError(Exception):
    """An error to report to the user in one line (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage + message.
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="curax",
        description="Curation dynamics of generative models retrained on their own curated "
        "output: reproduce the papers' results, solve a problem, time the maps.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rep = sub.add_parser(
        "reproduce",
        help="run the verification suite; write figures, report.md and results.json",
        description="Reproduce the papers' synthetic results: collapse vs non-collapse, the "
        "leakage interval, Nash bargaining, variance bound, outside-mass decay, finite K, "
        "finite samples. Writes PNG figures, report.md (bound vs measured, pass/fail) and "
        "results.json to --out. Takes a few minutes on 2 CPU cores (--quick: under one).",
    )
    rep.add_argument("--out", required=True, help="output folder (created if needed)")
    rep.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the JAX PRNG key (default 0)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of: collapse, leakage, nash, variance, outside, ferbach, "
        "finite_k, sampling",
    )

    sol = sub.add_parser(
        "solve",
        help="find the stable point of a problem given by a reward file",
        description="Load rewards of shape (m, n) (or (n,)) from a .npy or .csv file, find the "
        "stable point of the curation dynamics and print it with its certificate.",
    )
    sol.add_argument("rewards", help="reward file: .npy, or .csv/.txt with one reward per row")
    sol.add_argument("--weights", default=None, help="comma-separated reward weights (sum 1)")
    sol.add_argument("--k", default="inf", help="candidates per round: an int, or 'inf' (default)")
    sol.add_argument("--temperature", type=float, default=1.0, help="reward temperature")
    sol.add_argument(
        "--reference-weight",
        type=float,
        default=0.0,
        help="fraction of real data (uniform reference distribution), in [0, 1]",
    )
    sol.add_argument(
        "--method",
        default="active-set",
        choices=("active-set", "squarem", "dynamics", "auto"),
        help="stable-point solver (default active-set; SQUAREM with real data)",
    )
    sol.add_argument("--max-steps", type=int, default=20000, help="solver step limit")
    sol.add_argument("--tol", type=float, default=1e-8, help="certificate: largest accepted FW gap")
    sol.add_argument("--out", default=None, help="write the result as JSON to this file")
    sol.add_argument("--top", type=int, default=10, help="atoms to print (default 10)")

    bench = sub.add_parser(
        "bench",
        help="time the maps and solvers (runs benchmarks/run.py when present)",
        description="Run benchmarks/run.py from the current folder or the source checkout "
        "if present (options not listed here, e.g. --quick, are passed on to it), else a "
        "small built-in timing of the curation maps.",
    )
    bench.add_argument("--n", type=int, default=10_000, help="support size (built-in timing)")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls (built-in timing)")
    bench.add_argument("--builtin", action="store_true", help="skip benchmarks/run.py")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    return parser


# ---------------------------------------------------------------------------------------------


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ._reproduce import check_writable, run_suite, SECTIONS

    out = Path(args.out)
    try:
        check_writable(out)
    except OSError as e:
        raise CLIError(str(e)) from None
    sections = None
    if args.sections:
        sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        valid = [k for k, _ in SECTIONS]
        bad = [s for s in sections if s not in valid]
        if bad:
            raise CLIError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(valid)}")
    results = run_suite(
        out,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        sections=sections,
    )
    meta = results["meta"]
    status = (
        "all verdicts as expected"
        if meta["all_as_expected"]
        else ("UNEXPECTED: " + "; ".join(meta["failures"]))
    )
    print(
        f"curax reproduce: wrote {out / 'report.md'} and {out / 'results.json'} "
        f"in {meta['seconds']:.1f} s; {status}"
    )
    return 0 if meta["all_as_expected"] else 1


def _load_rewards(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"reward file {path!r} does not exist")
    try:
        if p.suffix == ".npy":
            r = np.load(p, allow_pickle=False)
        else:
            r = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=1)
    except (ValueError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CLIError(f"could not parse reward file {path!r}: {msg}") from None
    r = np.asarray(r)
    if r.dtype.kind not in "fiu" or r.ndim not in (1, 2) or r.size == 0:
        raise CLIError(
            f"reward file {path!r} must hold a numeric array of shape (m, n) or (n,), got "
            f"dtype {r.dtype} and shape {r.shape}"
        )
    return r.astype(np.float64)


def _parse_k(text: str) -> int | None:
    if text.lower() in ("inf", "infinity", "none"):
        return None
    try:
        k = int(text)
    except ValueError:
        raise CLIError(f"--k must be a positive int or 'inf', got {text!r}") from None
    if k < 1:
        raise CLIError(f"--k must be >= 1, got {k}")
    return k


def _cmd_solve(args: argparse.Namespace) -> int:
    import jax.numpy as jnp
    import numpy as np

    from ._maps import curate, fw_gap, potential
    from ._problem import CurationProblem

    rewards = _load_rewards(args.rewards)
    m = 1 if rewards.ndim == 1 else rewards.shape[0]
    n = rewards.shape[-1]
    weights = None
    if args.weights is not None:
        try:
            weights = np.array([float(v) for v in args.weights.split(",")])
        except ValueError:
            raise CLIError(
                f"--weights must be comma-separated numbers, got {args.weights!r}"
            ) from None
    k = _parse_k(args.k)
    ref = np.full(n, 1.0 / n) if args.reference_weight > 0 else None
    problem = CurationProblem(
        jnp.asarray(rewards),
        None if weights is None else jnp.asarray(weights),
        k,
        args.temperature,
        None if ref is None else jnp.asarray(ref),
        args.reference_weight,
    )
    from ._theory import stable_point

    t0 = time.perf_counter()
    value, meta = stable_point(problem, method=args.method, max_steps=args.max_steps)
    p = np.asarray(value)
    seconds = time.perf_counter() - t0
    residual = float(np.max(np.abs(np.asarray(curate(value, problem)) - p)))
    ok = meta["result"] == "successful" and (
        problem.reference is not None or meta["fw_gap"] <= args.tol
    )
    order = np.argsort(-p)[: args.top]
    gap = float(fw_gap(value, problem))
    info = {
        "m": m,
        "n": n,
        "k": "inf" if k is None else k,
        "converged": ok,
        "method": meta["method"],
        "result": meta["result"],
        "fw_gap": gap,
        "residual": residual,
        "potential": float(potential(value, problem)),
        "support_size": int(np.sum(p > 1e-12)),
        "seconds": seconds,
        "top_atoms": [{"index": int(i), "mass": float(p[i])} for i in order],
    }
    print(
        f"stable point ({info['method']}): "
        f"{'certified' if ok else 'NOT certified: ' + info['result']}; "
        f"support {info['support_size']} of {n}; Phi = {info['potential']:.12g}; "
        f"FW gap = {gap:.3e}; residual = {info['residual']:.3e}; {seconds:.2f} s"
    )
    for a in info["top_atoms"]:
        if a["mass"] > 0:
            print(f"  x[{a['index']}]  mass {a['mass']:.6g}")
    if args.out:
        try:
            Path(args.out).write_text(json.dumps(info | {"p": p.tolist()}, indent=1))
        except OSError as e:
            raise CLIError(f"cannot write {args.out!r}: {e.strerror or e}") from None
    return 0 if ok else 1


def _find_bench_script() -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / "benchmarks" / "run.py"
        if candidate.is_file():
            return candidate
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    script = None if args.builtin else _find_bench_script()
    if script is not None:
        extra = [a for a in args.extra if a != "--"]
        return subprocess.call([sys.executable, str(script), *extra])
    import jax.numpy as jnp

    from ._maps import curate
    from ._problem import CurationProblem

    if args.n < 2 or args.repeats < 1:
        raise CLIError("--n must be >= 2 and --repeats >= 1")
    x = jnp.linspace(-3.0, 3.0, args.n)
    rewards = jnp.stack([-((x + 1) ** 2), -((x - 1) ** 2)])
    print(f"built-in timing of one curation round, n = {args.n}, m = 2, float64")
    for k in (None, 4):
        problem = CurationProblem(rewards, jnp.array([0.3, 0.7]), k)
        p = problem.uniform()
        curate(p, problem).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            p = curate(p, problem)
        p.block_until_ready()
        dt = (time.perf_counter() - t0) / args.repeats
        print(f"  K = {'inf' if k is None else k}: {dt * 1e3:.3f} ms per round")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `curax` command (also `python -m curax`).

    **Arguments:**

    - `argv`: the arguments (default `sys.argv[1:]`).

    **Returns:**

    The exit status: 0 on success, 1 on a failed check or bad input, 2 on a usage error.
    """
    parser = _build_parser()
    try:
        # `curax bench` forwards options it does not know to benchmarks/run.py (e.g. --quick).
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            if args.command != "bench":
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            args.extra = [*unknown, *args.extra]
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    handlers = {"reproduce": _cmd_reproduce, "solve": _cmd_solve, "bench": _cmd_bench}
    try:
        return handlers[args.command](args)
    except CLIError as e:
        print(f"curax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"curax {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"curax {args.command}: interrupted", file=sys.stderr)
        return 130
