"""The d = 64 band backward three ways, A/B on the GPU (NOTES round 40): the `tl` kernels, the
Gluon kernel with 128-key blocks and with 64-key blocks (`gluon_backward.backward`'s ``keys``,
set through the generated module's `_gluon_keys`); training steps with the forward as attnlang
runs it, three interleaved rounds on the same inputs, `do_bench` medians, each variant's
gradients compared with the `tl` kernels'.  The generated module's GLUON_NARROW_BWD_64 and
GLUON_CLASSES_BWD_64 are set to 0, so that narrow bands run the Gluon variants at every length.

    python benchmarks/ab_bands64.py [--lengths 32768,16384,8192] [--rounds 3] [--pattern TEXT ...]
        [--forwards]

``--forwards`` also times the `tl` forward of Longformer's parts (`window(512)` with its global
columns, rows, or both) at each length.
"""
import argparse
import os
import sys

import torch
from triton.testing import do_bench
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from gluon_bwd import max_rel  # noqa: E402
from head_order import _inputs, _medians, _step_runner  # noqa: E402

PATTERNS = ["causal & window(1023, 0)", "window(512)", "window(2048) & stride(4)",
            "window(512) | global(0..128)", "causal"]
PARTS = ["window(512)", "window(512) | cols(0..128)", "window(512) | rows(0..128)",
         "window(512) | global(0..128)"]
VARIANTS = {"tl": None, "g128": 128, "g64": 64}  # the Gluon backward's key block


def steps(text, q, k, do, grads, rounds):
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = pattern.module(backend="triton")
    generated = load_module(pattern)
    generated.GLUON_NARROW_BWD_64 = generated.GLUON_CLASSES_BWD_64 = 0
    gluon = generated._gluon_module("gluon_backward")
    own_keys = generated._gluon_keys

    def set_variant(gen, name):
        keys = VARIANTS[name]
        gen._GLUON["gluon_backward"] = None if keys is None else gluon
        gen._gluon_keys = lambda q, k: keys

    ms, res = _medians(pattern, list(VARIANTS), set_variant, _step_runner(module, grads, do, {}),
                       rounds)
    generated._gluon_keys = own_keys
    generated._GLUON["gluon_backward"] = gluon
    diffs = {n: max(max_rel(a, b) for a, b in zip(res[n], res["tl"])) for n in ("g128", "g64")}
    return ms, diffs


def at_length(L, args, D=64):
    B, H = max(1, 16384 // L), 16
    q, k, v, do, grads = _inputs(B, H, L, D)
    for text in args.pattern or PATTERNS:
        ms, diffs = steps(text, q, k, do, grads, args.rounds)
        print(f"{text:30s} L={L:6d} D={D} step ms "
              + " ".join(f"{n} {ms[n]:.3f}" for n in ms)
              + f" | tl/g128 {ms['tl'] / ms['g128']:.3f}x tl/g64 {ms['tl'] / ms['g64']:.3f}x"
              f" g128/g64 {ms['g128'] / ms['g64']:.3f}x | grads against tl "
              + " ".join(f"{n} {d:.1e}" for n, d in diffs.items()), flush=True)
    for text in PARTS if args.forwards else []:
        module = attnlang.parse(f"pattern x = {text}")["x"].module(backend="triton")
        with torch.no_grad():
            times = [do_bench(lambda: module(q, k, v), warmup=25, rep=150)
                     for _ in range(args.rounds)]
        print(f"forward {text:32s} L={L:6d} D={D} ms {sorted(times)[len(times) // 2]:.3f} "
              f"rounds {' '.join(f'{x:.3f}' for x in times)}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="32768,16384,8192")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pattern", action="append")
    parser.add_argument("--forwards", action="store_true")
    args = parser.parse_args()
    for L in (int(x) for x in args.lengths.split(",")):
        at_length(L, args)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
