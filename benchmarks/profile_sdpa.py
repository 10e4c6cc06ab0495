"""Per-kernel GPU time of SDPA's training step (torch.profiler), for comparison with
attnlang's (`benchmarks/profile_kernels.py`): `all` at 8k and causal at 8k and 32k, d = 64, bf16,
16 heads, 16k tokens per batch.

    python benchmarks/profile_sdpa.py
"""
import os
import sys

import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_kernels import kernel_times  # noqa: E402

CASES = [(8192, 64, False), (8192, 64, True), (32768, 64, True)]  # (length, head dim, causal)


def profile_case(n, d, causal, reps=10):
    """Print the kernels of one SDPA forward+backward step, per step (µs)."""
    batch = max(1, 16384 // n)
    q, k, v, do = (torch.randn(batch, 16, n, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

    def step():
        for t in leaves:
            t.grad = None
        F.scaled_dot_product_attention(*leaves, is_causal=causal).backward(do)
    rows = kernel_times(step, reps, width=70)
    print(f"== SDPA causal={causal} n={n} d={d}")
    for name, (total, count) in sorted(rows.items(), key=lambda x: -x[1][0]):
        print(f"   {total / reps:9.1f} x{count // reps} {name}")


if __name__ == "__main__":
    for case in CASES:
        profile_case(*case)
