"""The Gluon band forward (`gluon_forward.forward`, called directly) of this tree against another
version of attnlang/gluon_forward.py (``git show REV:attnlang/gluon_forward.py > FILE``), in
one process on the same inputs: outputs compared, then interleaved rounds of `do_bench`
medians, on the benchmark's d = 128 band rows (16 heads, 16k tokens a batch).

    python benchmarks/ab_forward_file.py FILE [--rounds 5]

(results/ab_band_order_r59f.log: round59a's tree, programs' picks back and forth on every
persistent launch, against picks in turn on all but the gather patterns'.)
"""
import math
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ab_gather_forward import load_file  # noqa: E402  (this script's folder is on the path)
from attnlang import gluon_forward as gf  # noqa: E402
from attnlang.bench import time_in_rounds  # noqa: E402

# (row, L, back, ahead, step): the benchmark's d = 128 rows that take a persistent launch
ROWS = [("all", 8192, None, None, 1), ("all", 32768, None, None, 1),
        ("window(512)", 8192, 512, 512, 1), ("window(512)", 32768, 512, 512, 1),
        ("causal & window(1023, 0)", 32768, 1023, 0, 1),
        ("window(2048) & stride(4)", 8192, 2048, 2048, 4),
        ("window(2048) & stride(4)", 32768, 2048, 2048, 4)]


def main():
    base = load_file("attnlang.gluon_forward_base", sys.argv[1])
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    variants = {"base": base, "this tree": gf}
    for name, L, back, ahead, step in ROWS:
        B, H, D = max(1, 16384 // L), 16, 128
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        scale = 1 / math.sqrt(D)
        outs = {n: m.forward(q, k, v, scale, back, ahead, step=step)[0].float()
                for n, m in variants.items()}
        diff = (outs["base"] - outs["this tree"]).abs().max().item()
        times = time_in_rounds(  # (interleaved, odd rounds reversed, 100 ms a round)
            {n: ((lambda m=m: m.forward(q, k, v, scale, back, ahead, step=step)), None)
             for n, m in variants.items()}, rounds, 10, 100 * rounds, do_bench)
        med = {n: statistics.median(t) for n, t in times.items()}
        print(f"{name:26s} L={L:5d}: base {med['base']:.4f} ms, this tree "
              f"{med['this tree']:.4f} ms ({med['base'] / med['this tree']:.3f}x); outputs "
              f"differ by {diff:.1e}; rounds " + "; ".join(
                  " ".join(f"{x:.4f}" for x in t) for t in times.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
