"""Device-side against host-side tensor descriptors against plain loads, in a band-like
attention forward loop (rows of NBLK key blocks, 8k tokens, 32 heads), on a GPU:

    python benchmarks/desc_probe.py

What docs/runtime.md (Tiles, `HOST_DESC`) cites from results/desc_probe_r15.log."""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def fwd(Q, K, V, O, KD, VD, L, NBLK, scale, MODE: tl.constexpr, BM: tl.constexpr,
        BN: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):
    m = tl.program_id(0)
    bh = tl.program_id(1)
    base = bh.to(tl.int64) * L * D
    offs_m = m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])
    nkb = L // BN
    lo = tl.maximum((m * BM) // BN - NBLK // 2, 0)
    hi = tl.minimum(lo + NBLK, nkb)
    if MODE == 1:
        kd = tl.make_tensor_descriptor(K + base, shape=[L, D], strides=[D, 1], block_shape=[BN, D])
        vd = tl.make_tensor_descriptor(V + base, shape=[L, D], strides=[D, 1], block_shape=[BN, D])
    acc = tl.zeros([BM, D], dtype=tl.float32)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    row0 = bh * L
    for n in tl.range(lo, hi, num_stages=STAGES):
        if MODE == 0:
            kr = n * BN + tl.arange(0, BN)
            k = tl.load(K + base + kr[:, None] * D + offs_d[None, :])
            v = tl.load(V + base + kr[:, None] * D + offs_d[None, :])
        elif MODE == 1:
            k = kd.load([n * BN, 0])
            v = vd.load([n * BN, 0])
        else:
            k = KD.load([row0 + n * BN, 0])
            v = VD.load([row0 + n * BN, 0])
        s = tl.dot(q, tl.trans(k)) * scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.bfloat16), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], acc.to(tl.bfloat16))


def main():
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    BH, L = 32, 8192
    print("triton", triton.__version__, torch.cuda.get_device_name())
    for D, BM, BN, warps, stages in ((128, 64, 64, 4, 3), (128, 128, 128, 8, 3), (64, 64, 64, 4, 3)):
        q, k, v = (torch.randn(BH, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        o = torch.empty_like(q)
        kd = TensorDescriptor(k.view(BH * L, D), shape=[BH * L, D], strides=[D, 1], block_shape=[BN, D])
        vd = TensorDescriptor(v.view(BH * L, D), shape=[BH * L, D], strides=[D, 1], block_shape=[BN, D])
        for nblk in (2, 9, 18, 32):
            res = {}
            outs = {}
            for mode in (0, 1, 2):
                f = lambda: fwd[(L // BM, BH)](q, k, v, o, kd if mode == 2 else None,
                                                vd if mode == 2 else None, L, nblk, 0.125,
                                                MODE=mode, BM=BM, BN=BN, D=D, STAGES=stages,
                                                num_warps=warps, num_stages=stages)
                f()
                outs[mode] = o.clone()
                ts = [do_bench(f, warmup=25, rep=200, return_mode="median") for _ in range(3)]
                res[mode] = min(ts)
            ok = all(torch.allclose(outs[0].float(), outs[m].float(), atol=2e-2) for m in (1, 2))
            flops = 4.0 * BH * L * nblk * BN * D
            print(f"D={D} tile {BM}x{BN}:{warps}:{stages} nblk={nblk:3d}  plain {res[0]*1e3:8.1f} us"
                  f"  dev-desc {res[1]*1e3:8.1f} us  host-desc {res[2]*1e3:8.1f} us  "
                  f"host/dev {res[2]/res[1]:.3f}  TFLOP/s plain/dev/host "
                  f"{flops/res[0]/1e9:.0f}/{flops/res[1]/1e9:.0f}/{flops/res[2]/1e9:.0f} ok={ok}")


main()
