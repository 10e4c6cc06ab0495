"""The Gluon forward's EARLY_Q (`attnlang/gluon_forward.py`: Q released after a tile's last
S = Q K^T) against the same kernel without it, and other configurations beside, on band
patterns: each configuration first checked against a float32 reference on small shapes
(`gluon_fwd.check`), outputs compared with the first configuration's at the timed shape, then
interleaved rounds of `do_bench` medians of `gluon_forward.forward` itself; the generated
module's `tl` forward (ATTNLANG_GLUON=0) timed beside.  16 heads, 16k tokens per batch.

    python benchmarks/ab_early_q.py --d 128 --lengths 8192,32768 --pattern all \\
        --pattern "causal & window(1023, 0)" [--d64-variants] [--rounds 5]

``--d64-variants`` (with ``--d 64``): the module's d = 64 configuration, the same persistent
with EARLY_Q, and two warpgroups in turns, persistent, with EARLY_Q.
"""
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gluon_fwd  # noqa: E402
import attnlang  # noqa: E402
from attnlang import gluon_forward as gf  # noqa: E402
from attnlang.band import band_of  # noqa: E402


def variants(D, d64):
    base = dict(gf.CONFIGS[D])
    if D == 64 and d64:
        return {"as is": base, "3wg pers eq": dict(base, PERSISTENT=True, EARLY_Q=True),
                "2wg pp pers eq": dict(NUM_WG=2, BN=128, STAGES=3, OVERLAP=True, PINGPONG=True,
                                       EARLY=True, PERSISTENT=True, REGS=240, EARLY_Q=True)}
    return {"without": dict(base, EARLY_Q=False), "early q": dict(base, EARLY_Q=True)}


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    D = int(arg("--d", "128"))
    lengths = [int(n) for n in arg("--lengths", "8192,32768").split(",")]
    names = [v for f, v in zip(sys.argv, sys.argv[1:]) if f == "--pattern"] or ["all"]
    rounds = int(arg("--rounds", "5"))
    chosen = dict(gf.CONFIGS[D])
    configs = variants(D, "--d64-variants" in sys.argv)
    gluon_fwd.VARIANTS = {D: list(configs.values())}
    if not gluon_fwd.check(D):
        print("checks FAILED")
        return 1
    for L in lengths:
        B, H = max(1, 16384 // L), 16
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        patterns = {n: attnlang.parse(f"pattern x = {n}")["x"] for n in names}
        bands = {n: band_of(p.ir) for n, p in patterns.items()}
        mods = {n: p.module(backend="triton") for n, p in patterns.items()}
        times = {(n, c): [] for n in names for c in list(configs) + ["module tl"]}
        for n, (back, ahead) in bands.items():
            outs = []
            for cfg in configs.values():
                gf.CONFIGS[D] = cfg
                outs.append(gf.forward(q, k, v, D ** -0.5, back, ahead))
            print(f"D={D} L={L} {n}: outputs and lse bit for bit the first configuration's: "
                  + " ".join(str(all(torch.equal(a, b) for a, b in zip(outs[0], o)))
                             for o in outs[1:]), flush=True)
        for _ in range(rounds):
            for n, (back, ahead) in bands.items():
                for c, cfg in configs.items():
                    gf.CONFIGS[D] = cfg
                    times[(n, c)].append(do_bench(
                        lambda: gf.forward(q, k, v, D ** -0.5, back, ahead), warmup=10, rep=100,
                        return_mode="median"))
                os.environ["ATTNLANG_GLUON"] = "0"
                with torch.no_grad():
                    times[(n, "module tl")].append(do_bench(
                        lambda: mods[n](q, k, v), warmup=10, rep=100, return_mode="median"))
                os.environ.pop("ATTNLANG_GLUON")
        for n in names:
            cells = [f"{c} {statistics.median(times[(n, c)]):.4f}"
                     for c in list(configs) + ["module tl"]]
            print(f"D={D} L={L} {n:26s} " + "  ".join(cells) + f" ms (medians of {rounds} rounds)",
                  flush=True)
        q = k = v = None
        torch.cuda.empty_cache()
    gf.CONFIGS[D] = chosen
    return 0


if __name__ == "__main__":
    sys.exit(main())
