"""Sphinx configuration of the skprompt documentation site.

Build (warnings are errors, as in CI and ``tox -e docs``)::

    python -m sphinx -W --keep-going -b html docs/site docs/site/_build/html

The build needs no network (no intersphinx) and no language model: the
gallery (``gallery/plot_*.py``) runs at build time on toy
:class:`~skprompt.backends.FunctionBackend` black boxes; the real-model
scripts of ``examples/`` are shown on :doc:`guide/examples`, not run.
"""

import importlib
import inspect
import os
import pkgutil
import re
from pathlib import Path

import skprompt

os.environ.setdefault("MPLBACKEND", "Agg")

HERE = Path(__file__).resolve().parent

project = "skprompt"
author = "skprompt developers"
copyright = "skprompt developers, Apache-2.0"
release = skprompt.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
# gallery/ holds the sources of auto_examples/ (sphinx-gallery), not pages.
exclude_patterns = ["_build", "gallery", "generated/backreferences", "**.ipynb_checkpoints"]

# -- API reference -----------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autosummary_ignore_module_all = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc "Parameters" sections say the types
# numpydoc renders the docstrings; its style checks are not run here (the
# docstrings follow the numpydoc layout but not every one of its rules).
numpydoc_validation_checks = set()
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- User guide (markdown pages of docs/ and the README) ---------------------
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# docs/results.md links to its folder ``results/`` (for readers of the
# repository); a folder is no page or download of the site, so that one link
# cannot resolve. The pages are included unchanged, so the warning is off.
suppress_warnings = ["myst.xref_missing"]

# -- Gallery -----------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["auto_examples"],
    # Only the toy examples run; they take seconds each on 2 CPU cores.
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": False,
    "show_memory": False,
    "min_reported_time": 1,
    "doc_module": ("skprompt",),
    "backreferences_dir": "generated/backreferences",
}

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skprompt {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_static_path = []
html_show_sourcelink = False


# -- Every public name is in the API reference -------------------------------
#
# Each public module's ``__all__`` must be documented on api.rst: a name is
# covered when ``module.name`` is listed there, or when the same object is
# listed under another public name (e.g. ``skprompt.exceptions.BudgetWarning``
# is ``skprompt.BudgetWarning``). A missing name is a warning, i.e. an error
# under ``-W``.

def public_modules():
    """``skprompt`` and every submodule whose dotted path has no ``_`` part."""
    names = ["skprompt"]
    for info in pkgutil.walk_packages(skprompt.__path__, "skprompt."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def documented_names(api_rst):
    """Full names listed in the ``autosummary`` blocks of ``api_rst``."""
    names, module, in_block = [], None, False
    for line in Path(api_rst).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        m = re.match(r"\.\. (?:current)?module:: (\S+)", stripped)
        if m:
            module, in_block = m.group(1), False
        elif stripped.startswith(".. autosummary::"):
            in_block = True
        elif in_block:
            if line and not line[0].isspace():
                in_block = False
            elif stripped and not stripped.startswith(":"):
                name = stripped.lstrip("~")
                names.append(name if name.startswith("skprompt") else f"{module}.{name}")
    return names


def _resolve(full_name):
    try:
        return importlib.import_module(full_name)
    except ImportError:
        pass
    module_name, _, attr = full_name.rpartition(".")
    while module_name:
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            module_name, _, head = module_name.rpartition(".")
            attr = f"{head}.{attr}"
            continue
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise ImportError(full_name)


def missing_public_names(api_rst=HERE / "api.rst"):
    documented = documented_names(api_rst)
    listed = set(documented)
    objects = {id(_resolve(name)) for name in documented}
    missing = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            full = f"{module_name}.{name}"
            if full not in listed and id(getattr(module, name)) not in objects:
                missing.append(full)
    return missing


# Module pages (_templates/autosummary/module.rst) list their module's __all__.
autosummary_context = {
    "public_names": {name: list(getattr(importlib.import_module(name), "__all__", ()))
                     for name in public_modules()},
}


def _check_api_coverage(app):
    from sphinx.util import logging

    for full in missing_public_names():
        logging.getLogger(__name__).warning(
            "public name %s is not in the API reference (docs/site/api.rst)", full,
            location="api")


# Names with a trailing underscore inside a numpydoc shape, as in
# "history_ : ndarray of shape (n_iter_, n_runs)", are reST references
# ("Unknown target name: n_iter"); they are escaped before rendering, so that
# the docstrings can keep the plain numpydoc spelling.
_SHAPE = re.compile(r"shape \(([^()]*)\)")
_TRAILING_UNDERSCORE = re.compile(r"\b([A-Za-z]\w*?)_(?=[,)\s]|$)")


def _escape_shape_underscores(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "shape (" in line:
            lines[i] = _SHAPE.sub(
                lambda m: "shape (" + _TRAILING_UNDERSCORE.sub(r"\1\\_", m.group(1)) + ")", line)


_COMMENT_DOCS = {}


def _comment_docs(obj):
    """The ``#:`` comment of ``obj`` in the public module that assigns it, if any."""
    if not _COMMENT_DOCS:
        from sphinx.pycode import ModuleAnalyzer

        for module_name in public_modules():
            module = importlib.import_module(module_name)
            for (cls, attr), doc in ModuleAnalyzer.for_module(module_name).find_attr_docs().items():
                if not cls and hasattr(module, attr):
                    _COMMENT_DOCS.setdefault(id(getattr(module, attr)), list(doc))
    return list(_COMMENT_DOCS.get(id(obj), []))


def _no_builtin_type_docs(app, what, name, obj, options, lines):
    """A re-exported constant (``skprompt.METHODS`` is ``skprompt.classifier.METHODS``)
    gets its type's docstring ("Built-in immutable sequence..."); use the
    constant's own ``#:`` comment instead, or nothing."""
    if what not in ("data", "attribute") or isinstance(obj, type) or callable(obj):
        return
    type_doc = inspect.getdoc(type(obj)) or ""
    if type_doc and [ln.strip() for ln in lines if ln.strip()] == [
            ln.strip() for ln in type_doc.splitlines() if ln.strip()]:
        lines[:] = _comment_docs(obj)


def _skip_sklearn_members(app, what, name, obj, skip, options):
    """Leave out what a class inherits from scikit-learn (get_params,
    set_params, score, the metadata-routing ``set_*_request`` methods...):
    scikit-learn documents those."""
    module = getattr(obj, "__module__", None) or ""
    if what == "class" and module.split(".")[0] == "sklearn":
        return True
    return None


def setup(app):
    app.connect("builder-inited", _check_api_coverage)
    app.connect("autodoc-skip-member", _skip_sklearn_members)
    app.connect("autodoc-process-docstring", _no_builtin_type_docs, priority=400)
    # before numpydoc (priority 500) turns the sections into field lists
    app.connect("autodoc-process-docstring", _escape_shape_underscores, priority=400)
