"""Round 51's Next 2, ready to run: the backward of residue classes of one block (the strided
pattern's `_bwd_one_*`, one program per class and KV head, ~188 µs at 8k, d = 128, moving its
536 MB at 2.9 TB/s) with PER classes a program in one loop pipelined over STAGES stages
(`tl.range`), so that a class's loads are in flight while the class before it computes -- the
one-block kernel has no loop, so nothing overlaps its loads' latency but other programs.  The
module's backward launches are recorded once (`ab_shared_launch.Recorded`), then replayed as
they are and with the one-block launch replaced by this script's kernel (the module's own helpers
for positions, loads, scores and stores; GROUP 1 only); every variant's dQ, dK, dV must equal the
recorded sequence's bit for bit, then all are timed (GPU time of the backward's launches,
interleaved rounds, medians):

    python benchmarks/ab_class_loop.py [--n 8192] [--dims 128,64] [--rounds 5]
        [--variants "2:2:4,4:2:4,2:1:4,2:2:8"]     # PER:STAGES:warps
    python benchmarks/ab_class_loop.py --cpu --n 512 --dims 16 --pattern "causal & (window(7,
        0) | stride(8))" --variants "2:2:4,4:1:4"     # the checks only, in Triton's interpreter

Measured in round 52 (results/ab_class_loop_r52a.log): every variant lost at both head dims --
8k d = 128 498.1 µs as is against 506.5-528.4, d = 64 261.3 against 264.8-316.8.
"""
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ab_shared_launch import (Recorded, _bound, _name, check, each_head_dim,  # noqa: E402
                              parser, report)

_HELPERS = ("_class_positions", "_load_tile", "_store_dkdv")
# the generated module's helpers and its component's scores, bound by `_bind_module`
_class_positions = _load_tile = _store_dkdv = SCORES = None


@triton.jit
def class_loop_bwd(
    Q, K, V, DO, LSE, DELTA, DQ, DK, DV, O,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdom, sdod,
    sdqb, sdqh, sdqm, sdqd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, sob, soh, som, sod,
    CLS_Q0, CLS_K0, CLS_QN, CLS_KN, H, GROUP, Lq, Lk, qk_scale,
    STEP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, LOG2E_C: tl.constexpr,
    EVEN: tl.constexpr, EVEN_D: tl.constexpr, MERGE: tl.constexpr, OWN_DELTA: tl.constexpr,
    HEADS_DOWN: tl.constexpr, PER: tl.constexpr, STAGES: tl.constexpr,
):
    """`_bwd_one_*`'s work for classes PER * program_id(0) ... + PER - 1 of head program_id(1)
    (GROUP 1), one class an iteration of a loop pipelined over STAGES stages."""
    bh = tl.program_id(1)
    if HEADS_DOWN:
        bh = tl.num_programs(1) - 1 - bh
    b = bh // H
    h = bh % H
    lse_base = bh.to(tl.int64) * Lq
    for t in tl.range(0, PER, num_stages=STAGES):
        cls = tl.program_id(0) * PER + t
        qp, q_valid, kp, k_valid, offs_d, d_valid = _class_positions(
            cls, CLS_Q0, CLS_K0, CLS_QN, CLS_KN, STEP, BLOCK_M, BLOCK_N, BLOCK_D, HEAD_DIM)
        k = _load_tile(K + b.to(tl.int64) * skb + h * skh + kp[:, None] * skn
                       + offs_d[None, :] * skd, k_valid, d_valid, EVEN, EVEN_D)
        v = _load_tile(V + b.to(tl.int64) * svb + h * svh + kp[:, None] * svn
                       + offs_d[None, :] * svd, k_valid, d_valid, EVEN, EVEN_D)
        q = _load_tile(Q + b.to(tl.int64) * sqb + h * sqh + qp[:, None] * sqm
                       + offs_d[None, :] * sqd, q_valid, d_valid, EVEN, EVEN_D)
        do = _load_tile(DO + b.to(tl.int64) * sdob + h * sdoh + qp[:, None] * sdom
                        + offs_d[None, :] * sdod, q_valid, d_valid, EVEN, EVEN_D)
        s = SCORES(q, k, qp, kp, q_valid, k_valid, h, H, Lq, Lk, qk_scale, DOT_PRECISION, EVEN)
        lse = tl.load(LSE + lse_base + qp, mask=q_valid, other=0.0)
        if OWN_DELTA:
            o = _load_tile(O + b.to(tl.int64) * sob + h * soh + qp[:, None] * som
                           + offs_d[None, :] * sod, q_valid, d_valid, EVEN, EVEN_D)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
            tl.store(DELTA + lse_base + qp, delta, mask=q_valid)
        else:
            delta = tl.load(DELTA + lse_base + qp, mask=q_valid, other=0.0)
        p = tl.exp2(s - tl.where(lse == float("-inf"), 0.0, lse * LOG2E_C)[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION) * (qk_scale / LOG2E_C)
        dq_ptrs = DQ + b.to(tl.int64) * sdqb + h * sdqh + qp[:, None] * sdqm \
            + offs_d[None, :] * sdqd
        qd_mask = q_valid[:, None] & d_valid[None, :]
        if MERGE:
            dq += tl.load(dq_ptrs, mask=qd_mask, other=0.0).to(tl.float32)
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=qd_mask)
        _store_dkdv(DK, DV, dk * (qk_scale / LOG2E_C), dv, b, h, kp, k_valid, offs_d, d_valid,
                    sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, MERGE)


def _bind_module(gen, one):
    """Give the kernel above the module's helpers and its component's scores (``one``: the
    one-block backward's name, `_bwd_one_<i>`)."""
    scope = class_loop_bwd.fn.__globals__ if hasattr(class_loop_bwd, "fn") else globals()
    for name in _HELPERS:
        scope[name] = getattr(gen, name)
    scope["SCORES"] = getattr(gen, "_class_scores_" + one.rsplit("_", 1)[1])


def _variant(rec, per, stages, warps):
    """The recorded launches with the one-block backward's replaced by the loop kernel's."""
    out = []
    for kernel, grid, args, options in rec.launches:
        if not _name(kernel).startswith("_bwd_one_"):
            out.append((kernel, grid, args, options))
            continue
        bound = _bound(kernel, args, options)
        assert bound["GROUP"] == 1 and grid[0] % per == 0, (bound["GROUP"], grid, per)
        names = list(getattr(kernel, "arg_names", []))
        loop = [bound[n] for n in names]
        extra = dict(PER=per, STAGES=stages, num_warps=warps, num_stages=1)
        out.append((class_loop_bwd, (grid[0] // per, grid[1]), tuple(loop), extra))
    return out


def main():
    options = parser()
    options.add_argument("--variants", default="2:2:4,4:2:4,2:1:4,2:2:8",
                         help="PER:STAGES:warps, comma-separated")
    args = options.parse_args()
    for mod, gen, q, k, v, do in each_head_dim(args):
        rec = Recorded(gen, mod, q, k, v, do, shared=True)
        print("   recorded: " + ", ".join(rec.names()))
        one = next(n for n in rec.names() if n.startswith("_bwd_one_"))
        _bind_module(gen, one)
        variants = {"as is": (rec, rec.variant())}
        for spec in args.variants.split(","):
            per, stages, warps = (int(x) for x in spec.split(":"))
            variants[f"{per} classes a program, {stages} stages, {warps} warps"] = (
                rec, _variant(rec, per, stages, warps))
        check(variants, 40)
        if args.cpu:
            continue
        report(variants, args.rounds, "backward", 40)


if __name__ == "__main__":
    main()
