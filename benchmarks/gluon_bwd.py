"""Experiment (round 19): a FlashAttention-3-style backward written in Gluon -- five products per
tile, dQ added up in float32 by a warp of its own -- against attnlang's two-kernel backward
(seven products), for band patterns (keys i - back <= j <= i + ahead: causal, `all`, windows).

One program per (key block of BN = 128 keys, head): K and V stay in shared memory; a loader warp
streams (Q, dO) tiles of BM = 64 queries through a ring of two; the 8 compute warps (two
warpgroups of 64 keys) do S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q and
dQ_part = dS K, and hand dQ_part over shared memory to a writer warp, which adds it to a float32
dQ with vector `red` instructions (`atomic_add` compiles to `atom`, whose returned values the
writer's 24 registers could not keep many of in flight: d = 64 ran at 0.55x attnlang's
backward, results/gluon_bwd_r19b.log).  Not part of attnlang: Triton's interpreter cannot run
Gluon, so this kernel is checked on the GPU only (the small checks below against a float32
autograd reference, and against attnlang's own gradients at the timed sizes).

    python benchmarks/gluon_bwd.py [128] [64]   # on the GPU machine: checks, then timings
    python benchmarks/gluon_compile.py           # anywhere, with Triton 3.6: sm_90 compile

Results: results/gluon_bwd_r19a.log (first version, causal and `all`, d = 128),
gluon_bwd_r19b.log (bands, both head dims, FlexAttention in the same run; `atomic_add`),
gluon_bwd_r19c.log (the writer on `red`), gluon_bwd_r19d.log (this script as committed: its
"v1" column; the "gluon" column there is a variant with one partition per warpgroup, slower and
not kept; NOTES round 19)."""
import math
import sys

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634


