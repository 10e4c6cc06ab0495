"""Host time and GPU time per call of the benchmark's module calls at 8k tokens (documents and
causal, d = 64 and 128; the inference forward and the training step), on the GPU machine:
host = calls back to back, the GPU never waited for; GPU = CUDA events with the calls queued
behind matrix products.  With --profile, cProfile of the d = 64 document calls.

    taskset -c 11 python benchmarks/host_calls.py [--profile]
    # another tree's attnlang (an A/B: results/host_ab_r24c.log ran 1c48893's against main's,
    # twice each, in turns):
    PYTHONPATH=OLD_TREE taskset -c 11 python benchmarks/host_calls.py
"""
import cProfile
import pstats
import sys
import time

import torch

import attnlang
from attnlang.bench import HEADS, random_documents


def host_us(fn, reps=300, rounds=5):
    """Median over rounds of the host's time per call, calls back to back."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps * 1e6)
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def gpu_us(fn, reps=50):
    """Median over rounds of the GPU's time per call (the host's time hidden behind a queue)."""
    busy = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        for _ in range(100):
            busy @ busy
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps * 1000)
    return sorted(times)[2]


def main():
    profiling = "--profile" in sys.argv
    n, B = 8192, 2
    for d in (64, 128):
        for text in ("causal & segment", "causal"):
            module = attnlang.parse(f"pattern x = {text}")["x"].module(backend="triton")
            q, k, v = (torch.randn(B, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            kw = {}
            if "segment" in text:
                kw["segments"] = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
            do = torch.randn_like(q)

            def step():
                qg.grad = kg.grad = vg.grad = None
                module(qg, kg, vg, **kw).backward(do)
            for name, fn in (("fwd", lambda: module(q, k, v, **kw)), ("fwd+bwd", step)):
                for _ in range(20):
                    fn()
                print(f"{text:18s} d={d} {name:8s} host {host_us(fn):7.1f} us  gpu "
                      f"{gpu_us(fn):7.1f} us", flush=True)
                if profiling and d == 64 and "segment" in text:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(300):
                        fn()
                    profiler.disable()
                    torch.cuda.synchronize()
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
