"""The fixed pattern's forward on the Gluon kernel (GLUON_GATHER_FWD: each tile's packed summary
columns, then its chunk) against the `tl` one-pass forward, in one process on the same inputs:
outputs against the `tl` forward's (bf16: max difference over max value), then interleaved
rounds of `do_bench` medians -- the forward alone (`tl`; Gluon one program a tile; Gluon
persistent, `gluon_forward.GATHER_PERSISTENT_MIN` set to 0, two heads at a time or every head:
`GATHER_HEAD_GROUP`) and the training step with each forward (the backward as the module runs
it).  16 heads, 16k tokens per batch, d = 128, or (``--d 64``) d = 64, which the generated
modules do not give the Gluon forward: the script lets it (GLUON_GATHER_FWD_DIMS) for its own
calls, with `gluon_forward.config_of`'s gather tiles.

    python benchmarks/ab_gather_forward.py [--d 64] [--lengths 8192,16384,32768] [--rounds 5]

(results/ab_gather_forward_r58d.log ran it with GATHER_PERSISTENT, the flag that
GATHER_PERSISTENT_MIN replaced, off and on.)
"""
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402

FIXED = "causal & (chunk(128) | cols(every(128, 112..128)))"


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    lengths = [int(n) for n in arg("--lengths", "8192,16384,32768").split(",")]
    rounds = int(arg("--rounds", "5"))
    D = int(arg("--d", "128"))
    pattern = attnlang.parse(f"pattern x = {FIXED}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    gf = gen._gluon_module("gluon_forward")
    rule, chosen = gen._gluon_forward_ok, (gf.GATHER_PERSISTENT_MIN, gf.GATHER_HEAD_GROUP)
    gen.GLUON_GATHER_FWD_DIMS = (D,)  # (the module's rule at d = 128; d = 64 let in here)

    def use(ok, order):
        gen._gluon_forward_ok = ok
        gf.GATHER_PERSISTENT_MIN, gf.GATHER_HEAD_GROUP = order

    # (the forward's rule, (GATHER_PERSISTENT_MIN, GATHER_HEAD_GROUP))
    variants = {"tl": (lambda *a: False, (1 << 30, None)), "gluon": (rule, (1 << 30, None)),
                "gluon persistent 2": (rule, (0, 2)), "gluon persistent": (rule, (0, None))}
    for L in lengths:
        B, H = max(1, 16384 // L), 16
        q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def step():
            mod(qg, kg, vg).backward(do)
        outs = {}
        for name, (ok, order) in variants.items():
            use(ok, order)
            with torch.no_grad():
                outs[name] = mod(q, k, v).float()
        scale = outs["tl"].abs().max().item()
        print(f"D={D} L={L}: outputs against tl's, max difference / max value: " + ", ".join(
            f"{n} {(o - outs['tl']).abs().max().item() / scale:.1e}"
            for n, o in outs.items() if n != "tl"), flush=True)
        fwd = {n: [] for n in variants}
        steps = {n: [] for n in variants}
        for _ in range(rounds):
            for name, (ok, order) in variants.items():
                use(ok, order)
                with torch.no_grad():
                    fwd[name].append(do_bench(lambda: mod(q, k, v), warmup=10, rep=100,
                                              return_mode="median"))
                steps[name].append(do_bench(step, warmup=10, rep=100, grad_to_none=[qg, kg, vg],
                                            return_mode="median"))
        base_f, base_s = statistics.median(fwd["tl"]), statistics.median(steps["tl"])
        for name in variants:
            f, s = statistics.median(fwd[name]), statistics.median(steps[name])
            print(f"D={D} L={L} {name:18s} forward {f:.4f} ms ({base_f / f:.3f}x tl)  step "
                  f"{s:.4f} ms ({base_s / s:.3f}x)  rounds "
                  + " ".join(f"{x:.4f}" for x in fwd[name]), flush=True)
        use(rule, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
