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

import torch
from triton.testing import do_bench

import attnlang
from attnlang.cache import load_module

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
        B = max(1, 16384 // L)
        q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        g = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        names = list(chosen)
        fwd = {n: [] for n in names}
        step = {n: [] for n in names}
        outs, grads = {}, {}
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                setv(name)
                with torch.no_grad():
                    outs[name] = mod(q, k, v).float()
                    fwd[name].append(do_bench(lambda: mod(q, k, v), warmup=25, rep=150,
                                              return_mode="median"))

                def run():
                    mod(*g).backward(do)
                for t in g:
                    t.grad = None
                run()
                grads[name] = [t.grad.float().clone() for t in g]
                step[name].append(do_bench(run, warmup=10, rep=150, grad_to_none=g,
                                           return_mode="median"))
        setv("own")

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()
        med = {n: sorted(t)[len(t) // 2] for n, t in fwd.items()}
        smed = {n: sorted(t)[len(t) // 2] for n, t in step.items()}
        print(f"{args.pattern} L={L} D={D} fwd | " + " | ".join(
            f"{n} {med[n]:.4f} (out {rel(outs[n], outs['own']):.0e}, grads "
            f"{max(rel(a, b) for a, b in zip(grads[n], grads['own'])):.0e})" for n in names),
            flush=True)
        print(f"{'':30s} step | " + " | ".join(f"{n} {smed[n]:.4f}" for n in names), flush=True)
        print(f"   rounds fwd {fwd} step {step}", flush=True)
        del q, k, v, do, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