@gluon.constexpr_function
def _wgmma_layout(warps_m, warps_n, n):
    """The register layout of a wgmma result: warps over [rows, columns], n columns per
    instruction."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps_m, warps_n],
                                     instr_shape=[16, n, 16])


@gluon.jit
def _loader(descs, bufs, bars, row0, key0, lo, hi, BM: gl.constexpr):
    q_desc, k_desc, v_desc, do_desc = descs
    k_smem, v_smem, q_bufs, do_bufs = bufs
    kv_bar, ready, empty = bars
    STAGES: gl.constexpr = q_bufs.type.shape[0]
    mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [row0 + key0, 0], kv_bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [row0 + key0, 0], kv_bar, v_smem)
    for i in range(hi - lo):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        bar = ready.index(s)
        mbarrier.expect(bar, 2 * q_desc.block_type.nbytes)
        r = row0 + (lo + i) * BM
        tma.async_copy_global_to_shared(q_desc, [r, 0], bar, q_bufs.index(s))
        tma.async_copy_global_to_shared(do_desc, [r, 0], bar, do_bufs.index(s))


@gluon.jit
def _red_add(ptrs, values):
    """values added to *ptrs by `red` (no value returned, so nothing waits for the memory
    system), four consecutive floats per instruction."""
    gl.inline_asm_elementwise(
        "red.global.gpu.relaxed.add.v4.f32 [$4], {$8, $9, $10, $11};\n\t"
        "mov.u32 $0, 0;\n\tmov.u32 $1, 0;\n\tmov.u32 $2, 0;\n\tmov.u32 $3, 0;",
        "=r,=r,=r,=r,l,l,l,l,r,r,r,r", [ptrs.to(gl.int64), values.to(gl.int32, bitcast=True)],
        dtype=gl.int32, is_pure=False, pack=4)


@gluon.jit
def _dq_writer(dq_bufs, dq_ready, dq_empty, dq_ptr, row0, lo, hi, BM: gl.constexpr,
               D: gl.constexpr):
    COLS: gl.constexpr = D // 4  # threads along a row, four floats each
    ROWS: gl.constexpr = 32 // COLS  # rows per instruction of the warp: each element once
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [ROWS, COLS], [1, 1], [1, 0])
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, layout))
    rows = gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    for i in range(hi - lo):
        b = i % 2
        mbarrier.wait(dq_ready.index(b), (i // 2) & 1)
        buf = dq_bufs.index(b)
        base = dq_ptr + (row0 + (lo + i) * BM).to(gl.int64) * D
        for r in gl.static_range(0, BM, ROWS):
            part = buf.slice(r, ROWS, dim=0).load(layout)
            _red_add(base + (r + rows)[:, None] * D + cols[None, :], part)
        mbarrier.arrive(dq_empty.index(b), count=1)


@gluon.jit
def _tile(i, lo, dk, dv, bufs, bars, lse_ptr, delta_ptr, row0, key0, left, right, qk_scale,
          sm_scale, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    """Query tile i of this key block: its five products, dQ handed to the writer warp.
    (Issuing the next tile's S^T before waiting for this tile's products, carried across
    iterations, made ptxas serialise every wgmma: C7514.)"""
    k_smem, v_smem, q_bufs, do_bufs, ds_smem, dq_bufs = bufs
    kv_bar, ready, empty, dq_ready, dq_empty = bars
    STAGES: gl.constexpr = q_bufs.type.shape[0]
    s_layout: gl.constexpr = _wgmma_layout(8, 1, BM)
    kv_layout: gl.constexpr = _wgmma_layout(8, 1, D)
    dq_layout: gl.constexpr = _wgmma_layout(4, 2, D // 2)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    s = i % STAGES
    m0 = (lo + i) * BM
    cols = gl.arange(0, BM, layout=gl.SliceLayout(0, s_layout))
    q_s = q_bufs.index(s)
    do_s = do_bufs.index(s)
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
    st = warpgroup_mma(k_smem, q_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, s_layout),
                       use_acc=False, is_async=True)
    dpt = warpgroup_mma(v_smem, do_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, s_layout),
                        use_acc=False, is_async=True)
    lse = gl.load(lse_ptr + row0 + m0 + cols)
    delta = gl.load(delta_ptr + row0 + m0 + cols)
    st = warpgroup_mma_wait(1, deps=(st,))
    pt = gl.exp2(st * qk_scale - lse[None, :])
    # the tile is partial where some query row's band does not cover the whole key block
    if (m0 + BM - 1 - left > key0) | (key0 + BN - 1 > m0 + right):
        keys = key0 + gl.arange(0, BN, layout=gl.SliceLayout(1, s_layout))
        diff = keys[:, None] - (m0 + cols)[None, :]
        pt = gl.where((diff >= -left) & (diff <= right), pt, 0.0)
    pa = gl.convert_layout(pt.to(gl.bfloat16), a_layout)
    dv = warpgroup_mma(pa, do_s, dv, is_async=True)
    dpt = warpgroup_mma_wait(1, deps=(dpt,))
    ds = (pt * (dpt - delta[None, :])).to(gl.bfloat16)
    dsa = gl.convert_layout(ds, a_layout)
    dk = warpgroup_mma(dsa, q_s, dk, is_async=True)
    gl.thread_barrier()  # every warpgroup's dQ product of the previous tile has read ds_smem
    ds_smem.store(ds)
    fence_async_shared()
    gl.thread_barrier()
    dq = warpgroup_mma(ds_smem.permute((1, 0)), k_smem,
                       gl.zeros([BM, D], gl.float32, dq_layout), use_acc=False, is_async=True)
    dv, dk, dq, pa, dsa = warpgroup_mma_wait(0, deps=(dv, dk, dq, pa, dsa))
    mbarrier.arrive(empty.index(s), count=1)
    b = i % 2
    mbarrier.wait(dq_empty.index(b), ((i // 2) & 1) ^ 1)
    dq_bufs.index(b).store(dq * sm_scale)
    mbarrier.arrive(dq_ready.index(b), count=1)
    return dk, dv


@gluon.jit
def _compute(bufs, bars, lse_ptr, delta_ptr, dk_desc, dv_desc, row0, key0, lo, hi, left, right,
             qk_scale, sm_scale, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    k_smem, v_smem, q_bufs, do_bufs, ds_smem, dq_bufs = bufs
    kv_bar, ready, empty, dq_ready, dq_empty = bars
    kv_layout: gl.constexpr = _wgmma_layout(8, 1, D)
    dk = gl.zeros([BN, D], gl.float32, kv_layout)
    dv = gl.zeros([BN, D], gl.float32, kv_layout)
    mbarrier.wait(kv_bar, 0)
    for i in range(hi - lo):
        dk, dv = _tile(i, lo, dk, dv, bufs, bars, lse_ptr, delta_ptr, row0, key0, left, right,
                       qk_scale, sm_scale, BM, BN, D)
    dk = dk * sm_scale
    k_smem.store(dk.to(gl.bfloat16))
    v_smem.store(dv.to(gl.bfloat16))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(dk_desc, [row0 + key0, 0], k_smem)
    tma.async_copy_shared_to_global(dv_desc, [row0 + key0, 0], v_smem)
    tma.store_wait(0)


@gluon.jit
def attention_bwd_ws(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, lse_ptr, delta_ptr,
                     dq_ptr, L, left, right, qk_scale, sm_scale, BM: gl.constexpr,
                     BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """Keeps the pairs (query i, key j) with i - left <= j <= i + right."""
    block = gl.program_id(0)
    head = gl.program_id(1)
    row0 = head * L
    key0 = block * BN
    lo = gl.maximum(key0 - right, 0) // BM
    hi = gl.cdiv(gl.minimum(key0 + BN + left, L), BM)

    k_smem = gl.allocate_shared_memory(gl.bfloat16, [BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [BN, D], v_desc.layout)
    q_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, D], q_desc.layout)
    do_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, D], do_desc.layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], gl.bfloat16)
    ds_smem = gl.allocate_shared_memory(gl.bfloat16, [BN, BM], ds_layout)
    dq_layout: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[D, 8]], [BM, D], [1, 0])
    dq_bufs = gl.allocate_shared_memory(gl.float32, [2, BM, D], dq_layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    dq_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    dq_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for j in gl.static_range(STAGES):
        mbarrier.init(ready.index(j), count=1)
        mbarrier.init(empty.index(j), count=1)
    for j in gl.static_range(2):
        mbarrier.init(dq_ready.index(j), count=1)
        mbarrier.init(dq_empty.index(j), count=1)

    bufs = (k_smem, v_smem, q_bufs, do_bufs, ds_smem, dq_bufs)
    bars = (kv_bar, ready, empty, dq_ready, dq_empty)
    gl.warp_specialize([
        (_compute, (bufs, bars, lse_ptr, delta_ptr, dk_desc, dv_desc, row0, key0, lo, hi,
                    left, right, qk_scale, sm_scale, BM, BN, D)),
        (_loader, ((q_desc, k_desc, v_desc, do_desc), (k_smem, v_smem, q_bufs, do_bufs),
                   (kv_bar, ready, empty), row0, key0, lo, hi, BM)),
        (_dq_writer, (dq_bufs, dq_ready, dq_empty, dq_ptr, row0, lo, hi, BM, D)),
    ], [1, 1], [24, 24])


@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, D: tl.constexpr, ROWS: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, D)
    o = tl.load(o_ptr + r[:, None] * D + c[None, :]).to(tl.float32)
    do = tl.load(do_ptr + r[:, None] * D + c[None, :]).to(tl.float32)
    tl.store(delta_ptr + r, tl.sum(o * do, axis=1))


def layouts(BM, BN, D):
    return (gl.NVMMASharedLayout.get_default_for([BM, D], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([BN, D], gl.bfloat16))


def backward(q, k, v, o, do, lse, sm_scale, left, right, BM=64, BN=128, STAGES=2, maxnreg=168):
    """dQ, dK, dV of softmax(scale Q K^T, keeping i - left <= j <= i + right) V, for ``lse`` the
    rows' natural log-sum-exp of the kept scaled scores.  q, k, v, o, do: [B, H, L, D] bf16,
    contiguous."""
    B, H, L, D = q.shape
    assert L % BN == 0 and L % BM == 0
    rows = B * H * L
    flat = [t.reshape(rows, D) for t in (q, k, v, o, do)]
    delta = torch.empty(rows, device=q.device, dtype=torch.float32)
    _delta_kernel[(rows // 64,)](flat[3], flat[4], delta, D, 64)
    dq_acc = torch.zeros(rows, D, device=q.device, dtype=torch.float32)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    lay_q, lay_k = layouts(BM, BN, D)
    q_desc = TensorDescriptor(flat[0], [rows, D], [D, 1], [BM, D], lay_q)
    do_desc = TensorDescriptor(flat[4], [rows, D], [D, 1], [BM, D], lay_q)
    k_desc = TensorDescriptor(flat[1], [rows, D], [D, 1], [BN, D], lay_k)
    v_desc = TensorDescriptor(flat[2], [rows, D], [D, 1], [BN, D], lay_k)
    dk_desc = TensorDescriptor(dk.view(rows, D), [rows, D], [D, 1], [BN, D], lay_k)
    dv_desc = TensorDescriptor(dv.view(rows, D), [rows, D], [D, 1], [BN, D], lay_k)
    lse2 = (lse.reshape(rows).float() * LOG2E).contiguous()
    attention_bwd_ws[(L // BN, B * H)](
        q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, lse2, delta, dq_acc, L, left, right,
        sm_scale * LOG2E, sm_scale, BM, BN, D, STAGES, num_warps=8, maxnreg=maxnreg)
    return dq_acc.view(B, H, L, D).to(q.dtype), dk, dv


def band(L, left, right, device, rows=None):
    i = torch.arange(L, device=device)[:, None] if rows is None else rows[:, None]
    d = i - torch.arange(L, device=device)[None, :]
    return (d <= left) & (d >= -right)


def reference(q, k, v, left, right, sm_scale, chunk=2048):
    """O and the rows' log-sum-exp in float32, by chunks of queries."""
    B, H, L, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    kf, vf = k.float(), v.float()
    for s in range(0, L, chunk):
        sc = q[:, :, s:s + chunk].float() @ kf.transpose(-1, -2) * sm_scale
        keep = band(L, left, right, q.device, torch.arange(s, min(s + chunk, L), device=q.device))
        sc.masked_fill_(~keep, float("-inf"))
        lse[:, :, s:s + chunk] = torch.logsumexp(sc, -1)
        o[:, :, s:s + chunk] = (torch.softmax(sc, -1) @ vf).to(q.dtype)
    return o, lse


