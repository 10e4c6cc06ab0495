"""The fixed pattern's backward on the GPU: the `tl` kernels against the Gluon gather path
(`gluon_backward.gather_backward`, GLUON_GATHER) with its grid's key blocks in two orders.

The gather kernel's key blocks differ in length (the earliest packed keys are seen by the most
queries). HEAD_GROUP 4 (every Gluon backward's grid until round 55) runs a group of four heads'
key blocks, longest first, before the next group's; a grid over every head (group = B * H)
starts the longest key blocks of every head first, so that its last wave holds short blocks
only. `gluon_backward.gather_group` picks between them by a model of the schedule
(`grid_finish`: with 256 blocks of 128 keys on 132 multiprocessors, 8k tokens, the groups of
four end at 204 tiles of 64 queries, every head at 140; 16k: 380 against 268; 32k: 1020
against 1032).

Variants (training steps as attnlang runs them, bf16, 16 heads, 16k tokens per batch; every
variant's gradients checked against the `tl` kernels'; CUDA events around steps back to back,
rounds interleaved, medians; the host's time a step (`host_time`); then each variant's kernels
under torch.profiler):

    tl            GLUON_GATHER off: the `tl` dK/dV and dQ kernels
    gather g4     GLUON_GATHER_MIN and _WAVES 0, the grid in groups of four heads
    gather all    GLUON_GATHER_MIN and _WAVES 0, the grid over every head at once
    gather rule   GLUON_GATHER_MIN and _WAVES 0, `gather_group`'s choice (the module's)

    python benchmarks/ab_gather.py [--case "PATTERN@N@D" ...] [--rounds 7] [--no-profile]
        [--batch B --heads H]   # another batch and head count than the benchmark's

With few batches x heads a step's GPU time falls under its host time, and steps back to back
time the host: the profile's kernel time a step is then the GPU's figure.

(results/ab_gather_r55b.log and r55c.log come from this script's first form, whose variants set
HEAD_GROUP to 4 or past B * H before `gather_group` existed, and whose fourth variant, "gather
all, tl chunks", ran the chunks on the `tl` kernels instead of the PAIRS kernel: a tie at 8k,
d = 128, 1.4% slower at 16k.)
"""
import argparse
import statistics

import torch

from attnlang.bench import _host_ms
from ab_gluon_stages import interleaved_times, training_case
from gluon_bwd import max_rel
from profile_kernels import kernel_times

FIXED = "causal & (chunk(128) | cols(every(128, 112..128)))"
CASES = [f"{FIXED}@8192@128", f"{FIXED}@8192@64", f"{FIXED}@16384@128", f"{FIXED}@16384@64",
         f"{FIXED}@32768@128"]
VARIANTS = ["tl", "gather g4", "gather all", "gather rule"]


def run_case(text, n, d, rounds, profile, batch=None, heads=16):
    gen, gb, step, grads, batch = training_case(text, n, d, batch, heads)
    kept = (gen.GLUON_GATHER_MIN, gb.gather_group, gen.GLUON_GATHER_WAVES)
    fixed = {"gather g4": lambda first, Lq, BH, slots, D: min(4, BH),
             "gather all": lambda first, Lq, BH, slots, D: BH}

    def use(name):
        gen.GLUON_GATHER_MIN, gb.gather_group, gen.GLUON_GATHER_WAVES = kept
        gen._GLUON["gluon_backward"] = gb
        if name == "tl":
            gen._GLUON["gluon_backward"] = None
        else:
            gen.GLUON_GATHER_MIN = dict.fromkeys(kept[0], 0)
            gen.GLUON_GATHER_WAVES = 0
            gb.gather_group = fixed.get(name, kept[1])
        gen._CALLS.clear()
        gen._SHAPES.clear()

    print(f"== {text}  n = {n}, d = {d}, B = {batch}, H = {heads}", flush=True)
    results = {}
    for name in VARIANTS:
        use(name)
        step()
        torch.cuda.synchronize()
        results[name] = [t.grad.clone() for t in grads]
    for name in VARIANTS[1:]:
        errs = [max_rel(a, b) for a, b in zip(results[name], results["tl"])]
        print(f"   {name:22s} dQ, dK, dV against tl's: "
              + " ".join(f"{e:.1e}" for e in errs)
              + ("  ok" if max(errs) < 2e-2 else "  NOT OK"), flush=True)
    use("tl")
    times = interleaved_times(step, VARIANTS, use, rounds)
    base = statistics.median(times["tl"])
    for name in VARIANTS:
        med = statistics.median(times[name])
        print(f"   {name:22s} step ms " + " ".join(f"{t:6.3f}" for t in times[name])
              + f"   median {med:6.3f}  ({base / med:.3f}x tl)", flush=True)
    for name in VARIANTS:
        use(name)
        step()
        print(f"   {name:22s} host us a step {host_time(step):7.1f}", flush=True)
    if profile:
        for name in VARIANTS:
            use(name)
            rows = kernel_times(step, 10)
            total = sum(t for t, _ in rows.values()) / 10
            print(f"   -- {name}: {total:.1f} us of kernels a step")
            for kname, (t, count) in sorted(rows.items(), key=lambda x: -x[1][0]):
                print(f"      {t / 10:8.1f}  x{count // 10:<3d} {kname}")
    use("gather rule")
    gen.GLUON_GATHER_MIN, gen.GLUON_GATHER_WAVES = kept[0], kept[2]


def host_time(step):
    """The host's µs per ``step()``: rounds of 8 steps queued after a synchronisation, timed on
    the host without waiting for the GPU (too few launches to fill the launch queue, so the host
    never waits for it), median of 15 (`bench._host_ms` without the wait; the logs up to
    round 56 were made with the same loop written out here, without its ten warm-up steps)."""
    return _host_ms(step, reps=8, rounds=15, wait=False) * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", action="append", help="PATTERN@LENGTH@HEAD_DIM")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--batch", type=int, help="batch (default: 16k tokens per batch)")
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    for case in args.case or CASES:
        text, n, d = case.rsplit("@", 2)
        run_case(text, int(n), int(d), args.rounds, not args.no_profile, args.batch, args.heads)


if __name__ == "__main__":
    main()
