import json
import pathlib
import subprocess
import sys

import curax
import numpy as np
import pytest
from curax._cli import main
from curax._output import MANIFEST


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    code = main(["reproduce", "--out", str(out), "--quick", "--no-progress"])
    return code, out


def _reports(results, section):
    return {r["name"]: r for r in results[section]["reports"]}


def test_reproduce_quick_writes_everything(quick_run):
    code, out = quick_run
    assert code == 0
    for name in (
        "report.md",
        "results.json",
        "collapse.png",
        "leakage.png",
        "finite_k.png",
        "phase_diagram.png",
        "sampling.png",
        "outside_decay.png",
    ):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["all_as_expected"], results["meta"]["failures"]
    report = (out / "report.md").read_text()
    assert "| check | hypotheses | predicted | measured | verdict |" in report
    # The leakage cases appear in one table, not twice.
    assert report.count("Lemma 3.5 (non-collapse window, leakage interval) | all hold") == 1
    assert report.count("| separation | q |") == 1
    # FW gaps are >= 0 by definition: none is printed negative.
    nash_rows = [line for line in report.splitlines() if line.startswith("| plateaus")]
    nash_rows += [line for line in report.splitlines() if line.startswith("| smooth wells")]
    assert nash_rows
    for line in nash_rows:
        gap = line.split("|")[4].strip()
        assert not gap.startswith("-"), line
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {MANIFEST}


def test_fw_gap_format():
    from curax._reproduce import _fmt_gap

    assert _fmt_gap(-2.2e-16) == "<= 1e-15"
    assert _fmt_gap(-3e-13) == "<= 1e-12"
    assert _fmt_gap(4.5e-14) == "4.50e-14"


def test_reproduce_quick_verdicts(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    # Single reward collapses; two rewards keep two basins.
    col = _reports(results, "collapse")
    assert col["Single-reward collapse"]["verdict"] == "pass"
    two = col["Lemma 3.5 (non-collapse window, leakage interval)"]
    assert two["verdict"] == "pass"
    assert 0.05 < two["measured"]["a_inf"] < 0.95
    # Every leakage case inside the window passes, and its a_inf is inside the interval.
    for row in results["leakage"]["rows"]:
        lo_w, hi_w = row["window"]
        if lo_w < row["q"] < hi_w:
            assert row["verdict"] == "pass"
            assert row["lo"] - 1e-6 <= row["a_inf"] <= row["hi"] + 1e-6
    # Lemma 3.3: the dominated case passes, the close wells are detected as a compromise.
    verdicts = [r["verdict"] for r in results["outside"]["reports"]]
    assert verdicts == ["pass", "compromise"]
    # Variance bound.
    assert all(r["verdict"] == "pass" for r in results["variance"]["reports"])
    # Sampling: N^{-1/2}, collapse with one reward, two modes with two.
    assert all(results["sampling"]["verdicts"].values())
    assert -0.75 <= results["sampling"]["study"]["rate"] <= -0.25


def test_reproduce_quick_nash_agreement(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    flat = [r for r in results["nash"]["reports"] if r["hypotheses_hold"]]
    assert flat and all(r["verdict"] == "pass" for r in flat)
    for row in results["nash"]["rows"]:
        agree = row["agreement"]
        phis = [v["phi"] for k, v in agree.items() if v["result"] == "successful"]
        assert len(phis) >= 3
        # The dynamics' limit and the independent Nash solvers agree through Phi.
        assert max(phis) - min(phis) < 1e-6
        assert agree["nash_solution"]["fw_gap"] < 1e-10


def test_reproduce_quick_finite_k(quick_run):
    _, out = quick_run
    results = json.loads((out / "results.json").read_text())
    study = results["finite_k"]["study"]
    d = study["log_u_distance"]
    assert d[-1] < d[0]
    phases = results["phase"]["phase_diagram"]["phases"]
    # K = inf (last K), q = 0.5: close wells give a single compromise point; far wells two
    # basins.
    assert phases[0][-1][1] == "compromise"
    assert phases[-1][-1][1] == "two basins"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["reproduce", "--help"], ["solve", "--help"], ["bench", "--help"]],
)
def test_help(argv, capsys):
    assert main(argv) == 0
    assert "usage" in capsys.readouterr().out


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_flag(capsys):
    assert main(["reproduce", "--out", "x", "--frobnicate"]) == 2
    assert "unrecognized arguments" in _one_line_error(capsys)


