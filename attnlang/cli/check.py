"""``attnlang check FILE...``: check ``.attn`` files and report every error.

For each file without errors it prints ``FILE: ok: N patterns`` (nothing with ``--quiet``); each
error goes to stderr as ``FILE:LINE:COL: error: MESSAGE`` with the source line and a caret (or
``FILE: error: MESSAGE`` when the file cannot be read).  All files are checked even after one
fails; the exit status is 1 if any failed.  Imports only the front end (no torch, no triton).
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".attn files to check")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing for files without errors")


def run(args) -> int:
    from ..api import load
    from ..errors import AttnError

    failed = 0
    for path in args.files:
        try:
            program = load(path)
        except AttnError as exc:
            print(exc.format(), file=sys.stderr)
            failed += 1
            continue
        if not args.quiet:
            count = len(program)
            print(f"{path}: ok: {count} pattern{'' if count == 1 else 's'}")
    return 1 if failed else 0
