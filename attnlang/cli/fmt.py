"""``attnlang fmt FILE... [--check | --write]``: print files in canonical form.

Without options the canonical text is printed to stdout.  ``--check`` prints nothing for files
already canonical and ``FILE: not in canonical form (...)`` on stderr for the others, exiting 1
if there are any; ``--write`` rewrites files in place (atomically).  A file with errors is never
formatted: its errors are reported as by ``attnlang check`` and the exit status is 1.
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".attn files to format")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a file is not in canonical form")
    mode.add_argument("-w", "--write", action="store_true",
                      help="rewrite the files in place")


def run(args) -> int:
    from ..api import load
    from ..cache import write_atomic
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
                try:
                    write_atomic(path, formatted)
                except OSError as exc:
                    print(AttnError(f"cannot rewrite the file ({exc.strerror or exc})",
                                    filename=path).format(), file=sys.stderr)
                    status = 1
        else:
            sys.stdout.write(formatted)
    return status