def test_missing_command(capsys):
    assert main([]) == 2


def test_solve_npy(tmp_path, capsys):
    x = np.linspace(-2, 2, 41)
    r = np.stack([-((x + 1) ** 2), -((x - 1) ** 2)])
    path = tmp_path / "r.npy"
    np.save(path, r)
    out = tmp_path / "sol.json"
    assert main(["solve", str(path), "--weights", "0.3,0.7", "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "): certified;" in line
    info = json.loads(out.read_text())
    assert info["certified"] and info["written_by"] == "curax solve"
    # The certificate, recomputed here from the map: the FW gap at the written point.
    problem = curax.CurationProblem(r, np.array([0.3, 0.7]))
    p = np.array(info["p"])
    assert abs(p.sum() - 1) < 1e-12 and p.min() >= 0
    assert float(curax.fw_gap(p, problem)) <= 1e-10
    # A rerun replaces its own output without --force.
    assert main(["solve", str(path), "--weights", "0.3,0.7", "--out", str(out)]) == 0


def _reference_problem(tmp_path):
    x = np.linspace(-2, 2, 41)
    r = np.stack([-((x + 1) ** 2), -((x - 1) ** 2)])
    path = tmp_path / "r.csv"
    np.savetxt(path, r, delimiter=",")
    problem = curax.CurationProblem(r, np.array([0.3, 0.7]), None, 1.0, np.full(41, 1 / 41), 0.5)
    return path, problem


def test_solve_with_reference_certified(tmp_path, capsys):
    path, problem = _reference_problem(tmp_path)
    out = tmp_path / "sol.json"
    argv = ["solve", str(path), "--weights", "0.3,0.7", "--reference-weight", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "): certified;" in capsys.readouterr().out.splitlines()[0]
    p = np.array(json.loads(out.read_text())["p"])
    # Independent check: with real data the map is a contraction (rate about 0.71 here), so 200
    # plain rounds from uniform land within 1e-12 of the stable point.
    q = np.asarray(curax.trajectory(problem.uniform(), problem, 200)[-1])
    assert np.max(np.abs(p - q)) < 1e-9


def test_solve_not_certified(tmp_path, capsys):
    # One Newton step of the mixing fixed point cannot reach an error bound of 1e-10.
    path, _ = _reference_problem(tmp_path)
    out = tmp_path / "sol.json"
    argv = ["solve", str(path), "--weights", "0.3,0.7", "--reference-weight", "0.5"]
    assert main([*argv, "--max-steps", "1", "--out", str(out)]) == 3
    line = capsys.readouterr().out.splitlines()[0]
    assert "NOT certified: " in line and "): certified" not in line
    info = json.loads(out.read_text())
    assert not info["certified"] and info["stats"]["error_bound"] > 1e-10


def test_solve_missing_file(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope.npy")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_bench_builtin(capsys):
    assert main(["bench", "--builtin", "--n", "200", "--repeats", "2"]) == 0
    assert "ms per round" in capsys.readouterr().out


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "curax", "reproduce", "--help"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "--quick" in proc.stdout


# --- Options are validated before any computation ---------------------------------------------


@pytest.fixture
def reward_file(tmp_path):
    x = np.linspace(-2, 2, 21)
    path = tmp_path / "r.npy"
    np.save(path, np.stack([-((x + 1) ** 2), -((x - 1) ** 2)]))
    return path


@pytest.mark.parametrize(
    "args,named",
    [
        (["--max-steps", "0"], "--max-steps"),
        (["--max-steps", "-5"], "--max-steps"),
        (["--top", "-3"], "--top"),
        (["--top", "0"], "--top"),
        (["--tol", "nan"], "--tol"),
        (["--tol", "0"], "--tol"),
        (["--tol", "-1e-8"], "--tol"),
        (["--tol", "inf"], "--tol"),
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--weights", "0.3,x"], "--weights"),
        (["--weights", "0.3,0.3"], "--weights"),
        (["--weights", "-0.5,1.5"], "--weights"),
        (["--weights", "0.2,0.3,0.5"], "--weights"),  # 3 weights for 2 rewards
        (["--k", "0"], "--k"),
        (["--k", "zero"], "--k"),
        (["--k", "2.5"], "--k"),
        (["--reference-weight", "1.5"], "--reference-weight"),
        (["--reference-weight", "-0.1"], "--reference-weight"),
        (["--reference-weight", "nan"], "--reference-weight"),
        (["--out", "/nonexistent-curax-dir/x.json"], "--out"),
    ],
)
def test_solve_refuses_bad_options(reward_file, capsys, args, named):
    assert main(["solve", str(reward_file), *args]) == 2
    assert named in _one_line_error(capsys)


@pytest.mark.parametrize(
    "args,named",
    [
        (["--seed", "-1"], "--seed"),
        (["--sections", "collapse,nope"], "--sections"),
        (["--sections", ","], "--sections"),
        (["--workers", "0"], "--workers"),
        (["--workers", "two"], "--workers"),
    ],
)
def test_reproduce_refuses_bad_options(tmp_path, capsys, args, named):
    out = tmp_path / "out"
    assert main(["reproduce", "--out", str(out), *args]) == 2
    assert named in _one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("args", [["--n", "0"], ["--repeats", "-2"], ["--n", "x"]])
def test_bench_refuses_bad_options(capsys, args):
    assert main(["bench", "--builtin", *args]) == 2
    assert args[0] in _one_line_error(capsys)


def test_reproduce_refuses_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["reproduce", "--out", str(blocker / "sub"), "--quick"]) == 2
    assert "--out" in _one_line_error(capsys)
    assert main(["reproduce", "--out", str(blocker), "--quick"]) == 2
    assert "not a folder" in _one_line_error(capsys)
    assert blocker.read_text() == "not a folder"


def _without_times(results):
    results = {k: dict(v) for k, v in results.items()}
    for v in results.values():
        v.pop("seconds", None)
        v.pop("workers", None)
    return results


def test_reproduce_sections_in_parallel_give_the_same_results(tmp_path):
    from curax._reproduce import run_suite

    sections = ("leakage", "outside", "variance")
    one = run_suite(tmp_path / "a", quick=True, progress=False, sections=sections, workers=1)
    three = run_suite(tmp_path / "b", quick=True, progress=False, sections=sections, workers=3)
    assert three["meta"]["workers"] == 3
    assert list(three) == list(one)  # the sections' order, not their finishing order
    assert _without_times(one) == _without_times(three)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in (tmp_path / "b").iterdir()
    )
    with pytest.raises(ValueError, match="workers"):
        run_suite(tmp_path / "c", quick=True, sections=sections, workers=0)


def test_reproduce_error_in_a_parallel_section(tmp_path, monkeypatch):
    import curax._reproduce as rep

    def broken(cfg, out):
        raise RuntimeError("section broke")

    monkeypatch.setattr(rep, "section_outside", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="section broke"):
        rep.run_suite(out, quick=True, progress=False, sections=("leakage", "outside"), workers=2)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        ("a,b,c\n1,2,x\n", ".csv", "could not parse"),
        ("1,2,3\n4,5,6\n", ".npy", "not a NumPy .npy file"),
        ("garbage", ".npy", "not a NumPy .npy file"),
        ("1,nan,3\n", ".csv", "NaN"),
    ],
)
def test_solve_bad_reward_file(tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    assert main(["solve", str(path)]) == 2
    err = _one_line_error(capsys)
    assert message in err and "pickle" not in err


def test_solve_object_npy(tmp_path, capsys):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["solve", str(path)]) == 2
    assert "Python objects" in _one_line_error(capsys)


