"""Per-kernel GPU time of SDPA's training step (torch.profiler), for comparison with
attnlang's (`benchmarks/profile_kernels.py`): `all` at 8k and causal at 8k and 32k, d = 64, bf16,
16 heads, 16k tokens per batch.

    python benchmarks/profile_sdpa.py
"""
import sys, torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
for n, d, causal in [(8192, 64, False), (8192, 64, True), (32768, 64, True)]:
    B = max(1, 16384 // n)
    q, k, v, do = (torch.randn(B, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    def step():
        for t in (qg, kg, vg):
            t.grad = None
        F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal).backward(do)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            t, c = rows.get(e.name[:70], (0.0, 0)); rows[e.name[:70]] = (t + e.device_time, c + 1)
    print(f"== SDPA causal={causal} n={n} d={d}")
    for name, (t, c) in sorted(rows.items(), key=lambda x: -x[1][0]):
        print(f"   {t / 10:9.1f} x{c // 10} {name}")
