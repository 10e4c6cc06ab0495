"""attnlang's forward with and without its Gluon kernel (`attnlang/gluon_forward.py`), on the band
patterns, in one run on the same inputs, with PyTorch SDPA (causal, or full for `all`) beside.

    python benchmarks/gluon_fwd.py [128] [64]              # on the GPU machine
    python benchmarks/gluon_fwd.py 128 --set 128:PERSISTENT=0,OVERLAP=1   # another configuration
    python benchmarks/gluon_fwd.py --variants [128] [64]   # the kernel's configurations
    python benchmarks/gluon_fwd.py 128 --lengths 1024,2048   # other lengths than 8k and 32k
    python benchmarks/gluon_fwd.py 128 --pattern "window(512) | global(0..128)"  # other patterns

The first form times the generated module's forward with ATTNLANG_GLUON=1 and =0 (with its
rules lifted, so that every pattern runs the Gluon kernel) and compares their outputs, then the
training step (forward and backward, the backward Gluon's where it runs) with the forward's Gluon
kernel and without it: what the forward's gain is worth in a step; `--set D:KEY=VALUE,...`
changes the generated modules' `CONFIGS[D]` (and `CONFIGS_GLOBAL[D]`) first (values are
integers; 0/1 for flags).  The second first checks each configuration of `VARIANTS` against a
float32 reference on small shapes (lengths not multiples of the tiles, `Lq != Lk`, empty rows,
[B, L, H, D] views), then times the kernel in each configuration (`gluon_forward.CONFIGS`
replaced) against the `tl` forward: the measurements that chose CONFIGS (benchmarks/NOTES.md
round 21).
"""
import os
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import attnlang
from attnlang import gluon_forward as gf
from attnlang.band import band_of
from attnlang.cache import load_module

PATTERNS = ["causal", "all", "causal & window(1023, 0)", "window(512)"]
VARIANTS = {
    128: [dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=False, PINGPONG=False, EARLY=True,
               PERSISTENT=True, REGS=240),
          dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=True, PINGPONG=False, EARLY=True,
               PERSISTENT=True, REGS=240),
          dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=False, PINGPONG=True, EARLY=True,
               PERSISTENT=True, REGS=240),
          dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=True, PINGPONG=True, EARLY=True,
               PERSISTENT=True, REGS=240),
          dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=True, PINGPONG=True, EARLY=True,
               PERSISTENT=False, REGS=240)],
    64: [dict(NUM_WG=3, BN=128, STAGES=3, OVERLAP=True, PINGPONG=False, EARLY=False,
              PERSISTENT=False, REGS=160),
         dict(NUM_WG=2, BN=128, STAGES=3, OVERLAP=True, PINGPONG=True, EARLY=True,
              PERSISTENT=False, REGS=240),
         dict(NUM_WG=2, BN=128, STAGES=3, OVERLAP=True, PINGPONG=True, EARLY=True,
              PERSISTENT=True, REGS=240)],
}


def tag(config):
    return (f"W{config['NUM_WG']},N{config['BN']},S{config['STAGES']},O{int(config['OVERLAP'])},"
            f"PP{int(config['PINGPONG'])},E{int(config['EARLY'])},"
            f"P{int(config['PERSISTENT'])}")


def dense(q, k, v, scale, back, ahead):
    """(out, lse) in float32 of the band -ahead <= q + Lk - Lq - k <= back."""
    Lq, Lk = q.shape[2], k.shape[2]
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    d = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq) - \
        torch.arange(Lk, device=q.device)[None, :]
    keep = (d <= (Lq + Lk if back is None else back)) & (d >= -(Lq + Lk if ahead is None else ahead))
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]) @ v.float(), lse


def check(D):
    """Each configuration against the float32 reference; False if one fails."""
    cases = [  # (B, H, Lq, Lk, dtype, back, ahead, [B, L, H, D] views)
        (2, 3, 1000, 1000, torch.bfloat16, None, 0, False),
        (1, 2, 777, 1300, torch.float16, None, None, False),
        (1, 2, 2048, 2048, torch.bfloat16, 100, 50, False),
        (2, 2, 500, 520, torch.bfloat16, -1, 3, False),
        (1, 2, 2085, 2085, torch.bfloat16, 1023, 0, True),
        (1, 2, 1, 129, torch.bfloat16, None, 0, False),
        (1, 2, 300, 100, torch.float16, 5, 0, False),  # queries 0..199 keep no key
        (2, 4, 640, 640, torch.bfloat16, None, 0, True),
    ]
    good = True
    for B, H, Lq, Lk, dtype, back, ahead, view in cases:
        torch.manual_seed(0)
        if view:
            q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=dtype).transpose(1, 2)
                       for L in (Lq, Lk, Lk))
        else:
            q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype) for L in (Lq, Lk, Lk))
        ref_out, ref_lse = dense(q, k, v, D ** -0.5, back, ahead)
        rounding = (ref_out.to(dtype).float() - ref_out).abs().max().item()
        empty = torch.isinf(ref_lse)
        for config in VARIANTS[D]:
            gf.CONFIGS[D] = config
            out, lse = gf.forward(q, k, v, D ** -0.5, back, ahead)
            err = (out.float() - ref_out).abs().max().item()
            lse_err = (lse - ref_lse)[~empty].abs().max().item() if (~empty).any() else 0.0
            empty_ok = bool((lse[empty] == float("-inf")).all() and (out[empty] == 0).all())
            ok = err <= 4 * rounding + 1e-3 and lse_err < 1e-2 and empty_ok
            good &= ok
            print(f"check D={D} {B}x{H} Lq={Lq} Lk={Lk} {str(dtype)[6:]} band=({back},{ahead}) "
                  f"view={view} {tag(config)}: out err {err:.2e} (rounding {rounding:.2e}) lse err "
                  f"{lse_err:.1e} empty rows {empty_ok} {'OK' if ok else 'FAIL'}", flush=True)
    return good


