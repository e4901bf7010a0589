"""The README's Python examples run as written, in order, in one namespace, and print what
the tour says they print: every printed boolean is parsed and must be True, and every printed
verdict must be the one the tour names."""

import pathlib
import re

import numpy as np
import pytest


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 5


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _booleans(line):
    return [tok for tok in line.split() if tok in ("True", "False")]


def test_readme_examples_run(capsys):
    namespace: dict = {}
    outs = []
    for i, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")
        outs.append(capsys.readouterr().out)
    maps, stable, nash, theorems, general = (_lines(o) for o in outs[:5])

    # Curation maps: the potential rises (True), the FW gap is a finite number >= 0, and
    # finite K keeps mass 1 to ~1e-14.
    assert maps[0] == "True"
    assert 0 <= float(maps[1]) < 1
    nodes, mass = maps[2].split()
    assert int(nodes) == namespace["problem_k4"].quadrature_nodes
    assert abs(float(mass) - 1) < 1e-13

    # Stable points: successful, with a certificate, and "stable".
    ok, evals, gap = stable[0].split()
    assert ok == "True" and int(evals) > 0 and float(gap) <= 1e-9
    assert stable[1] == "stable"

    # Nash: every printed boolean is True; the certified stable point is a stable point equal
    # to the Nash solution; the 200-round trajectory is not called a fixed point.
    bools = [b for line in nash for b in _booleans(line)]
    assert bools and all(b == "True" for b in bools), nash
    summary = "\n".join(nash[3:-1])
    status = next(line for line in nash if line.startswith("status"))
    assert "stable (radius" in status and "unstable" not in status
    assert "certified" in status and "NOT certified" not in status
    diff = float(re.search(r"Phi\(nash\) - Phi\(point\)\s+(\S+)", summary).group(1))
    assert abs(diff) <= 1e-10
    assert nash[-1] == "not a fixed point"

    # Theorems: the verdict is pass at a certified point, with the measured a_inf inside the
    # predicted interval (parsed from the printed summary, checked against the report).
    head = theorems[0]
    assert head.endswith(": PASS"), head
    report = namespace["report"]
    lo, hi = report.predicted["interval"]
    assert (
        lo - report.predicted["atol"] <= report.measured["a_inf"] <= hi + report.predicted["atol"]
    )
    printed = re.search(r"a_inf=([0-9.e+-]+)", "\n".join(theorems)).group(1)
    assert float(printed) == pytest.approx(report.measured["a_inf"], rel=1e-3)
    assert np.isclose(report.measured["a_inf"], 0.3, atol=1e-4)
    assert theorems[-3] == "pass True"
    assert theorems[-2] == "pass"
    assert theorems[-1] == "inconclusive"
    # General maps: a complex pytree solved to its closed form, with a contraction estimate
    # near the true rate 0.9 and the scaled error estimate < 1; the tanh fixed point inside
    # optimistix; the map with no fixed point not successful. Independently: the fixed point
    # of z -> 0.9 z + c is 10 c, and the tanh root is checked against bisection.
    assert general == ["True True", "True True", "True", "True"], general
    z = namespace["sol"].value["z"]
    assert abs(complex(z) - 10 * (1 - 0.9j)) < 1e-8
    lo, hi = 0.0, 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.tanh(mid + 1.0) > mid else (lo, mid)
    assert abs(float(namespace["osol"].value) - lo) < 1e-10
    h = np.asarray(namespace["sol"].value["h"])
    assert np.max(np.abs(np.tanh(0.5 * h + np.arange(4.0)) - h)) < 1e-9
    # No other printed boolean anywhere is False.
    everything = [b for o in outs for line in _lines(o) for b in _booleans(line)]
    assert "False" not in everything
