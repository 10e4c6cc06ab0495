"""attnlang: a compiler for attention sparsity patterns.

``attnlang.parse(text)`` / ``attnlang.load(path)`` give a ``Program``; ``program["name"]`` is a
``Pattern`` with ``bind``, ``mask``, ``layout``, ``plan`` and ``module``.
"""
from .api import Pattern, Program, load, parse
from .errors import AttnError

__all__ = ["AttnError", "Pattern", "Program", "load", "parse"]
__version__ = "0.1.0"


def __getattr__(name):  # lazy: ``attnlang.functional`` and ``attnlang.nn`` import torch
    if name in ("functional", "nn"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attnlang' has no attribute {name!r}")
