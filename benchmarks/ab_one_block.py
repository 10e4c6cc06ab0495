"""Residue classes of one block (round 43) on the GPU: the generated module's forward and
forward+backward with its classes on the one-block kernels (`_fwd_one_*`, `_bwd_one_*`, launched
before the other components' -- at d = 64 the backward's after, ONE_BLOCK_LAST_BWD -- with
16-bit partial outputs, PARTIAL_16: the module as it is) against the general kernels
(ONE_BLOCK_MAX = 0); each of those settings the other way (the forward's one-block launch
last, the backward's first or last at every head dimension, float32 partial outputs, the
one-block kernels' heads in ascending order, ONE_BLOCK_HEADS_DOWN, the partial output read
after or before the key loop at every head dim, PREFETCH_PARTIAL, or read before it as the
online softmax's first state, SEED_PARTIAL, a component's dK/dV and dQ in two launches,
SHARED_BWD, the forward's launch after
the one-block one not a programmatic dependent launch, PDL_FORWARD, or one that starts only as
the one-block launch's programs end, PDL_EARLY); with
``--warps`` the one-block kernels at 8 and at 2 warps instead of 4; and tiles of ATTNLANG_TILES
(``--tiles``, for the pattern's other components).  Each variant's output, log-sum-exp and
gradients of the first two heads are checked against float64 first (max |error|), then all are
timed in interleaved rounds
(`do_bench` medians, CUDA events), and each variant's training step is profiled (GPU time of
its kernels, torch.profiler: the host's time, which bounds d = 64 steps at 8k, left out):

    python benchmarks/ab_one_block.py [--n 8192] [--dims 128,64] [--rounds 3]
        [--pattern "causal & (window(127, 0) | stride(128))"] [--tiles "fwd=64x64:4:3" ...]
        [--tiles-only] [--warps] [--only "one-block;one-block, heads ascending"]
    python benchmarks/ab_one_block.py --cpu --n 512 --dims 16 --pattern "causal & (window(7,
        0) | stride(8))"     # the checks only, in Triton's interpreter
"""
import argparse
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import attnlang  # noqa: E402
from attnlang import reference  # noqa: E402
from attnlang.bench import HEADS, TOKENS_PER_BATCH, time_in_rounds  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from profile_kernels import kernel_times  # noqa: E402


KNOBS = ("ONE_BLOCK_MAX", "ONE_BLOCK_LAST_BWD", "PARTIAL_16", "ONE_BLOCK_HEADS_DOWN",
         "PREFETCH_PARTIAL", "SEED_PARTIAL", "PDL_FORWARD", "PDL_EARLY", "SHARED_BWD")


def _variants(tiles, warps=False, tiles_only=False, seeded=False):
    """{name: the generated module's settings (KNOBS), and ``warps`` (of the one-block kernels),
    ``tiles`` (ATTNLANG_TILES), ``fwd_last`` (the forward's one-block launch after the others)}:
    each from the module's own defaults."""
    out = {"general": dict(ONE_BLOCK_MAX=0), "one-block": {},
           "one-block, forward's last": dict(fwd_last=True),
           "one-block, backward's first": dict(ONE_BLOCK_LAST_BWD=()),
           "one-block, backward's last": dict(ONE_BLOCK_LAST_BWD=(64, 128)),
           "one-block, float32 partials": dict(PARTIAL_16=False),
           "one-block, heads ascending": dict(ONE_BLOCK_HEADS_DOWN=False),
           # (SEED_PARTIAL takes precedence over PREFETCH_PARTIAL: off for these two)
           "one-block, partials read last": dict(SEED_PARTIAL=(), PREFETCH_PARTIAL=()),
           "one-block, partials read first": dict(SEED_PARTIAL=(),
                                                  PREFETCH_PARTIAL=(64, 128)),
           "one-block, partials seed the softmax": dict(SEED_PARTIAL=(64, 128)),
           "one-block, dK/dV and dQ apart": dict(SHARED_BWD=()),
           "one-block, no PDL": dict(PDL_FORWARD=()),
           "one-block, PDL late": dict(PDL_EARLY=False)}
    if warps:  # (8 warps, round 43: lost at both head dims, twice)
        out["one-block 8 warps"] = dict(warps=8)
        out["one-block 2 warps"] = dict(warps=2)
    if tiles_only:  # the module as it is, against its tiles
        out = {"one-block": {}}
    for spec in tiles:
        out[f"one-block, {spec}"] = dict(tiles=spec)
        if seeded:
            out[f"one-block, seeded, {spec}"] = dict(tiles=spec, SEED_PARTIAL=(64, 128))
    return out


class _State:
    """The generated module's variant now (its kept launches are that variant's)."""

    def __init__(self, gen):
        self.gen, self.now = gen, None
        self.launch, self.first = gen._one_block_launch, gen._one_block_first
        self.defaults = {name: getattr(gen, name) for name in KNOBS}

    def set(self, variant):
        if variant is self.now:
            return
        gen = self.gen
        gen._CALLS.clear()
        for name in KNOBS:
            setattr(gen, name, variant.get(name, self.defaults[name]))
        warps = variant.get("warps")
        gen._one_block_launch = self.launch if warps is None else (
            lambda *a, **kw: _with_warps(self.launch(*a, **kw), warps))
        # (the forward's launches in the components' order: the one-block ones last)
        gen._one_block_first = (lambda launches, kernels: launches) if variant.get(
            "fwd_last") else self.first
        if variant.get("tiles") is None:
            os.environ.pop("ATTNLANG_TILES", None)
        else:
            os.environ["ATTNLANG_TILES"] = variant["tiles"]
        self.now = variant


