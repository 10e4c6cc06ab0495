"""The fixed pattern's chunks on the Gluon gather path (`_pairs_launches`, round 36), on the GPU:
training steps at the lengths the path takes (GLUON_GATHER_MIN), each variant
set on the generated module in turn, three rounds on the same inputs (`head_order._medians`),
`do_bench` medians, gradients compared with the "kernels" variant's.  Variants:

- "kernels": FUSED's dQ kernel and a dK/dV kernel (`_pairs_launches` off);
- "pairs:SPEC": the PAIRS kernel, tile SPEC.

(Round 36's first try, one program per key block writing dQ, is in ab_pairs_r36a-c.log, from
the tree of commit 4e4cbca.)

    python benchmarks/ab_pairs.py [--d128 VARIANT,VARIANT] [--d64 VARIANT,...]  (an empty list:
        that head dim not timed) [--lengths128 32768,16384] [--lengths64 32768]

(Since round 55 the gather path runs from 8k queries at d = 128 and 16k at d = 64.)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from gluon_bwd import max_rel  # noqa: E402
from head_order import _inputs, _medians, _step_runner  # noqa: E402

TEXT = "causal & (chunk(128) | cols(every(128, 112..128)))"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d128", default="pairs:32x128:8:2:d:t")
    parser.add_argument("--d64", default="pairs:32x128:8:2:d:t,pairs:64x128:8:2:d:t")
    parser.add_argument("--lengths128", default="32768,16384")
    parser.add_argument("--lengths64", default="32768")
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {TEXT}")["x"]
    mod = pattern.module(backend="triton")
    saved = os.environ.get("ATTNLANG_TILES")
    pairs_launches = load_module(pattern)._pairs_launches  # (`_medians` sets variants on it)

    def set_variant(generated, name):
        kind, _, spec = name.partition(":")
        generated._pairs_launches = (lambda *a: None) if kind == "kernels" else pairs_launches
        if spec:
            os.environ["ATTNLANG_TILES"] = f"pairs={spec}"
        else:
            os.environ.pop("ATTNLANG_TILES", None)
    for D, lengths, specs in ((128, args.lengths128, args.d128), (64, args.lengths64, args.d64)):
        lengths = [int(x) for x in lengths.split(",")]
        if not specs:
            continue
        variants = ("kernels", *specs.split(","))
        for L in lengths:
            B = max(1, 16384 // L)
            q, k, v, do, leaves = _inputs(B, 16, L, D)
            step, grads = _medians(pattern, variants, set_variant,
                                   _step_runner(mod, leaves, do, {}))
            line = [f"L={L} D={D}: kernels {step['kernels']:.4f} ms"]
            for name in variants[1:]:
                err = max(max_rel(a, b) for a, b in zip(grads[name], grads["kernels"]))
                line.append(f"{name} {step[name]:.4f} ({step['kernels'] / step[name]:.3f}x, "
                            f"grads max rel {err:.2e})")
            print("; ".join(line), flush=True)
    load_module(pattern)._pairs_launches = pairs_launches
    if saved is None:
        os.environ.pop("ATTNLANG_TILES", None)
    else:
        os.environ["ATTNLANG_TILES"] = saved


if __name__ == "__main__":
    main()
