"""Host time of an inference forward through the benchmark's call path (`pattern.module(backend=
"triton")`: nn.Module, custom op's eager path, the generated module), with the kernel launches
stubbed out, on any machine (no GPU: the inputs are CPU tensors and TRITON_INTERPRET=1 lets the
Triton backend take them).  What it measures is the Python and torch work of a call, not the
launches; `benchmarks/host_overhead.py` measures the real thing on the GPU machine.

    TRITON_INTERPRET=1 python benchmarks/host_stubbed.py [--step] ["causal & segment"] ...

Prints, per pattern, the least of five rounds' mean host time per call (2000 calls each, after
50 warm-up calls; B = 2, 16 heads, 8k tokens, d = 64, bf16, the benchmark's 64 documents).
With ``--step``: a training step instead (forward and ``backward``, the inputs' gradients reset
each step, as the benchmark's step), and beside it the step of a bare ``autograd.Function``
whose forward and backward make one empty tensor per output: what autograd itself costs.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import attnlang  # noqa: E402
from attnlang.bench import random_documents  # noqa: E402
from attnlang.cache import load_module  # noqa: E402


def host_us(text, B=2, H=16, L=8192, D=64, calls=2000, rounds=5, step=False):
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = pattern.module(backend="triton")
    generated = load_module(pattern)
    generated._launch = lambda kernel, grid, args, options, extra=(): None
    generated._launch_prepared = lambda prepared, head, options: None
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16, requires_grad=step)
               for _ in range(3))
    extra = {}
    if "segment" in text:
        extra["segments"] = random_documents(L, 64, "cpu", torch.Generator().manual_seed(0))
    call = (lambda: module(q, k, v, **extra))
    if step:
        call = _step(call, (q, k, v), torch.randn_like(q))
    return _least_mean(call, calls, rounds)


def _step(forward, inputs, do):
    def step():
        for t in inputs:
            t.grad = None
        forward().backward(do)
    return step


class _Bare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad), torch.empty_like(grad), torch.empty_like(grad)


def bare_step_us(B=2, H=16, L=8192, D=64, calls=2000, rounds=5):
    """Host time of a training step through `_Bare`: autograd's own share of a step."""
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    return _least_mean(_step(lambda: _Bare.apply(q, k, v), (q, k, v), torch.randn_like(q)),
                       calls, rounds)


def _least_mean(call, calls, rounds):
    for _ in range(50):
        call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def main():
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit("set TRITON_INTERPRET=1 (CPU tensors on the Triton backend)")
    step = "--step" in sys.argv
    what = "training step" if step else "inference forward"
    for text in [a for a in sys.argv[1:] if a != "--step"] or ["causal & segment", "causal"]:
        print(f"{text:30s} host per {what}, kernels stubbed: {host_us(text, step=step):.1f} us",
              flush=True)
    if step:
        print(f"{'a bare autograd.Function':30s} host per training step: {bare_step_us():.1f} us")


if __name__ == "__main__":
    main()
