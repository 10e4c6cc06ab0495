"""Forward times at 8k, d = 128 (B = 2, 16 heads): the fixed pattern's `tl` forward beside the
Gluon forward of causal windows that compute about as many pairs at 128 x 128 blocks (`plan(n).
describe()`: the fixed pattern 5.64M a head, `window(639, 0)` 6.05M, `window(511, 0)` 5.08M) --
what a Gluon forward of the fixed pattern could take.  Five rounds of 30 calls between CUDA
events, medians.

    python benchmarks/fwd_proxy.py
"""
import statistics

import torch

import attnlang

B, H, L, D = 2, 16, 8192, 128
pats = ["causal & (chunk(128) | cols(every(128, 112..128)))", "causal & window(639, 0)",
        "causal & window(511, 0)", "causal & window(1023, 0)"]
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
mods = {}
for t in pats:
    p = attnlang.parse(f"pattern x = {t}")["x"]
    mods[t] = p.module(backend="triton")
    with torch.no_grad():
        mods[t](q, k, v)
torch.cuda.synchronize()
res = {t: [] for t in pats}
for rnd in range(5):
    for t in pats:
        m = mods[t]
        with torch.no_grad():
            for _ in range(5): m(q, k, v)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(30): m(q, k, v)
            e.record(); e.synchronize()
        res[t].append(s.elapsed_time(e) / 30)
for t in pats:
    rounds = " ".join(f"{x:.4f}" for x in res[t])
    print(f"{t:55s} {rounds}  median {statistics.median(res[t]):.4f} ms")
