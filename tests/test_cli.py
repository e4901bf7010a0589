import json
import subprocess
import sys

import curax
import numpy as np
import pytest
from curax._cli import main


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
        "sampling.png",
        "outside_decay.png",
    ):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["all_as_expected"], results["meta"]["failures"]
    report = (out / "report.md").read_text()
    assert "| check | hypotheses | predicted | measured | verdict |" in report


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
    phases = results["finite_k"]["phase_diagram"]["phases"]
    # Close wells at q = 0.5: a single compromise point; far wells: two basins.
    assert phases[0][0][1] == "compromise"
    assert phases[-1][0][1] == "two basins"


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


def test_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["reproduce", "--out", str(blocker / "sub"), "--quick", "--no-progress"]) == 1
    assert "cannot write" in _one_line_error(capsys)


def test_unknown_section(tmp_path, capsys):
    code = main(["reproduce", "--out", str(tmp_path), "--sections", "collapse,nope"])
    assert code == 1
    assert "nope" in _one_line_error(capsys)


def test_solve_npy(tmp_path, capsys):
    x = np.linspace(-2, 2, 41)
    r = np.stack([-((x + 1) ** 2), -((x - 1) ** 2)])
    path = tmp_path / "r.npy"
    np.save(path, r)
    out = tmp_path / "sol.json"
    assert main(["solve", str(path), "--weights", "0.3,0.7", "--out", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["converged"] and info["fw_gap"] < 1e-9
    # Independent check: the certified Nash solution has the same potential.
    problem = curax.CurationProblem(r, np.array([0.3, 0.7]))
    sol = curax.nash_solution(problem)
    assert info["potential"] == pytest.approx(float(sol.stats["objective"]), abs=1e-9)
    assert "stable point" in capsys.readouterr().out


def test_solve_csv_finite_k(tmp_path):
    x = np.linspace(-2, 2, 21)
    path = tmp_path / "r.csv"
    np.savetxt(path, np.stack([-((x + 1) ** 2), -((x - 1) ** 2)]), delimiter=",")
    assert main(["solve", str(path), "--k", "4"]) == 0


@pytest.mark.parametrize(
    "content,suffix,args",
    [
        ("a,b,c\n1,2,x\n", ".csv", []),
        ("garbage", ".npy", []),
        ("1,2,3\n", ".csv", ["--weights", "0.5,0.5"]),
        ("1,2,3\n", ".csv", ["--k", "zero"]),
    ],
)
def test_solve_bad_input(tmp_path, capsys, content, suffix, args):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    assert main(["solve", str(path), *args]) == 1
    _one_line_error(capsys)


def test_solve_missing_file(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope.npy")]) == 1
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


def test_bench_forwards_unknown_options(monkeypatch):
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        return 0

    monkeypatch.setattr(subprocess, "call", fake_call)
    assert main(["bench", "--quick", "--only", "random"]) == 0
    if calls:  # benchmarks/run.py was found: it gets the options
        assert calls[0][-3:] == ["--quick", "--only", "random"]
        assert calls[0][1].endswith("run.py")
