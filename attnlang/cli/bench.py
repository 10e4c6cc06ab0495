"""``attnlang bench``: the GPU benchmark of `attnlang.bench` (attnlang against FlexAttention and
SDPA on the suite patterns, every output checked before it is timed); the same options as
``python -m attnlang.bench``."""
from __future__ import annotations


def add_arguments(parser) -> None:
    from ..bench import add_arguments as bench_arguments

    bench_arguments(parser)


def run(args) -> int:
    from ..bench import run_cli

    return run_cli(args)
