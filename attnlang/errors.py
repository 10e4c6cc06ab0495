"""The one error type users see, formatted as LANGUAGE.md section 7 asks.

``FILE:LINE:COL: error: MESSAGE`` followed by the source line and a caret under the column.
Errors that have no source position (a bad argument to a Python function) name the argument,
what was given and what is accepted, and are ``ValueError``s; ``AttnError`` is a ``ValueError``
too, so one ``except ValueError`` catches every complaint about user input.
"""
from __future__ import annotations

from typing import Optional

from .ir import Span


# control characters of an echoed source line as their pictures (one column each: the caret
# stays under its column, and a NUL or an escape is not sent to the terminal)
_VISIBLE = {c: 0x2400 + c for c in range(32)} | {0x7F: 0x2421}


class AttnError(ValueError):
    """An error in an attnlang program or in the use of one.

    ``line`` and ``column`` are 1-based (0 when unknown); ``filename`` is the file or ``<string>``.
    """

    def __init__(self, message: str, span: Optional[Span] = None, *, filename: str = "<string>",
                 line: int = 0, column: int = 0, source_line: Optional[str] = None):
        self.message = message
        if span is not None:
            filename, line, column = span.filename, span.line, span.column
            if source_line is None and span.source is not None:
                source_line = span.source.line(line)
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self.format())

    def format(self) -> str:
        if self.line <= 0:
            return f"{self.filename}: error: {self.message}"
        head = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        if not self.source_line:
            return head
        text = self.source_line.replace("\t", " ").rstrip("\n").translate(_VISIBLE)
        if len(text) > 200:  # keep the caret readable on huge generated lines
            start = max(0, self.column - 100)
            text = text[start:start + 200]
            caret_col = self.column - start
        else:
            caret_col = self.column
        return f"{head}\n    {text}\n    {' ' * (caret_col - 1)}^"

    def __str__(self) -> str:
        return self.format()


def bad_argument(name: str, given, accepted: str) -> ValueError:
    """A ValueError for a bad Python-level argument: names it, what was given, what is accepted."""
    return ValueError(f"{name}: got {given!r}; expected {accepted}")


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum`` (a one-element integer tensor counts), else
    `bad_argument`'s error."""
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "numel") and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise bad_argument(name, value, f"an integer >= {minimum}")
    if value < minimum:
        raise bad_argument(name, value, f"an integer >= {minimum}")
    return value
