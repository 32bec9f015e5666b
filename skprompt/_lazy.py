"""PEP 562 lazy attributes, for packages whose heavy names import torch."""

from __future__ import annotations

import importlib

__all__ = ["lazy_attributes"]


def lazy_attributes(package, namespace, table, public):
    """``(__getattr__, __dir__)`` for a package that imports ``table``'s names on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    namespace : dict
        Its ``globals()``: a loaded name is stored there, so later accesses skip the hook.
    table : dict
        Name -> submodule (relative to ``package``) that defines it.
    public : list of str
        The package's ``__all__``, listed by ``dir()`` before anything is loaded.
    """

    def __getattr__(name):
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
