"""The d = 64 band forward's key loop in four shapes, as a standalone Triton kernel, against
attnlang's own forward (round 41: is its loop the best Triton can do?).

The kernel computes `causal & window(W, 0)` (B = 1, 16 heads, bf16, 64-query blocks) the way the
generated forward does -- K and V through tensor descriptors, the full blocks in one loop with no
mask, the band's two partial blocks in a second, masked loop -- and its ``LOOP`` variants change
only the loop:

- 0 ``plain``: as attnlang (its output equals attnlang's bit for bit: printed);
- 1 ``prefetch``: QK^T of the next key block issued before the softmax of the current one (the
  FlashAttention-3 overlap within a warpgroup; ptxas then interleaves the exponentials with the
  next block's wgmma), the last block peeled;
- 2 ``one loop``: every block in one loop, the mask applied in a branch on partial blocks (one
  pipeline fill per program instead of two);
- 3 ``all masked``: one loop, every block masked.

Each variant is checked against SDPA with the dense mask (2 heads at 8k), then all, attnlang
included, are timed in interleaved rounds (`do_bench` medians) at 32k tokens:

    python benchmarks/ab_band_loop.py [--n 32768] [--rounds 5] [--window 1023]

With ``--strips S1,S2,...`` (round 48) the variants are instead programs that each take S
consecutive query blocks of a head in one flattened loop (`band_strip_forward`): the key loads
run on from one query block to the next, and a program's start and end are paid once per strip
instead of once per block (S = 1 is the per-block loop, every block masked). ``--dim`` sets the
head dim, ``--cpu`` checks them in Triton's interpreter against float64 (small sizes, no
timing):

    python benchmarks/ab_band_loop.py --n 8192 --dim 128 --window 127 --strips 1,2,4,8
    python benchmarks/ab_band_loop.py --cpu --strips 1,2,3
"""
import argparse
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench  # noqa: E402


