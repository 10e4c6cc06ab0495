"""``attnlang compile FILE``: generate a standalone Triton/PyTorch module per pattern.

Writes ``DIR/<name>.py`` (``codegen.render_module``) for every pattern of the file (or the one
named by ``--pattern``) and prints a summary: the canonical pattern, density and FLOPs saved at a
few lengths, a small picture of the block layout and where the module went.  ``--emit STAGE``
prints one stage's artifact instead and writes nothing: ``ast`` (the parser's AST), ``ir`` (the
bound, simplified pattern, canonical text), ``plan`` (the component plan at ``--length``),
``layout`` (the block picture at a small length) or ``triton`` (the generated source).
"""
from __future__ import annotations

import os

from ..errors import AttnError

STAGES = ("ast", "ir", "plan", "layout", "triton")
SUMMARY_LENGTHS = (1024, 4096, 16384)
PICTURE_LENGTH, PICTURE_BLOCK = 256, 16
# bounds of the numeric options (`show` uses them too): far beyond any model's, and small enough
# that no size computed from them overflows a tensor or takes the machine's memory unasked
MAX_HEADS = 1024
MAX_BLOCK = 1 << 16
# random cells a layout at a default length may decide one by one (about 4 s on one core):
# `random(0.5, block = 1)` passes it from 8k tokens on
DEFAULT_CELLS = 1 << 24


def add_arguments(parser) -> None:
    parser.add_argument("file", help="the .attn file")
    parser.add_argument("--pattern", metavar="NAME", help="compile only this pattern")
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                        help="give a parameter a value (repeatable)")
    parser.add_argument("-o", "--output", metavar="DIR", default=".",
                        help="where to write the modules (default: the current folder)")
    parser.add_argument("--emit", choices=STAGES,
                        help="print this stage's artifact to stdout instead of writing modules")
    parser.add_argument("--block-m", type=int, default=None,
                        help="query block size (a power of two from 16 to 65536)")
    parser.add_argument("--block-n", type=int, default=None,
                        help="key block size (a power of two from 16 to 65536)")
    parser.add_argument("--length", type=int, default=1024,
                        help="sequence length for --emit plan (default 1024)")
    parser.add_argument("--heads", type=int, default=1,
                        help="number of heads of the summary, plan and layout (default 1, at "
                             "most 1024)")


def _value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return None


def parse_settings(items, filename):
    """``["w=64", "d=0.5"]`` -> ``{"w": 64, "d": 0.5}``; malformed items are errors."""
    values = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        value = _value(raw) if sep else None
        if not name.isidentifier() or value is None:
            raise AttnError(f"--set: got {item!r}; expected NAME=VALUE with an integer or "
                            f"float value", filename=filename)
        values[name] = value
    return values


def select(program, args):
    """The patterns to compile (or show), bound with the ``--set`` values they declare."""
    if args.pattern is not None and args.pattern not in program:
        known = ", ".join(p.name for p in program) or "none"
        raise AttnError(f"--pattern: no pattern named {args.pattern!r} (this file declares: "
                        f"{known})", filename=args.file)
    settings = parse_settings(args.set, args.file)
    patterns = [program[args.pattern]] if args.pattern is not None else list(program)
    declared = {name for p in patterns for name in p.params}
    unknown = sorted(set(settings) - declared)
    if unknown:
        raise AttnError(f"--set: no selected pattern has a parameter named {unknown[0]!r}",
                        filename=args.file)
    return [p.bind(**{k: v for k, v in settings.items() if k in p.params}) for p in patterns]