def _with_warps(p, warps):
    p.options = dict(p.options, num_warps=warps)
    return p


def inputs(n, d, cpu):
    """(B, [Q, K, V, dO]) of an A/B run at length n, head dim d: B x HEADS heads, TOKENS_PER_BATCH
    tokens a batch (one batch of float16 on the CPU, for the interpreter), seeded."""
    device = "cpu" if cpu else "cuda"
    batch = 1 if cpu else max(1, TOKENS_PER_BATCH // n)
    g = torch.Generator(device=device).manual_seed(0)
    return batch, [torch.randn(batch, HEADS, n, d, device=device,
                               dtype=torch.float16 if cpu else torch.bfloat16, generator=g)
                   for _ in range(4)]


def _errors(mod, expr, q, k, v, do):
    """Max |error| of out, lse, dq, dk, dv against float64 on the first two heads."""
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    out, lse = mod(qg, kg, vg, return_lse=True)
    out.backward(do)
    small = [t[:1, :2].detach().double().requires_grad_(True) for t in (q, k, v)]
    mask = reference.mask(expr, q.shape[2], k.shape[2], num_heads=2).to(q.device)[None]
    ref_out, ref_lse = reference.attention(*small, mask)
    ref_out.backward(do[:1, :2].double())
    got = [out[:1, :2], lse[:1, :2], qg.grad[:1, :2], kg.grad[:1, :2], vg.grad[:1, :2]]
    want = [ref_out, ref_lse, *(t.grad for t in small)]
    return [(g.double() - w).abs().max().item() for g, w in zip(got, want)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pattern", default="causal & (window(127, 0) | stride(128))")
    parser.add_argument("--tiles", action="append", default=[])
    parser.add_argument("--warps", action="store_true",
                        help="also the one-block kernels at 8 and at 2 warps")
    parser.add_argument("--tiles-only", action="store_true",
                        help="only the module as it is and its --tiles variants")
    parser.add_argument("--seeded", action="store_true",
                        help="each --tiles variant also with SEED_PARTIAL at every head dim")
    parser.add_argument("--only", help="these variants only (names, separated by ';')")
    parser.add_argument("--cpu", action="store_true",
                        help="the checks only, in Triton's interpreter (small --n)")
    args = parser.parse_args()
    pattern = attnlang.parse(f"pattern x = {args.pattern}")["x"]
    mod = pattern.module(backend="triton")
    state = _State(load_module(pattern))
    variants = _variants(args.tiles, args.warps, args.tiles_only, args.seeded)
    if args.only:
        variants = {name: variants[name] for name in args.only.split(";")}
    for d in (int(x) for x in args.dims.split(",")):
        batch, (q, k, v, do) = inputs(args.n, d, args.cpu)
        print(f"== {args.pattern}  n = {args.n}, d = {d}, {batch} x {HEADS} heads")
        print("   max |error| against float64 (2 heads): out, lse, dq, dk, dv")
        benches = {}
        for name, variant in variants.items():
            state.set(variant)
            if args.n <= 16384:  # (longer: the float64 reference's scores would not fit)
                errs = _errors(mod, pattern.ir, q, k, v, do)
                print(f"   {name:34s} " + " ".join(f"{e:.1e}" for e in errs))
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))

            def fwd(variant=variant):
                state.set(variant)
                return mod(q, k, v)

            def step(variant=variant, qg=qg, kg=kg, vg=vg):
                state.set(variant)
                for t in (qg, kg, vg):
                    t.grad = None
                mod(qg, kg, vg).backward(do)
            benches[(name, "fwd")] = (fwd, None)
            benches[(name, "fwd+bwd")] = (step, [qg, kg, vg])
        if args.cpu:
            continue
        times = time_in_rounds(benches, args.rounds, 25, 150 * args.rounds, do_bench)
        print("   ms (median per round, rounds interleaved):")
        for (name, mode), ts in times.items():
            print(f"   {name:34s} {mode:8s} " + " ".join(f"{t:.3f}" for t in ts) +
                  f"   median {sorted(ts)[len(ts) // 2]:.3f}")
        print("   GPU time of one step (us; torch.profiler, 10 steps), its kernels:")
        for name, variant in variants.items():
            rows = kernel_times(benches[(name, "fwd+bwd")][0], reps=10)
            kernels = sorted(rows.items(), key=lambda x: -x[1][0])
            print(f"   {name:34s} {sum(t for t, _ in rows.values()) / 10:7.1f}  " +
                  ", ".join(f"{kernel[:14]} {total / 10:.1f}" for kernel, (total, _) in kernels))
    state.set(variants["one-block"])


if __name__ == "__main__":
    main()