def step_ab(mod, generated, q, k, v):
    """The training step's time with the Gluon forward and with the `tl` forward (ms)."""
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(q)

    def step():
        mod(qg, kg, vg).backward(do)
    times = {}
    rule = generated._gluon_forward_ok
    for name, ok in (("gluon fwd", rule), ("tl fwd", lambda *args: False)):
        generated._gluon_forward_ok = ok
        times[name] = do_bench(step, warmup=25, rep=200, grad_to_none=[qg, kg, vg],
                               return_mode="median")
    generated._gluon_forward_ok = rule
    return " | ".join(f"{name} {ms:.3f} ms" for name, ms in times.items()) + \
        f" ({times['tl fwd'] / times['gluon fwd']:.3f}x)"


def overrides(argv):
    """The `--set D:KEY=VALUE,...` options: {D: {KEY: int}}."""
    sets = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "--set":
            dim, pairs = value.split(":")
            sets.setdefault(int(dim), {}).update(
                (key, int(number)) for key, number in (pair.split("=") for pair in pairs.split(",")))
    return sets


def main():
    variants = "--variants" in sys.argv
    sets = overrides(sys.argv)
    dims = [int(a) for a in sys.argv[1:] if a.isdigit()] or [128, 64]
    lengths = [8192, 32768]
    if "--lengths" in sys.argv:
        lengths = [int(n) for n in sys.argv[sys.argv.index("--lengths") + 1].split(",")]
    chosen = {D: dict(gf.CONFIGS[D]) for D in dims}
    patterns = [value for flag, value in zip(sys.argv, sys.argv[1:]) if flag == "--pattern"]
    if variants and patterns:
        print("--variants times the band patterns alone")
        return 2
    if variants and not all(check(D) for D in dims):
        return 1
    for D in dims:
        for L in lengths:
            B = max(1, 16384 // L)  # 16k tokens per batch, as the benchmark
            H = 16
            q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            for text in patterns or PATTERNS:
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                back, ahead = band_of(pattern.ir) or (None, None)  # (--variants: bands alone)
                mod = pattern.module(backend="triton")
                generated = load_module(pattern)
                generated.GLUON_MIN_KEYS_64 = 0
                generated.GLUON_GLOBALS_FWD_64 = 0  # (bands with global rows at d = 64)
                copy = generated._gluon_module("gluon_forward")  # the module's own copy
                copy.CONFIGS[D].update(sets.get(D, {}))
                if D in copy.CONFIGS_GLOBAL:  # (bands with global rows' own configuration)
                    copy.CONFIGS_GLOBAL[D].update(sets.get(D, {}))
                flops = 4.0 * D * pattern.plan(L, L).kept_pairs * B * H
                causal = text != "all"
                with torch.no_grad():
                    os.environ["ATTNLANG_GLUON"] = "0"
                    want = mod(q, k, v)
                    t_tl = do_bench(lambda: mod(q, k, v), warmup=25, rep=200,
                                    return_mode="median")
                    t_sdpa = do_bench(lambda: F.scaled_dot_product_attention(
                        q, k, v, is_causal=causal), warmup=25, rep=200, return_mode="median")
                    sdpa_flops = 4.0 * D * B * H * (L * (L + 1) / 2 if causal else L * L)
                    line = (f"{text:26s} L={L:6d} D={D:3d} | tl {t_tl:.3f} ms "
                            f"{flops / t_tl / 1e9:4.0f} | SDPA{'-causal' if causal else ''} "
                            f"{t_sdpa:.3f} ms {sdpa_flops / t_sdpa / 1e9:4.0f}")
                    os.environ["ATTNLANG_GLUON"] = "1"
                    for config in VARIANTS[D] if variants else [copy.CONFIGS[D]]:
                        gf.CONFIGS[D] = config
                        if variants:
                            def run():
                                return gf.forward(q, k, v, D ** -0.5, back, ahead)[0]
                        else:
                            def run():
                                return mod(q, k, v)
                        diff = ((run().float() - want.float()).abs().max()
                                / want.float().abs().max()).item()
                        t = do_bench(run, warmup=25, rep=200, return_mode="median")
                        line += (f" | gluon {tag(config)} {t:.3f} "
                                 f"{flops / t / 1e9:4.0f} ({t_tl / t:.2f}x, diff {diff:.0e})")
                        print(line, flush=True)
                        line = " " * 10
                if not variants:
                    print(" " * 10 + " | step " + step_ab(mod, generated, q, k, v), flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    gf.CONFIGS.update(chosen)
    os.environ.pop("ATTNLANG_GLUON")
    return 0


if __name__ == "__main__":
    sys.exit(main())
