"""Rows of one key block: the strided pattern's residue classes as a standalone Triton forward,
one program per class against persistent programs that load the next class while computing this
one (NOTES round 42; the 8k rows of `causal & (window(127, 0) | stride(128))`).

`causal & stride(S)` at L tokens splits each head into S residue classes of C = L / S tokens
(queries and keys r, r + S, r + 2S, ...), each a causal C x C attention: at 8k tokens and
S = 128 that is 128 classes of 64 tokens a head, one 64 x 64 block each, 4096 blocks at the
benchmark's 2 x 16 heads.  A class's tile of Q (K, V, O) is rows [bh C, bh C + C) and columns
[r D, r D + D) of the tensor viewed as [B H C, S D], so it loads as one block (a pointer tile, or
a tensor descriptor's box).  Variants:

- ``one``: one program per class (the generated kernel's shape for such rows);
- ``persistent``: a grid of ``PROGRAMS`` programs a multiprocessor, each looping over classes
  (`tl.range`, ``STAGES`` stages: the next class's tiles load during this one's products);
- ``:d`` of either: Q, K, V read and O written through tensor descriptors.

The strided pattern's other component, `causal & window(127, 0)` (three key blocks a 64-query
block), runs as ``band one`` (one program per query block, every block masked) and ``band
persistent`` (programs looping over query blocks; ``flat`` asks Triton to flatten the two loops).

The whole pattern, `causal & (window(127, 0) | stride(128))`, runs as the lean band followed by
the classes without their diagonal (``MERGE``: merged into the band's output and log-sum-exp),
against attnlang's forward of the pattern (``--groups`` picks the comparisons).

Each is checked against a float64 reference from the dense mask (two heads) and against
attnlang's own forward of the same pattern; then all are timed in interleaved rounds
(`do_bench` medians):

    python benchmarks/ab_short_rows.py [--n 8192] [--stride 128] [--dims 128,64] [--rounds 3]
        [--groups stride,window,union]
    python benchmarks/ab_short_rows.py --cpu     # the pointer variants in Triton's interpreter
"""
import argparse
import math
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from ab_band_loop import _step  # noqa: E402


