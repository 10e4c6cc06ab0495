"""This tree's Gluon forward (`attnlang/gluon_forward.py`) against another tree's, the kernels
alone (`forward`, not the generated module), on the GPU: rounds that alternate which tree goes
first, `do_bench` medians, each tree's best round; the outputs compared first.

    git archive HEAD attnlang templates grammar | tar -x -C _old     # a tree to compare with
    python benchmarks/ab_forward.py _old [--rounds 5]

Patterns: causal and `all` at both head dimensions, `window(512)` at d = 128 (the d = 64
bands run the `tl` forward), 16k tokens per batch at 8k and 32k, 16 heads, bf16.
"""
import argparse
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attnlang import gluon_forward as this  # noqa: E402
from ab_trees import load_tree  # noqa: E402
from head_order import alternating  # noqa: E402

BANDS = {"causal": (None, 0), "all": (None, None), "window(512)": (512, 512)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tree", help="the other tree's root (its attnlang package)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    other = load_tree("other", args.tree, "gluon_forward")
    for D in (64, 128):
        for L in (8192, 32768):
            B = max(1, 16384 // L)
            q, k, v = (torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            for name, (back, ahead) in BANDS.items():
                if D == 64 and name.startswith("window"):
                    continue
                runs = {"this": lambda: this.forward(q, k, v, D ** -0.5, back, ahead),
                        "other": lambda: other.forward(q, k, v, D ** -0.5, back, ahead)}
                diff = (runs["this"]()[0].float() - runs["other"]()[0].float()).abs().max()
                times = alternating(runs, args.rounds)
                best = {tree: min(t) for tree, t in times.items()}
                rounds = " ".join(f"{tree} [{', '.join(f'{t:.3f}' for t in ts)}]"
                                  for tree, ts in times.items())
                print(f"{name:12s} D={D} L={L:6d} this {best['this']:.3f} other "
                      f"{best['other']:.3f} ms -> {best['other'] / best['this']:.3f}x ({rounds}) "
                      f"diff {diff.item():.1e}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
