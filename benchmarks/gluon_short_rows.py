"""The Gluon band forward (`gluon_forward`) on short rows -- `causal & window(127, 0)`, the strided
pattern's band, 8k tokens, 2 x 16 heads, bf16 -- in several of its configurations, against the
`tl` forward of that band alone (ATTNLANG_GLUON=0) and the strided pattern's module forward
(its band's `tl` kernel merging the one-block classes' partial output): each Gluon variant's
output and log-sum-exp checked against float64 on two heads, then `do_bench` medians and the
GPU time of its kernels (torch.profiler):

    python benchmarks/gluon_short_rows.py
"""
import os
import torch
from triton.testing import do_bench
import attnlang
from attnlang import gluon_forward as gf, reference
from profile_kernels import kernel_times

n, H = 8192, 16
B = 2
BASE = {d: dict(c) for d, c in gf.CONFIGS.items()}
VARIANTS = {
    64: {"base (3wg)": {}, "2wg": dict(NUM_WG=2, EARLY=True, REGS=240),
         "2wg pers": dict(NUM_WG=2, EARLY=True, REGS=240, PERSISTENT=True),
         "3wg pers": dict(PERSISTENT=True),
         "2wg pers pp": dict(NUM_WG=2, EARLY=True, REGS=240, PERSISTENT=True, PINGPONG=True),
         "2wg pers s2": dict(NUM_WG=2, EARLY=True, REGS=240, PERSISTENT=True, STAGES=2)},
    128: {"base (pers)": {}, "not pers": dict(PERSISTENT=False),
          "no pp": dict(PINGPONG=False)},
}


def ms(fn):
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


for d in (128, 64):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    scale = d ** -0.5
    small = [t[:1, :2].double() for t in (q, k, v)]
    pat = attnlang.parse("pattern x = causal & window(127, 0)")["x"]
    mask = reference.mask(pat.ir, n, n, num_heads=2).cuda()[None]
    ref_out, ref_lse = reference.attention(*small, mask, scale=scale)
    print(f"== d = {d}")
    for name, over in VARIANTS[d].items():
        gf.CONFIGS[d] = dict(BASE[d], **over)
        try:
            out, lse = gf.forward(q, k, v, scale, 127, 0)
            torch.cuda.synchronize()
        except Exception as e:  # noqa
            print(f"   {name:16s} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        err = (out[:1, :2].double() - ref_out).abs().max().item()
        lerr = (lse[:1, :2].double() - ref_lse).abs().max().item()
        t = ms(lambda: gf.forward(q, k, v, scale, 127, 0))
        kt = kernel_times(lambda: gf.forward(q, k, v, scale, 127, 0))
        kus = sum(x for x, _ in kt.values()) / 10
        print(f"   gluon {name:16s} err {err:.1e} lse {lerr:.1e}  do_bench {t*1e3:7.1f} us"
              f"  kernels {kus:7.1f} us")
    gf.CONFIGS[d] = BASE[d]
    # the `tl` band alone and the strided module
    for text, env in (("causal & window(127, 0)", "0"),
                      ("causal & (window(127, 0) | stride(128))", "1")):
        os.environ["ATTNLANG_GLUON"] = env
        mod = attnlang.parse(f"pattern x = {text}")["x"].module(backend="triton")
        with torch.no_grad():
            t = ms(lambda: mod(q, k, v))
            kt = kernel_times(lambda: mod(q, k, v))
        print(f"   module {text:40s} GLUON={env} do_bench {t*1e3:7.1f} us; kernels: " +
              ", ".join(f"{nm[:14]} {x/10:.1f}" for nm, (x, _) in
                        sorted(kt.items(), key=lambda z: -z[1][0])))
    os.environ["ATTNLANG_GLUON"] = "1"
