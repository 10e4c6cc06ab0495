"""Per-kernel GPU time of attnlang's forward and backward for a few patterns (torch.profiler), to
see where a pattern's time goes (which component, which role, the layout kernels, merges).

    python benchmarks/profile_kernels.py [--n 8192[,32768]] [--d 128] [--pattern TEXT ...]
        [--docs-min N]   # GLUON_DOCS of the generated modules, every head dim (0: documents take
                         # the Gluon backward at every length)
        [--gather-min N] # GLUON_GATHER_MIN of the generated modules, every head dim (0: a
                         # gather component takes the Gluon backward at every length)
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module

DEFAULT = ["causal & (window(127, 0) | stride(128))",
           "causal & (chunk(128) | cols(every(128, 112..128)))",
           "window(2048) & stride(4)", "causal & segment", "window(512)"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", default="8192", help="lengths, comma-separated")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--pattern", action="append")
    parser.add_argument("--docs-min", type=int, default=None)
    parser.add_argument("--gather-min", type=int, default=None)
    args = parser.parse_args()
    for n in (int(x) for x in args.n.split(",")):
        profile_length(n, args.d, args.pattern or DEFAULT, args.docs_min, args.gather_min)


def kernel_times(step, reps=10, width=60, warmup=3):
    """{kernel name (its first ``width`` characters): (GPU µs, launches)} over ``reps`` calls of
    ``step``, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            total, count = rows.get(e.name[:width], (0.0, 0))
            rows[e.name[:width]] = (total + e.device_time, count + 1)
    return rows


def profile_length(n, d, patterns, docs_min=None, gather_min=None):
    """Print the kernels of one forward+backward step of each pattern at length n."""
    batch = max(1, TOKENS_PER_BATCH // n)
    gen = torch.Generator().manual_seed(0)
    segments = random_documents(n, 64, "cuda", gen)
    q, k, v, do = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    for text in patterns:
        pattern = attnlang.parse(f"pattern x = {text}")["x"]
        mod = pattern.module(backend="triton")
        generated = load_module(pattern)
        if docs_min is not None:
            generated.GLUON_DOCS = dict.fromkeys(generated.GLUON_DOCS, docs_min)
        if gather_min is not None:
            generated.GLUON_GATHER_MIN = dict.fromkeys(generated.GLUON_GATHER_MIN, gather_min)
        kw = dict(segments=segments) if "segment" in text else {}
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

        def step():
            for t in (qg, kg, vg):
                t.grad = None
            mod(qg, kg, vg, **kw).backward(do)
        reps = 10
        rows = kernel_times(step, reps)
        print(f"== {text}  n={n} d={d} B={batch} (per step, us)")
        step_total = 0.0
        for name, (total, count) in sorted(rows.items(), key=lambda x: -x[1][0]):
            step_total += total / reps
            print(f"   {total / reps:9.1f}  x{count // reps:<3d} {name}")
        print(f"   {step_total:9.1f}  total GPU time per forward+backward step")


if __name__ == "__main__":
    main()
