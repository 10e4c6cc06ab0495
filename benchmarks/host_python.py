"""The host's Python time of a call, without a GPU: the generated module's forward and backward
run on CPU tensors with every kernel launch replaced by a no-op and the tiles chosen as on a GPU
(compile_check's `as_on_gpu`), so what is timed is attnlang's own Python -- tiles, tables, document
bounds' bookkeeping, argument lists -- not the launches, the allocator of a GPU or autograd's
device thread (`benchmarks/host_overhead.py` measures those on the GPU).

    python benchmarks/host_python.py [--pattern "causal & segment"] [--n 8192] [--d 64] [--direct]
                                     [--batch 1] [--heads 2]

--batch 2 --heads 16 gives the benchmark's launches at 8k (their grids decide some options, e.g.
HOST_DESC's programs).

--direct times the launches' own bookkeeping too: every launch takes the direct path
(`_launch`, `_launch_prepared`) to a stand-in compiled kernel whose launcher does nothing, so the
keys, the argument lists and the call up to Triton's launcher are counted (what is left out is
the launcher itself, about 30 µs per launch on the GPU host: NOTES round 14).
"""
import argparse
import math
import sys
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_check  # noqa: E402  (its as_on_gpu)

import attnlang  # noqa: E402
from attnlang.bench import random_documents  # noqa: E402
from attnlang.cache import load_module  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pattern", default="causal & segment")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    args = parser.parse_args()
    mod = load_module(attnlang.parse(f"pattern x = {args.pattern}")["x"])
    if not args.direct:
        with compile_check.as_on_gpu(mod, lambda kernel, grid, call_args, options: None):
            time_calls(mod, args)
        return
    saved = (mod._direct_ok, mod._current_stream, mod._compile_and_launch)
    mod._direct_ok = lambda call_args: True
    mod._current_stream = lambda: (0, 0)
    mod._compile_and_launch = lambda *launch: _StandIn()
    try:
        with compile_check.as_on_gpu(mod, mod._launch):
            time_calls(mod, args)
    finally:
        mod._direct_ok, mod._current_stream, mod._compile_and_launch = saved


class _StandIn:
    """A compiled kernel whose launcher does nothing."""
    function, packed_metadata = None, None

    def run(self, *launch):
        pass


def time_calls(mod, args):
    """Print the Python time per call of a training forward's layout, a forward, a backward, and
    of the autograd function's forward and backward (the forward prepares the backward's
    launches: `_BackwardPlan`)."""
    q, k, v, do = (torch.randn(args.batch, args.heads, args.n, args.d, dtype=torch.bfloat16)
                   for _ in range(4))
    seg = None
    if mod.USES_SEGMENT:
        seg = random_documents(args.n, 64, "cpu", torch.Generator().manual_seed(0))
        seg = seg.to(torch.int32)[None].expand(args.batch, -1).contiguous()
    scale = 1 / math.sqrt(args.d)
    keys_tile = mod._tiles(q, args.d, "dkdv", args.n, k)[:2] if mod.SEG_BOUNDS else None
    out, lse, plan = mod.attention_forward_with_plan(q, k, v, scale, seg, seg, None, None, None, 0.0, 0, False)
    calls = {
        "layout (_prepare, a training forward's)":
            lambda: mod._prepare(q, k, "fwd", seg, seg, None, None, keys_tile),
        "attention_forward": lambda: mod.attention_forward(q, k, v, scale, seg, seg, None, None,
                                                           None, 0.0, 0),
        "attention_backward": lambda: mod.attention_backward(do, q, k, v, out, lse, scale, seg,
                                                             seg, None, None, None, 0.0, 0, False),
        "a training forward (plans its backward)":
            lambda: mod.attention_forward_with_plan(q, k, v, scale, seg, seg, None, None, None, 0.0, 0, False),
        "its backward (with that plan)":
            lambda: mod.attention_backward(do, q, k, v, out, lse, scale, seg, seg, None, None,
                                           None, 0.0, 0, False, plan),
    }
    launches = "direct to a stand-in kernel" if args.direct else "not run"
    print(f"{args.pattern}, B={args.batch}, H={args.heads}, n={args.n}, d={args.d}: Python per "
          f"call, launches {launches}")
    for name, call in calls.items():
        times = timeit.repeat(call, number=200, repeat=5)
        print(f"  {name:42s} {sorted(times)[2] / 200 * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