def random_cells(expr, q_len: int, k_len: int) -> int:
    """The random cells a layout at these lengths decides one by one (``layout_prims.random``)."""
    from .. import ir

    total = 0
    for node in expr.walk():
        if isinstance(node, ir.Random):
            cell = int(ir.const(node.block))
            total += (-(-q_len // cell) + 1) * (-(-k_len // cell) + 1)
    return total


def density_rows(pattern, heads: int):
    """``(length, density, flops saved)`` at ``SUMMARY_LENGTHS``, from the plan (exact, and
    cheap: full blocks by area, partial blocks evaluated): density = kept / all pairs; saved =
    1 - (pairs inside the blocks the kernels visit) / all pairs; ``(length, None, None)`` where
    a random() layout there would decide more than ``DEFAULT_CELLS`` cells one by one."""
    rows = []
    for length in SUMMARY_LENGTHS:
        if random_cells(pattern.ir, length, length) > DEFAULT_CELLS:
            rows.append((length, None, None))
            continue
        total = length * length * heads
        plan = pattern.plan(length, num_heads=heads)
        rows.append((length, plan.kept_pairs / total, 1.0 - plan.computed_pairs / total))
    return rows


def picture(pattern, heads: int) -> str:
    try:
        lay = pattern.layout(PICTURE_LENGTH, block_m=PICTURE_BLOCK, block_n=PICTURE_BLOCK,
                             num_heads=heads)
    except ValueError as exc:  # data-dependent patterns (segment) have no static layout
        return f"(no static layout: {str(exc).splitlines()[0]})"
    return lay.to_string()


def emit(stage, program_text, filename, pattern, args) -> str:
    if stage == "ast":
        from ..parser import parse_ast

        return repr(parse_ast(program_text, filename))
    if stage == "ir":
        return f"pattern {pattern.name} = {pattern.ir}"
    if stage == "plan":
        from ..torch_backend import uses_segments

        if uses_segments(pattern.ir):
            raise AttnError(f"--emit plan: pattern {pattern.name!r} uses segment, so its plan "
                            f"depends on the segment ids given at run time ('attnlang show' "
                            f"draws it for 4 equal documents)", filename=args.file)
        return pattern.plan(args.length, block_m=args.block_m or 128,
                            block_n=args.block_n or 128, num_heads=args.heads).describe()
    if stage == "layout":
        return picture(pattern, args.heads)
    from ..codegen import render_module

    return render_module(pattern, block_m=args.block_m, block_n=args.block_n)


def positive_option(name, value, filename, most=None):
    """``value`` of option ``name`` if it is a positive integer (at most ``most``), else an error
    naming the option (`show` checks its options with it too)."""
    if value is None or value < 1 or (most is not None and value > most):
        upto = "" if most is None else f" up to {most}"
        raise AttnError(f"{name}: got {value}; expected a positive integer{upto}",
                        filename=filename)
    return value


def block_option(name, value, filename):
    """``value`` of a block-size option if it is a power of two >= 16, as the kernels and the
    Python API take them (and at most ``MAX_BLOCK``), else an error naming the option (a block
    of 7 keys would only fail inside Triton when a module first runs)."""
    if value < 16 or value > MAX_BLOCK or value & (value - 1):
        raise AttnError(f"{name}: got {value}; expected a power of two >= 16 (up to "
                        f"{MAX_BLOCK})", filename=filename)
    return value


def _check_numbers(args) -> None:
    """The numeric options, as the Python API would take them."""
    positive_option("--length", args.length, args.file)
    positive_option("--heads", args.heads, args.file, MAX_HEADS)
    for name, value in (("--block-m", args.block_m), ("--block-n", args.block_n)):
        if value is not None:
            block_option(name, value, args.file)


def _output_dir(args):
    """``-o``'s folder, refused up front when it names something that is not a folder."""
    from pathlib import Path

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise AttnError(f"-o: got {args.output!r}, which is a file; expected a folder (made if "
                        f"missing)", filename=args.file)
    return out_dir


def _write_module(target, source, filename) -> None:
    from ..cache import write_atomic

    try:
        write_atomic(target, source)
    except OSError as exc:
        raise AttnError(f"-o: cannot write {target} ({exc.strerror})", filename=filename) from None


def run(args) -> int:
    from ..api import load

    _check_numbers(args)
    program = load(args.file)  # the file checks of `check` (missing, folder, size, encoding)
    patterns = select(program, args)
    if args.emit == "ast":  # the text `load` read (a span's source), not a second read
        print(emit("ast", program.ir.span.source.text, args.file, None, args))
        return 0
    if args.emit:
        for pattern in patterns:
            print(emit(args.emit, None, args.file, pattern, args))
        return 0
    from ..codegen import render_module

    out_dir = _output_dir(args)
    for pattern in patterns:
        source = render_module(pattern, block_m=args.block_m, block_n=args.block_n)
        target = out_dir / f"{pattern.name}.py"
        _write_module(target, source, args.file)
        print(f"pattern {pattern.name} = {pattern.ir}")
        try:
            rows = density_rows(pattern, args.heads)
        except ValueError as exc:  # segment patterns: the numbers depend on the ids
            rows = []
            print(f"  density: depends on run-time data ({str(exc).splitlines()[0]})")
        for length, density, saved in rows:
            if density is None:
                print(f"  L={length:>6}: not summarised: random() decides the layout cell by "
                      f"cell, {random_cells(pattern.ir, length, length)} cells")
                continue
            print(f"  L={length:>6}: density {100 * density:6.2f}%   FLOPs saved "
                  f"{100 * saved:6.2f}%")
        print(f"  layout at L={PICTURE_LENGTH}, {PICTURE_BLOCK}x{PICTURE_BLOCK} blocks:")
        for line in picture(pattern, args.heads).splitlines():
            print(f"    {line}")
        print(f"  wrote {os.path.normpath(str(target))}")
    return 0
