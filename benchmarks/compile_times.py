"""Compile time of curax's public entry points and of `curax reproduce`, cold vs warm cache.

    python benchmarks/compile_times.py                 # entry points + reproduce --quick
    python benchmarks/compile_times.py --full          # also the full `curax reproduce`
    python benchmarks/compile_times.py --only curate   # a subset (regex on entry names)
    python benchmarks/compile_times.py --xla-defaults  # also without curax's XLA options
    python benchmarks/compile_times.py --no-entries --count-compiles --phase-diagram
        # reproduce --quick with the programs it compiles, by name, and theory.phase_diagram

Each measurement runs in a fresh process (every process starts cold in memory, as a user's
does). "cold" uses an empty persistent compilation cache folder (so it includes writing the
cache), "warm" reruns the same process with that folder populated, "off" runs without a cache;
with `--xla-defaults`, "off, XLA default options" runs without a cache and with XLA's default
compiler options instead of curax's (`CURAX_XLA_DEFAULT_OPTIONS=1`, see src/curax/_jit.py).
For an entry point, the first call (trace + compile + run) and a second call on new inputs of
the same shapes (run only) are timed; compile = first - second. For `curax reproduce` the
wall time of the whole command and its user CPU time are recorded (the CPU time is less
sensitive to other processes on a shared machine).

Writes `compile_times.md` and `compile_times.json` to `--out` (default `benchmarks/results/`,
git-ignored), atomically.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import logging
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent


def _problems(variant: int):
    import curax
    import jax.numpy as jnp

    # Same shapes, different values (variant 0 and 1): the second call reuses the program.
    x, two = curax.two_basin_problem(n=401, separation=2.0, q=0.3 + 0.1 * variant)
    _, finite = curax.two_basin_problem(n=401, separation=2.0, q=0.3 + 0.1 * variant, k=4)
    del x, jnp
    return two, finite


def _entry_points():
    """name -> callable(variant) that runs the entry point to completion."""
    import curax
    import jax

    def block(tree):
        return jax.block_until_ready(tree)

    def curate_inf(v):
        two, _ = _problems(v)
        return block(curax.curate(two.uniform(), two))

    def curate_k(v):
        _, finite = _problems(v)
        return block(curax.curate(finite.uniform(), finite))

    def trajectory(v):
        two, _ = _problems(v)
        return block(curax.trajectory(two.uniform(), two, 100))

    def fixed_point_squarem(v):
        two, _ = _problems(v)
        solver = curax.SQUAREM(rtol=1e-10, atol=1e-10)
        return block(curax.fixed_point(curax.curate, solver, two.uniform(), two, throw=False))

    def fixed_point_active_set(v):
        two, _ = _problems(v)
        solver = curax.ActiveSetNewton()
        return block(curax.fixed_point(curax.curate, solver, two.uniform(), two, throw=False))

    def nash_solution(v):
        two, _ = _problems(v)
        return block(curax.nash_solution(two, throw=False))

    def nash_optimize(v):
        two, _ = _problems(v)
        return block(curax.nash_optimize(two, throw=False))

    def stability(v):
        two, _ = _problems(v)
        p = curax.nash_solution(two, throw=False).value
        return block(curax.stability(p, two))

    def growth_k(v):
        _, finite = _problems(v)
        return block(curax.growth(finite.uniform(), finite))

    def potential(v):
        two, _ = _problems(v)
        return block(curax.potential(two.uniform(), two))

    def fw_gap_k(v):
        _, finite = _problems(v)
        return block(curax.fw_gap(finite.uniform(), finite))

    def mixing_fixed_point(v):
        two, _ = _problems(v)
        ref = curax.CurationProblem(
            two.rewards, two.weights, reference=two.uniform(), reference_weight=0.2
        )
        return block(curax.mixing_fixed_point(ref, throw=False))

    def sample_round(v):
        _, finite = _problems(v)
        return block(curax.sample_round(jax.random.key(v), finite.uniform(), finite, 1000))

    def construction(v):
        # Problems at a shape no other entry builds (their problems are built before timing):
        # what constructing a problem costs the first time a user's n appears.
        import jax.numpy as jnp
        import numpy as np

        r = jnp.asarray(np.random.default_rng(v).normal(size=(3, 397)))
        w = jnp.array([0.2, 0.3, 0.5])
        ref = jnp.full(397, 1 / 397)
        curation = curax.CurationProblem(r, w, (None, 4, None), 1.5, ref, 0.1)
        return block((curation, curax.BargainingProblem.from_rewards(r, w)))

    entries = {
        "problem construction (new n)": construction,
        "curate (K = inf)": curate_inf,
        "curate (K = 4)": curate_k,
        "trajectory (100 rounds)": trajectory,
        "fixed_point (SQUAREM)": fixed_point_squarem,
        "fixed_point (ActiveSetNewton)": fixed_point_active_set,
        "nash_solution": nash_solution,
        "nash_optimize": nash_optimize,
        "stability": stability,
        "growth (K = 4)": growth_k,
        "potential": potential,
        "fw_gap (K = 4)": fw_gap_k,
        "mixing_fixed_point": mixing_fixed_point,
        "sample_round (K = 4)": sample_round,
    }

    def stable_point_inf(v):
        two, _ = _problems(v)
        return block(curax.stable_point(two, throw=False))

    def stable_point_k(v):
        _, finite = _problems(v)
        return block(curax.stable_point(finite, throw=False))

    entries["stable_point (K = inf)"] = stable_point_inf
    entries["stable_point (K = 4)"] = stable_point_k
    return entries


def _child(name: str, cache: str | None) -> None:
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t0 = time.perf_counter()
    import curax  # noqa: F401
    import jax

    t_import = time.perf_counter() - t0
    # Where the first call's time goes: tracing, lowering to StableHLO, XLA compilation (what
    # the persistent cache saves), cache reads.
    events: dict[str, float] = {}

    def listen(event: str, duration: float, **_) -> None:
        events[event] = events.get(event, 0.0) + duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    # Programs the persistent cache refuses to store: a host callback (`eqx.error_if`,
    # `jax.debug.callback`) makes JAX skip the write, so they recompile in every process.
    refused: list[str] = []

    class _Refusals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("Not writing persistent cache entry") and "callback" in msg:
                refused.append(msg.split("'")[1] if "'" in msg else msg)

    compiler_log = logging.getLogger("jax._src.compiler")
    compiler_log.setLevel(logging.DEBUG)
    compiler_log.addHandler(_Refusals())
    fn = _entry_points()[name]
    # Problem construction is not the entry point: build the problems once before timing.
    _problems(0), _problems(1)
    events.clear()
    t0 = time.perf_counter()
    fn(0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(1)
    second = time.perf_counter() - t0
    phases = {
        "trace_s": "/jax/core/compile/jaxpr_trace_duration",
        "lower_s": "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "xla_compile_s": "/jax/core/compile/backend_compile_duration",
    }
    row = {"import_s": t_import, "first_s": first, "second_s": second, "uncached": refused}
    row |= {k: events.get(v, 0.0) for k, v in phases.items()}
    print(json.dumps(row))


# The phase diagram's axes for `--phase-diagram`: every K of the full run, few points.
_PHASE_KS = (2, 3, 4, 5, 8, None)
_PHASE_SEPARATIONS = (0.5, 3.0)
_PHASE_QS = (0.3,)
_PHASE_N = 61


def _child_phase_diagram() -> None:
    """`theory.phase_diagram` in this (fresh) process: wall time and the programs compiled."""
    t0 = time.perf_counter()
    import curax
    import jax

    t_import = time.perf_counter() - t0
    counter = _CompileCounter()
    logging.getLogger("jax").addHandler(counter)
    jax.config.update("jax_log_compiles", True)
    t0 = time.perf_counter()
    ph = curax.theory.phase_diagram(_PHASE_SEPARATIONS, _PHASE_KS, _PHASE_QS, n=_PHASE_N)
    wall = time.perf_counter() - t0
    row = {"import_s": t_import, "phase_diagram_s": wall, "compiles": counter.counts}
    row["xla_compile_s"] = _xla_seconds("\n".join(counter.lines))
    row["certified"] = sum(bool(c) for sep in ph.certified for k in sep for c in k)
    print(json.dumps(row))


class _CompileCounter(logging.Handler):
    """Programs JAX compiles (or fetches from the persistent cache), by function name, from
    `jax_log_compiles`' "Compiling jit(name) ..." records."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = re.match(r"Compiling jit\((\w+)\)", msg)
        if m:
            self.counts[m.group(1)] = self.counts.get(m.group(1), 0) + 1
        if msg.startswith("Finished XLA compilation"):
            self.lines.append(msg)


