"""``attnlang fmt FILE... [--check | --write]``: print files in canonical form.

Without options the canonical text is printed to stdout.  ``--check`` prints nothing for files
already canonical and ``FILE: not in canonical form (...)`` on stderr for the others, exiting 1
if there are any; ``--write`` rewrites files in place (atomically).  A file with errors is never
formatted: its errors are reported as by ``attnlang check`` and the exit status is 1.
"""
from __future__ import annotations

import os
import sys
import tempfile


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".attn files to format")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a file is not in canonical form")
    mode.add_argument("-w", "--write", action="store_true",
                      help="rewrite the files in place")


def run(args) -> int:
    from ..api import load
    from ..errors import AttnError
    from ..formatter import format_source

    status = 0
    for path in args.files:
        try:
            load(path)  # every file-level check (missing, directory, size, encoding, errors)
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
            formatted = format_source(text, path)
        except AttnError as exc:
            print(exc.format(), file=sys.stderr)
            status = 1
            continue
        if args.check:
            if formatted != text:
                print(f"{path}: not in canonical form (run 'attnlang fmt --write {path}')",
                      file=sys.stderr)
                status = 1
        elif args.write:
            if formatted != text:
                _write_atomically(path, formatted)
        else:
            sys.stdout.write(formatted)
    return status


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".attnlang-fmt-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
