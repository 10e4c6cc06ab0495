"""The band forward's prologue (round 52's experiment).  Nsight Compute on the strided pattern's
band kernel at 8k, d = 128 (results/ncu_r52_fwd_0*.txt) put 35% of its stall samples before the
key loop, in a chain of memory round trips one after another: the query tile's loads (then
their stores to shared memory), the partial output's (then its layout conversion through shared
memory), the table row's base, that row's bounds, and only then the first key block's TMA load.
Here the generated module's source is patched so that the forward issues the independent loads
before waiting on any:

- ``bounds first``: the table row and its bounds (`_row_bounds`) loaded at the program's start,
  before the query tile, and handed to the key loop (`_fwd_keys_*`), which loads them itself in
  the module;
- ``bounds first, queries last``: also the partial output and log-sum-exp (the seed) read
  before the query tile, so that the tile's stores to shared memory wait last.

``bounds first`` is taken (the template's `_fwd_*` since round 52), so the script patches
modules of the templates before that change (8bf73b8's and earlier).  The module's forward
launches are recorded once, then replayed with the band kernel replaced by each patched one;
output and log-sum-exp must equal the module's bit for bit; then every variant is timed (GPU
time of the forward's launches, interleaved rounds):

    python benchmarks/ab_prologue.py [--n 8192] [--dims 128,64]
    python benchmarks/ab_prologue.py --cpu --n 512 --dims 16 --pattern "causal & (window(7,
        0) | stride(8))"     # the checks only, in Triton's interpreter
"""
import os
import re
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

from ab_joined_forward import RecordedForward  # noqa: E402
from ab_shared_launch import (_name, check, each_head_dim, function_span,  # noqa: E402
                              load_source, parser, report)


def _call_end(text, at):
    """Index of the parenthesis closing the call whose '(' is at ``at``."""
    depth = 0
    for i in range(at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced call")


def patch(src, band, queries_last):
    """Module source ``src`` with kernel ``band`` (`_fwd_<i>`) loading its row's bounds first
    (and with ``queries_last`` its seed before its query tile)."""
    index = band.rsplit("_", 1)[1]
    keys = f"_fwd_keys_{index}"
    if "ROW_PRE" in src:
        raise SystemExit("this module's forward loads its bounds first already (round 52's "
                         "change): the experiment patches modules of the templates before it")
    # the key loop takes the bounds (PRE: constexpr) where its callers have them
    start, end = function_span(src, keys)
    body = src[start:end]
    body = body.replace("    piece, PIECE_BLOCKS, PIECES: tl.constexpr,\n):",
                        "    piece, PIECE_BLOCKS, PIECES: tl.constexpr,\n"
                        "    PRE_ROW, PRE_LO, PRE_FLO, PRE_FHI, PRE_HI, PRE: tl.constexpr,\n):", 1)
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
    # every caller passes them: the band kernel its own, the others none
    out, pos = [], 0
    band_start, band_end = function_span(src, band)
    for hit in re.finditer(rf"{keys}\(", src):
        if src[hit.start() - 4:hit.start()] == "def ":
            continue
        close = _call_end(src, hit.end() - 1)
        own = band_start <= hit.start() < band_end
        out.append(src[pos:close])
        out.append(", pre_row, pre_lo, pre_flo, pre_fhi, pre_hi, True" if own
                   else ", 0, 0, 0, 0, 0, False")
        pos = close
    src = "".join(out) + src[pos:]
    start, end = function_span(src, band)
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


def main():
    args = parser().parse_args()
    for mod, gen, q, k, v, _ in each_head_dim(args):
        rec = RecordedForward(gen, mod, q, k, v)
        print("   recorded: " + ", ".join(rec.names()))
        with open(gen.__file__) as f:
            src = f.read()
        variants = {"as is": (rec, rec.variant())}
        for tag, last in (("bounds first", False), ("bounds first, queries last", True)):
            band = [n for n in rec.names() if n.startswith("_fwd_") and "one" not in n]
            name = "prologue_" + tag.replace(" ", "_").replace(",", "")
            patched = load_source(patch(src, band[-1], last), f"{name}_{os.getpid()}")
            launches = [(getattr(patched, _name(kernel)) if _name(kernel) == band[-1] else kernel,
                         grid, a, o) for kernel, grid, a, o in rec.launches]
            variants[tag] = (rec, launches)
        check(variants, 28)
        if args.cpu:
            continue
        report(variants, args.rounds, "forward", 28)


if __name__ == "__main__":
    main()
