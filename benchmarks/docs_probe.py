"""Why the 8k d = 128 document step (the benchmark's 64 documents) reads 0.96 ms in some processes
while its kernels take 553 us (benchmarks/NOTES.md round 32, item 5): do_bench rounds alternating
the Gluon and `tl` backwards, with the allocator's cudaMalloc/cudaFree counts, then a
torch.profiler trace of six steps (CPU and CUDA) written to $OUT (or here).

    taskset -c 11 python benchmarks/docs_probe.py
"""
import os
import torch
from triton.testing import do_bench
import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module

L, D, B, H = 8192, 128, 2, 16
pattern = attnlang.parse("pattern x = causal & segment")["x"]
mod = pattern.module(backend="triton")
gen = load_module(pattern)
ids = random_documents(L, 64, "cuda", torch.Generator().manual_seed(0))
q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
grads = [t.detach().requires_grad_(True) for t in (q, k, v)]
gluon = gen._gluon_module("gluon_backward")


def step():
    mod(*grads, segments=ids).backward(do)


def stats():
    s = torch.cuda.memory_stats()
    return s.get("num_device_alloc", 0), s.get("num_device_free", 0)


for name in ["gluon", "gluon", "tl", "gluon", "tl", "gluon"]:
    gen._GLUON["gluon_backward"] = gluon if name == "gluon" else None
    a = stats()
    t = do_bench(step, warmup=25, rep=150, grad_to_none=grads)
    b = stats()
    print(f"{name:6s} {t:.3f} ms  cudaMalloc {b[0] - a[0]} cudaFree {b[1] - a[1]}", flush=True)
gen._GLUON["gluon_backward"] = gluon
for t in grads:
    t.grad = None
torch.cuda.synchronize()
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(6):
        for t in grads:
            t.grad = None
        step()
    torch.cuda.synchronize()
prof.export_chrome_trace(os.path.join(os.environ.get("OUT", "."), "trace_docs_r32f.json"))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
