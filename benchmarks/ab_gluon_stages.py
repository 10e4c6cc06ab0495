"""The Gluon backward's (Q, dO) ring at head dimension 64 (`gluon_backward.STAGES`): two stages
(rounds 19-53) against three (since round 54) and four. At d = 64 a stage is 16 KB of Q and dO
(with 128-key blocks and their own dQ buffers, 32 KB), so deeper rings fit: 116 KB of shared memory
at two stages, 149 KB at three, 183 KB at four for 128-key blocks (one program a multiprocessor
either way), 59 / 76 / 93 KB for 64-key blocks (two programs). `benchmarks/gluon_compile.py`'s
``compile_bwd`` compiles each (Triton 3.6, sm_90: no spills, no serialised wgmma); at d = 128 three
stages do not fit (280 KB).  Since round 57 128-key blocks at d = 64 take WIDE's tile and ring
(128 queries, two stages), which ``--knob stages`` leaves as they are: it varies the 64-query
tiles' ring (64-key blocks) there.

With ``--knob group`` the same A/B varies HEAD_GROUP instead (the heads whose key blocks the
kernel's grid interleaves; 4 since round 23), at ``--d``; with ``--knob tile`` the query tile
and the ring together (``--tiles BM:STAGES,...``; 64:3 at d = 64 since round 54), where dK and
dV may be summed in another order: every variant's gradients are checked against the first's
to a relative 5e-3 (bf16 rounding), not bit for bit (they were bit for bit in round 57: the
products sum a key block's tiles in the same order either way).

For each pattern, training steps as attnlang runs them (the benchmark's inputs: bf16, 16 heads,
16k tokens per batch); the generated module's copy of `gluon_backward` takes each value in turn
(its plans cleared), its gradients checked against the first value's (dK and dV bit for bit;
dQ, added up by TMA reductions in no fixed order, to 1e-3), then each variant's GPU time per step
(CUDA events around steps back to back; rounds interleaved, median):

    python benchmarks/ab_gluon_stages.py [--stages 2,3,4] [--rounds 5] [--d 64]
        [--case "all@8192" --case "causal & window(1023, 0)@32768" ...]
    python benchmarks/ab_gluon_stages.py --knob group [--groups 1,2,4,8] ...   # HEAD_GROUP
    python benchmarks/ab_gluon_stages.py --knob tile [--tiles 64:3,128:2] ...   # BM and ring
"""
import argparse
import statistics

import torch

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, random_documents
from attnlang.cache import load_module

CASES = ["all@8192", "causal@8192", "causal@32768", "causal & window(1023, 0)@32768",
         "window(2048) & stride(4)@8192", "causal & segment@32768"]


def step_time(step, reps):
    """GPU ms of one ``step()``: ``reps`` steps back to back between two events (a step's host
    time is well under its GPU time on these patterns, so the queue stays full)."""
    step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def interleaved_times(step, variants, use, rounds):
    """{variant: [GPU ms of a step in each round]}: ``rounds`` rounds, each setting every variant
    in turn (``use(variant)``) and timing ``step`` (`step_time`, ~60 ms a measurement)."""
    reps = max(3, int(60 / max(1e-3, step_time(step, 3))))
    times = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            use(variant)  # (step_time's first step makes the plan again, outside the timing)
            times[variant].append(step_time(step, reps))
    return times


def training_case(text, n, d, batch=None, heads=HEADS):
    """(generated module, its copy of `gluon_backward`, one training step, the inputs that take
    gradients, the batch) of ``text`` on the benchmark's inputs at ``n`` tokens and head
    dimension ``d`` (bf16, 16 heads, 16k tokens per batch unless ``batch`` and ``heads`` say
    otherwise; `causal & segment` its 64 random documents)."""
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = pattern.module(backend="triton")
    gen = load_module(pattern)
    batch = batch or max(1, TOKENS_PER_BATCH // n)
    rng = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(batch, heads, n, d, device="cuda", dtype=torch.bfloat16,
                               generator=rng) for _ in range(4))
    grads = [t.detach().requires_grad_(True) for t in (q, k, v)]
    extra = {}
    if "segment" in text:  # the benchmark's 64 random documents
        extra["segments"] = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))

    def step():
        for t in grads:
            t.grad = None
        module(*grads, **extra).backward(do)
    return gen, gen._gluon_module("gluon_backward"), step, grads, batch


