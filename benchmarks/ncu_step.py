"""Training steps of one pattern as attnlang runs it, for Nsight Compute to profile its kernels
(hardware counters and per-instruction stall samples; the H200's Firecracker image has ncu):

    ncu --clock-control none --kernel-name regex:band_backward_kernel --launch-skip 2 \\
        --launch-count 1 --set full -o docs128 \\
        python benchmarks/ncu_step.py --pattern "causal & segment" --n 32768 --d 128 --docs-min 0
    ncu --import docs128.ncu-rep --page details             # the sections, as text
    ncu --import docs128.ncu-rep --page source --csv --print-source sass   # per instruction

Inputs as the benchmark's (`attnlang.bench`: bf16, 16 heads, 16k tokens per batch, its 64
random documents); ``--steps`` steps (the first ones compile: skip their launches).
"""
import argparse

import torch

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pattern", default="causal & segment")
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--docs-min", type=int, default=None,
                        help="the fewest queries of the documents' Gluon backward (the generated "
                             "module's GLUON_DOCS, every head dim)")
    parser.add_argument("--forward", action="store_true", help="forwards only")
    args = parser.parse_args()
    n, d = args.n, args.d
    batch = max(1, TOKENS_PER_BATCH // n)
    segments = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    q, k, v, do = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    pattern = attnlang.parse(f"pattern x = {args.pattern}")["x"]
    module = pattern.module(backend="triton")
    if args.docs_min is not None:
        gen = load_module(pattern)
        gen.GLUON_DOCS = dict.fromkeys(gen.GLUON_DOCS, args.docs_min)
    extra = dict(segments=segments) if "segment" in args.pattern else {}
    grads = [t.detach().requires_grad_(not args.forward) for t in (q, k, v)]
    for _ in range(args.steps):
        out = module(*grads, **extra)
        if not args.forward:
            out.backward(do)
    torch.cuda.synchronize()
    print(f"{args.steps} steps of {args.pattern!r} at n={n} d={d} B={batch}")


if __name__ == "__main__":
    main()
