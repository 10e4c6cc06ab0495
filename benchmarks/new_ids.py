"""What new document ids cost per call on the GPU: the per-call layout of `causal & segment` (the
benchmark's `_layout_cost`: GPU time, launch-bound host time and what a training forward takes
longer with new ids, at 8k and 32k, d = 64 and 128),
and the module's fwd+bwd step at 8k, d = 64 with the same ids every step against a new ids
tensor every step (two tensors alternating), `do_bench` median and host time per step.

    python benchmarks/new_ids.py

Results: benchmarks/results/layout_ab_r17*.log (each tree of an A/B run in turn)."""
import time, torch
import attnlang
from attnlang import bench
from triton.testing import do_bench
dev = torch.cuda.get_device_name()
pattern = attnlang.parse("pattern x = causal & segment")["x"]
for n in (32768, 8192):
    for d in (64, 128):
        B = max(1, 16384 // n)
        q, k, v = (torch.randn(B, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        seg = bench.random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
        bench._layout_cost("causal & segment", pattern, n, d, q, k, v, seg, dev, print)
n, d = 8192, 64
module = pattern.module(backend="triton")
q, k, v, do = (torch.randn(2, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
for t in (q, k, v):
    t.requires_grad_(True)
seg = bench.random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
pool = [seg.clone(), seg.clone()]
state = [0]
def step(new_ids):
    for t in (q, k, v):
        t.grad = None
    s = pool[state[0] % 2] if new_ids else pool[0]
    state[0] += 1
    module(q, k, v, segments=s).backward(do)
for new_ids in (False, True):
    ms = do_bench(lambda: step(new_ids), warmup=25, rep=200, return_mode="median")
    host = bench._host_ms(lambda: step(new_ids), reps=100)
    print(f"documents 8k d=64 module fwd+bwd, {'new ids every step' if new_ids else 'same ids'}: "
          f"do_bench {ms * 1000:.1f} us, host {host * 1000:.1f} us")
