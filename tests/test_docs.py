"""Every docstring example runs, and the documentation site builds.

Examples are the fenced ```python blocks inside `!!! Example` sections of the docstrings of the
public names of `curax` and `curax.theory` (and of their classes' public methods). Each runs in
a fresh namespace, in a fresh working directory, after this preamble (documented here so that
examples can stay short):

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx
    import curax
    x, problem = curax.two_basin_problem(n=201)   # K = infinity, two rewards
    p0 = problem.uniform()

Examples of sweep results (`res`, or the directory "sweep-out") also get a small finished
sweep (`finished_sweep` below): `res`, written to "sweep-out", with axes `q` and `k` and one
output `left`.
"""

import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import curax
import curax.theory
import jax.numpy as jnp
import pytest

from .helpers import default_cases


_ROOT = Path(__file__).resolve().parents[1]

_PREAMBLE = """\
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import curax
x, problem = curax.two_basin_problem(n=201)
p0 = problem.uniform()
"""

_EXAMPLE = re.compile(r"^!!! [Ee]xample[^\n]*\n((?:[ \t]*\n|[ \t]+[^\n]*\n?)*)", re.M)
_FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _public_objects():
    for module in (curax, curax.theory):
        prefix = module.__name__ + "."
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            yield prefix + name, obj
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_") and attr not in ("__init__", "__call__"):
                        continue
                    if isinstance(value, (classmethod, staticmethod)):
                        value = value.__func__
                    elif isinstance(value, property):
                        value = value.fget
                    if callable(value):
                        yield f"{prefix}{name}.{attr}", value


def _examples():
    seen = set()
    for qualname, obj in _public_objects():
        doc = getattr(obj, "__doc__", None)
        if not doc or doc in seen:
            continue
        seen.add(doc)
        # Docstrings start either on the first line (cleandoc) or on the next one.
        doc = inspect.cleandoc(doc) + "\n"
        for section in _EXAMPLE.finditer(doc):
            for i, fence in enumerate(_FENCE.finditer(textwrap.dedent(section.group(1)))):
                yield pytest.param(textwrap.dedent(fence.group(1)), id=f"{qualname}[{i}]")


_EXAMPLES = list(_examples())


def _left(q, k):
    x = curax.grid_1d(-3.0, 3.0, 41)
    rewards = jnp.stack([-((x + 1) ** 2), -((x - 1) ** 2)])
    problem = curax.CurationProblem(rewards, jnp.stack([q, 1 - q]), k)
    p = curax.trajectory(problem.uniform(), problem, 20)[-1]
    return {"left": jnp.sum(jnp.where(x < 0, p, 0.0))}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """The small finished sweep that examples of sweep results start from."""
    where = tmp_path_factory.mktemp("sweep") / "sweep-out"
    grid = {"q": jnp.linspace(0.1, 0.9, 3), "k": [1, None]}
    return curax.sweep(_left, grid, static=["k"], out=where, progress=False), where


def test_examples_were_found():
    # The collector itself can fail silently (e.g. a changed admonition syntax): the public
    # API has examples for at least these names.
    ids = {p.id.rsplit("[", 1)[0] for p in _EXAMPLES}
    for name in ("curax.sweep", "curax.CurationProblem", "curax.fixed_point", "curax.stability"):
        assert name in ids, sorted(ids)
    assert len(_EXAMPLES) >= 30
    assert _STUDY_EXAMPLES <= {p.id for p in _EXAMPLES}


# The examples that compile a whole solver or study (3 to 13 s each on two cores) run in the
# study tier; the entry points they call are tested by the default suite, most also by the
# README's examples.
_STUDY_EXAMPLES = {
    f"{name}[0]"
    for name in (
        "curax.compare",
        "curax.theory.phase_diagram",
        "curax.stable_point",
        "curax.sweep",
        "curax.nash_solution",
        "curax.theory.check_nash_bargaining",
        "curax.stability",
        "curax.simulate_histogram",
        "curax.Anderson",
        "curax.mixing_fixed_point",
        "curax.sample_round",
    )
}


@default_cases(lambda id: id not in _STUDY_EXAMPLES)
@pytest.mark.parametrize("code", _EXAMPLES)
def test_docstring_example_runs(code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__example__"}
    if ("sweep-out" in code or re.search(r"\bres\b", code)) and "curax.sweep(" not in code:
        res, where = request.getfixturevalue("finished_sweep")
        shutil.copytree(where, tmp_path / "sweep-out")
        namespace["res"] = res
    exec(compile(_PREAMBLE + code, "<docstring example>", "exec"), namespace)


def test_example_preamble_is_what_the_docs_say():
    # The module docstring documents the preamble: keep the two in step.
    assert all(line in __doc__ for line in _PREAMBLE.splitlines())


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None
    or importlib.util.find_spec("material") is None,
    reason="the docs dependencies are not installed (pip install '.[docs]')",
)
def test_docs_site_builds_strict(tmp_path):
    # `strict: true` in mkdocs.yml turns every warning (a broken link or cross-reference, a
    # name mkdocstrings cannot resolve, a page missing from the nav) into a failure.
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").exists()
    # Every public name has an API entry on some page.
    html = "".join(p.read_text() for p in (site / "api").rglob("*.html"))
    missing = [name for name in _public_names() if f'id="{name}"' not in html]
    assert not missing, missing


def _public_names():
    for module in (curax, curax.theory):
        for name in sorted(dir(module)):
            if not name.startswith("_") and not inspect.ismodule(getattr(module, name)):
                yield f"{module.__name__}.{name}"


def test_mkdocs_in_test_extra():
    # CI installs the `test` extra only; the docs test must not be skipped there.
    text = (_ROOT / "pyproject.toml").read_text()
    test_extra = text.split("test = [", 1)[1].split("]", 1)[0]
    for dep in ("mkdocs", "mkdocs-material", "mkdocstrings"):
        assert f'"{dep}' in test_extra, dep


def test_docs_tour_is_the_readme_tour():
    # docs/index.md repeats the README's tour, which tests/test_readme.py executes: the code
    # must stay the same for the site's claim "runs as written" to hold.
    fence = re.compile(r"```python\n(.*?)```", re.S)
    readme = fence.findall((_ROOT / "README.md").read_text())
    index = fence.findall((_ROOT / "docs" / "index.md").read_text())
    assert index and index == readme[: len(index)]
