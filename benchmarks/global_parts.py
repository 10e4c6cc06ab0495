"""What each part of Longformer's `window(512) | global(0..128)` costs the forward, on the GPU:
the generated modules' forwards of the band alone, with global columns, with global rows and
with both (and with 192 global tokens), at d = 64 with the Gluon forward at every length
(GLUON_GLOBALS_FWD_64 and GLUON_MIN_KEYS_64 lifted: the band alone too) and at d = 128; the
median of three `do_bench` medians each.

    python benchmarks/global_parts.py
"""
import torch
from triton.testing import do_bench

import attnlang
from attnlang.cache import load_module

PARTS = ("window(512)", "window(512) | cols(0..128)", "window(512) | rows(0..128)",
         "window(512) | global(0..128)", "window(512) | global(0..192)")


def main():
    for D, L in ((64, 32768), (64, 8192), (128, 32768)):
        B, H = max(1, 16384 // L), 16
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        for text in PARTS:
            pattern = attnlang.parse(f"pattern x = {text}")["x"]
            mod = pattern.module(backend="triton")
            generated = load_module(pattern)
            generated.GLUON_GLOBALS_FWD_64 = 0
            generated.GLUON_MIN_KEYS_64 = 0
            with torch.no_grad():
                t = sorted(do_bench(lambda: mod(q, k, v), warmup=25, rep=150)
                           for _ in range(3))[1]
            flops = 4.0 * D * pattern.plan(L, L).kept_pairs * B * H
            print(f"D={D} L={L} {text:32s} fwd {t:.4f} ms {flops / t / 1e9:.0f} TFLOP/s",
                  flush=True)


if __name__ == "__main__":
    main()
