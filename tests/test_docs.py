"""The documentation site (docs/site) builds with warnings as errors.

The build runs the gallery (docs/site/gallery/plot_*.py, toy black boxes
only) and checks that every public name is in the API reference (conf.py).
About a minute on 2 CPU cores; skipped when Sphinx is not installed (it is
in the ``test`` and ``docs`` extras).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "site"
GALLERY = sorted(p.stem for p in (SITE / "gallery").glob("plot_*.py"))


def test_gallery_examples_are_found():
    assert len(GALLERY) >= 2


@pytest.mark.docs
def test_docs_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    for name in ("numpydoc", "sphinx_gallery", "myst_parser", "pydata_sphinx_theme", "matplotlib"):
        pytest.importorskip(name)
    out = tmp_path / "html"
    # Sphinx writes its doctrees into the output folder (-d), so that the
    # source tree only gets the generated stubs and gallery pages, which
    # .gitignore lists.
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(SITE), str(out)]
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + "\n" + result.stderr[-10000:]

    assert (out / "index.html").is_file()
    assert (out / "api.html").is_file()
    api_page = out / "generated" / "skprompt.BlackBoxPromptClassifier.html"
    assert api_page.is_file()
    html = api_page.read_text(encoding="utf-8")
    assert "predict_proba" in html and "method_params" in html
    for name in GALLERY:
        page = out / "auto_examples" / f"{name}.html"
        assert page.is_file(), f"gallery page of {name} missing"
    # The examples ran: their figures are in the output.
    assert list((out / "_images").glob("sphx_glr_plot_*")), "no gallery figure was produced"
    for page in ("overview", "architecture", "defaults", "models", "performance", "results", "examples"):
        assert (out / "guide" / f"{page}.html").is_file()
