"""The Gluon forward of a band with global rows (Longformer's `window(512) | global(0..128)`)
with its tiles of global rows cut into pieces (`gluon_forward.pieces`, PIECE_BLOCKS; round 37),
on the GPU.

``--check`` first runs `gluon_forward.forward` with pieces of 1-3 key blocks (so that small
shapes have them) and whole, against a float32 reference: lengths not multiples of the tiles,
Lq != Lk, several tiles of global rows, rows that keep nothing.  Then, for each head dimension
and length, the generated module's forward (`torch.no_grad`) and training step with the module's
PIECE_BLOCKS at each variant in turn ("whole": no pieces), three rounds on the same inputs
(`head_order._medians`), `do_bench` medians; outputs and gradients compared with the whole
tiles' run; `window(512)`'s forward alone beside (the band without global rows) and SDPA-causal's
(the issue's 70% line).  At d = 64 the module's rule (GLUON_GLOBALS_FWD_64) is lifted, so that
the forward runs Gluon at every length.

    python benchmarks/ab_pieces.py [--check] [--pieces whole,32,64,128] [--dims 64,128]
                                   [--lengths 8192,32768] [--profile]

``--profile``: instead of the timings, each variant's forward kernels (torch.profiler: GPU µs
per call) and its host time per call (calls back to back, then one synchronisation).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang import gluon_forward as gf  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from gluon_bwd import max_rel  # noqa: E402
from head_order import _inputs, _medians, _step_runner  # noqa: E402
from profile_kernels import kernel_times  # noqa: E402

TEXT = "window(512) | global(0..128)"
CASES = [  # (B, H, Lq, Lk, dtype, back, ahead, rows, cols) as `gf.forward` takes them
    (1, 2, 1000, 1000, torch.bfloat16, 256, 256, (0, 130), (0, 130)),
    (2, 2, 777, 1300, torch.float16, 100, 50, (523, 800), (0, 200)),
    (1, 2, 2085, 2085, torch.bfloat16, 511, 511, (0, 300), None),
    (1, 3, 1300, 640, torch.bfloat16, 5, 0, (None, 128), (0, 64)),  # queries 0..659: no key
    (1, 2, 4096, 4096, torch.bfloat16, 512, 512, (0, 128), (0, 128)),
]


def dense(q, k, v, scale, back, ahead, rows, cols):
    """(out, lse) in float32 of the band with global rows and columns (positions p = q + Lk -
    Lq); rows that keep nothing: 0 and -inf."""
    Lq, Lk = q.shape[2], k.shape[2]
    p = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)
    key = torch.arange(Lk, device=q.device)[None, :]
    keep = (p - key <= back) & (p - key >= -ahead)
    for span, x in ((rows, p), (cols, key)):
        if span is not None:
            lo, hi = span
            keep = keep | ((x >= (-Lq - Lk if lo is None else lo)) & (x < (Lq + Lk if hi is None
                                                                            else hi)))
    s = ((q.float() @ k.float().transpose(-1, -2)) * scale).masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]) @ v.float(), lse


def check(dims):
    """Every case with pieces of 1, 2 and 3 key blocks and whole; False if one fails."""
    good = True
    saved = dict(gf.PIECE_BLOCKS)
    for D in dims:
        for B, H, Lq, Lk, dtype, back, ahead, rows, cols in CASES:
            torch.manual_seed(0)
            q = torch.randn(B, H, Lq, D, device="cuda", dtype=dtype)
            k, v = (torch.randn(B, H, Lk, D, device="cuda", dtype=dtype) for _ in range(2))
            ref_out, ref_lse = dense(q, k, v, D ** -0.5, back, ahead, rows, cols)
            rounding = (ref_out.to(dtype).float() - ref_out).abs().max().item()
            empty = torch.isinf(ref_lse)
            for most in (1, 2, 3, 10 ** 9):
                gf.PIECE_BLOCKS[D] = most
                out, lse = gf.forward(q, k, v, D ** -0.5, back, ahead, rows=rows, cols=cols)
                err = (out.float() - ref_out).abs().max().item()
                lse_err = (lse - ref_lse)[~empty].abs().max().item()
                empty_ok = bool((lse[empty] == float("-inf")).all() and (out[empty] == 0).all())
                ok = err <= 4 * rounding + 1e-3 and lse_err < 1e-2 and empty_ok
                good &= ok
                print(f"check D={D} {B}x{H} Lq={Lq} Lk={Lk} {str(dtype)[6:]} band=({back},"
                      f"{ahead}) rows={rows} cols={cols} pieces of {most}: out err {err:.2e} "
                      f"(rounding {rounding:.2e}) lse err {lse_err:.1e} empty rows "
                      f"{int(empty.sum())} ok {empty_ok} {'OK' if ok else 'FAIL'}", flush=True)
    gf.PIECE_BLOCKS.update(saved)
    return good


def profile(name, L, D, call, calls=200):
    """Prints the forward's kernels (GPU µs per call) and its host time per call."""
    with torch.no_grad():
        rows = kernel_times(call, reps=20)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        host = (time.perf_counter() - start) / calls * 1e6
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / calls * 1e6
    print(f"L={L} D={D} {name}: host {host:.0f} µs a call (to the GPU's end {wall:.0f}); "
          + "; ".join(f"{kernel} {total / 20:.1f}" for kernel, (total, _) in sorted(
              rows.items(), key=lambda item: -item[1][0])), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--pieces", default="whole,32,64,128")
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    if args.check and not check(dims):
        print("check FAILED")
        return 1
    pattern = attnlang.parse(f"pattern x = {TEXT}")["x"]
    band = attnlang.parse("pattern x = window(512)")["x"]
    mod, band_mod = pattern.module(backend="triton"), band.module(backend="triton")
    generated = load_module(pattern)
    generated.GLUON_GLOBALS_FWD_64 = 0
    copy = generated._gluon_module("gluon_forward")  # the module's own copy
    saved = dict(copy.PIECE_BLOCKS)
    variants = args.pieces.split(",")
    for D in dims:
        def set_variant(_, name):
            copy.PIECE_BLOCKS[D] = 10 ** 9 if name == "whole" else int(name)

        for L in (int(n) for n in args.lengths.split(",")):
            B, H = max(1, 16384 // L), 16
            q, k, v, do, leaves = _inputs(B, H, L, D)

            def forward():
                with torch.no_grad():
                    return mod(q, k, v).clone(), do_bench(lambda: mod(q, k, v), warmup=25,
                                                          rep=150)
            if args.profile:
                for name in variants:
                    set_variant(None, name)
                    profile(name, L, D, lambda: mod(q, k, v))
                continue
            fwd, outs = _medians(pattern, variants, set_variant, forward)
            step, grads = _medians(pattern, variants, set_variant,
                                   _step_runner(mod, leaves, do, {}))
            with torch.no_grad():
                t_band = do_bench(lambda: band_mod(q, k, v), warmup=25, rep=150)
                t_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                  warmup=25, rep=150)
            flops = 4.0 * D * pattern.plan(L, L).kept_pairs * B * H
            band_flops = 4.0 * D * band.plan(L, L).kept_pairs * B * H
            sdpa = 4.0 * D * B * H * L * (L + 1) / 2 / t_sdpa / 1e9
            print(f"L={L} D={D}: SDPA-causal {sdpa:.0f} TFLOP/s; window(512) fwd {t_band:.4f} ms "
                  f"{band_flops / t_band / 1e9:.0f} ({band_flops / t_band / 1e9 / sdpa:.2f})",
                  flush=True)
            for name in variants:
                out_err = max_rel(outs[name], outs["whole"]) if "whole" in outs else 0.0
                grad_err = max(max_rel(a, b) for a, b in zip(grads[name], grads["whole"])) \
                    if "whole" in grads else 0.0
                tf, ts = flops / fwd[name] / 1e9, 3.5 * flops / step[name] / 1e9
                print(f"  {name:>6}: fwd {fwd[name]:.4f} ms {tf:.0f} TFLOP/s ({tf / sdpa:.3f}"
                      f" of SDPA-causal, {fwd['whole'] / fwd[name]:.3f}x); step "
                      f"{step[name]:.4f} ms {ts:.0f} ({step['whole'] / step[name]:.3f}x); vs "
                      f"whole: out {out_err:.1e}, grads {grad_err:.1e}", flush=True)
            del q, k, v, do, leaves
            torch.cuda.empty_cache()
    copy.PIECE_BLOCKS.update(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
