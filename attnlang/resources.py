"""Where the grammar and templates live: inside the installed package (the wheel copies the
top-level ``grammar/`` and ``templates/`` folders into ``attnlang/``), or at the top of a source
checkout."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The folder ``name`` (``"grammar"`` or ``"templates"``), installed or in the checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"attnlang data folder {name!r} not found next to {_PACKAGE}")


def grammar_path() -> Path:
    return data_dir("grammar") / "attn.lark"


def templates_dir() -> Path:
    return data_dir("templates")