@triton.jit
def _step(s, m_i, l_i, acc, v, qk_scale):
    """One online-softmax step on scores s (masked entries already -inf)."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s * qk_scale - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _band_mask(s, offs_m, n, N, W: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
    diff = offs_m[:, None] - offs_n[None, :]
    keep = (diff >= 0) & (diff <= W) & (offs_n[None, :] < N)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def band_forward(Q, K, V, O, N, qk_scale, W: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, D: tl.constexpr, LOOP: tl.constexpr):
    pid = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * D
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])
    k_desc = tl.make_tensor_descriptor(K + base, shape=[N, D], strides=[D, 1],
                                       block_shape=[BLOCK_N, D])
    v_desc = tl.make_tensor_descriptor(V + base, shape=[N, D], strides=[D, 1],
                                       block_shape=[BLOCK_N, D])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    q_lo = pid * BLOCK_M
    lo = tl.maximum(q_lo - W, 0) // BLOCK_N  # the first block with a kept pair
    hi = (q_lo + BLOCK_M - 1) // BLOCK_N + 1  # past the last
    fhi = (q_lo + 1) // BLOCK_N  # blocks below fhi end at or before the first query
    flo = tl.minimum(tl.maximum(q_lo + BLOCK_M - 1 - W + BLOCK_N - 1, 0) // BLOCK_N, fhi)
    if LOOP == 2:
        for n in range(lo, hi):
            k = k_desc.load([n * BLOCK_N, 0])
            v = v_desc.load([n * BLOCK_N, 0])
            s = tl.dot(q, tl.trans(k))
            if (n < flo) | (n >= fhi):
                s = _band_mask(s, offs_m, n, N, W, BLOCK_N)
            m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
    elif LOOP == 3:
        for n in range(lo, hi):
            k = k_desc.load([n * BLOCK_N, 0])
            v = v_desc.load([n * BLOCK_N, 0])
            s = _band_mask(tl.dot(q, tl.trans(k)), offs_m, n, N, W, BLOCK_N)
            m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
    else:
        if LOOP == 1:
            if flo < fhi:
                s = tl.dot(q, tl.trans(k_desc.load([flo * BLOCK_N, 0])))
                for n in range(flo, fhi - 1):
                    v = v_desc.load([n * BLOCK_N, 0])
                    s_next = tl.dot(q, tl.trans(k_desc.load([(n + 1) * BLOCK_N, 0])))
                    m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
                    s = s_next
                v = v_desc.load([(fhi - 1) * BLOCK_N, 0])
                m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
        else:
            for n in range(flo, fhi):
                k = k_desc.load([n * BLOCK_N, 0])
                v = v_desc.load([n * BLOCK_N, 0])
                m_i, l_i, acc = _step(tl.dot(q, tl.trans(k)), m_i, l_i, acc, v, qk_scale)
        before = flo - lo
        for t in range(0, before + hi - fhi):  # both partial runs in one loop (':j')
            n = lo + t + (t >= before).to(tl.int32) * (fhi - flo)
            k = k_desc.load([n * BLOCK_N, 0])
            v = v_desc.load([n * BLOCK_N, 0])
            s = _band_mask(tl.dot(q, tl.trans(k)), offs_m, n, N, W, BLOCK_N)
            m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
    out = acc / l_i[:, None]
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty))


@triton.jit
def band_strip_forward(Q, K, V, O, N, qk_scale, W: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, D: tl.constexpr, STRIP: tl.constexpr,
                       NKB: tl.constexpr):
    """`causal & window(W, 0)` for STRIP consecutive query blocks of one head in one loop of
    STRIP * NKB trips (NKB: the key blocks a query block spans, the same for every block since
    BLOCK_M is a multiple of BLOCK_N): the running softmax restarts at each block's first trip
    and the output is written at its last.  Q is loaded on every trip (from L2 after the
    first), so that every load is a plain one the pipeliner can issue ahead."""
    pid = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * D
    offs_d = tl.arange(0, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    lift: tl.constexpr = W // BLOCK_N + 1  # keeps the division below on non-negative numbers
    for t in range(0, STRIP * NKB):
        qb = pid * STRIP + t // NKB
        kk = t % NKB
        offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < N,
                    other=0.0)
        n = (qb * BLOCK_M - W + lift * BLOCK_N) // BLOCK_N - lift + kk
        offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = (offs_n >= 0) & (offs_n < N)
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=inside[:, None],
                    other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=inside[:, None],
                    other=0.0)
        diff = offs_m[:, None] - offs_n[None, :]
        keep = (diff >= 0) & (diff <= W) & inside[None, :]
        s = tl.where(keep, tl.dot(q, tl.trans(k)), float("-inf"))
        # a block's first trip: the running maximum forgotten, so that `_step` scales the
        # previous block's sum and accumulator by exp2(-inf) = 0
        m_i = tl.where(kk == 0, float("-inf"), m_i)
        m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
        if kk == NKB - 1:
            out = acc / l_i[:, None]
            tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
                     mask=offs_m[:, None] < N)


def strip_forward(q, k, v, window, strip, stages=3, maxnreg=None, block_m=64, block_n=32):
    """`band_strip_forward` over q, k, v ([B, H, N, D], contiguous)."""
    B, H, N, D = q.shape
    o = torch.empty_like(q)
    nkb = ((-window) % block_n + block_m + window + block_n - 1) // block_n
    grid = (triton.cdiv(triton.cdiv(N, block_m), strip), B * H)
    options = dict(num_warps=4, num_stages=stages)
    if maxnreg:
        options["maxnreg"] = maxnreg
    band_strip_forward[grid](q, k, v, o, N, D ** -0.5 * 1.4426950408889634, window, block_m,
                             block_n, D, strip, nkb, **options)
    return o


def _band(window):
    """The attnlang pattern `causal & window(window, 0)`."""
    import attnlang

    return attnlang.parse(f"pattern x = causal & window({window}, 0)")["x"]


def _band_reference(q, k, v, window):
    """attnlang's float64 reference output under `causal & window(window, 0)`."""
    from attnlang import reference

    mask = reference.mask(_band(window).ir, q.shape[2])
    return reference.attention(q.double(), k.double(), v.double(), mask)[0]


def _sdpa_band(q, k, v, window):
    """(the first two heads of the first batch's first 8k tokens of q, k, v, SDPA's output on
    them with the dense mask of `causal & window(window, 0)`): what each variant is checked
    against on the GPU."""
    small = [t[:1, :2, :8192].contiguous() for t in (q, k, v)]
    i = torch.arange(small[0].shape[2], device=q.device)
    keep = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= window)
    return small, torch.nn.functional.scaled_dot_product_attention(*small, attn_mask=keep)


def check_strips_cpu(strips):
    """The strip kernel in the interpreter against float64: lengths that are and are not
    multiples of the block, a window narrower and wider than a block."""
    gen = torch.Generator().manual_seed(0)
    for n, window in ((320, 127), (200, 40), (130, 7)):
        q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for _ in range(3))
        ref = _band_reference(q, k, v, window)
        for strip in strips:
            err = (strip_forward(q, k, v, window, strip).double() - ref).abs().max().item()
            print(f"n={n} window={window} strip {strip}: max |error| against float64 {err:.1e}")
            assert err < 1e-4, err