# --- Outputs: never overwrite a foreign file; atomic; reruns replace their own output -----------


def test_reproduce_refuses_foreign_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    assert main(["reproduce", "--out", str(out), "--quick", "--sections", "variance"]) == 2
    assert "'report.md'" in _one_line_error(capsys)
    assert (out / "report.md").read_text() == "my own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_solve_refuses_foreign_out_file(reward_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    out.write_text('{"mine": true}')
    assert main(["solve", str(reward_file), "--out", str(out)]) == 2
    assert "result.json" in _one_line_error(capsys)
    assert out.read_text() == '{"mine": true}'


def test_reproduce_rerun_replaces_own_output(quick_run, tmp_path):
    # A copy of a complete quick run; rerunning one section replaces it without --force,
    # and no file of the previous run survives (its figures belonged to other sections).
    import shutil

    _, first = quick_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert "report.md" in manifest["files"] and "collapse.png" in manifest["files"]
    assert main(["reproduce", "--out", str(out), "--quick", "--sections", "variance"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"variance", "meta"}
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "results.json", MANIFEST}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_dir_keeps_previous_output_on_error(tmp_path):
    from curax._output import OutputDir

    out = tmp_path / "out"
    with OutputDir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with OutputDir(out) as tmp:
            (tmp / "a.txt").write_text("second, unfinished")
            raise RuntimeError
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_dir_force_keeps_foreign_files(tmp_path):
    from curax._output import OutputDir, OutputError

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "a.txt").write_text("also mine")
    with pytest.raises(OutputError, match="a.txt"):
        OutputDir(out)
    with OutputDir(out, force=True, last=("a.txt",)) as tmp:
        (tmp / "a.txt").write_text("curax")
        (tmp / "b.txt").write_text("curax")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "a.txt").read_text() == "curax"
    # The second write (forced again: notes.txt is still foreign) drops b.txt, which curax
    # wrote the first time, and still keeps notes.txt.
    with OutputDir(out, force=True) as tmp:
        (tmp / "a.txt").write_text("curax 2")
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "a.txt",
        "notes.txt",
    ]


