"""The `tl` forward with its heavy rows in pieces (HEAVY_PIECES, `_pieces` in
templates/host_forward.py.jinja) against the same forward with them whole and against the Gluon
forward, on bands with global rows, in one process on the same inputs: forwards and training
steps alternated over rounds (`head_order.variant_rounds`), `do_bench` medians.  The backward
is the module's own in every variant (Gluon's, for these patterns).

    python benchmarks/ab_pieces_tl.py [--lengths 8192,32768] [--dims 64,128] [--rounds 3]
        [--patterns "window(512) | global(0..128)"] [--pieces 16,32,64]
        [--tile 64x64:4:2:d:j:n96]   # also each piece size with this forward tile ("+t")
    python benchmarks/ab_pieces_tl.py --check     # correctness first

``--check`` runs `gpu_check.run_case` (outputs, log-sum-exp and gradients against a float64
reference, SDPA's errors beside) on bands with global rows at the start, in the middle and to
the end, lengths not multiples of the tiles, with the `tl` forward and pieces of 2 blocks, and of
32 with the forward capped at 96 registers.
"""
import argparse
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from head_order import _inputs, print_variants, variant_rounds  # noqa: E402

CASES = [("window(512) | global(0..128)", 1000, 1000), ("window(512) | global(0..128)", 1000, 1300),
         ("window(64) | global(300..400)", 2085, 2085), ("window(200, 0) | global(1900..2048)",
                                                         2048, 2048),
         ("window(512) | global(0..128)", 4096, 4096), ("window(100) | rows(0..64)", 1531, 1531)]


def tl_forward(gen, D, piece_blocks, tile=None, maxnreg=None):
    """The generated module ``gen`` with its `tl` forward at head dim D, heavy rows in pieces of
    ``piece_blocks`` (0: whole) capped at ``maxnreg`` registers, on the forward ``tile`` (None:
    its own), its kept launches dropped."""
    os.environ.pop("ATTNLANG_TILES", None)
    if tile:
        os.environ["ATTNLANG_TILES"] = f"fwd={tile}"
    gen._gluon_forward_ok = lambda q, k, meta: False
    gen.HEAVY_PIECES = {D: dict(blocks=piece_blocks, maxnreg=maxnreg)} if piece_blocks else {}
    gen._CALLS.clear()
    gen._SHAPES.clear()


def check():
    from gpu_check import run_case
    gen_rng = torch.Generator().manual_seed(0)
    worst = 0.0
    for text, Lq, Lk in CASES:
        gen = load_module(attnlang.parse(f"pattern x = {text}")["x"])
        own, own_pieces = gen._gluon_forward_ok, gen.HEAVY_PIECES
        for D in (64, 128):
            for piece_blocks, cap in ((2, None), (32, 96)):
                tl_forward(gen, D, piece_blocks, maxnreg=cap)
                results, ok = run_case(text, Lq, Lk, 2, 3, 3, D, torch.bfloat16, gen_rng)
                ratio = max(a / max(s, 1e-6) for a, s in zip(results["attnlang"], results["sdpa"])
                            if s == s)
                worst = max(worst, ratio)
                print(f"{text:36s} L={Lq} D={D} pieces of {piece_blocks}: "
                      f"{'ok' if ok else 'NOT REPEATED'} errors "
                      + " ".join(f"{e:.1e}" for e in results["attnlang"])
                      + f" (sdpa {' '.join(f'{e:.1e}' for e in results['sdpa'])}) ratio "
                      f"{ratio:.2f}", flush=True)
        gen._gluon_forward_ok = own
        gen.HEAVY_PIECES = own_pieces
    print(f"worst ratio {worst:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patterns", default="window(512) | global(0..128)")
    ap.add_argument("--pieces", default="16,32,64")
    ap.add_argument("--tile")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.check:
        check()
        return
    pieces = [int(x) for x in args.pieces.split(",")]
    for D in [int(x) for x in args.dims.split(",")]:
        for L in [int(x) for x in args.lengths.split(",")]:
            for text in args.patterns.split(";"):
                compare(text, L, D, pieces, args.rounds, args.tile)
            torch.cuda.empty_cache()


def compare(text, L, D, pieces, rounds, tile, H=16):
    """Print the variants' forward and step medians for one pattern, length and head dim."""
    q, k, v, do, g = _inputs(max(1, 16384 // L), H, L, D)
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    own, own_min, own_pieces = gen._gluon_forward_ok, gen.GLUON_GLOBALS_FWD_64, gen.HEAVY_PIECES

    def set_variant(name):
        if name == "gluon":
            os.environ.pop("ATTNLANG_TILES", None)
            gen._gluon_forward_ok, gen.GLUON_GLOBALS_FWD_64 = own, 0
            gen._CALLS.clear()
        else:
            size = name.split("/")[1].rstrip("+t") if "/" in name else "0"
            tl_forward(gen, D, int(size), tile if name.endswith("+t") else None)
    names = ["gluon", "whole"] + [f"pieces/{p}" for p in pieces] + \
        ([f"pieces/{p}+t" for p in pieces] if tile else [])
    fwd, step, results = variant_rounds(names, rounds, set_variant, lambda: mod(q, k, v),
                                        lambda: mod(*g).backward(do), g)
    gen._gluon_forward_ok, gen.GLUON_GLOBALS_FWD_64 = own, own_min
    gen.HEAVY_PIECES = own_pieces
    gen._CALLS.clear()
    os.environ.pop("ATTNLANG_TILES", None)
    want = results["whole"][0]
    diffs = {n: f"{((results[n][0] - want).abs().max() / want.abs().max()).item():.0e}"
             for n in names}
    print_variants(f"{text:30s} L={L} D={D} fwd", fwd, step, diffs)


if __name__ == "__main__":
    main()
