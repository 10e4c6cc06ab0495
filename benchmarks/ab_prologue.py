"""The band forward's prologue (rounds 52-53), and the dQ kernel's.  Nsight Compute on the strided
pattern's band kernel at 8k, d = 128 (results/ncu_r52_fwd_0*.txt) put 35% of its stall samples
before the key loop, in a chain of memory round trips one after another: the query tile's loads
(then their stores to shared memory), the partial output's (then its layout conversion through
shared memory), the table row's base, that row's bounds, and only then the first key block's TMA
load. Here the generated module's source is patched so that the forward issues the independent loads
before waiting on any:

- ``bounds first``: the table row and its bounds (`_row_bounds`) loaded at the program's start,
  before the query tile, and handed to the key loop (`_fwd_keys_*`), which loads them itself in
  the module;
- ``bounds first, queries last``: also the partial output and log-sum-exp (the seed) read
  before the query tile, so that the tile's stores to shared memory wait last.

``bounds first`` is taken (the template's `_fwd_*` since round 52), so ``--role fwd`` patches
modules of the templates before that change (8bf73b8's and earlier). ``--role dq`` does the same
to the backward's dQ kernels (`_bwd_dq_*` and its `_dq_keys_*`, also where they run inside a
shared launch, `_bwd_shared_*`), whose prologue has the same chain (its query tile, then the
output gradients, log-sum-exp and delta, then the row and its bounds): round 52's Next 1 (round
53: not taken). ``--role merge-cost`` times the backward's launches with and without merging the
partial results (dK, dV, dQ of the launches before; wrong results, not checked): what any faster
read of them could gain at most; beside it, the partial results read by pointer loads before the
loops (seeded sums, lost in round 53) and through host descriptors after them (merged by TMA:
written after round 53's device time, checked bit for bit in the interpreter with and without
the shared launch; ``--sm90`` compiles it without a GPU). ``--role fwd-tma`` (round 53): the
band forward's query tile through a descriptor the host makes (TMA straight into shared memory)
against the module as is, and its partial output read by pointer loads again where the template
(since round 53) reads it through the host's descriptor (OP_DESC). The module's forward (or
backward) launches are recorded once, then replayed with every kernel taken from the patched
module; output and log-sum-exp (or dQ, dK, dV) must equal the module's bit for bit; then every
variant is timed (GPU time of the launches, interleaved rounds):

    python benchmarks/ab_prologue.py [--n 8192] [--dims 128,64] [--role fwd|dq|fwd-tma|merge-cost]
    python benchmarks/ab_prologue.py --role merge-cost --sm90 [--dims 128,64]   # no GPU
    python benchmarks/ab_prologue.py --cpu --n 512 --dims 16 --pattern "causal & (window(7,
        0) | stride(8))" [--role dq]     # the checks only, in Triton's interpreter
"""
import os
import re
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

from ab_joined_forward import RecordedForward  # noqa: E402
from ab_shared_launch import (Recorded, _bound, _name, check, each_head_dim,  # noqa: E402
                              function_span, load_source, parser, report)