def test_solve_out_is_atomic_and_rerunnable(tmp_path):
    from curax._output import check_output_file, is_own_file, write_file_atomic

    out = tmp_path / "x.json"
    write_file_atomic(out, json.dumps({"written_by": "curax solve"}))
    assert is_own_file(out)
    assert check_output_file(out) == out  # a rerun may replace it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# --- Interrupts: one line, exit 130/143, no crash, no complete-looking output -----------------


def _interrupt(tmp_path, signum, delay, progress, previous):
    import os
    import signal
    import time

    out = tmp_path / "out"
    if previous:  # a complete previous output (curax's own), which must survive
        out.mkdir()
        (out / "report.md").write_text("previous report")
        (out / MANIFEST).write_text(json.dumps({"files": ["report.md"]}))
    env = dict(os.environ, CURAX_NO_COMPILATION_CACHE="1")
    argv = ["reproduce", "--quick", "--sections", "nash", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "curax", *argv, *([] if progress else ["--no-progress"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # The temporary output appears once the handler is installed and the work has begun.
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".curax-partial") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    waited = time.monotonic() - sent
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert proc.returncode == expected, (proc.returncode, stderr[-2000:])  # not -11 / -6
    assert stderr.strip().splitlines()[-1].endswith("curax reproduce: interrupted")
    assert "Traceback" not in stderr and "Segmentation" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if previous else [])
    if previous:
        assert (out / "report.md").read_text() == "previous report"
        assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "report.md"]
    return waited