def max_rel(x, ref):
    """Largest absolute difference, relative to the reference's largest magnitude."""
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def check(L, left, right, B=1, H=2, D=128):
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = 1 / math.sqrt(D)
    o, lse = reference(q, k, v, left, right, scale)
    dq, dk, dv = backward(q, k, v, o, do, lse, scale, left, right)
    qf, kf, vf = (t.float().requires_grad_(True) for t in (q, k, v))
    sc = (qf @ kf.transpose(-1, -2) * scale).masked_fill(~band(L, left, right, "cuda"),
                                                          float("-inf"))
    (torch.softmax(sc, -1) @ vf).backward(do.float())
    errs = [max_rel(a, b.grad) for a, b in ((dq, qf), (dk, kf), (dv, vf))]
    print(f"check L={L} B={B} H={H} D={D} band=({left}, {right}): rel max err dq {errs[0]:.2e} "
          f"dk {errs[1]:.2e} dv {errs[2]:.2e}", flush=True)
    return max(errs) < 2e-2


PATTERNS = {  # attnlang text: (back, ahead) as a function of L
    "causal": lambda L: (L, 0),
    "all": lambda L: (L, L),
    "causal & window(1023, 0)": lambda L: (1023, 0),
    "window(512)": lambda L: (512, 512),
}


