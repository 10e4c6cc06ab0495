"""Where a forward's benchmark time goes beyond its kernels' (round 52): `attnlang bench` times
each call with Triton's `do_bench`, which zeroes a 256 MB buffer (flushing L2) before every
call and records the start event right after it, so a call's time includes whatever of its
host work the memset does not cover, and its kernels start with L2 full of dirty lines.  Each
variant times the module's forward on the benchmark's inputs (CUDA events, median of 100 calls,
three interleaved rounds):

- ``do_bench``: the benchmark's own measure;
- ``flush, then events``: the same by hand (memset, start, call, end);
- ``flush, sleep, events``: the memset, then the GPU held ~0.2 ms so that the call's launches
  are all queued before the start event runs: the kernels' time with L2 dirty, no host;
- ``sleep, events``: no memset (the kernels' time with L2 as the last call left it).

Also the host's time per call (`perf_counter` around the call while the GPU sleeps) and until
its first launch (the module's `_launch_prepared` timestamped).

    python benchmarks/bench_gap.py [--n 8192] [--dims 128,64] [--pattern TEXT]
"""
import argparse
import time

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH
from attnlang.cache import load_module

SLEEP = 400_000  # GPU cycles (~0.2 ms): the host's launches are queued before the start event


def _events(fn, flush, sleep, cache, reps=100):
    """Median ms of ``reps`` calls of ``fn`` between CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        if flush:
            cache.zero_()
        if sleep:
            torch.cuda._sleep(SLEEP)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _host(fn, gen, reps=100):
    """(median µs the host spends in a call, median µs until its first launch), each call
    made while the GPU sleeps (so no launch waits for room in the queue)."""
    real = gen._launch_prepared
    first = {}  # the call's first launch: its time

    def stamped(*args, **kwargs):
        first.setdefault("at", time.perf_counter())
        return real(*args, **kwargs)
    whole, until = [], []
    gen._launch_prepared = stamped
    try:
        for _ in range(reps):
            torch.cuda._sleep(SLEEP)
            first.clear()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            whole.append(t1 - t0)
            until.append(first["at"] - t0)
            torch.cuda.synchronize()
    finally:
        gen._launch_prepared = real
    med = lambda xs: sorted(xs)[len(xs) // 2] * 1e6
    return med(whole), med(until)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--pattern", default="causal & (window(127, 0) | stride(128))")
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {args.pattern}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    cache = torch.empty(int(256e6 // 4), dtype=torch.int, device="cuda")
    for d in (int(x) for x in args.dims.split(",")):
        batch = max(1, TOKENS_PER_BATCH // args.n)
        q, k, v = (torch.randn(batch, HEADS, args.n, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        fn = lambda: mod(q, k, v)  # noqa: E731 (as `attnlang bench` times the forward)
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        variants = {
            "do_bench": lambda: do_bench(fn, warmup=25, rep=50, return_mode="median"),
            "flush, then events": lambda: _events(fn, True, False, cache),
            "flush, sleep, events": lambda: _events(fn, True, True, cache),
            "sleep, events": lambda: _events(fn, False, True, cache),
            "the memset alone": lambda: _events(cache.zero_, False, False, cache),
        }
        rounds = {name: [] for name in variants}
        for _ in range(3):
            for name, run in variants.items():
                rounds[name].append(run())
        print(f"== {args.pattern}  n = {args.n}, d = {d}, {batch} x {HEADS} heads (ms)")
        for name, ts in rounds.items():
            print(f"   {name:22s} " + " ".join(f"{t:.4f}" for t in ts) + f"   best {min(ts):.4f}")
        whole, until = _host(fn, gen)
        print(f"   host per call {whole:.1f} µs, until its first launch {until:.1f} µs")


if __name__ == "__main__":
    main()
