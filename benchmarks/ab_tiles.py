"""Default `tl` tiles of one pattern, as attnlang runs it (its program order, its own rules), in
one process on the same inputs: the forward and the training step of each variant -- the
generated module's TILES_TUNED with some roles' tiles at one head dimension replaced -- the
variants alternated over rounds (the order reversed every other round), `do_bench` medians, and
each variant's output and gradients against the module's own tiles'.  Only where TILES_TUNED
decides (the band, gather, short- and long-row tables take precedence where they apply).
(`tune.py` times one role at a time with ATTNLANG_TILES, in launch order.)

    python benchmarks/ab_tiles.py [--pattern "window(2048) & stride(4)"] [--d 64]
        [--lengths 8192,32768] [--rounds 5]
        [--variants "cap=fwd:64x64:4:2:d:j:n96;cap+dqj=fwd:64x64:4:2:d:j:n96,dq:64x64:4:3:d:j"]

(results/ab_dilated_r38c.log: the dilated window's variants below, NOTES round 38.)
"""
import argparse
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from head_order import _inputs, print_variants, variant_rounds  # noqa: E402

VARIANTS = ("cap=fwd:64x64:4:2:d:j:n96;cap+dq32=fwd:64x64:4:2:d:j:n96,dq:64x32:4:3:d;"
            "cap+dqj=fwd:64x64:4:2:d:j:n96,dq:64x64:4:3:d:j")


def variants(text):
    """{name: {role: tile}} of ``--variants``, the module's own tiles ("own") first."""
    out = {"own": {}}
    for item in filter(None, text.split(";")):
        name, roles = item.split("=", 1)
        out[name] = dict(part.split(":", 1) for part in roles.split(","))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pattern", default="window(2048) & stride(4)")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--variants", default=VARIANTS)
    args = ap.parse_args()
    D, H = args.d, 16
    chosen = variants(args.variants)
    pattern = attnlang.parse(f"pattern x = {args.pattern}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    own = {role: dict(gen.TILES_TUNED[role]) for role in gen.TILES_TUNED}

    def setv(name):
        for role in own:
            gen.TILES_TUNED[role] = dict(own[role])
        for role, spec in chosen[name].items():
            gen.TILES_TUNED[role][D] = spec
        gen._GPU_TILES.clear()
        gen._CALLS.clear()

    for L in [int(x) for x in args.lengths.split(",")]:
        q, k, v, do, g = _inputs(max(1, 16384 // L), H, L, D)
        names = list(chosen)
        fwd, step, results = variant_rounds(names, args.rounds, setv, lambda: mod(q, k, v),
                                            lambda: mod(*g).backward(do), g)
        setv("own")

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()
        own_out, own_grads = results["own"]
        print_variants(f"{args.pattern} L={L} D={D} fwd", fwd, step, {
            n: f"out {rel(results[n][0], own_out):.0e}, grads "
               f"{max(rel(a, b) for a, b in zip(results[n][1], own_grads)):.0e}" for n in names})
        del q, k, v, do, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
