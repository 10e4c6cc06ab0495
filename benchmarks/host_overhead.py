"""Where a small forward's time goes: GPU kernel time against the host's time per call, through
each layer of the call path (nn.Module + custom op, the generated module's `attention`, its
`attention_forward`, the kernel launches alone).

    python benchmarks/host_overhead.py [--n 8192] [--d 128] [--pattern TEXT ...]
    python benchmarks/host_overhead.py --profile [--n 1024] [--pattern TEXT ...]

--profile runs the module's forward+backward step under cProfile instead (best at a small --n,
where the kernels take microseconds and every microsecond measured is host time) and prints
the functions that take the most host time.
"""
import argparse
import cProfile
import math
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module

DEFAULT = ["causal & segment", "causal & (window(127, 0) | stride(128))", "window(512)"]


def host_us(fn, reps=200):
    """Host time per call with the GPU never waited for (the queue absorbs the kernels)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - start) / reps
    torch.cuda.synchronize()
    return host * 1e6


def gpu_us(fn, reps=20):
    """Kernel time per call (sum of the CUDA kernels' durations, torch.profiler)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time for e in prof.events() if e.device_type.name == "CUDA") / reps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--pattern", action="append")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--batch", type=int, help="default: 16k tokens per batch")
    args = parser.parse_args()
    n, d = args.n, args.d
    batch = args.batch or max(1, TOKENS_PER_BATCH // n)
    seg = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    q, k, v = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    print(f"{'pattern':44s} {'path':18s} {'do_bench us':>12s} {'host us':>9s} {'kernels us':>11s}")
    for text in args.pattern or DEFAULT:
        pattern = attnlang.parse(f"pattern x = {text}")["x"]
        module = pattern.module(backend="triton")
        gen = load_module(pattern)
        uses = "segment" in text
        kw = dict(segments=seg) if uses else {}
        seg2 = seg.to(torch.int32)[None] if uses else None
        scale = 1 / math.sqrt(d)
        paths = {
            "module": lambda: module(q, k, v, **kw),
            "gen.attention": lambda: gen.attention(q, k, v, **kw),
            "attention_forward": lambda: gen.attention_forward(q, k, v, scale, seg2, seg2, None,
                                                               None, None, 0.0, 0),
        }
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        do = torch.randn_like(q)

        def module_step():
            for t in (qg, kg, vg):
                t.grad = None
            module(qg, kg, vg, **kw).backward(do)
        paths["module fwd+bwd"] = module_step
        if args.profile:
            for _ in range(20):
                module_step()
            torch.cuda.synchronize()
            reps = 200
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            for _ in range(reps):
                module_step()
            profiler.disable()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / reps * 1e6
            print(f"== {text}: module fwd+bwd, {wall:.0f} us per step under cProfile; "
                  f"per step (cumulative, then own time):")
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(25)
            stats.sort_stats("tottime").print_stats(25)
            continue
        for name, fn in paths.items():
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            print(f"{text:44s} {name:18s} {ms * 1000:12.1f} {host_us(fn):9.1f} "
                  f"{gpu_us(fn):11.1f}", flush=True)


if __name__ == "__main__":
    main()
