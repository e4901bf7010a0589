"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

import pytest


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 4


def test_readme_examples_run(capsys):
    namespace: dict = {}
    for i, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")
    out = capsys.readouterr().out
    # The printed checks in the tour are claims; none may print False.
    assert "False" not in out, out