def _count_compiles(stderr: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in re.findall(r"Compiling jit\((\w+)\)", stderr):
        counts[name] = counts.get(name, 0) + 1
    return counts


def _xla_seconds(stderr: str) -> dict[str, float]:
    """XLA compile wall seconds by program name (JAX_LOG_COMPILES' "Finished XLA compilation
    of jit(name) in T sec"; a persistent-cache hit logs no such line)."""
    secs: dict[str, float] = {}
    for name, t in re.findall(
        r"Finished XLA compilation of jit\((\w+)\) in ([\d.e-]+) sec", stderr
    ):
        secs[name] = secs.get(name, 0.0) + float(t)
    return secs


def measure_phase_diagram(mode: str, cache: str | None) -> dict:
    jax_cache = None if cache is None else str(Path(cache) / "curax" / "jax")
    argv = [sys.executable, __file__, "--child-phase", "--cache", jax_cache or ""]
    load = _load()
    out, wall, cpu, code = _run_child(argv, _env(cache))
    what = f"theory.phase_diagram({_PHASE_SEPARATIONS}, {_PHASE_KS}, {_PHASE_QS}, n={_PHASE_N})"
    row = {"what": what, "mode": mode, "process_wall_s": wall, "process_cpu_s": cpu}
    row["load_before"] = load
    if code != 0:
        return row | {"error": out.strip().splitlines()[-1] if out.strip() else str(code)}
    return row | json.loads(out.strip().splitlines()[-1])


def _run_child(args: list[str], env: dict[str, str]) -> tuple[str, float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout if proc.returncode == 0 else proc.stderr[-500:]
    _run_child.last_stderr = proc.stderr  # pyright: ignore[reportFunctionMemberAccess]
    return out, wall, cpu, proc.returncode


def _env(cache: str | None, xla_defaults: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    # curax's own compiler options (src/curax/_jit.py), or XLA's defaults for comparison.
    env["CURAX_XLA_DEFAULT_OPTIONS"] = "1" if xla_defaults else "0"
    if cache is None:
        env["CURAX_NO_COMPILATION_CACHE"] = "1"
    else:
        env.pop("CURAX_NO_COMPILATION_CACHE", None)
        env["XDG_CACHE_HOME"] = cache  # the CLI's cache folder is $XDG_CACHE_HOME/curax/jax
    return env


def measure_entry(name: str, mode: str, cache: str | None) -> dict:
    jax_cache = None if cache is None else str(Path(cache) / "curax" / "jax")
    argv = [sys.executable, __file__, "--child", name, "--cache", jax_cache or ""]
    out, wall, cpu, code = _run_child(argv, _env(cache, xla_defaults=mode == _XLA_DEFAULTS))
    row = {"what": name, "mode": mode, "process_wall_s": wall, "process_cpu_s": cpu}
    if code != 0:
        return row | {"error": out.strip().splitlines()[-1] if out.strip() else str(code)}
    data = json.loads(out.strip().splitlines()[-1])
    return row | data | {"compile_s": data["first_s"] - data["second_s"]}


# The mode of a run without persistent cache and with XLA's default compiler options instead
# of curax's: the same entry point, back to back, shows what the options change.
_XLA_DEFAULTS = "off, XLA default options"


def measure_reproduce(
    quick: bool, mode: str, cache: str | None, eqx_nan: bool = False, count: bool = False
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "curax", "reproduce", "--no-progress", "--out"]
        argv += [str(Path(tmp) / "out")] + (["--quick"] if quick else [])
        if cache is None:
            argv.append("--no-cache")
        env = _env(cache, xla_defaults=mode == _XLA_DEFAULTS)
        env |= {"EQX_ON_ERROR": "nan"} if eqx_nan else {}
        if count:
            env["JAX_LOG_COMPILES"] = "1"
        load = _load()
        out, wall, cpu, code = _run_child(argv, env)
    row = {
        "what": f"curax reproduce{' --quick' if quick else ''}",
        "mode": mode + (", EQX_ON_ERROR=nan" if eqx_nan else ""),
        "process_wall_s": wall,
        "process_cpu_s": cpu,
        "load_before": load,
    }
    if code not in (0, 3):
        row["error"] = out.strip().splitlines()[-1] if out.strip() else str(code)
    if count:
        row["compiles"] = _count_compiles(_run_child.last_stderr)  # pyright: ignore
        row["xla_compile_s"] = _xla_seconds(_run_child.last_stderr)  # pyright: ignore
    return row


def _load() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Compile times: cold vs warm persistent cache",
        "",
        f"Measured {report['date']} on {env['cpu_count']} CPU cores ({env['machine']}), "
        f"jax {env['jax']}, Python {env['python']}, float64. Load average (1, 5, 15 min) at the "
        f"start: {report['load_start']}; at the end: {report['load_end']}. On a shared "
        "machine wall times are inflated by other processes; CPU time (user + system) is the "
        "steadier number.",
        "",
        "Command: `python benchmarks/compile_times.py"
        + (" --full" if report["full"] else "")
        + "`. Each row is a fresh process; cold = empty cache folder (includes writing it), "
        "warm = the same folder populated, off = no persistent cache. compile = first call - "
        "second call; trace / lower / XLA compile: JAX's own timers over both calls (the "
        "persistent cache saves only the XLA compile; a warm start still traces and lowers).",
        "",
        "## Entry points (n = 401, m = 2)",
        "",
        "| entry point | mode | first call (s) | second call (s) | compile (s) | trace (s) | "
        "lower (s) | XLA compile (s) | process CPU (s) | programs refused by the cache |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["entries"]:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['mode']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['what']} | {r['mode']} | {r['first_s']:.2f} | {r['second_s']:.3f} | "
            f"{r['compile_s']:.2f} | {r['trace_s']:.2f} | {r['lower_s']:.2f} | "
            f"{r['xla_compile_s']:.2f} | {r['process_cpu_s']:.1f} | "
            f"{', '.join(r.get('uncached', [])) or '-'} |"
        )
    lines += [
        "",
        "## `curax reproduce`",
        "",
        "| command | mode | wall (s) | CPU (s) | load average before |",
        "|---|---|---|---|---|",
    ]
    for r in report["reproduce"]:
        err = f" (error: {r['error']})" if "error" in r else ""
        lines.append(
            f"| `{r['what']}` | {r['mode']} | {r['process_wall_s']:.1f}{err} | "
            f"{r['process_cpu_s']:.1f} | {r.get('load_before', '')} |"
        )
    counted = [r for r in report["reproduce"] + report.get("phase", []) if "compiles" in r]
    if counted:
        lines += [
            "",
            "## Programs compiled (JAX_LOG_COMPILES; persistent-cache hits included)",
            "",
            "| command | mode | wall (s) | CPU (s) | _stable_point | _stability | _curate | "
            "_growth | _trajectory | all programs | XLA compile s: all / _stable_point / "
            "_stability |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in counted:
            c = r["compiles"]
            lines.append(
                f"| `{r['what']}` | {r['mode']} | {r['process_wall_s']:.1f} | "
                f"{r['process_cpu_s']:.1f} | "
                + " | ".join(
                    str(c.get(n, 0))
                    for n in ("_stable_point", "_stability", "_curate", "_growth", "_trajectory")
                )
                + f" | {sum(c.values())} | "
                + (
                    " / ".join(
                        f"{v:.1f}"
                        for v in (
                            sum(r["xla_compile_s"].values()),
                            r["xla_compile_s"].get("_stable_point", 0.0),
                            r["xla_compile_s"].get("_stability", 0.0),
                        )
                    )
                    if "xla_compile_s" in r
                    else "n/a"
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder")
    ap.add_argument("--force", action="store_true", help="write into a folder with other files")
    ap.add_argument("--full", action="store_true", help="also time the full `curax reproduce`")
    ap.add_argument("--only", default=None, help="regex on entry-point names")
    ap.add_argument("--no-reproduce", action="store_true", help="entry points only")
    ap.add_argument("--no-entries", action="store_true", help="`curax reproduce` only")
    ap.add_argument(
        "--repeats", type=int, default=1, help="warm runs of `curax reproduce` (noisy machine)"
    )
    ap.add_argument(
        "--no-off", action="store_true", help="skip the runs without a persistent cache"
    )
    ap.add_argument(
        "--xla-defaults",
        action="store_true",
        help=f"also run every measurement of mode 'off' with XLA's default compiler options "
        f"(mode '{_XLA_DEFAULTS}') instead of curax's",
    )
    ap.add_argument(
        "--eqx-nan",
        action="store_true",
        help="also time reproduce with EQX_ON_ERROR=nan: programs with runtime checks "
        "(eqx.error_if, a host callback when raising) are never stored in JAX's cache",
    )
    ap.add_argument(
        "--count-compiles",
        action="store_true",
        help="record the programs `curax reproduce` compiles, by name (JAX_LOG_COMPILES)",
    )
    ap.add_argument(
        "--phase-diagram",
        action="store_true",
        help="also time theory.phase_diagram over K = 2, 3, 4, 5, 8, inf (fresh process, "
        "no persistent cache) and count its compilations",
    )
    ap.add_argument("--child-phase", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.cache or None)
        return {}
    if args.child_phase:
        _child_phase_diagram()
        return {}
    sys.path.insert(0, str(HERE.parent / "src"))
    from curax._output import OutputDir, OutputError

    try:
        outdir = OutputDir(args.out, force=args.force, writer="benchmarks/compile_times.py")
    except OutputError as e:
        print(f"compile_times.py: error: --out: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    import jax

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "full": args.full,
        "load_start": _load(),
        "environment": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "entries": [],
        "reproduce": [],
        "phase": [],
    }
    with outdir as tmp, tempfile.TemporaryDirectory() as scratch:
        if not args.no_entries:
            names = [n for n in _entry_points() if not args.only or re.search(args.only, n)]
            for name in names:
                cache = str(Path(scratch) / re.sub(r"\W+", "_", name))
                modes = [("cold", cache), ("warm", cache)] + [("off", None)] * (not args.no_off)
                modes += [(_XLA_DEFAULTS, None)] * args.xla_defaults
                for mode, folder in modes:
                    row = measure_entry(name, mode, folder)
                    report["entries"].append(row)
                    print(json.dumps(row), flush=True)
        if not args.no_reproduce:
            for quick in (True, False) if args.full else (True,):
                cache = str(Path(scratch) / f"reproduce_{'quick' if quick else 'full'}")
                modes = [("off", None)] * (not args.no_off)
                modes += [(_XLA_DEFAULTS, None)] * args.xla_defaults + [("cold", cache)]
                modes += [("warm", cache)] * args.repeats
                for mode, folder in modes:
                    row = measure_reproduce(quick, mode, folder, count=args.count_compiles)
                    report["reproduce"].append(row)
                    print(json.dumps(row), flush=True)
                if args.eqx_nan:
                    for mode in ("cold", "warm"):
                        row = measure_reproduce(quick, mode, cache + "_nan", eqx_nan=True)
                        report["reproduce"].append(row)
                        print(json.dumps(row), flush=True)
        if args.phase_diagram:
            row = measure_phase_diagram("off", None)
            report["phase"].append(row)
            print(json.dumps(row), flush=True)
        report["load_end"] = _load()
        (tmp / "compile_times.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "compile_times.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