def run_case(text, n, knob, values, rounds, d=64):
    """One pattern at ``n`` tokens and head dimension ``d``: the Gluon backward with each of
    ``values`` for ``knob`` ('stages': its ring at this head dimension; 'group': HEAD_GROUP, the
    heads whose key blocks its grid interleaves; 'tile': (BM, stages)), gradients checked, then
    timed."""
    gen, gb, step, (qg, kg, vg), batch = training_case(text, n, d)

    kept = gb.STAGES, gb.HEAD_GROUP, gb.WIDE

    def use(value):
        if knob == "stages":
            gb.STAGES = {**kept[0], d: value}
        elif knob == "tile":  # 128-key blocks' (query tile, stages) at d: WIDE's or BM's
            bm, stages = value
            gb.WIDE = {**kept[2], d: value}
            if bm == gb.BM:
                del gb.WIDE[d]
                gb.STAGES = {**kept[0], d: stages}
        else:
            gb.HEAD_GROUP = value
        gb._PLANS.clear()

    grads = {}
    for value in values:
        use(value)
        step()
        torch.cuda.synchronize()
        grads[value] = (qg.grad.clone(), kg.grad.clone(), vg.grad.clone())
    base = grads[values[0]]
    print(f"== {text}  n = {n}, d = {d}, B = {batch}")
    for value in values:
        dq, dk, dv = grads[value]
        dq_rel = float((dq.float() - base[0].float()).norm() / base[0].float().norm())
        same = torch.equal(dk, base[1]) and torch.equal(dv, base[2])
        if knob == "tile":  # (another order of sums: bf16 roundings apart)
            rel = max(float((g.float() - r.float()).norm() / r.float().norm())
                      for g, r in zip((dk, dv), base[1:]))
            ok = rel < 5e-3 and dq_rel < 5e-3
            print(f"   {knob} {value}: dK, dV relative {rel:.1e}, dQ relative {dq_rel:.1e} "
                  f"{'ok' if ok else 'NOT OK'}")
            continue
        ok = same and dq_rel < 1e-3
        print(f"   {knob} {value}: dK, dV {'bit for bit' if same else 'DIFFER'}, dQ relative "
              f"{dq_rel:.1e} {'ok' if ok else 'NOT OK'}")
    times = interleaved_times(step, values, use, rounds)
    for value in values:
        print(f"   {knob} {value}  step ms " + " ".join(f"{t:7.3f}" for t in times[value])
              + f"   median {statistics.median(times[value]):7.3f}")
    gb.STAGES, gb.HEAD_GROUP, gb.WIDE = kept
    gb._PLANS.clear()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--knob", choices=("stages", "group", "tile"), default="stages")
    parser.add_argument("--stages", default="2,3,4", help="the ring depths to compare")
    parser.add_argument("--groups", default="1,2,4,8", help="the HEAD_GROUPs to compare")
    parser.add_argument("--tiles", default="64:3,128:2", help="the BM:STAGES to compare")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--case", action="append", help="PATTERN@LENGTH")
    args = parser.parse_args()
    if args.knob == "tile":
        values = [tuple(int(x) for x in pair.split(":")) for pair in args.tiles.split(",")]
    else:
        values = [int(x) for x in (args.stages if args.knob == "stages" else args.groups)
                  .split(",")]
    for case in args.case or CASES:
        text, n = case.rsplit("@", 1)
        run_case(text, int(n), args.knob, values, args.rounds, args.d)


if __name__ == "__main__":
    main()
