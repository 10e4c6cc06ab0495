"""Where a small forward's time goes: GPU kernel time against the host's time per call, through
each layer of the call path (nn.Module + custom op, the generated module's `attention`, its
`attention_forward`, the kernel launches alone).

    python benchmarks/host_overhead.py [--n 8192] [--d 128] [--pattern TEXT ...]
    python benchmarks/host_overhead.py --profile [--n 1024] [--pattern TEXT ...]
    python benchmarks/host_overhead.py --gather-min 0 ...  # GLUON_GATHER_MIN of the modules

"fwd+bwd, 1 thread" runs autograd's backward on the calling thread instead of its per-device
thread; the probe also counts the step's host-device synchronisations (sync debug mode).
--profile runs the module's forward+backward step (on one thread) under cProfile instead (best
at a small --n, where the kernels take microseconds and every microsecond measured is host time)
and prints the functions that take the most host time; --threads measures where the backward's
host time goes on autograd's device thread against the calling thread.
"""
import argparse
import cProfile
import math
import pstats
import time
import warnings

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module
from profile_kernels import kernel_times  # (this script's folder is on the path)

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
    return sum(total for total, _ in kernel_times(fn, reps, warmup=1).values()) / reps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--pattern", action="append")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", action="store_true",
                        help="where the backward's host time goes on autograd's device thread")
    parser.add_argument("--batch", type=int, help="default: 16k tokens per batch")
    parser.add_argument("--gather-min", type=int, default=None,
                        help="the generated modules' GLUON_GATHER_MIN at every head dim")
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
        if args.gather_min is not None:
            gen.GLUON_GATHER_MIN = dict.fromkeys(gen.GLUON_GATHER_MIN, args.gather_min)
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

        one_thread_step = _on_calling_thread(module_step)
        paths["fwd+bwd, 1 thread"] = one_thread_step
        out, lse = paths["attention_forward"]()
        paths["attention_backward"] = lambda: gen.attention_backward(
            do, q, k, v, out, lse, scale, seg2, seg2, None, None, None, 0.0, 0, False)
        if hasattr(gen, "attention_forward_with_plan"):  # since round 14
            plan = gen.attention_forward_with_plan(q, k, v, scale, seg2, seg2, None, None, None,
                                                   0.0, 0, False)[2]
            paths["backward, planned"] = lambda: gen.attention_backward(
                do, q, k, v, out, lse, scale, seg2, seg2, None, None, None, 0.0, 0, False, plan)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            module_step()
            one_thread_step()
            torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        print(f"{text}: {len(syncs)} synchronizing calls in a fwd+bwd step (both ways)"
              + "".join(f"\n    {m[:150]}" for m in syncs[:4]))
        if args.threads:
            backward_thread(gen, module_step, one_thread_step, q)
            continue
        if args.profile:
            for _ in range(20):
                one_thread_step()
            torch.cuda.synchronize()
            reps = 200
            profiler = cProfile.Profile()  # sees one thread: the backward runs on this one
            start = time.perf_counter()
            profiler.enable()
            for _ in range(reps):
                one_thread_step()
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


def _on_calling_thread(step):
    """``step`` with autograd's backward on the calling thread, not its per-device thread."""
    def run():
        with torch.autograd.set_multithreading_enabled(False):
            step()
    return run


def _passthrough(on_backward=lambda: None):
    """An autograd.Function that copies its input and hands the gradient back, calling
    ``on_backward`` first: a fwd+bwd step of it costs the engine's own time and that call's."""
    class Passthrough(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            on_backward()
            return grad
    return Passthrough


def backward_thread(gen, module_step, one_thread_step, q):
    """The host time of a fwd+bwd step on autograd's device thread against the calling thread,
    the time spent inside the generated attention_backward on each, what the device thread's
    calls spend it on (cProfile inside that thread), and the same step for a trivial
    autograd.Function (the engine's own cost)."""
    inner, profiler = [], cProfile.Profile()
    real = gen.attention_backward

    def timed(*a, **kw):
        start = time.perf_counter()
        profiler.enable()
        try:
            return real(*a, **kw)
        finally:
            profiler.disable()
            inner.append(time.perf_counter() - start)
    gen.attention_backward = timed
    try:
        for name, fn in (("device thread", module_step), ("calling thread", one_thread_step)):
            fn()
            inner.clear()
            print(f"  {name:15s} step host {host_us(fn):7.1f} us, inside attention_backward "
                  f"{sum(inner) / len(inner) * 1e6:7.1f} us", flush=True)
            if name == "device thread":
                pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    finally:
        gen.attention_backward = real
    x = q.detach().requires_grad_(True)
    g = torch.ones_like(x)

    passthrough = _passthrough()

    def trivial():
        passthrough.apply(x).backward(g)
    print(f"  trivial autograd.Function: device thread {host_us(trivial):.1f} us, "
          f"calling thread {host_us(_on_calling_thread(trivial)):.1f} us per fwd+bwd")
    # the same host work on each thread: pure Python, CUDA allocations, Triton's stream query
    probes = []

    def work():
        times = [time.perf_counter()]
        total = 0
        for i in range(20000):
            total += i
        times.append(time.perf_counter())
        for _ in range(50):
            torch.empty(1024, device=q.device)
        times.append(time.perf_counter())
        for _ in range(50):
            gen._current_stream()
        times.append(time.perf_counter())
        probes.append([(b - a) * 1e6 for a, b in zip(times, times[1:])])

    probed = _passthrough(work)

    def step():
        probed.apply(x).backward(g)
    for name, fn in (("device thread", step), ("calling thread", _on_calling_thread(step))):
        probes.clear()
        for _ in range(20):
            fn()
        python, alloc, stream = (sorted(col)[len(col) // 2] for col in zip(*probes))
        print(f"  {name:15s} median us: 20000-step Python loop {python:.0f}, 50 CUDA allocations "
              f"{alloc:.0f}, 50 stream queries {stream:.0f}")


if __name__ == "__main__":
    main()