@pytest.mark.parametrize(
    "signame,delay,progress,previous",
    [
        ("SIGINT", 0.0, False, False),
        ("SIGTERM", 2.0, True, True),
        ("SIGINT", 6.0, False, True),
    ],
)
def test_interrupt(tmp_path, signame, delay, progress, previous):
    import signal

    waited = _interrupt(tmp_path, getattr(signal, signame), delay, progress, previous)
    assert waited < 30  # generous: "within seconds" on a loaded machine


def _catches(pid, signum):
    # Linux: the mask of signals the process has a handler for.
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_while_importing(tmp_path, signame):
    """The `curax` command's entry point (`_curax_cli`, what the console script runs) takes the
    signals before curax and JAX are imported: one line and 130 / 143, no traceback."""
    import signal
    import time

    signum = getattr(signal, signame)
    code = "import sys, _curax_cli; sys.exit(_curax_cli.main())"
    argv = ["reproduce", "--quick", "--no-progress", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Python catches SIGINT from its start, SIGTERM only once a handler is installed: the
    # entry point's, before it imports anything heavy.
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr
    # During the imports: the entry point's line; if they were already done, the command's.
    assert stderr.strip() in ("curax: interrupted", "curax reproduce: interrupted"), stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [1.0, 4.0, 8.0, 12.0])
@pytest.mark.parametrize("progress", [False, True])
def test_interrupt_grid(tmp_path, signame, delay, progress):
    import signal

    _interrupt(tmp_path, getattr(signal, signame), delay, progress, previous=False)


# --- Persistent compilation cache: on for the command line only -------------------------------


def test_cache_folder(monkeypatch, tmp_path):
    from curax._cli import compilation_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CURAX_NO_COMPILATION_CACHE", raising=False)
    assert compilation_cache_dir() == tmp_path / "curax" / "jax"
    assert compilation_cache_dir(no_cache=True) is None
    monkeypatch.setenv("CURAX_NO_COMPILATION_CACHE", "1")
    assert compilation_cache_dir() is None


def test_cache_used_by_command_not_by_import(tmp_path):
    import os

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("CURAX_NO_COMPILATION_CACHE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = "import curax, jax; print(jax.config.jax_compilation_cache_dir)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "None"
    bench = [sys.executable, "-m", "curax", "bench", "--builtin", "--n", "50", "--repeats", "1"]
    proc = subprocess.run(bench, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "xdg" / "curax" / "jax").iterdir())
    env["CURAX_NO_COMPILATION_CACHE"] = "1"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg2")
    proc = subprocess.run(bench, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "xdg2").exists()


@pytest.mark.slow
def test_bench_quick_leaves_tracked_files_alone(tmp_path):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    tracked = root / "benchmarks" / "RESULTS.md"
    before = tracked.read_bytes(), tracked.stat().st_mtime_ns
    out = tmp_path / "bench"
    argv = ["--quick", "--only", "no-such-problem", "--no-throughput", "--no-sweep"]
    cmd = [sys.executable, "-m", "curax", "bench", *argv, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert (out / "RESULTS.md").is_file() and (out / "results.json").is_file()
    assert (tracked.read_bytes(), tracked.stat().st_mtime_ns) == before
    # A rerun replaces its own output; a folder with a foreign file is refused.
    assert subprocess.run(cmd, capture_output=True, cwd=root).returncode == 0
    (out / "mine.txt").write_text("x")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2 and "mine.txt" in proc.stderr


def test_output_dir_current_folder(tmp_path, monkeypatch):
    # `--out .` must never rename the working directory away: files are moved in instead.
    from curax._output import OutputDir

    monkeypatch.chdir(tmp_path)
    for text in ("first", "second"):
        with OutputDir(".") as tmp:
            (tmp / "a.txt").write_text(text)
    assert (tmp_path / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.txt"]
    assert sorted(p.name for p in tmp_path.parent.iterdir() if "curax" in p.name) == []
