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
"""
import argparse

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


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
    import attnlang
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=1023)
    args = parser.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device="cuda"))
    W, gen = args.window, torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 16, args.n, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    small = [t[:, :2, :8192].contiguous() for t in (q, k, v)]
    i = torch.arange(8192, device="cuda")
    keep = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= W)
    ref = torch.nn.functional.scaled_dot_product_attention(*small, attn_mask=keep)
    for name, *variant in VARIANTS:
        err = (forward(*small, W, *variant).float() - ref.float()).abs().max().item()
        print(f"{name:16s} max |error| against SDPA {err:.2e}")
    module = attnlang.parse(f"pattern x = causal & window({W}, 0)")["x"].module(backend="triton")
    same = torch.equal(module(q, k, v), forward(q, k, v, W, *VARIANTS[0][1:]))
    print(f"attnlang's output equals 'plain n96' bit for bit: {same}")
    fns = {"attnlang": lambda: module(q, k, v)}
    fns.update({name: (lambda variant=variant: forward(q, k, v, W, *variant))
                for name, *variant in VARIANTS})
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name].append(do_bench(fn, warmup=50, rep=300))
    print(f"ms at n={args.n}, d=64, 16 heads, rounds interleaved:")
    for name, ts in times.items():
        print(f"{name:16s} " + " ".join(f"{t:.3f}" for t in ts) + f"   best {min(ts):.3f}")


if __name__ == "__main__":
    main()
