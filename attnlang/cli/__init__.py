"""The ``attnlang`` command: a thin dispatcher; each subcommand lives in its own module and is
imported only when used (``check`` and ``fmt`` never import torch or triton)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "check": ("check", "check .attn files for errors"),
    "fmt": ("fmt", "print a file in canonical form"),
    "show": ("show", "draw a pattern's mask and layout, and report its statistics"),
    "compile": ("compile", "generate standalone Triton/PyTorch modules for patterns"),
    "bench": ("bench", "benchmark attnlang against FlexAttention and SDPA (GPU)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the parser of the chosen subcommand so that `check`/`fmt` stay light.
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
        sp = argparse.ArgumentParser(prog=f"attnlang {name}", description=COMMANDS[name][1])
        module.add_arguments(sp)
        args = sp.parse_args(argv[1:])
        return _run(module, args)
    parser = argparse.ArgumentParser(
        prog="attnlang", description="attnlang: a compiler for attention sparsity patterns.",
        epilog="commands:\n" + "\n".join(f"  {n:<8} {h}" for n, (_, h) in COMMANDS.items())
        + "\n\nRun 'attnlang COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", help="one of: " + ", ".join(COMMANDS))
    args = parser.parse_args(argv[:1])
    if args.command is None:
        parser.print_help()
        return 0
    parser.error(f"unknown command {args.command!r} (choose from {', '.join(COMMANDS)})")
    return 2


def _run(module, args) -> int:
    from ..errors import AttnError

    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at the interpreter's exit
        return code
    except AttnError as exc:
        print(exc.format(), file=sys.stderr)
        return 1
    except ValueError as exc:  # the Python API's errors name the argument and what it accepts
        print(f"{getattr(args, 'file', 'attnlang')}: error: {exc}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        text = str(exc).strip()
        if not isinstance(exc, MemoryError) and not any(
                word in text for word in ("allocate", "bad_alloc")):
            raise
        detail = f" ({text.splitlines()[0][:200]})" if text else ""  # MemoryError() says nothing
        print(f"{getattr(args, 'file', 'attnlang')}: error: out of memory{detail}; try shorter "
              f"lengths or fewer heads", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader closed our output (`| head`): stop quietly, as Unix
        # tools do, and keep the interpreter's last flush from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a tool


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
