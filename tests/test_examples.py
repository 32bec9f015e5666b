"""The scripts in examples/ run from start to end on the real model."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.real_model
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples may write files (e.g. reliability.png)
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "accuracy" in out


def test_examples_are_found():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "label_only_api", "reliability_report"}