def _call_end(text, at):
    """Index of the parenthesis closing the call whose '(' is at ``at``."""
    depth = 0
    for i in range(at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced call")


def patch(src, kernel, keys, queries_last=False):
    """Module source ``src`` with ``kernel`` (`_fwd_<i>` or `_bwd_dq_<i>`) loading its row's
    bounds first and handing them to its key loop ``keys`` (`_fwd_keys_<i>`, `_dq_keys_<i>`);
    with ``queries_last`` (the forward) also its seed before its query tile."""
    start, end = function_span(src, keys)
    body = src[start:end]
    if "LO_PRE" in body:
        raise SystemExit(f"this module's {keys} takes its caller's bounds already (the forward's "
                         "since round 52): patch modules of the templates before it")
    # the key loop takes the bounds (PRE: constexpr) where its callers have them
    close = body.index("\n):\n")
    body = (body[:close] + "\n    PRE_ROW, PRE_LO, PRE_FLO, PRE_FHI, PRE_HI, PRE: tl.constexpr,"
            + body[close:])
    row = "    row = tl.load(ROW_BASE + (lb * NUM_CLASSES + cls) * H + h) + m\n"
    assert row in body, "the key loop's row moved"
    body = body.replace(row, "    if PRE:\n        row = PRE_ROW\n    else:\n    " + row, 1)
    bounds = re.search(r"\n( +)lo, flo, fhi, hi = _row_bounds\(RNG, row,[^)]*\)\n", body)
    assert bounds, "the key loop's bounds moved"
    pad = bounds.group(1)
    body = (body[:bounds.start()] + f"\n{pad}if PRE:\n{pad}    lo, flo, fhi, hi = PRE_LO, PRE_FLO, "
            f"PRE_FHI, PRE_HI\n{pad}else:\n{pad}    "
            + bounds.group(0)[1:].lstrip().replace("\n", f"\n{pad}    ").rstrip() + "\n"
            + body[bounds.end():])
    src = src[:start] + body + src[end:]
    # every caller passes them: the kernel its own, the others none
    out, pos = [], 0
    own_start, own_end = function_span(src, kernel)
    for hit in re.finditer(rf"{keys}\(", src):
        if src[hit.start() - 4:hit.start()] == "def ":
            continue
        close = _call_end(src, hit.end() - 1)
        own = own_start <= hit.start() < own_end
        out.append(src[pos:close])
        out.append(", pre_row, pre_lo, pre_flo, pre_fhi, pre_hi, True" if own
                   else ", 0, 0, 0, 0, 0, False")
        pos = close
    src = "".join(out) + src[pos:]
    start, end = function_span(src, kernel)
    body = src[start:end]
    first = "    q_count = tl.load(CLS_QN + cls)\n"
    assert first in body
    body = body.replace(first, (
        "    pre_row = tl.load(ROW_BASE + (b * LB_PER_BATCH * NUM_CLASSES + cls) * H + h) + m\n"
        "    pre_lo, pre_flo, pre_fhi, pre_hi = _row_bounds(RNG, pre_row, SEG_FLAG, b,\n"
        "                                                   LB_PER_BATCH, N_KB, SEG_BOUNDS)\n"
        + first), 1)
    if queries_last:
        q = re.search(r"\n    q = _load_tile\(Q [^\n]*\n[^\n]*\)\n", body)
        assert q, "the query tile's load moved"
        body = body[:q.start()] + "\n" + body[q.end():]
        call = body.index(f"    acc, m_i, l_i = {keys}(")
        body = body[:call] + q.group(0)[1:] + body[call:]
    return src[:start] + body + src[end:]


def patch_tma(src, kernel, queries):
    """Module source ``src`` with the band forward ``kernel`` (`_fwd_<i>`, whose component is the
    identity: STEP 1, one class from position 0) changed: with ``queries``, its query tile read
    through the host's descriptor Q_DESC (rows of [B * H * Lq, D]: TMA straight into shared
    memory, where the tile's pointer loads go through registers first); else its partial output
    read by pointer loads where HOST_DESC has it read through OP_DESC (the template's since
    round 53: as before it).  Whole tiles only (EVEN)."""
    start, end = function_span(src, kernel)
    body = src[start:end]
    if not queries:
        by_desc = re.search(r"\n( +)if HOST_DESC:  # no trip through registers[^\n]*\n", body)
        assert by_desc, "the partial output's read moved"
        return (src[:start] + body[:by_desc.start()] + f"\n{by_desc.group(1)}if False:\n"
                + body[by_desc.end():] + src[end:])
    head = "    HAS_KPM: tl.constexpr,"
    assert body.count(head) == 1, "the kernel's parameters moved"
    body = body.replace(head, "    Q_DESC,\n" + head, 1)
    q = re.search(r"\n    q = _load_tile\(Q [^\n]*\n[^\n]*\)\n", body)
    assert q, "the query tile's load moved"
    body = (body[:q.start()] + "\n    tl.static_assert(STEP == 1 and EVEN and BLOCK_D == HEAD_DIM)"
            "\n    q = Q_DESC.load([(b * H + h) * Lq + m * BLOCK_M, 0])\n" + body[q.end():])
    return src[:start] + body + src[end:]


def _with_tma(launches, module, kernel, queries):
    """``launches`` on ``module``'s kernels, with ``queries`` ``kernel``'s launch given Q_DESC
    (the host's descriptor over its query tensor: contiguous [B, H, L, D])."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    out = []
    for k, grid, a, o in launches:
        if queries and _name(k) == kernel:
            q = _bound(k, a, o)["Q"]
            assert q.is_contiguous()
            o = dict(o, Q_DESC=TensorDescriptor.from_tensor(q.view(-1, q.shape[-1]),
                                                            [o["BLOCK_M"], o["BLOCK_D"]]))
        out.append((getattr(module, _name(k)), grid, a, o))
    return out


class _ByTriton:
    """A recording's launches made by Triton's own launcher (`_compile_and_launch`: the module's
    direct launches key their options, and a descriptor in them is not hashable); its checks
    compare with its own first variant."""

    def __init__(self, rec):
        self.gen, self.grads = rec.gen, rec.grads

    def run(self, launches):
        for kernel, grid, args, options in launches:
            self.gen._compile_and_launch(kernel, grid, args, options)


def patch_seed(src, index):
    """Module source ``src`` with component ``index``'s dK/dV and dQ kernels (`_bwd_dkdv_<i>`,
    `_bwd_dq_<i>`, also inside a shared launch) seeding their sums from the partial results of
    the launches before (MERGE: read by pointer loads before the loop, scaled back by
    LOG2E / qk_scale where the sum is scaled at the end) instead of adding them after it."""
    start, end = function_span(src, f"_bwd_dkdv_{index}")
    body = src[start:end]
    zeros = ("    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)\n"
             "    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)\n")
    assert body.count(zeros) == 1, "dK/dV's sums moved"
    body = body.replace(zeros, (
        "    if MERGE:  # (seeded: round 53's experiment)\n"
        "        kd_mask = k_valid[:, None] & d_valid[None, :]\n"
        "        dk = tl.load(DK + b.to(tl.int64) * sdkb + hk * sdkh + kp[:, None] * sdkn\n"
        "                     + offs_d[None, :] * sdkd, mask=kd_mask, other=0.0).to(tl.float32)\n"
        "        dk = dk * (LOG2E_C / qk_scale)\n"
        "        dv = tl.load(DV + b.to(tl.int64) * sdvb + hk * sdvh + kp[:, None] * sdvn\n"
        "                     + offs_d[None, :] * sdvd, mask=kd_mask, other=0.0).to(tl.float32)\n"
        "    else:\n" + zeros.replace("    d", "        d")), 1)
    store = "sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, MERGE)"
    assert body.count(store) == 1, "dK/dV's store moved"
    body = body.replace(store, store.replace("MERGE)", "False)"), 1)
    src = src[:start] + body + src[end:]
    start, end = function_span(src, f"_bwd_dq_{index}")
    body = src[start:end]
    zeros = "    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)\n"
    merge = ("    if MERGE:\n"
             "        dq += tl.load(dq_ptrs, mask=qd_mask, other=0.0).to(tl.float32)\n")
    assert body.count(zeros) == 1 and body.count(merge) == 1, "dQ's sum moved"
    body = body.replace(zeros, (
        "    if MERGE:  # (seeded: round 53's experiment)\n"
        "        dq = tl.load(DQ + b.to(tl.int64) * sdqb + h * sdqh + qp[:, None] * sdqm\n"
        "                     + offs_d[None, :] * sdqd, mask=qd_mask, other=0.0).to(tl.float32)\n"
        "        dq = dq * (LOG2E_C / qk_scale)\n"
        "    else:\n    " + zeros), 1).replace(merge, "", 1)
    return src[:start] + body + src[end:]


def patch_merge_tma(src, index):
    """Module source ``src`` with component ``index``'s dK/dV and dQ kernels (`_bwd_dkdv_<i>`,
    `_bwd_dq_<i>`, also inside a shared launch `_bwd_shared_<i>`) adding the partial results of
    the launches before (MERGE) read through host descriptors (DK_DESC, DV_DESC, DQ_DESC: rows
    of [B * heads * L / STEP, STEP * D], `_merge_descriptors`) instead of pointer loads, after
    their loops as before (the same operations in the same order: bit for bit).  Whole tiles
    only (EVEN)."""
    start, end = function_span(src, f"_bwd_dkdv_{index}")
    body = src[start:end]
    halves = "    HALVES: tl.constexpr = 1,\n):"
    assert body.count(halves) == 1, "dK/dV's parameters moved"
    body = body.replace(halves, "    DK_DESC, DV_DESC,\n" + halves, 1)
    store = re.search(r"\n    _store_dkdv\(DK, DV, dk \* \(qk_scale / LOG2E_C\), dv, "
                      r"([^)]*), MERGE\)\n", body)
    assert store, "dK/dV's store moved"
    body = (body[:store.start()] + "\n"
            "    tl.static_assert(EVEN and BLOCK_D == HEAD_DIM)\n"
            "    dk_m = dk * (qk_scale / LOG2E_C)\n"
            "    dv_m = dv\n"
            "    if MERGE:  # (by TMA: round 53's experiment)\n"
            "        t_row = (b * (H // GROUP) + hk) * (Lk // STEP) + k0 // STEP + n * BLOCK_N\n"
            "        dk_m += DK_DESC.load([t_row, (k0 % STEP) * HEAD_DIM]).to(tl.float32)\n"
            "        dv_m += DV_DESC.load([t_row, (k0 % STEP) * HEAD_DIM]).to(tl.float32)\n"
            f"    _store_dkdv(DK, DV, dk_m, dv_m, {store.group(1)}, False)\n"
            + body[store.end():])
    src = src[:start] + body + src[end:]
    start, end = function_span(src, f"_bwd_dq_{index}")
    body = src[start:end]
    halves = "    INTERLEAVE: tl.constexpr = 1, HALVES: tl.constexpr = 1,\n):"
    assert body.count(halves) == 1, "dQ's parameters moved"
    body = body.replace(halves, "    DQ_DESC,\n" + halves, 1)
    merge = ("    if MERGE:\n"
             "        dq += tl.load(dq_ptrs, mask=qd_mask, other=0.0).to(tl.float32)\n")
    assert body.count(merge) == 1, "dQ's merge moved"
    body = body.replace(merge, (
        "    tl.static_assert(EVEN and BLOCK_D == HEAD_DIM)\n"
        "    if MERGE:  # (by TMA: round 53's experiment)\n"
        "        dq += DQ_DESC.load([(b * H + h) * (Lq // STEP) + q0 // STEP + m * BLOCK_M,\n"
        "                            (q0 % STEP) * HEAD_DIM]).to(tl.float32)\n"), 1)
    src = src[:start] + body + src[end:]
    if f"\ndef _bwd_shared_{index}(" in src:
        start, end = function_span(src, f"_bwd_shared_{index}")
        body = src[start:end]
        last = "    JOIN_PARTIAL_q: tl.constexpr,\n):"
        assert body.count(last) == 1 and body.count("HALVES=2)") == 2, "the shared launch moved"
        body = body.replace(last, last[:-3] + "\n    DK_DESC, DV_DESC, DQ_DESC,\n):", 1)
        first = body.index("HALVES=2)")
        rest = body[first + len("HALVES=2)"):]
        body = (body[:first] + "DK_DESC=DK_DESC, DV_DESC=DV_DESC, HALVES=2)"
                + rest.replace("HALVES=2)", "DQ_DESC=DQ_DESC, HALVES=2)", 1))
        src = src[:start] + body + src[end:]
    return src


def _merge_descriptors(launches, module):
    """``launches`` on ``module``'s kernels (`patch_merge_tma`'s), each dK/dV, dQ or shared
    launch given the host's descriptors over the tensors it merges into (DK, DV: tiles of
    BLOCK_N rows; DQ: BLOCK_M's; a residue class's rows one column block of the [rows / STEP,
    STEP * D] view)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    def rows(t, step, block_rows, block_d):
        B, H, L, D = t.shape
        assert t.is_contiguous() and L % step == 0
        return TensorDescriptor(t, [B * H * L // step, step * D], [step * D, 1],
                                [block_rows, block_d])
    out = []
    for k, grid, a, o in launches:
        name, bound = _name(k), _bound(k, a, o)
        o = dict(o)
        if name.startswith(("_bwd_dkdv_", "_bwd_shared_")):
            o.update(DK_DESC=rows(bound["DK"], o["STEP"], o["BLOCK_N"], o["BLOCK_D"]),
                     DV_DESC=rows(bound["DV"], o["STEP"], o["BLOCK_N"], o["BLOCK_D"]))
        if name.startswith("_bwd_dq_"):
            o["DQ_DESC"] = rows(bound["DQ"], o["STEP"], o["BLOCK_M"], o["BLOCK_D"])
        if name.startswith("_bwd_shared_"):
            o["DQ_DESC"] = rows(bound["DQ_q"], o["STEP_q"], o["BLOCK_M_q"], o["BLOCK_D_q"])
        out.append((getattr(module, name), grid, a, o))
    return out


def sm90_report(pattern, n, dims):
    """Compile component 0's backward kernels as is and `patch_merge_tma`'s for sm_90 with this
    machine's Triton (`compile_check`'s, host descriptors as the benchmark's launches have them;
    no GPU) and print each one's registers, spill stores and shared memory."""
    import torch
    import compile_check
    import attnlang
    from attnlang.cache import load_module
    gen = load_module(attnlang.parse(f"pattern x = {pattern}")["x"])
    with open(gen.__file__) as f:
        patched = load_source(patch_merge_tma(f.read(), "0"), f"prologue_sm90_{os.getpid()}")
    for d in dims:
        for kernel, a, o in compile_check.record_launches(pattern, n, d, torch.bfloat16, True):
            name = _name(kernel)
            if not name.startswith(("_bwd_dkdv_0", "_bwd_dq_0", "_bwd_shared_0")):
                continue
            (tma, _, ta, to), = _merge_descriptors([(kernel, (1,), a, o)], patched)
            for tag, launch in (("as is", (kernel, a, o)), ("merged by TMA", (tma, ta, to))):
                report = []
                error = compile_check.compile_one(*launch, report)
                print(f"   d = {d} {name:16s} {tag:14s} {error or report[0]}", flush=True)


def _swapped(launches, module):
    """``launches`` with every kernel replaced by ``module``'s of the same name."""
    return [(getattr(module, _name(kernel)), grid, a, o) for kernel, grid, a, o in launches]


def main():
    options = parser()
    options.add_argument("--role", choices=("fwd", "dq", "fwd-tma", "merge-cost"),
                         default="fwd",
                         help="the forward's band kernel, or the backward's dQ kernels; "
                         "fwd-tma: the band forward's query tile (and partial output) by TMA; "
                         "merge-cost: the backward's launches without their merges")
    options.add_argument("--sm90", action="store_true", help="merge-cost: compile the "
                         "backward's kernels as is and merged by TMA for sm_90 (no GPU)")
    args = options.parse_args()
    if args.sm90:
        sm90_report(args.pattern, args.n, [int(x) for x in args.dims.split(",")])
        return
    for mod, gen, q, k, v, do in each_head_dim(args):
        if args.role.startswith("fwd"):
            rec = RecordedForward(gen, mod, q, k, v)
        else:
            if args.cpu and args.role == "merge-cost":  # through the shared launch (d = 128's
                gen.SHARED_BWD = (q.shape[-1],)  # on the GPU), whose kernels' bodies are these
            rec = Recorded(gen, mod, q, k, v, do, shared=True)
        print("   recorded: " + ", ".join(rec.names()))
        with open(gen.__file__) as f:
            src = f.read()
        variants = {"as is": (rec, rec.variant())}
        if args.role == "fwd-tma":
            band = [n for n in rec.names() if n.startswith("_fwd_") and "one" not in n][-1]
            launches, rec = rec.variant(), _ByTriton(rec)
            variants["as is, by Triton"] = (rec, launches)
            for tag, queries in (("partial by loads", False), ("queries by TMA", True)):
                name = "prologue_" + tag.replace(" ", "_")
                module = load_source(patch_tma(src, band, queries), f"{name}_{os.getpid()}")
                variants[tag] = (rec, _with_tma(launches, module, band, queries))
            check(variants, 28)
            if not args.cpu:
                report(variants, args.rounds, "forward", 28)
            continue
        if args.role == "merge-cost":  # what merging the partial results costs: an upper
            # bound for any faster way to read them (the results wrong: timed, not checked)
            indices = sorted({n.rsplit("_", 1)[1] for n in rec.names()
                              if n.startswith(("_bwd_dq_", "_bwd_shared_", "_bwd_dkdv_"))})
            seeded = src
            for i in indices:
                seeded = patch_seed(seeded, i)
            variants["seeded (pointer loads)"] = (rec, _swapped(
                rec.launches, load_source(seeded, f"prologue_seeded_{os.getpid()}")))
            launches, by_triton = rec.variant(), _ByTriton(rec)
            variants["as is, by Triton"] = (by_triton, launches)
            tma = src
            for i in indices:
                tma = patch_merge_tma(tma, i)
            variants["merged by TMA"] = (by_triton, _merge_descriptors(
                launches, load_source(tma, f"prologue_merge_tma_{os.getpid()}")))
            check(variants, 28, relative=True)
            variants["no merges (wrong results)"] = (rec, [
                (k, g, a, {n: (False if n in ("MERGE", "MERGE_q") else x) for n, x in o.items()})
                for k, g, a, o in rec.launches])
            if not args.cpu:
                report(variants, args.rounds, "backward", 28)
            continue
        if args.role == "fwd":
            band = [n for n in rec.names() if n.startswith("_fwd_") and "one" not in n][-1]
            tags = (("bounds first", False), ("bounds first, queries last", True))
            kernels = [(band, f"_fwd_keys_{band.rsplit('_', 1)[1]}")]
        else:  # every component's dQ kernel (in a shared launch or its own)
            indices = sorted({n.rsplit("_", 1)[1] for n in rec.names()
                              if n.startswith(("_bwd_dq_", "_bwd_shared_"))})
            tags = (("dQ bounds first", False),)
            kernels = [(f"_bwd_dq_{i}", f"_dq_keys_{i}") for i in indices]
        for tag, last in tags:
            patched = src
            for kernel, keys in kernels:
                patched = patch(patched, kernel, keys, last)
            name = "prologue_" + tag.replace(" ", "_").replace(",", "")
            variants[tag] = (rec, _swapped(rec.launches, load_source(patched,
                                                                      f"{name}_{os.getpid()}")))
        check(variants, 28)
        if args.cpu:
            continue
        report(variants, args.rounds, "forward" if args.role == "fwd" else "backward", 28)

if __name__ == "__main__":
    main()
