"""``attnlang bench``: the GPU benchmark of `attnlang.bench` (attnlang against FlexAttention and
SDPA on the suite patterns, every output checked before it is timed); the same options as
``python -m attnlang.bench``.  The options are checked before the benchmark starts (a bad one
would otherwise show only after minutes of GPU time, or not at all)."""
from __future__ import annotations

import os

MODES = ("fwd", "fwd+bwd")


def add_arguments(parser) -> None:
    from ..bench import add_arguments as bench_arguments

    bench_arguments(parser)


def _numbers(name, text, lowest, highest=None):
    from ..errors import AttnError

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < lowest or (highest is not None and v > highest) for v in values):
        within = f"from {lowest} to {highest}" if highest is not None else f">= {lowest}"
        raise AttnError(f"{name}: got {text!r}; expected integers {within} separated by commas",
                        filename="attnlang bench")


def check_options(args) -> None:
    from ..bench import SUITE
    from ..errors import AttnError
    from ..validate import MAX_HEAD_DIM, MIN_HEAD_DIM

    if set(args.pattern or ()) - set(SUITE):
        return  # `run_cli` names the unknown pattern first

    def fail(message):
        raise AttnError(message, filename="attnlang bench")
    _numbers("--lengths", args.lengths, 1)
    _numbers("--dims", args.dims, MIN_HEAD_DIM, MAX_HEAD_DIM)
    modes = args.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        fail(f"--modes: got {args.modes!r}; expected {' or '.join(MODES)}, or both separated by "
             f"a comma")
    if args.rounds < 1:
        fail(f"--rounds: got {args.rounds}; expected a positive integer")
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(folder):
        fail(f"-o: got {args.out!r}; expected a file name in an existing folder")


def run(args) -> int:
    from ..bench import run_cli

    check_options(args)
    return run_cli(args)