@triton.jit
def _class_block(q, k, v, qk_scale, C: tl.constexpr, STRICT: tl.constexpr):
    """Causal attention of one class's C x C block (STRICT: without its diagonal, which another
    component holds): (out, log-sum-exp in natural units; -inf on rows with no key)."""
    s = tl.dot(q, tl.trans(k)) * qk_scale
    t = tl.arange(0, C)
    keep = t[:, None] > t[None, :] if STRICT else t[:, None] >= t[None, :]
    s = tl.where(keep, s, float("-inf"))
    m = tl.max(s, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp2(s - m[:, None])
    l_i = tl.sum(p, 1)
    out = tl.dot(p.to(v.dtype), v) / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    return out, tl.where(l_i == 0.0, float("-inf"), (m + tl.log2(l_i)) * 0.6931471805599453)


@triton.jit
def _tile_ptrs(T, bh, r, S: tl.constexpr, C: tl.constexpr, D: tl.constexpr):
    """Pointers of class r's [C, D] tile of head bh in a contiguous [B, H, C S, D] tensor."""
    rows = bh.to(tl.int64) * C + tl.arange(0, C)
    return T + rows[:, None] * (S * D) + r * D + tl.arange(0, D)[None, :]


@triton.jit
def _class_view(T, tiles, S: tl.constexpr, C: tl.constexpr, D: tl.constexpr):
    """A descriptor over a [B, H, C S, D] tensor viewed as [B H C, S D]: a class's tile is one
    box."""
    return tl.make_tensor_descriptor(T, shape=[tiles // S * C, S * D], strides=[S * D, 1],
                                     block_shape=[C, D])


@triton.jit
def short_rows_forward(Q, K, V, O, LSE, tiles, qk_scale, S: tl.constexpr, C: tl.constexpr,
                       D: tl.constexpr, DESC: tl.constexpr, PERSISTENT: tl.constexpr,
                       STAGES: tl.constexpr, MERGE: tl.constexpr):
    """MERGE: O and LSE hold another component's result (rows with keys at every position),
    which this one's, without the diagonal, is merged into."""
    if DESC:
        q_desc = _class_view(Q, tiles, S, C, D)
        k_desc = _class_view(K, tiles, S, C, D)
        v_desc = _class_view(V, tiles, S, C, D)
        o_desc = _class_view(O, tiles, S, C, D)
    first, step = tl.program_id(0), 1
    if PERSISTENT:
        step = tl.num_programs(0)
    else:
        tiles = first + 1
    for tile in tl.range(first, tiles, step, num_stages=STAGES):
        bh = tile // S
        r = tile % S
        if DESC:
            q = q_desc.load([bh * C, r * D])
            k = k_desc.load([bh * C, r * D])
            v = v_desc.load([bh * C, r * D])
        else:
            q = tl.load(_tile_ptrs(Q, bh, r, S, C, D))
            k = tl.load(_tile_ptrs(K, bh, r, S, C, D))
            v = tl.load(_tile_ptrs(V, bh, r, S, C, D))
        out, lse = _class_block(q, k, v, qk_scale, C, MERGE)
        lse_ptrs = LSE + bh.to(tl.int64) * C * S + r + tl.arange(0, C) * S
        if MERGE:
            lse_old = tl.load(lse_ptrs)
            top = tl.maximum(lse_old, lse)
            a = tl.exp(lse_old - top)
            b = tl.exp(lse - top)
            o_old = tl.load(_tile_ptrs(O, bh, r, S, C, D)).to(tl.float32)
            out = (o_old * a[:, None] + out * b[:, None]) / (a + b)[:, None]
            lse = top + tl.log(a + b)
        if DESC:
            o_desc.store([bh * C, r * D], out.to(O.dtype.element_ty))
        else:
            tl.store(_tile_ptrs(O, bh, r, S, C, D), out.to(O.dtype.element_ty))
        tl.store(lse_ptrs, lse)


@triton.jit
def band_forward(Q, K, V, O, LSE, N, tiles, qk_scale, W: tl.constexpr, BLOCK: tl.constexpr,
                 D: tl.constexpr, PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr):
    """`causal & window(W, 0)` (the strided pattern's other component): each query block's
    few key blocks, every one masked; persistent programs loop over query blocks (FLATTEN: the
    two loops as one, so that the next query block's first tiles load during this one's last)."""
    n_qb = N // BLOCK
    first, step = tl.program_id(0), 1
    if PERSISTENT:
        step = tl.num_programs(0)
    else:
        tiles = first + 1
    offs_d = tl.arange(0, D)
    for tile in tl.range(first, tiles, step, flatten=FLATTEN):
        base = (tile // n_qb).to(tl.int64) * N * D
        m = tile % n_qb
        offs_m = m * BLOCK + tl.arange(0, BLOCK)
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])
        m_i = tl.full([BLOCK], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, D], tl.float32)
        for n in tl.range(tl.maximum(m * BLOCK - W, 0) // BLOCK, m + 1):  # (launch's stages)
            offs_n = n * BLOCK + tl.arange(0, BLOCK)
            k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :])
            v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :])
            s = tl.dot(q, tl.trans(k))
            diff = offs_m[:, None] - offs_n[None, :]
            s = tl.where((diff >= 0) & (diff <= W), s, float("-inf"))
            m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
        tl.store(O + base + offs_m[:, None] * D + offs_d[None, :],
                 (acc / l_i[:, None]).to(O.dtype.element_ty))
        tl.store(LSE + (tile // n_qb).to(tl.int64) * N + offs_m,
                 (m_i + tl.log2(l_i)) * 0.6931471805599453)


def _launch_grid(q, tiles, programs):
    """One program per tile, or ``programs`` persistent programs a multiprocessor."""
    if not programs:
        return (tiles,)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 2
    return (min(tiles, programs * sms),)


def band(q, k, v, window, programs=0, stages=2, flatten=False):
    """Output and log-sum-exp of `causal & window(window, 0)` (64-query blocks)."""
    B, H, L, D = q.shape
    assert L % 64 == 0
    o = torch.empty_like(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    tiles = B * H * (L // 64)
    band_forward[_launch_grid(q, tiles, programs)](
        q, k, v, o, lse, L, tiles, 1.4426950408889634 / math.sqrt(D), W=window, BLOCK=64, D=D,
        PERSISTENT=programs > 0, FLATTEN=flatten, num_warps=4, num_stages=stages)
    return o, lse


def forward(q, k, v, stride, desc=False, programs=0, stages=1, into=None):
    """Output and log-sum-exp of `causal & stride(stride)` (every class one block); programs: 0
    for one program per class, else that many persistent programs a multiprocessor.  ``into``:
    (out, lse) of a component holding the diagonal, which this one is merged into."""
    B, H, L, D = q.shape
    C = L // stride
    assert C * stride == L and C in (16, 32, 64, 128), "each class must be one whole block"
    o, lse = into if into is not None else (torch.empty_like(q), torch.empty(
        B, H, L, device=q.device, dtype=torch.float32))
    tiles = B * H * stride
    short_rows_forward[_launch_grid(q, tiles, programs)](
        q, k, v, o, lse, tiles, 1.4426950408889634 / math.sqrt(D), S=stride, C=C, D=D,
        DESC=desc, PERSISTENT=programs > 0, STAGES=stages, MERGE=into is not None, num_warps=4)
    return o, lse


def strided(q, k, v, stride, window, band_stages=2):
    """`causal & (window(window, 0) | stride(stride))` on the two lean kernels: the band, then
    the classes without their diagonal merged into it."""
    return forward(q, k, v, stride, into=band(q, k, v, window, stages=band_stages))


def reference(q, k, v, stride=None, window=None):
    """float64 output and log-sum-exp of `causal & stride(stride)`, `causal & window(window,
    0)` or, given both, `causal & (window(window, 0) | stride(stride))`, from the dense mask."""
    L = q.shape[2]
    i = torch.arange(L, device=q.device)
    diff = i[:, None] - i[None, :]
    keep = torch.zeros_like(diff, dtype=torch.bool)
    if stride is not None:
        keep |= diff % stride == 0
    if window is not None:
        keep |= diff <= window
    keep &= diff >= 0
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v.double(), torch.logsumexp(s, -1)


VARIANTS = [  # name, desc, persistent programs a multiprocessor, stages
    ("one", False, 0, 1), ("one:d", True, 0, 1),
    ("persistent 2x2", False, 2, 2), ("persistent 3x2", False, 3, 2),
    ("persistent:d 2x2", True, 2, 2), ("persistent:d 3x2", True, 3, 2),
    ("persistent:d 2x3", True, 2, 3)]


def _max_error(result, ref):
    """The larger of the output's and the log-sum-exp's max |error| against a reference."""
    return max((x.double() - r).abs().max().item() for x, r in zip(result, ref))


def cpu_check():
    """The pointer variants in Triton's interpreter against the float64 reference."""
    gen = torch.Generator().manual_seed(0)
    for stride, L, D in ((8, 128, 32), (4, 64, 64)):
        q, k, v = (torch.randn(1, 2, L, D, generator=gen) for _ in range(3))
        ref = reference(q, k, v, stride)
        for programs in (0, 1):
            err = _max_error(forward(q, k, v, stride, programs=programs, stages=2), ref)
            print(f"stride {stride} L {L} D {D} programs {programs}: max |error| {err:.1e}")
            assert err < 1e-4
    for stride, window, L, D in ((16, 15, 256, 32), (8, 5, 128, 16)):
        q, k, v = (torch.randn(1, 2, L, D, generator=gen) for _ in range(3))
        err = _max_error(strided(q, k, v, stride, window), reference(q, k, v, stride, window))
        print(f"stride {stride} | window {window} L {L} D {D}: max |error| {err:.1e}")
        assert err < 1e-4
    for window, L, D in ((127, 384, 32), (20, 256, 16)):
        q, k, v = (torch.randn(1, 2, L, D, generator=gen) for _ in range(3))
        ref = reference(q, k, v, window=window)
        for programs in (0, 1):
            err = _max_error(band(q, k, v, window, programs=programs), ref)
            print(f"window {window} L {L} D {D} programs {programs}: max |error| {err:.1e}")
            assert err < 1e-4


def compare(title, module, variants, ref, q, k, v, rounds):
    """Check each variant (name -> fn giving output and log-sum-exp) against the float64
    reference of the first two heads and attnlang's output, then time all in interleaved
    rounds."""
    from triton.testing import do_bench
    ref_o, ref_lse = ref
    base = module(q, k, v)
    print(f"{title}: attnlang's max |error| against float64 "
          f"{(base[:1, :2].double() - ref_o).abs().max().item():.2e}")
    for name, fn in variants.items():
        o, lse = fn()
        err = (o[:1, :2].double() - ref_o).abs().max().item()
        lse_err = (lse[:1, :2].double() - ref_lse).abs().max().item()
        same = (o.float() - base.float()).abs().max().item()
        print(f"  {name:24s} max |error| {err:.2e} (lse {lse_err:.1e}), against attnlang "
              f"{same:.1e}")
    fns = {"attnlang": lambda: module(q, k, v), **variants}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(do_bench(fn, warmup=50, rep=200))
    gbytes = 4 * q.numel() * q.element_size() / 1e9  # Q, K, V read and O written once
    print(f"  ms, rounds interleaved; TB/s if Q, K, V and O move once ({gbytes:.3f} GB):")
    for name, ts in times.items():
        print(f"  {name:24s} " + " ".join(f"{t:.3f}" for t in ts) +
              f"   best {min(ts):.3f}  {gbytes / min(ts):5.2f} TB/s")


BAND_VARIANTS = [  # name, persistent programs a multiprocessor, stages, flatten
    ("band one", 0, 2, False), ("band persistent 2x2", 2, 2, False),
    ("band persistent 2x2 flat", 2, 2, True), ("band one 3", 0, 3, False)]


def main():
    import attnlang
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--window", type=int, default=127)
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--groups", default="stride,window,union",
                        help="which comparisons: the residue classes, the band, the pattern")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.cpu:
        return cpu_check()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device="cuda"))
    S, W = args.stride, args.window
    classes = attnlang.parse(f"pattern x = causal & stride({S})")["x"].module(backend="triton")
    window = attnlang.parse(f"pattern x = causal & window({W}, 0)")["x"].module(backend="triton")
    union = attnlang.parse(f"pattern x = causal & (window({W}, 0) | stride({S}))")["x"].module(
        backend="triton")
    for d in (int(x) for x in args.dims.split(",")):
        batch = max(1, 16384 // args.n)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(batch, 16, args.n, d, device="cuda", dtype=torch.bfloat16,
                               generator=gen) for _ in range(3))
        small = [t[:1, :2] for t in (q, k, v)]
        print(f"n = {args.n}, d = {d}, {batch} x 16 heads")
        groups = args.groups.split(",")
        if "stride" in groups:
            compare(f"causal & stride({S})", classes,
                    {name: (lambda variant=variant: forward(q, k, v, S, *variant))
                     for name, *variant in VARIANTS}, reference(*small, stride=S), q, k, v,
                    args.rounds)
        if "window" in groups:
            compare(f"causal & window({W}, 0)", window,
                    {name: (lambda variant=variant: band(q, k, v, W, *variant))
                     for name, *variant in BAND_VARIANTS}, reference(*small, window=W), q, k,
                    v, args.rounds)
        if "union" in groups:
            compare(f"causal & (window({W}, 0) | stride({S}))", union,
                    {"lean band + classes": lambda: strided(q, k, v, S, W),
                     "lean band 3 + classes": lambda: strided(q, k, v, S, W, 3)},
                    reference(*small, stride=S, window=W), q, k, v, args.rounds)


if __name__ == "__main__":
    main()
