"""The Python API: ``parse``, ``load``, ``Program`` and ``Pattern``.

A thin layer over the stages; each method imports its stage lazily so that parsing and checking
never import torch or triton.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

from . import ir
from .errors import AttnError


@dataclass(frozen=True)
class Pattern:
    """One pattern declaration, possibly with some parameters bound.

    ``str(pattern)`` is canonical source.  Methods that need concrete values (``mask``,
    ``layout``, ``plan``, ``module``) fill unbound parameters from their defaults and raise an
    ``AttnError`` naming any required parameter that is still missing.
    """

    decl: ir.PatternDecl

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def params(self) -> Dict[str, object]:
        """Unbound parameters and their defaults (None where a value is required)."""
        return {p.name: (None if p.default is None else p.default.value) for p in self.decl.params}

    def __str__(self) -> str:
        return str(self.decl)

    def __repr__(self) -> str:
        return f"<attnlang pattern {self.decl}>"

    def bind(self, **params) -> "Pattern":
        from .binding import bind

        return Pattern(bind(self.decl, params))

    @property
    def ir(self) -> ir.PatternExpr:
        """The fully bound, simplified pattern expression (what later stages consume)."""
        return _resolved(self.decl)

    def mask(self, q_len, k_len=None, num_heads=1, segments=None):
        from .reference import mask

        return mask(self.ir, q_len, k_len, num_heads=num_heads, segments=segments)

    def layout(self, q_len, k_len=None, block_m=128, block_n=128, num_heads=1, segments=None):
        from .layout import build_layout

        return build_layout(self.ir, q_len, k_len, block_m=block_m, block_n=block_n,
                            num_heads=num_heads, segments=segments)

    def plan(self, q_len, k_len=None, block_m=128, block_n=128, num_heads=1, segments=None):
        from .plan import build_plan

        return build_plan(self.ir, q_len, k_len, block_m=block_m, block_n=block_n,
                          num_heads=num_heads, segments=segments)

    def module(self, backend="auto", **options):
        from .runtime import make_module

        return make_module(self, backend=backend, **options)


_RESOLVED: Dict[ir.PatternDecl, ir.PatternExpr] = {}


def _resolved(decl: ir.PatternDecl) -> ir.PatternExpr:
    """The declaration bound with its defaults and simplified (memoised per declaration)."""
    from .binding import bind
    from .simplify import simplify

    hit = _RESOLVED.get(decl)
    if hit is None:
        hit = _RESOLVED[decl] = simplify(bind(decl, {}, fill_defaults=True).body)
    return hit


@dataclass(frozen=True)
class Program:
    """A checked ``.attn`` file: ``program["name"]`` is a ``Pattern``."""

    ir: ir.Program

    @property
    def patterns(self) -> Tuple[Pattern, ...]:
        return tuple(Pattern(d) for d in self.ir.patterns)

    @property
    def filename(self) -> str:
        span = self.ir.span
        return span.filename if span is not None else "<string>"

    def __getitem__(self, name: str) -> Pattern:
        for decl in self.ir.patterns:
            if decl.name == name:
                return Pattern(decl)
        known = ", ".join(d.name for d in self.ir.patterns) or "none"
        raise KeyError(f"no pattern named {name!r} (this program declares: {known})")

    def __contains__(self, name: str) -> bool:
        return any(d.name == name for d in self.ir.patterns)

    def __iter__(self) -> Iterator[Pattern]:
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.ir.patterns)

    def __str__(self) -> str:
        return str(self.ir)


def parse(text: str, filename: str = "<string>") -> Program:
    """Parse and check a program; raises ``AttnError`` (with file, line and column) on errors."""
    from .checker import check_source

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttnError(f"file is not UTF-8 text (byte {exc.start})", filename=filename)
    return Program(check_source(text, filename))


MAX_FILE_BYTES = 1 << 20


def load(path) -> Program:
    """Read and parse a ``.attn`` file; unreadable files raise ``AttnError`` naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise AttnError("is a directory, not an .attn file", filename=path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise AttnError(f"file is too large ({size} bytes; attnlang reads files up to "
                            f"{MAX_FILE_BYTES} bytes)", filename=path)
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise AttnError("no such file", filename=path) from None
    except PermissionError:
        raise AttnError("permission denied", filename=path) from None
    except OSError as exc:
        raise AttnError(f"cannot read file ({exc.strerror})", filename=path) from None
    return parse(data, filename=path)