def time_strips(args):
    """Each strip variant checked against SDPA with the dense mask (2 heads at 8k), then timed
    in interleaved rounds against attnlang's forward of the same pattern."""
    W, D, gen = args.window, args.dim, torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2 if args.n <= 8192 else 1, 16, args.n, D, device="cuda",
                           dtype=torch.bfloat16, generator=gen) for _ in range(3))
    small, ref = _sdpa_band(q, k, v, W)
    # (at d = 128 uncapped: 215-242 registers, two programs a multiprocessor; capped at 168 no
    # spills, three at two stages: compile_check's ptxas, Triton 3.6)
    variants = {f"strip {s} s{st}" + (f" n{reg}" if reg else ""): (s, st, reg)
                for s in args.strips for st, reg in ((2, None), (2, 168), (3, 168))}
    for name, variant in variants.items():
        err = (strip_forward(*small, W, *variant).float() - ref.float()).abs().max().item()
        print(f"{name:16s} max |error| against SDPA {err:.2e}")
    module = _band(W).module(backend="triton")
    err = (module(*small).float() - ref.float()).abs().max().item()
    print(f"{'attnlang':16s} max |error| against SDPA {err:.2e}")
    fns = {"attnlang": lambda: module(q, k, v)}
    fns.update({name: (lambda variant=variant: strip_forward(q, k, v, W, *variant))
                for name, variant in variants.items()})
    _time_interleaved(fns, args.rounds, f"ms at n={args.n}, d={D}, {tuple(q.shape[:2])} batch x "
                      "heads, rounds interleaved:")


def _time_interleaved(fns, rounds, header):
    """Every entry of ``fns`` ({name: fn}) timed once a round (`do_bench` medians, 300 ms each),
    then the rounds and each entry's best printed under ``header``."""
    from attnlang.bench import time_in_rounds

    times = time_in_rounds({name: (fn, None) for name, fn in fns.items()}, rounds, 50,
                           300 * rounds, do_bench)
    print(header)
    for name, ts in times.items():
        print(f"{name:16s} " + " ".join(f"{t:.3f}" for t in ts) + f"   best {min(ts):.3f}")


VARIANTS = [  # name, LOOP, block_n, num_stages, maxnreg
    ("plain n96", 0, 64, 2, 96), ("plain", 0, 64, 2, None), ("prefetch", 1, 64, 2, None),
    ("prefetch n128", 1, 64, 2, 128), ("prefetch s3", 1, 64, 3, None),
    ("one loop n96", 2, 64, 2, 96), ("one loop", 2, 64, 2, None),
    ("all masked n96", 3, 64, 2, 96), ("64x32 s3", 0, 32, 3, None),
    ("64x32 s3 n80", 0, 32, 3, 80)]


def forward(q, k, v, window, loop, block_n, stages, maxnreg):
    B, H, N, D = q.shape
    assert B == 1 and N % 64 == 0
    o = torch.empty_like(q)
    options = dict(num_warps=4, num_stages=stages)
    if maxnreg:
        options["maxnreg"] = maxnreg
    band_forward[(N // 64, H)](q, k, v, o, N, D ** -0.5 * 1.4426950408889634, window, 64,
                               block_n, D, loop, **options)
    return o


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=1023)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--strips", type=lambda text: [int(s) for s in text.split(",")],
                        help="time strip variants (band_strip_forward) instead of the loops")
    parser.add_argument("--cpu", action="store_true", help="with --strips: the checks only, "
                        "in Triton's interpreter")
    args = parser.parse_args()
    if args.strips and args.cpu:
        return check_strips_cpu(args.strips)
    if args.strips:
        return time_strips(args)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device="cuda"))
    W, gen = args.window, torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 16, args.n, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    small, ref = _sdpa_band(q, k, v, W)
    for name, *variant in VARIANTS:
        err = (forward(*small, W, *variant).float() - ref.float()).abs().max().item()
        print(f"{name:16s} max |error| against SDPA {err:.2e}")
    module = _band(W).module(backend="triton")
    same = torch.equal(module(q, k, v), forward(q, k, v, W, *VARIANTS[0][1:]))
    print(f"attnlang's output equals 'plain n96' bit for bit: {same}")
    fns = {"attnlang": lambda: module(q, k, v)}
    fns.update({name: (lambda variant=variant: forward(q, k, v, W, *variant))
                for name, *variant in VARIANTS})
    _time_interleaved(fns, args.rounds, f"ms at n={args.n}, d=64, 16 heads, rounds interleaved:")


if __name__ == "__main__":
    main()
