"""Whether the strided forward's overlapped launches race: the strided pattern's forward at 8k
(B = 2, 16 heads, bf16) with its band launch a programmatic dependent one (`PDL_FORWARD`, round
47), and with both components in one launch (`JOINT_FORWARD`, at several lags), each called
many times back to back, against the same forward as two plain launches -- output and
log-sum-exp must equal it bit for bit every time (the kernels compute the same values either
way; a read of the classes' partial output before it was written would differ).  For the
dependent launch both places of the wait (partial output read before and after the key loop,
PREFETCH_PARTIAL); both head dims; the calls alternate between two sets of inputs, so that
consecutive calls do not read the same memory.

    python benchmarks/pdl_check.py [--calls 300] [--n 8192] [--lags 0,3,6]
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
    parser.add_argument("--lags", default="0,3,6")
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {PATTERN}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    saved = gen.PDL_FORWARD, gen.PREFETCH_PARTIAL, gen.JOINT_FORWARD
    batch = max(1, TOKENS_PER_BATCH // args.n)
    failed = 0
    for d in (128, 64):
        g = torch.Generator(device="cuda").manual_seed(d)
        inputs = [[torch.randn(batch, HEADS, args.n, d, device="cuda", dtype=torch.bfloat16,
                               generator=g) for _ in range(3)] for _ in range(2)]
        variants = [(f"dependent launch, partial output read {'first' if p else 'last'}",
                     dict(PDL_FORWARD=(d,), PREFETCH_PARTIAL=p, JOINT_FORWARD={}))
                    for p in ((d,), ())]
        variants += [(f"one launch, lag {lag}", dict(JOINT_FORWARD={d: int(lag)}))
                     for lag in args.lags.split(",")]
        for name, settings in variants:
            gen._CALLS.clear()
            gen.PDL_FORWARD, gen.JOINT_FORWARD = (), {}
            gen.PREFETCH_PARTIAL = settings.get("PREFETCH_PARTIAL", saved[1])
            want = [mod(*qkv, return_lse=True) for qkv in inputs]
            gen._CALLS.clear()
            for knob, value in settings.items():
                setattr(gen, knob, value)
            got = []
            for call in range(args.calls):
                got.append((call % 2, mod(*inputs[call % 2], return_lse=True)))
                if len(got) == 32 or call == args.calls - 1:
                    torch.cuda.synchronize()
                    failed += sum(not (torch.equal(o, want[i][0]) and torch.equal(l, want[i][1]))
                                  for i, (o, l) in got)
                    got = []
            print(f"d = {d}, {name}: {args.calls} forwards, mismatches so far {failed}",
                  flush=True)
    gen.PDL_FORWARD, gen.PREFETCH_PARTIAL, gen.JOINT_FORWARD = saved
    gen._CALLS.clear()
    print("ok" if failed == 0 else f"FAILED: {failed} forwards differ")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
