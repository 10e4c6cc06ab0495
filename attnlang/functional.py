"""``attnlang.functional.attention``: sparse attention of a pattern in one call.

``pattern`` is an ``attnlang.Pattern`` or the source of one pattern expression, such as
``"causal & window(8, 0)"``; the text is parsed once per process (wrapped as ``pattern _ =
...``, with error positions and messages in terms of the text as given).  Plans are cached per
(pattern, lengths, heads, block sizes, device); patterns that use ``segment`` get a new plan per
call.
Under ``torch.compile(fullgraph=True)`` a text pattern (or a ``Pattern`` object) must have been
used once outside the trace (parsing and making ops are not traceable); a module
(``Pattern.module()``, ``attnlang.nn``) has no such need, since it prepares its pattern when it
is built.
"""
from __future__ import annotations

import functools
import re

from .api import Pattern, parse
from .errors import AttnError
from .ir import text_lines

_PREFIX = "pattern _ =\n"
_POSITION = re.compile(r"\b(at |\(at )(\d+):(\d+)")
# the parser's words for what may follow a declaration's body, as a single expression reads them
_AFTER_BODY = (("the next declaration ('pattern NAME = ...')", "the end of the expression"),
               ("a declaration ('pattern NAME = ...')", "the end of the expression"))


def _as_expression(message: str) -> str:
    """The parser's message about the wrapped source, in terms of the text as given."""
    for program_words, text_words in _AFTER_BODY:
        message = message.replace(program_words, text_words)
    return _shift_positions(message)


def _shift_positions(message: str) -> str:
    """Positions quoted in a message ("at 2:1") moved from the wrapped source to ``text``."""
    def shift(match):
        line = int(match.group(2))
        return f"{match.group(1)}{line - 1 if line >= 2 else line}:{match.group(3)}"
    return _POSITION.sub(shift, message)


def expression_text(pattern: Pattern):
    """The text that `as_pattern` parsed ``pattern`` from, or None for a Pattern made otherwise
    (its errors are about its own source, positioned there)."""
    span = pattern.decl.span
    source = span.source if span is not None else None
    if source is None or source.filename != "<pattern>" or not source.text.startswith(_PREFIX):
        return None
    return source.text[len(_PREFIX):]


def in_text(exc: AttnError, text: str) -> AttnError:
    """``exc``, an error about the pattern parsed from ``text`` (at the parse, or later at a
    call: a ``where`` too large for the call's lengths), with its position and message in terms
    of ``text`` as given rather than the wrapped source (``exc`` itself where it is not about
    that source)."""
    if exc.filename != "<pattern>" or exc.line < 2:
        return exc
    lines = text_lines(text)
    source = lines[exc.line - 2] if exc.line - 2 < len(lines) else None
    return AttnError(_as_expression(exc.message), filename="<pattern>", line=exc.line - 1,
                     column=exc.column, source_line=source)


@functools.lru_cache(maxsize=256)
def _parse_expression(text: str) -> Pattern:
    lines = text_lines(text)
    try:
        program = parse(_PREFIX + text, filename="<pattern>")
    except AttnError as exc:
        if exc.line >= 2:
            raise in_text(exc, text) from None
        if exc.line == 1:  # the error is at the end of the hidden declaration: no expression
            raise AttnError("expected a pattern expression such as 'causal & window(8, 0)', "
                            "found none (the text is empty or only comments)",
                            filename="<pattern>", line=1, column=1,
                            source_line=lines[0] if lines else "") from None
        raise
    if len(program) > 1:  # the text went on with declarations of its own, which would be ignored
        span = program.ir.patterns[1].span
        line = span.line - 1 if span is not None else 0
        raise AttnError("expected one pattern expression, found a declaration after it "
                        f"('pattern {program.ir.patterns[1].name} = ...'); pass a single "
                        "expression, or load the program with attnlang.parse",
                        filename="<pattern>", line=line, column=span.column if span else 0,
                        source_line=lines[line - 1] if 0 < line <= len(lines) else None)
    return program["_"]


def as_pattern(pattern) -> Pattern:
    """A ``Pattern`` from a ``Pattern`` or the source text of one pattern expression."""
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, str):
        return _parse_expression(pattern)
    raise ValueError(f"pattern: got {type(pattern).__name__} {pattern!r}; expected an "
                     "attnlang.Pattern or the source of a pattern expression such as "
                     "'causal & window(8, 0)'")


def attention(q, k, v, pattern, *, segments=None, key_padding_mask=None, attn_mask=None,
              attn_bias=None, scale=None, dropout_p=0.0, generator=None, return_lse=False,
              backend="auto", block_m=None, block_n=None):
    """Sparse attention: ``out`` ``[B, Hq, Lq, D]`` (and ``lse`` ``[B, Hq, Lq]`` float32 with
    ``return_lse=True``).

    ``q`` ``[B, Hq, Lq, D]``; ``k``, ``v`` ``[B, Hkv, Lk, D]`` (``Hq`` a multiple of ``Hkv``;
    ``Lq != Lk`` aligns bottom-right).  ``segments``: ids ``[Lk]`` or ``[B, Lk]`` (queries take
    the last ``Lq``), or a pair ``(seg_q, seg_k)``.  ``key_padding_mask`` bool ``[B, Lk]``, True
    = keep.  ``attn_mask`` (bool, True = keep) and ``attn_bias`` (float, added to the scaled
    scores; it gets a gradient) broadcast to ``[B, Hq, Lq, Lk]``.  ``dropout_p`` drops attention
    weights, drawn from ``generator``.  ``backend``: ``"auto"``, ``"triton"`` or ``"torch"``.
    ``block_m``/``block_n``: the layout block sizes (queries, keys), powers of two >= 16, or
    None for the backend's default; they change only the speed, never the result.
    """
    from .runtime import _check_block, run

    block_m = _check_block("block_m", block_m)
    block_n = _check_block("block_n", block_n)
    ops = needs_segments = None
    text = pattern if isinstance(pattern, str) else None
    if isinstance(pattern, (str, Pattern)):
        pattern, ops, needs_segments = _prepared(pattern, block_m, block_n)
    return run(as_pattern(pattern), q, k, v, segments=segments,
               key_padding_mask=key_padding_mask, attn_mask=attn_mask, attn_bias=attn_bias,
               scale=scale, dropout_p=dropout_p, generator=generator, return_lse=return_lse,
               backend=backend, block_m=block_m, block_n=block_n, ops=ops,
               needs_segments=needs_segments, text=text)


def _prepared(pattern, block_m, block_n):
    """``(pattern, ops, needs_segments)`` for a pattern given as text, kept under the text, or as
    a ``Pattern`` object, kept under its ``id`` (the entry holds the pattern, so the id is not
    reused while the entry lives; ``torch.compile`` traces an ``id``): ``runtime.prepared``."""
    from .runtime import prepared

    key = ("functional", pattern) if isinstance(pattern, str) else ("object", id(pattern))
    return prepared(key, lambda: as_pattern(pattern), block_m, block_n)
