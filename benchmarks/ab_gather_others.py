"""The fixed pattern's backward on the Gluon gather path (GLUON_GATHER) with its chunks' dQ in
FUSED's dQ kernel (the default, "dq kernel") against dK/dV tiles that add the chunks' dQ too
(GATHER_OTHERS_DKDV, ':a': no dQ kernel, the float32 dQ zeroed by the rows kernel), on the GPU:
each variant set on the generated module, three interleaved rounds on the same inputs,
`do_bench` medians of training steps, gradients compared with the first variant's.

    python benchmarks/ab_gather_others.py [--lengths 32768,16384] [--dims 128,64]
        [--specs "128:128x128:8:2:d:a;64:64x64:4:3:d:a" ...]   # head dim:spec; several ';'
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
from head_order import _inputs  # noqa: E402

TEXT = "causal & (chunk(128) | cols(every(128, 112..128)))"
SPECS = {128: ["128x128:8:2:d:a", "128x128:8:3:d:a", "64x64:4:3:d:a", "128x64:8:2:d:a"],
         64: ["128x128:8:2:d:a", "64x64:4:3:d:a", "128x64:4:3:d:a", "64x64:4:2:d:a"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="32768,16384")
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {TEXT}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    gen.GLUON_GATHER_MIN = dict.fromkeys(gen.GLUON_GATHER_MIN, 0)
    for D in (int(x) for x in args.dims.split(",")):
        for L in (int(x) for x in args.lengths.split(",")):
            B = max(1, 16384 // L)
            q, k, v, do, leaves = _inputs(B, 16, L, D)
            variants = [None] + SPECS[D]
            times, grads = {s: [] for s in variants}, {}
            for rnd in range(args.rounds):
                for spec in (variants if rnd % 2 == 0 else variants[::-1]):
                    gen.GATHER_OTHERS_DKDV = {D: spec} if spec else {}
                    gen._CALLS.clear()
                    gen._SHAPES.clear()
                    for t in leaves:
                        t.grad = None
                    mod(*leaves).backward(do)
                    grads[spec] = [t.grad.clone() for t in leaves]

                    def step():
                        mod(*leaves).backward(do)
                    times[spec].append(do_bench(step, warmup=25, rep=150, grad_to_none=leaves))
            base = sorted(times[None])[len(times[None]) // 2]
            for spec in variants:
                ms = sorted(times[spec])[len(times[spec]) // 2]
                err = max(max_rel(a, b) for a, b in zip(grads[spec], grads[None]))
                print(f"L={L} D={D} {spec or 'dq kernel':18s} step {ms:.4f} ms "
                      f"({base / ms:.3f}x)  grads vs dq kernel {err:.2e}", flush=True)
    gen.GATHER_OTHERS_DKDV = {}


if __name__ == "__main__":
    main()
