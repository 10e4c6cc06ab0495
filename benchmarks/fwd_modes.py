"""Whether a forward's time has modes: the fixed pattern's 8k d = 128 forward (Gluon, persistent
with every head at once, and one program a tile) timed in many short `do_bench` runs, each
followed by the GPU time of its kernels over a few calls (torch.profiler) -- so that a slow run
shows whether its kernel was slow or the host's calls left the GPU idle.

    python benchmarks/fwd_modes.py [--runs 12] [--n 8192]
"""
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from profile_kernels import kernel_times  # noqa: E402

FIXED = "causal & (chunk(128) | cols(every(128, 112..128)))"


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    runs, L = int(arg("--runs", "12")), int(arg("--n", "8192"))
    pattern = attnlang.parse(f"pattern x = {FIXED}")["x"]
    mod = pattern.module(backend="triton")
    gf = load_module(pattern)._gluon_module("gluon_forward")
    B, H, D = max(1, 16384 // L), 16, 128
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, minimum in (("persistent", 0), ("one program a tile", 1 << 30)):
        gf.GATHER_PERSISTENT_MIN = minimum
        with torch.no_grad():
            for run in range(runs):
                ms = do_bench(lambda: mod(q, k, v), warmup=5, rep=30, return_mode="median")
                times = kernel_times(lambda: mod(q, k, v), reps=5, warmup=0)
                kernels = ", ".join(f"{n[:24]} {t / c:.1f}" for n, (t, c) in times.items())
                print(f"L={L} {name:18s} run {run:2d}: do_bench {ms * 1000:6.1f} µs; kernels "
                      f"(µs a call) {kernels}", flush=True)
    gf.GATHER_PERSISTENT_MIN = 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
