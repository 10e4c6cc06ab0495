"""Configurations of the d = 64 Gluon forward (`attnlang/gluon_forward.py`) on bands with and
without global rows, as attnlang runs it (the generated module's own copy of the kernel, its
rules lifted so that the Gluon forward runs at every length), in one process on the same inputs:
the forward and the training step of each variant, the variants alternated over rounds (the
order reversed every other round), `do_bench` medians, and the `tl` forward beside them.  Each
variant is set on both `CONFIGS[64]` and `CONFIGS_GLOBAL[64]` as changes to `CONFIGS[64]`.

    python benchmarks/ab_configs64.py [--lengths 8192,32768] [--rounds 3]
        [--patterns "window(512) | global(0..128);window(512)"] [--variants wg3,wg2b64e]

(results/ab_wg64_r38b.log: the measurement that chose `CONFIGS_GLOBAL`, NOTES round 38.)
"""
import argparse
import os
import sys

import torch
from triton.testing import do_bench
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from head_order import _inputs, print_variants, variant_rounds  # noqa: E402

VARIANTS = {  # changes to CONFIGS[64]
    "wg3": {},
    "wg2": dict(NUM_WG=2, REGS=240),
    "wg2e": dict(NUM_WG=2, REGS=240, EARLY=True),
    "wg2pp": dict(NUM_WG=2, REGS=240, EARLY=True, PINGPONG=True),
    "wg2s2": dict(NUM_WG=2, REGS=240, STAGES=2),
    # 64-key blocks (round 40): less of a narrow band's edges in each tile
    "wg3b64": dict(BN=64),
    "wg2b64e": dict(NUM_WG=2, REGS=240, BN=64, EARLY=True),
    "wg2b64e4": dict(NUM_WG=2, REGS=240, BN=64, EARLY=True, STAGES=4),
    "wg2b64ep": dict(NUM_WG=2, REGS=240, BN=64, EARLY=True, PERSISTENT=True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patterns", default="window(512) | global(0..128);window(512)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the VARIANTS to time")
    args = ap.parse_args()
    D, H = 64, 16
    for L in [int(x) for x in args.lengths.split(",")]:
        q, k, v, do, g = _inputs(max(1, 16384 // L), H, L, D)
        for text in args.patterns.split(";"):
            pattern = attnlang.parse(f"pattern x = {text}")["x"]
            mod = pattern.module(backend="triton")
            gen = load_module(pattern)
            gen.GLUON_GLOBALS_FWD_64 = 0
            gen.GLUON_MIN_KEYS_64 = 0
            copy = gen._gluon_module("gluon_forward")
            base = dict(copy.CONFIGS[D])
            base_global = dict(copy.CONFIGS_GLOBAL[D])
            os.environ["ATTNLANG_GLUON"] = "0"
            with torch.no_grad():
                want = mod(q, k, v).float()
                t_tl = do_bench(lambda: mod(q, k, v), warmup=25, rep=150, return_mode="median")
            os.environ["ATTNLANG_GLUON"] = "1"

            def set_variant(name):
                copy.CONFIGS[D] = copy.CONFIGS_GLOBAL[D] = dict(base, **VARIANTS[name])
                gen._CALLS.clear()
            names = args.variants.split(",")
            fwd, step, results = variant_rounds(
                names, args.rounds, set_variant, lambda: mod(q, k, v),
                lambda: mod(*g).backward(do), g)
            copy.CONFIGS[D], copy.CONFIGS_GLOBAL[D] = base, base_global
            diffs = {n: f"{((results[n][0] - want).abs().max() / want.abs().max()).item():.0e}"
                     for n in names}
            print_variants(f"{text:30s} L={L} D={D} fwd tl {t_tl:.4f}", fwd, step, diffs)
        del q, k, v, do, g
        torch.cuda.empty_cache()
    os.environ.pop("ATTNLANG_GLUON", None)


if __name__ == "__main__":
    main()
