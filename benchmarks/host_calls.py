"""Host time and GPU time per call of the benchmark's module calls at 8k tokens (documents and
causal, d = 64 and 128; the inference forward and the training step), on the GPU machine:
host = calls back to back, the GPU never waited for; GPU = CUDA events with the calls queued
behind matrix products.  With --profile, cProfile of the calls at the first head dimension of
--dims (by each function's own time, and with --cumulative by the time under it
too); with --docs-min N, the fewest queries of the documents' Gluon backward at every head dimension
(the generated modules' GLUON_DOCS; 0: at 8k too); --dims and --patterns choose the calls.

    taskset -c 11 python benchmarks/host_calls.py [--profile [--cumulative]] [--docs-min N]
        [--dims 64,128] [--patterns "causal & segment;causal"]
    # another tree's attnlang (an A/B: results/host_ab_r24c.log ran 1c48893's against main's,
    # twice each, in turns):
    PYTHONPATH=OLD_TREE taskset -c 11 python benchmarks/host_calls.py

The times are the benchmark's `_host_ms` (``wait=False``) and `_gpu_ms`; the logs of round 24
were made by this script's first form, with copies of its own: the same host time, the GPU's
with 50 calls (not 100) queued behind 100 products (not 150).  Round 28's results/
host_docs_r28d.log was made by a scratch form of ``--docs-min 0`` and ``--docs-min 32768`` at
d = 128: 50 calls back to back, the training forward timed too, cProfile of 20 steps.
"""
import argparse
import cProfile
import pstats

import torch

import attnlang
from attnlang.bench import HEADS, _gpu_ms, _host_ms, random_documents
from attnlang.cache import load_module


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cumulative", action="store_true")
    parser.add_argument("--docs-min", type=int, default=None)
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--patterns", default="causal & segment;causal")
    args = parser.parse_args()
    profiling, docs_min = args.profile, args.docs_min
    dims = [int(x) for x in args.dims.split(",")]
    n, B = 8192, 2
    for d in dims:
        for text in args.patterns.split(";"):
            pattern = attnlang.parse(f"pattern x = {text}")["x"]
            module = pattern.module(backend="triton")
            if docs_min is not None:
                gen = load_module(pattern)
                gen.GLUON_DOCS = dict.fromkeys(gen.GLUON_DOCS, docs_min)
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
                print(f"{text:18s} d={d} {name:8s} host {_host_ms(fn, reps=300, wait=False) * 1000:7.1f} us  gpu "
                      f"{_gpu_ms(fn) * 1000:7.1f} us", flush=True)
                if profiling and d == dims[0]:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(300):
                        fn()
                    profiler.disable()
                    torch.cuda.synchronize()
                    stats = pstats.Stats(profiler)
                    stats.sort_stats("tottime").print_stats(22)
                    if args.cumulative:
                        stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
