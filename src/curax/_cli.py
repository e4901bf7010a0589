"""The `curax` command line: `reproduce`, `solve`, `bench`.

Thin by design: it parses arguments, calls the public API (the suite lives in
`curax._reproduce`) and writes files. Bad input gives a one-line error on stderr and a
non-zero exit status, never a traceback.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


# Exit statuses (documented in `main` and `curax --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # an error while computing
EXIT_USAGE = 2  # a bad option, input file or output path: nothing was computed
EXIT_UNCERTIFIED = 3  # ran to the end, but a certificate or an expected verdict does not hold
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

_EPILOG = (
    "exit status: 0 success; 1 error while computing; 2 bad option, input file or output path "
    "(nothing computed); 3 finished but NOT certified (solve) or a verdict not as expected "
    "(reproduce); 130/143 interrupted by SIGINT/SIGTERM (temporary output removed). "
    "Compiled programs are cached in $XDG_CACHE_HOME/curax/jax (default ~/.cache/curax/jax); "
    "--no-cache or CURAX_NO_COMPILATION_CACHE=1 turns the cache off."
)


class CLIError(Exception):
    """An error to report to the user in one line (exit status 1)."""

    status = EXIT_ERROR


class UsageError(CLIError):
    """A bad option, input file or output path, found before any computation (exit 2)."""

    status = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage + message.
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _number(text, int, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a finite positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _unit_float(text: str) -> float:
    value = _number(text, float, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _k_value(text: str) -> int | None:
    if text.lower() in ("inf", "infinity", "none"):
        return None
    value = _number(text, int, "a positive integer or 'inf'")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'inf', got {text!r}")
    return value


def _weights(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative finite numbers, got {text!r}")
    if abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"the weights must sum to 1, got {text!r}")
    return values


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="curax",
        description="Curation dynamics of generative models retrained on their own curated "
        "output: reproduce the papers' results, solve a problem, time the maps.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rep = sub.add_parser(
        "reproduce",
        help="run the verification suite; write figures, report.md and results.json",
        description="Reproduce the papers' synthetic results: collapse vs non-collapse, the "
        "leakage interval, Nash bargaining, variance bound, outside-mass decay, finite K, "
        "finite samples. Writes PNG figures, report.md (bound vs measured, pass/fail) and "
        "results.json to --out, atomically: the folder appears complete at the end or not at "
        "all. A rerun replaces its own previous output; a folder holding other files is "
        "refused unless --force.",
        epilog=_EPILOG,
    )
    rep.add_argument("--out", required=True, help="output folder (its parent must exist)")
    rep.add_argument("--quick", action="store_true", help="small sizes")
    rep.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="seed of the JAX PRNG key (default 0)"
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of: collapse, leakage, nash, variance, outside, ferbach, "
        "finite_k, phase, sampling",
    )
    rep.add_argument(
        "--force",
        action="store_true",
        help="write into a folder holding files curax did not write (kept; same names replaced)",
    )
    rep.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="sections run at once, in threads (default: the CPU count, at most 4; 1: in turn)",
    )
    rep.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")

    sol = sub.add_parser(
        "solve",
        help="find the certified stable point of a problem given by a reward file",
        description="Load rewards of shape (m, n) (or (n,)) from a .npy or .csv file, find the "
        "stable point of the curation dynamics with curax.stable_point and print it with its "
        "certificate. 'certified' is printed only when the certificate holds; otherwise "
        "'NOT certified: <reason>' and exit status 3.",
        epilog=_EPILOG,
    )
    sol.add_argument("rewards", help="reward file: .npy, or .csv/.txt with one reward per row")
    sol.add_argument(
        "--weights", type=_weights, default=None, help="comma-separated reward weights (sum 1)"
    )
    sol.add_argument(
        "--k", type=_k_value, default=None, help="candidates per round: an int, or 'inf' (default)"
    )
    sol.add_argument(
        "--temperature", type=_positive_float, default=1.0, help="reward temperature (> 0)"
    )
    sol.add_argument(
        "--reference-weight",
        type=_unit_float,
        default=0.0,
        help="fraction of real data (uniform reference distribution), in [0, 1)",
    )
    sol.add_argument(
        "--max-steps",
        type=_positive_int,
        default=256,
        help="step limit of curax.stable_point's method (default 256, as the library)",
    )
    sol.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-10,
        help="certificate tolerance passed to curax.stable_point (default 1e-10)",
    )
    sol.add_argument("--out", default=None, help="write the result as JSON to this file")
    sol.add_argument(
        "--force", action="store_true", help="replace an --out file curax did not write"
    )
    sol.add_argument("--top", type=_positive_int, default=10, help="atoms to print (default 10)")
    sol.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")

    bench = sub.add_parser(
        "bench",
        help="time the maps and solvers (runs benchmarks/run.py when present)",
        description="Run benchmarks/run.py from the current folder or the source checkout "
        "if present (options not listed here, e.g. --quick, --out, --update-tables, are passed "
        "on to it; it writes under benchmarks/results/ and changes the committed tables only "
        "with --update-tables), else a small built-in timing of the curation maps.",
        epilog=_EPILOG,
    )
    bench.add_argument(
        "--n", type=_positive_int, default=10_000, help="support size (built-in timing)"
    )
    bench.add_argument(
        "--repeats", type=_positive_int, default=20, help="timed calls (built-in timing)"
    )
    bench.add_argument("--builtin", action="store_true", help="skip benchmarks/run.py")
    bench.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    return parser


def compilation_cache_dir(no_cache: bool = False) -> Path | None:
    """The per-user folder of JAX's persistent compilation cache for the command line, or None
    when it is turned off (`--no-cache`, or `CURAX_NO_COMPILATION_CACHE` set to anything but
    '' or '0')."""
    if no_cache or os.environ.get("CURAX_NO_COMPILATION_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "curax" / "jax"


def _enable_compilation_cache(no_cache: bool) -> Path | None:
    # Only the command line does this: a library should not write to the user's home on import.
    path = compilation_cache_dir(no_cache)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache folder only costs time
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user's own setting wins
        return Path(jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Small programs too: the suite compiles hundreds of 0.05-0.5 s programs.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


_CHILDREN: list[subprocess.Popen] = []


def _install_interrupt_handler(command: str) -> None:
    """Make SIGINT/SIGTERM end the process within seconds, cleanly, from any state.

    Raising KeyboardInterrupt while XLA compiles or runs can crash the interpreter (SIGSEGV),
    so no exception is raised: CPython's C-level handler writes the signal number to a
    wake-up pipe, and a watcher thread (which runs while the main thread is inside XLA, which
    releases the GIL) waits for any output being committed, removes temporary output, prints
    one line and leaves with `os._exit(128 + signum)`.

    Installed as soon as the command starts, i.e. after Python has imported curax and JAX (1-3
    s on a quiet machine). Before that, the `curax` command's entry point (`_curax_cli`, outside
    the package) has a handler that prints one line and exits 130 / 143 (no output exists yet);
    `python -m curax` imports the package first, so there a signal during the imports gets
    Python's default behaviour.
    """
    from . import _output

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch() -> None:
        while True:
            data = os.read(read_fd, 1)
            if data and data[0] in (signal.SIGINT, signal.SIGTERM):
                break
        signum = data[0]
        quiet = False
        for child in _CHILDREN:  # `curax bench` runs benchmarks/run.py: pass the signal on
            try:
                child.send_signal(signum)
                code = child.wait(timeout=10)
                quiet = code in (EXIT_SIGINT, EXIT_SIGTERM)  # the child said "interrupted"
            except Exception:
                child.kill()
        with _output.COMMIT_LOCK:  # a commit in progress finishes first (milliseconds)
            _output.discard_pending()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            tail = "\x1b[?25h\n" if sys.stdout.isatty() else ""  # the progress bar hid the cursor
            msg = f"{tail}curax {command}: interrupted\n"
            if not quiet:
                os.write(2, msg.encode())
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)

    threading.Thread(target=watch, name="curax-interrupt", daemon=True).start()
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A Python-level handler that does nothing: the watcher thread acts.
        signal.signal(signum, lambda *_: None)


# ---------------------------------------------------------------------------------------------


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from . import _output
    from ._reproduce import SECTIONS

    out = Path(args.out)
    sections = None
    if args.sections is not None:
        sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        valid = [k for k, _ in SECTIONS]
        bad = [s for s in sections if s not in valid]
        if bad or not sections:
            raise UsageError(
                f"--sections: unknown section(s) {', '.join(bad) or repr(args.sections)}; "
                f"choose from {', '.join(valid)}"
            )
    try:
        _output.check_output_dir(out, force=args.force)
    except _output.OutputError as e:
        raise UsageError(f"--out: {e}") from None
    _enable_compilation_cache(args.no_cache)
    from ._reproduce import run_suite

    results = run_suite(
        out,
        quick=args.quick,
        seed=args.seed,
        progress=not args.no_progress,
        sections=sections,
        force=args.force,
        workers=args.workers,
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
    return EXIT_OK if meta["all_as_expected"] else EXIT_UNCERTIFIED


_NPY_MAGIC = b"\x93NUMPY"


def _load_rewards(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"reward file {path!r} does not exist")
    try:
        if p.suffix.lower() == ".npy":
            with open(p, "rb") as f:
                if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    raise UsageError(
                        f"reward file {path!r} is not a NumPy .npy file (no .npy header); save "
                        "it with numpy.save, or give a text file a .csv or .txt name"
                    )
            try:
                r = np.load(p, allow_pickle=False)
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise UsageError(
                        f"reward file {path!r} holds Python objects, not numbers; save a "
                        "numeric array with numpy.save"
                    ) from None
                raise
        else:
            r = np.loadtxt(p, delimiter="," if p.suffix.lower() == ".csv" else None, ndmin=1)
    except (ValueError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"could not parse reward file {path!r}: {msg}") from None
    r = np.asarray(r)
    if r.dtype.kind not in "fiu" or r.ndim not in (1, 2) or r.size == 0:
        raise UsageError(
            f"reward file {path!r} must hold a numeric array of shape (m, n) or (n,), got "
            f"dtype {r.dtype} and shape {r.shape}"
        )
    if not np.all(np.isfinite(r)):
        raise UsageError(f"reward file {path!r} holds NaN or infinite rewards")
    return r.astype(np.float64)


def _cmd_solve(args: argparse.Namespace) -> int:
    from . import _output

    if args.out is not None:
        try:
            out = _output.check_output_file(args.out, force=args.force)
        except _output.OutputError as e:
            raise UsageError(f"--out: {e}") from None
    rewards = _load_rewards(args.rewards)
    m = 1 if rewards.ndim == 1 else rewards.shape[0]
    n = rewards.shape[-1]
    if args.weights is not None and len(args.weights) != m:
        raise UsageError(f"--weights: got {len(args.weights)} weights for {m} reward(s)")
    if args.reference_weight == 1:
        raise UsageError("--reference-weight: 1 means no curation at all; use a value below 1")
    _enable_compilation_cache(args.no_cache)

    import jax.numpy as jnp
    import numpy as np

    from ._maps import potential
    from ._problem import CurationProblem
    from ._solution import RESULTS
    from ._stable_point import stable_point, stable_point_method

    try:
        problem = CurationProblem(
            jnp.asarray(rewards),
            None if args.weights is None else jnp.asarray(args.weights),
            args.k,
            args.temperature,
            None if args.reference_weight == 0 else jnp.full(n, 1.0 / n),
            args.reference_weight,
        )
    except ValueError as e:
        raise UsageError(str(e).strip().splitlines()[0]) from None

    t0 = time.perf_counter()
    sol = stable_point(problem, tol=args.tol, max_steps=args.max_steps, throw=False)
    p = np.asarray(sol.value)
    seconds = time.perf_counter() - t0
    certified = bool(sol.result == RESULTS.successful)
    stats = {k: float(np.asarray(v)) for k, v in sol.stats.items()}
    reason = "" if certified else RESULTS[sol.result]  # the message of the result code
    order = np.argsort(-p)[: args.top]
    info = {
        "written_by": "curax solve",
        "rewards": str(Path(args.rewards).resolve()),
        "m": m,
        "n": n,
        "k": "inf" if args.k is None else args.k,
        "temperature": args.temperature,
        "reference_weight": args.reference_weight,
        "tol": args.tol,
        "max_steps": args.max_steps,
        "method": stable_point_method(problem),
        "certified": certified,
        "reason": reason,
        "stats": stats,
        "potential": float(potential(sol.value, problem)),
        "seconds": seconds,
        "top_atoms": [{"index": int(i), "mass": float(p[i])} for i in order],
    }
    # Only the numbers that mean something for this problem (no error bound without
    # reference data, no contraction rate either).
    numbers = "; ".join(
        f"{k} = {_fmt_stat(k, stats[k])}"
        for k in ("fw_gap", "residual", "error_bound", "contraction_rate", "num_map_evals")
        if k in stats
        and math.isfinite(stats[k])
        # With reference data the certificate is the error bound; the FW gap is no
        # certificate there (the stable point has full support).
        and not (k == "fw_gap" and args.reference_weight > 0)
    )
    numbers += f"; support {int(stats.get('support_size', np.sum(p > 0)))} of {n}"
    head = "certified" if certified else f"NOT certified: {reason}"
    print(
        f"stable point ({info['method']}): {head}; {numbers}; Phi = {info['potential']:.12g}; "
        f"{seconds:.2f} s"
    )
    for a in info["top_atoms"]:
        if a["mass"] > 0:
            print(f"  x[{a['index']}]  mass {a['mass']:.6g}")
    if args.out is not None:
        _output.write_file_atomic(out, json.dumps(info | {"p": p.tolist()}, indent=1) + "\n")
    return EXIT_OK if certified else EXIT_UNCERTIFIED


def _fmt_stat(name: str, value: float) -> str:
    if name in ("num_map_evals", "support_size", "num_steps"):
        return f"{int(value)}"
    if name == "fw_gap" and value < 0:
        # The gap is >= 0 by definition; a negative value is rounding.
        return f"0 (rounding {value:.1e})"
    return f"{value:.3e}"


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
        env = dict(os.environ)
        cache = compilation_cache_dir(args.no_cache)
        if cache is not None and "JAX_COMPILATION_CACHE_DIR" not in env:
            cache.mkdir(parents=True, exist_ok=True)
            env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        # The child gets the same signals (one process group) and exits by itself.
        proc = subprocess.Popen([sys.executable, str(script), *extra], env=env)
        _CHILDREN.append(proc)
        return proc.wait()
    _enable_compilation_cache(args.no_cache)
    import jax.numpy as jnp

    from ._maps import curate
    from ._problem import CurationProblem

    if args.n < 2:
        raise UsageError("--n must be >= 2")
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
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `curax` command (also `python -m curax`).

    **Arguments:**

    - `argv`: the arguments (default `sys.argv[1:]`).

    **Returns:**

    The exit status: 0 success; 1 an error while computing; 2 a bad option, input file or
    output path (nothing computed); 3 finished, but `solve` could not certify its answer or a
    `reproduce` verdict is not as expected. SIGINT and SIGTERM end the process (when run as a
    command) with one line and status 130 / 143, after removing temporary output.
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
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if argv is None and threading.current_thread() is threading.main_thread():
        # Only as a command: a Python caller (e.g. a test) keeps its own signal handling.
        _install_interrupt_handler(args.command)
    handlers = {"reproduce": _cmd_reproduce, "solve": _cmd_solve, "bench": _cmd_bench}
    try:
        return handlers[args.command](args)
    except CLIError as e:
        print(f"curax {args.command}: error: {e}", file=sys.stderr)
        return e.status
    except (ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"curax {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"curax {args.command}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