def main():
    from triton.testing import do_bench
    import attnlang
    from attnlang.bench import SUITE  # the benchmark's FlexAttention masks
    torch._dynamo.config.cache_size_limit = 1000
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    ok = True
    for D in (128, 64):
        for L, (left, right) in ((1024, (1024, 0)), (1024, (1024, 1024)), (1024, (100, 37)),
                                 (768, (5, 300))):
            ok &= check(L, left, right, D=D)
        ok &= check(2048, 2048, 0, B=2, H=3, D=D)
    print("checks", "ok" if ok else "FAILED", flush=True)
    dims = [int(a) for a in sys.argv[1:]] or [128, 64]
    for D in dims:
        for L, B in ((8192, 2), (32768, 1)):
            H = 16
            q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                           for _ in range(4))
            scale = 1 / math.sqrt(D)
            for text, lr in PATTERNS.items():
                left, right = lr(L)
                o, lse = reference(q, k, v, left, right, scale)
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                mod = pattern.module(backend="triton")
                qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                mod(qg, kg, vg).backward(do)
                gq, gk, gv = backward(q, k, v, o, do, lse, scale, left, right)
                diffs = [max_rel(a, b.grad) for a, b in ((gq, qg), (gk, kg), (gv, vg))]

                def step():
                    mod(qg, kg, vg).backward(do)
                t_fwd = do_bench(lambda: mod(q, k, v), warmup=25, rep=200)
                t_step = do_bench(step, warmup=25, rep=200, grad_to_none=[qg, kg, vg])
                t_g = do_bench(lambda: backward(q, k, v, o, do, lse, scale, left, right),
                               warmup=25, rep=200)
                t_flex = float("nan")
                if text != "all":
                    bm = create_block_mask(SUITE[text](None), None, None, L, L, device="cuda")

                    def fstep():
                        flex(qg, kg, vg, block_mask=bm).backward(do)
                    fstep()
                    t_flex = do_bench(fstep, warmup=25, rep=200, grad_to_none=[qg, kg, vg])
                flops = 4.0 * D * pattern.plan(L, L).kept_pairs * B * H
                new = t_fwd + t_g
                print(f"{text:24s} L={L:6d} D={D:3d} grads vs attnlang {max(diffs):.1e} | "
                      f"attnlang fwd {t_fwd:.3f} bwd {t_step - t_fwd:.3f} | gluon bwd {t_g:.3f} "
                      f"({(t_step - t_fwd) / t_g:.2f}x) | fwd+bwd TFLOP/s now "
                      f"{3.5 * flops / t_step / 1e9:.0f} gluon {3.5 * flops / new / 1e9:.0f} flex "
                      f"{3.5 * flops / t_flex / 1e9:.0f} | vs flex now {t_flex / t_step:.2f}x "
                      f"gluon {t_flex / new:.2f}x", flush=True)
                del qg, kg, vg
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
