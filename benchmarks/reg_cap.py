"""A kernel role's default tile with and without a register cap (Triton's ``maxnreg``, the tile
flag ``:nR``), on the GPU: the forward of each pattern as attnlang runs it, ``--rounds``
interleaved rounds of `do_bench` (the median kept), each output checked to be the uncapped one's
bit for bit first.  With ``--uncap``, the capped default is timed against itself without the
cap.

    python benchmarks/reg_cap.py [--cap 96] [--dims 64] [--lengths 32768,8192]
        [--pattern TEXT ...] [--rounds 4] [--uncap]

Document masks (`causal & segment`) take the benchmark's 64 random documents.
results/maxnreg_r30d.log was made by this script's first form (the same loop, the four patterns
below at d = 64, cap 96), before TILES_BAND took the cap.
"""
import argparse

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module

PATTERNS = ["causal & window(1023, 0)", "window(512)", "window(512) | global(0..128)",
            "window(2048) & stride(4)"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap", type=int, default=96)
    parser.add_argument("--dims", default="64")
    parser.add_argument("--lengths", default="32768,8192")
    parser.add_argument("--pattern", action="append")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--uncap", action="store_true",
                        help="the default tile is capped: time it without its cap")
    args = parser.parse_args()
    for text in args.pattern or PATTERNS:
        for d in (int(x) for x in args.dims.split(",")):
            for n in (int(x) for x in args.lengths.split(",")):
                compare(text, d, n, args.cap, args.rounds, args.uncap)


def _forget_launches(generated):
    """Drop the generated module's prepared launches (the calls', the direct launches', and
    document masks' by shape), so that the next call asks `_tiles` again."""
    for memo in (generated._CALLS, generated._DIRECT, generated._SHAPES):
        memo.clear()


def compare(text, d, n, cap, rounds, uncap):
    """Print the forward's median time without and with ``cap`` registers per thread."""
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = pattern.module(backend="triton")
    generated = load_module(pattern)
    tiles = generated._tiles
    batch = max(1, TOKENS_PER_BATCH // n)
    q, k, v = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    extra = {}  # a document mask's ids: the benchmark's 64 documents
    if "segment" in text:
        extra["segments"] = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    times, reference = {"none": [], cap: []}, None
    for _ in range(rounds):
        for variant in times:
            def capped(q_, head_dim, role, *rest, _variant=variant, **kw):
                bm, bn, options = tiles(q_, head_dim, role, *rest, **kw)
                if role == "fwd":
                    if _variant == "none" and uncap:
                        options.pop("maxnreg", None)
                    elif _variant != "none":
                        options["maxnreg"] = _variant
                return bm, bn, options
            generated._tiles = capped
            _forget_launches(generated)
            out = module(q, k, v, **extra)
            if reference is None:
                reference = out
            assert torch.equal(out, reference), f"{text}: the capped forward differs"
            times[variant].append(do_bench(lambda: module(q, k, v, **extra), warmup=25,
                                           rep=100))
    generated._tiles = tiles
    _forget_launches(generated)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    print(f"{text:30s} d={d} n={n:6d} none {med['none']:.4f} ms  {cap}: {med[cap]:.4f} ms  "
          f"| cap/none {med['none'] / med[cap]:.3f}x  rounds "
          + str([f"{a:.4f}/{b:.4f}" for a, b in zip(times["none"], times[cap])]), flush=True)


if __name__ == "__main__":
    main()
