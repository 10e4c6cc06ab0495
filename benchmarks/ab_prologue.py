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
output gradients, log-sum-exp and delta, then the row and its bounds): round 52's Next 1, not
yet run on a GPU. ``--role fwd-tma`` (round 53): the band forward's query tile through a
descriptor the host makes (TMA straight into shared memory) against the module as is, and its
partial output read by pointer loads again where the template (since round 53) reads it through
the host's descriptor (OP_DESC). The module's forward (or backward) launches are recorded once,
then replayed with every kernel taken from the patched module; output and log-sum-exp (or dQ,
dK, dV) must equal the module's bit for bit; then every variant is timed (GPU time of the
launches, interleaved rounds):

    python benchmarks/ab_prologue.py [--n 8192] [--dims 128,64] [--role fwd|dq|fwd-tma]
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


def _swapped(launches, module):
    """``launches`` with every kernel replaced by ``module``'s of the same name."""
    return [(getattr(module, _name(kernel)), grid, a, o) for kernel, grid, a, o in launches]


def main():
    options = parser()
    options.add_argument("--role", choices=("fwd", "dq", "fwd-tma"), default="fwd",
                         help="the forward's band kernel, or the backward's dQ kernels; "
                         "fwd-tma: the band forward's query tile (and partial output) by TMA")
    args = options.parse_args()
    for mod, gen, q, k, v, do in each_head_dim(args):
        if args.role.startswith("fwd"):
            rec = RecordedForward(gen, mod, q, k, v)
        else:
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
