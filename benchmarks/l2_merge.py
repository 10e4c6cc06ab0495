"""Whether the strided pattern's band forward -- its `tl` kernel that merges the one-block
classes' partial output (launched first) -- runs faster when what it reads is still in L2: the
question behind running both in one launch, head by head (benchmarks/NOTES.md round 46).

The module's forward is called on slices of the heads (B * H = 32 heads of 8k tokens, bf16, as
[1, 32, L, D] and its slices of c heads), with and without 256 MB written between the one-block
launch and the band's (evicting L2); per chunk size, the GPU time of each kernel summed over
the slices (torch.profiler) and the whole sliced forward's `do_bench` median (L2 kept only):

    python benchmarks/l2_merge.py [--dims 128,64] [--chunks 32,8,4,2]
"""
import argparse

import torch
from triton.testing import do_bench

import attnlang
from attnlang.cache import load_module
from profile_kernels import kernel_times

PATTERN = "causal & (window(127, 0) | stride(128))"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--chunks", default="32,8,4,2")
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {PATTERN}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    real = gen._launch_prepared
    evict = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    state = {"evict": False}

    def launch(p, head, options):
        if state["evict"] and not p.kernel.__name__.startswith("_fwd_one"):
            evict.zero_()
        real(p, head, options)
    gen._launch_prepared = launch
    for d in (int(x) for x in args.dims.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 32, args.n, d, device="cuda", dtype=torch.bfloat16,
                               generator=g) for _ in range(3))
        print(f"== {PATTERN}  n = {args.n}, d = {d}, 32 heads")
        for c in (int(x) for x in args.chunks.split(",")):
            parts = [tuple(t[:, h:h + c] for t in (q, k, v)) for h in range(0, 32, c)]

            def forward():
                for part in parts:
                    mod(*part)
            for evicting in (False, True):
                state["evict"] = evicting
                with torch.no_grad():
                    rows = kernel_times(forward)
                    ms = None if evicting else do_bench(forward, warmup=25, rep=200,
                                                        return_mode="median")
                kernels = {name: total / 10 for name, (total, _) in rows.items()
                           if name.startswith("_fwd")}
                print(f"   {c:2d} heads a call, L2 {'evicted' if evicting else 'kept   '}: "
                      + ", ".join(f"{name} {us:6.1f}" for name, us in sorted(kernels.items()))
                      + f"  sum {sum(kernels.values()):6.1f} us"
                      + ("" if ms is None else f";  do_bench {ms * 1e3:6.1f} us"))
        state["evict"] = False


if __name__ == "__main__":
    main()
