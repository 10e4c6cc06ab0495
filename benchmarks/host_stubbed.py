"""Host time of an inference forward through the benchmark's call path (`pattern.module(backend=
"triton")`: nn.Module, custom op's eager path, the generated module), with the kernel launches
stubbed out, on any machine (no GPU: the inputs are CPU tensors and TRITON_INTERPRET=1 lets the
Triton backend take them).  What it measures is the Python and torch work of a call, not the
launches; `benchmarks/host_overhead.py` measures the real thing on the GPU machine.

    TRITON_INTERPRET=1 python benchmarks/host_stubbed.py ["causal & segment"] [causal ...]

Prints, per pattern, the least of five rounds' mean host time per call (2000 calls each, after
50 warm-up calls; B = 2, 16 heads, 8k tokens, d = 64, bf16, the benchmark's 64 documents).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import attnlang  # noqa: E402
from attnlang.bench import random_documents  # noqa: E402
from attnlang.cache import load_module  # noqa: E402


def host_us(text, B=2, H=16, L=8192, D=64, calls=2000, rounds=5):
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = pattern.module(backend="triton")
    generated = load_module(pattern)
    generated._launch = lambda kernel, grid, args, options, extra=(): None
    generated._launch_prepared = lambda prepared, head, options: None
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(3))
    extra = {}
    if "segment" in text:
        extra["segments"] = random_documents(L, 64, "cpu", torch.Generator().manual_seed(0))
    for _ in range(50):
        module(q, k, v, **extra)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            module(q, k, v, **extra)
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def main():
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit("set TRITON_INTERPRET=1 (CPU tensors on the Triton backend)")
    for text in sys.argv[1:] or ["causal & segment", "causal"]:
        print(f"{text:30s} host per inference forward, kernels stubbed: {host_us(text):.1f} us",
              flush=True)


if __name__ == "__main__":
    main()
