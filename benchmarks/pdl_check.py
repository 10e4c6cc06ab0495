"""Whether the forward's programmatic dependent launch (`PDL_FORWARD`, round 47) races: the
strided pattern's forward at 8k (B = 2, 16 heads, bf16) with its band launch a dependent one,
called many times back to back, against the same forward without it -- output and log-sum-exp
must equal it bit for bit every time (the kernels compute the same values either way; a read of
the one-block launch's partial output before that launch had finished would differ).  Both
places of the wait (partial output read before and after the key loop, PREFETCH_PARTIAL), both
head dims; the calls alternate between two sets of inputs, so that consecutive calls do not
read the same memory.

    python benchmarks/pdl_check.py [--calls 300] [--n 8192]
"""
import argparse

import torch

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH
from attnlang.cache import load_module

PATTERN = "causal & (window(127, 0) | stride(128))"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--n", type=int, default=8192)
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {PATTERN}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    saved = gen.PDL_FORWARD, gen.PREFETCH_PARTIAL
    batch = max(1, TOKENS_PER_BATCH // args.n)
    failed = 0
    for d in (128, 64):
        g = torch.Generator(device="cuda").manual_seed(d)
        inputs = [[torch.randn(batch, HEADS, args.n, d, device="cuda", dtype=torch.bfloat16,
                               generator=g) for _ in range(3)] for _ in range(2)]
        for prefetch in ((d,), ()):
            gen._CALLS.clear()
            gen.PDL_FORWARD, gen.PREFETCH_PARTIAL = (), prefetch
            want = [mod(*qkv, return_lse=True) for qkv in inputs]
            gen._CALLS.clear()
            gen.PDL_FORWARD = (d,)
            got = []
            for call in range(args.calls):
                got.append((call % 2, mod(*inputs[call % 2], return_lse=True)))
                if len(got) == 32 or call == args.calls - 1:
                    torch.cuda.synchronize()
                    bad = sum(not (torch.equal(o, want[i][0]) and torch.equal(l, want[i][1]))
                              for i, (o, l) in got)
                    failed += bad
                    got = []
            print(f"d = {d}, partial output read {'first' if prefetch else 'last'}: "
                  f"{args.calls} dependent-launch forwards, mismatches so far {failed}",
                  flush=True)
    gen.PDL_FORWARD, gen.PREFETCH_PARTIAL = saved
    print("ok" if failed == 0 else f"FAILED: {failed} forwards differ")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
