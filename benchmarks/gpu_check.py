"""Correctness of the generated kernels on the GPU at realistic sizes.

For each case: attnlang (bf16 / fp16) and PyTorch SDPA with the same dense boolean mask run on the
same inputs; both are compared with a float64 reference (output, log-sum-exp, dq, dk, dv). The
kernels issue asks that attnlang's bf16 error be at most twice SDPA's.  attnlang runs each case
twice, and its second results must equal the first bit for bit (the second call's launches skip
Triton's binder: `_launch`; each line's `direct` counts the specialisations the case added
that are launched that way, which must not be 0; logs before round 9's review counted all of
the pattern's, earlier cases included).  Prints one line per case and writes
benchmarks/results/gpu_check.json.  Two float32 cases at head dimensions 128 and 256 follow the
16-bit ones (float32 takes its own tiles there); their error ratio to SDPA is printed, not
counted in the bf16 worst ratio.

    python benchmarks/gpu_check.py [--quick] [--only "stride,segment"] [--d 64,128]
    python benchmarks/gpu_check.py --gluon 40   # 40 random cases of the Gluon kernels
    python benchmarks/gpu_check.py --host-desc  # descriptors made on the host at any grid size
    python benchmarks/gpu_check.py --gluon 24 --d 64 --keys128  # d = 64 bands on 128-key blocks

The checks' launches have fewer programs than HOST_DESC_MIN_PROGRAMS, so their kernels make
their own descriptors; ``--host-desc`` sets it to 0, so that launches read through the host's
wherever the tensors allow it (the benchmark's launches do).

On an sm_90 GPU the band patterns' backward is the Gluon kernel (`attnlang/gluon_backward.py`;
each line's "gluon" counts the case's forwards and backwards that ran Gluon's kernels, as
"forwards/backwards"): its dQ is added up with atomics in no fixed order, so its repeat need only
match to 1e-3, not bit for bit.  Their forward is Gluon's (`attnlang/gluon_forward.py`) at
d = 64 on long rows and at d = 128 on narrow bands; `--gluon` sends every case's forward and
backward to Gluon (at d = 64 the backward of rows of fewer than 4096 keys with 64-key blocks,
GLUON_KEYS_64), and fails a case where one did not run it.  ``--keys128`` sets GLUON_KEYS_64 to 0:
bands at d = 64 then take 128-key blocks on every row, and with them the 128-query tiles of
`gluon_backward.WIDE` (the benchmark's causal and `all` at d = 64 take them).
"""
import json
import math
import os
import sys
import time

import torch

import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module
from attnlang.reference import mask as dense_mask

CASES = [  # (pattern, Lq, Lk, B, Hq, Hkv, D)
    ("causal", 4096, 4096, 1, 4, 4, 128),
    ("causal & window(1023, 0)", 16384, 16384, 1, 2, 2, 128),
    ("window(512)", 4000, 4000, 1, 4, 2, 64),
    ("causal & (window(127, 0) | stride(128))", 16384, 16384, 1, 2, 2, 128),
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 8192, 8192, 1, 2, 1, 64),
    ("window(512) | global(0..128)", 8192, 8192, 1, 2, 2, 128),
    ("causal & segment", 8192, 8192, 1, 2, 2, 128),
    # the dilated window: residue classes on the Gluon kernels at d = 128, `tl`'s at d = 64
    ("window(2048) & stride(4)", 8192, 8192, 1, 2, 2, 128),
    ("window(2048) & stride(4)", 16384, 16384, 1, 2, 2, 64),
    ("causal & stride(96)", 6000, 6000, 1, 2, 2, 128),
    # residue classes of one block (`_fwd_one_*`, `_bwd_one_*`): 128 classes of 64, grouped heads
    ("causal & (window(127, 0) | stride(128))", 8192, 8192, 1, 4, 2, 64),
    ("causal", 1000, 3000, 2, 4, 1, 80),
    ("random(0.1, block = 128, seed = 3) | causal & window(255, 0)", 4096, 4096, 1, 2, 2, 96),
    ("prefix(300) | causal", 2000, 2000, 2, 2, 2, 256),
    ("heads(0..1) & window(64) | heads(1..) & causal & stride(16)", 4096, 4096, 1, 2, 2, 64),
    # d = 64's own tiles for long rows (TILES_LONG) and for document masks (TILES_SEGMENT)
    ("causal", 4096, 4096, 2, 2, 2, 64),
    ("causal & segment", 8192, 8192, 1, 2, 2, 64),
    # the fixed pattern's packed keys through the host's descriptors (at least 2048 programs),
    # its summary columns' backward on the Gluon kernel there and at 16k (GLUON_GATHER_MIN: from
    # 8k at d = 128, 16k at d = 64, since round 55; `--gluon` forces it on shorter fixed
    # patterns), and the `tl` one at 8k, d = 64 (above)
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 8192, 8192, 2, 8, 8, 128),
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 16384, 16384, 1, 2, 2, 128),
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 16384, 16384, 1, 2, 2, 64),
]

# float32 above head dimension 64 takes its own small tiles (TILES_FP32): checked once each
FP32_CASES = [
    ("causal", 2048, 2048, 1, 2, 2, 128),
    ("window(512) | global(0..128)", 3000, 3000, 1, 2, 1, 256),
]


def rel(x, ref):
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def reference(q, k, v, keep, do):
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kk, vv = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    s = torch.matmul(qd, kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    out = torch.matmul(p, vv)
    out.backward(do.double())
    return out.detach(), lse.detach(), qd.grad, kd.grad, vd.grad


def _gluon_counted(generated, name):
    """Wrap the generated module's ``name`` (`_gluon_forward` or `_gluon_backward`) to count
    the calls it ran (once)."""
    inner = getattr(generated, name)
    if getattr(inner, "counts", None) is None:
        def counted(*args):
            result = inner(*args)
            counted.counts += result is not None
            return result
        counted.counts = 0
        setattr(generated, name, counted)
    return getattr(generated, name)


def run_case(text, Lq, Lk, B, Hq, Hkv, D, dtype, gen, bshd=False, gluon_everywhere=False,
             documents=31, unsorted=False):
    """``bshd``: q, k, v, dO as [B, L, H, D] tensors seen as [B, H, L, D] (strided views);
    ``gluon_everywhere``: the Gluon forward and backward wherever they can run (d = 64 on
    narrow bands, d = 128 on wide ones); for patterns with `segment`, ``documents`` + 1 random
    documents, their ids in reverse order where ``unsorted``."""
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    dev = "cuda"

    def tensor(H, L):
        if bshd:
            return torch.randn(B, L, H, D, device=dev, dtype=dtype).transpose(1, 2)
        return torch.randn(B, H, L, D, device=dev, dtype=dtype)
    q, k, v, do = tensor(Hq, Lq), tensor(Hkv, Lk), tensor(Hkv, Lk), tensor(Hq, Lq)
    kw = {}
    segments = None
    if "segment" in text:
        segments = random_documents(Lk, documents + 1, dev, gen)
        if unsorted:
            segments = segments.flip(0)
        kw["segments"] = segments
    keep = dense_mask(pattern.ir, Lq, Lk, num_heads=Hq, segments=segments)[None].to(dev)
    ref = reference(q, k, v, keep, do)
    results = {}
    module = pattern.module(backend="triton")
    generated = load_module(pattern)
    if "--host-desc" in sys.argv:
        generated.HOST_DESC_MIN_PROGRAMS = 0
    direct = generated._DIRECT
    gluon_runs = _gluon_counted(generated, "_gluon_backward")
    gather_runs = _gluon_counted(generated, "_gluon_gather_backward")
    gluon_fwd_runs = _gluon_counted(generated, "_gluon_forward")
    # (the fixed pattern's cases have 2-16 batches x heads, too few for the gather path's grid rule,
    # GLUON_GATHER_WAVES: its kernels are checked as the benchmark's 16-32 heads take them)
    generated.GLUON_GATHER_WAVES = 0
    if gluon_everywhere:
        generated.GLUON_MIN_KEYS_64 = 0
        generated.GLUON_GLOBALS_FWD_64 = 0
        generated.GLUON_NARROW_BWD_64 = generated.GLUON_CLASSES_BWD_64 = 0
        generated.GLUON_DOCS = dict.fromkeys(generated.GLUON_DOCS, 0)
        generated.GLUON_GATHER_MIN = dict.fromkeys(generated.GLUON_GATHER_MIN, 0)
    if "--keys128" in sys.argv:  # (`gluon_backward.WIDE`'s tiles on every d = 64 band)
        generated.GLUON_KEYS_64 = 0
    gluon_before = gluon_runs.counts + gather_runs.counts
    gluon_fwd_before = gluon_fwd_runs.counts
    before = {key for key, hit in direct.items() if hit}  # an earlier case of the same pattern's
    runs = []
    for _ in range(2):  # the second call launches the compiled kernels directly (`_launch`)
        qa, ka, va = (t.clone().requires_grad_(True) for t in (q, k, v))
        out, lse = module(qa, ka, va, return_lse=True, **kw)
        out.backward(do)
        runs.append((out, lse, qa.grad, ka.grad, va.grad))
    torch.cuda.synchronize()
    # the Gluon backward adds dQ up with atomics, in no fixed order: its dQ may differ in the last
    # bits between calls; everything else must repeat bit for bit
    results["gluon"] = gluon_runs.counts + gather_runs.counts - gluon_before
    results["gluon_fwd"] = gluon_fwd_runs.counts - gluon_fwd_before
    repeat_same = all(torch.equal(a, b) for a, b in zip(*runs))
    if results["gluon"]:
        repeat_same = all(torch.equal(a, b) for i, (a, b) in enumerate(zip(*runs)) if i != 2) \
            and rel(runs[1][2], runs[0][2].double()) < 1e-3
    # this case's specialisations launched directly on the second call (a launch hook or a
    # Triton whose compiled kernels lack the launcher interface would leave none: the check would
    # be void)
    results["direct"] = sum(1 for key, hit in direct.items() if hit and key not in before)
    results["attnlang"] = [rel(out, ref[0]), rel(lse.masked_fill(torch.isinf(ref[1]), 0),
                                                  ref[1].masked_fill(torch.isinf(ref[1]), 0)),
                           rel(qa.grad, ref[2]), rel(ka.grad, ref[3]), rel(va.grad, ref[4])]
    finite = bool(torch.isfinite(out).all() and torch.isfinite(qa.grad).all())
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    group = Hq // Hkv
    o2 = torch.nn.functional.scaled_dot_product_attention(
        qs, ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1), attn_mask=keep)
    o2 = o2.nan_to_num(0.0)
    o2.backward(do)
    results["sdpa"] = [rel(o2, ref[0]), float("nan"), rel(qs.grad, ref[2]), rel(ks.grad, ref[3]),
                       rel(vs.grad, ref[4])]
    return results, finite and repeat_same


def band_cases(n, gen):
    """``n`` random cases for the Gluon kernels of band patterns (`gluon_forward`,
    `gluon_backward`): bands with either side unbounded or negative, lengths that are not
    multiples of their tiles, more keys than queries, strided [B, L, H, D] views, both 16-bit
    dtypes and both head dimensions; every third one a document mask (the backward's kernel
    with the document bounds: 1 to 201 documents, ids in order or reversed), and every third
    (from the second) a band with global rows or columns (`band.banded_of`; some with more
    queries than keys, whose first queries sit before the first key); then n // 4 (at least one)
    strided bands (`band.strided_band_of`: each residue class a band of the Gluon kernels),
    lengths multiples of the step; then n // 8 (at least one) fixed patterns (chunks and
    summary columns of random sizes: the summary columns' backward on the Gluon kernel,
    GLUON_GATHER); then four bands with global rows at d = 64, and three whose global rows or
    columns hold none of the positions."""
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]
    cases = []
    for i in range(n):
        back = pick([0, 1, 5, 63, 64, 200, 1000])
        ahead = pick([0, 3, 64, 129, 700, -1 if back > 1 else 2])
        text = pick(["causal", "all", f"window({back}, {ahead})", f"causal & window({back}, 0)",
                     f"window({back}, {ahead}) & window({back + 50}, {max(ahead - 10, 0)})"])
        Lq = pick([1, 37, 64, 200, 1000, 1531, 2048])
        Lk = Lq if i % 3 else pick([Lq, Lq + 7, Lq + 300])
        B, H = pick([1, 2]), pick([1, 3])
        D = pick([64, 128])
        dtype = pick([torch.bfloat16, torch.float16])
        kw = {}
        if i % 3 == 1:  # global rows or columns
            g = pick([1, 16, 64, 128, 300])
            band = pick(["causal", f"window({back}, {ahead})", f"causal & window({back}, 0)"])
            text = f"{band} | " + pick([
                f"global(0..{g})", f"rows({g}..{g + 70})", f"cols(..{g})",
                f"rows(..{g}) | cols({g // 2}..{g + 200})", f"cols({g}..)"])
            Lq = pick([37, 200, 1000, 1531, 3000])
            Lk = pick([Lq, Lq + 7, max(1, Lq - 30)])
            D = 128 if i % 2 else 64
        if i % 3 == 2:  # a document mask: self-attention (d = 64 and 128: GLUON_DOCS)
            text = pick(["causal & segment", "segment", f"window({back}, {ahead}) & segment"])
            Lk = Lq
            kw = dict(documents=pick([0, 3, 31, 200]), unsorted=i % 5 == 4)
        cases.append(((text, Lq, Lk, B, H, H, D), dtype, i % 4 == 3, kw))
    for i in range(max(n // 4, 1)):
        step = pick([2, 3, 4, 8])
        back, ahead = pick([0, 5, 64, 300, 2048]), pick([0, 7, 256, 2048, -1])
        band = pick(["causal", "all", f"window({back}, {max(ahead, -back)})",
                     f"causal & window({back}, 0)"])
        Lq = step * pick([1, 9, 50, 257, 512])
        Lk = pick([Lq, Lq + step * pick([1, 40])])
        B, H = pick([1, 2]), pick([1, 3])
        cases.append(((f"{band} & stride({step})", Lq, Lk, B, H, H, pick([64, 128])),
                      pick([torch.bfloat16, torch.float16]), False, {}))
    for i in range(max(n // 8, 1)):  # the fixed pattern: its summary columns' backward
        c = pick([16, 64, 128])
        a = c - pick([1, 16, c // 2])
        Lq = pick([100, 1000, 1531, 4096])
        Lk = pick([Lq, Lq + 40])
        B, H = pick([1, 2]), pick([1, 3])
        cases.append(((f"causal & (chunk({c}) | cols(every({c}, {a}..{c})))", Lq, Lk, B, H, H,
                       pick([64, 128])), pick([torch.bfloat16, torch.float16]), i % 2 == 1, {}))
    # bands with global rows at d = 64, whose forward takes tiles of 128 queries there
    # (`gluon_forward.CONFIGS_GLOBAL`): rows from the start, in the middle, to the end
    cases += [((text, Lq, Lk, B, H, H, 64), torch.bfloat16, False, {}) for text, Lq, Lk, B, H in [
        ("window(512) | global(0..128)", 4096, 4096, 1, 2),
        ("window(100, 3) | rows(130..250)", 1531, 1531, 2, 3),
        ("window(64) | rows(..300) | cols(150..350)", 2048, 2300, 1, 3),
        ("window(64, 0) | rows(100..)", 1000, 1000, 1, 2)]]
    # global rows or columns wholly past the queries or keys (the host's empty spans,
    # `gluon_hopper.global_bounds`); keys ahead only, whose last rows keep keys past Lk alone
    cases += [((text, Lq, Lk, 1, 2, 2, D), torch.bfloat16, False, {}) for text, Lq, Lk, D in [
        ("window(5, -2) | rows(1000..1100)", 1000, 1000, 64),
        ("window(-2, 40) | cols(1100..1200)", 1000, 1000, 128),
        ("window(-2, 40) | rows(..16) | cols(1000..)", 1531, 1000, 64)]]
    # one shape in both dtypes, one after the other: the second must not take the first's
    # compiled kernels (the generated modules launch them directly after a first launch)
    return cases + [(("causal & window(300, 20)", 1000, 1000, 1, 2, 2, 128), dtype, False, {})
                    for dtype in (torch.bfloat16, torch.float16)]


def main():
    quick = "--quick" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    dims = [int(x) for x in sys.argv[sys.argv.index("--d") + 1].split(",")] \
        if "--d" in sys.argv else None
    gen = torch.Generator().manual_seed(0)
    rows, worst_ratio, failed = [], 0.0, 0
    bands = int(sys.argv[sys.argv.index("--gluon") + 1]) if "--gluon" in sys.argv else 0
    if bands:  # the Gluon kernels alone, wherever they can run
        plan = band_cases(bands, gen)
    else:
        plan = [(case, dtype, False, {}) for dtype in (torch.bfloat16, torch.float16)
                for case in CASES[: 8 if quick else None]]
        plan += [(case, torch.float32, False, {}) for case in FP32_CASES]
    for case, dtype, bshd, kw in plan:
        if (only and not any(word in case[0] for word in only)) or (dims and case[-1] not in dims):
            continue
        t = time.time()
        res, ok = run_case(*case, dtype, gen, bshd=bshd, gluon_everywhere=bool(bands), **kw)
        all_gluon = res["gluon"] == 2 and res["gluon_fwd"] == 2  # no `tl` kernel: none direct
        # (document masks and the fixed pattern: Gluon's backward, the `tl` forward)
        everywhere = res["gluon"] == 2 if "segment" in case[0] or "cols(" in case[0] \
            else all_gluon
        ok = ok and (res["direct"] > 0 or all_gluon) and (not bands or everywhere)
        a, s = res["attnlang"], res["sdpa"]
        # (a side with no error in either: not counted; none in SDPA's alone: infinite)
        ratio = max((a[i] / s[i] if s[i] > 0 else float("inf") for i in (0, 2, 3, 4)
                     if a[i] > 0 or s[i] > 0), default=0.0)
        worst_ratio = max(worst_ratio, ratio) if dtype == torch.bfloat16 else worst_ratio
        rows.append(dict(pattern=case[0], shape=case[1:], dtype=str(dtype), attnlang=a,
                         sdpa=s, ratio=ratio, finite_and_repeatable=ok, bshd=bshd,
                         direct_launch_specialisations=res["direct"],
                         gluon_forwards=res["gluon_fwd"], gluon_backwards=res["gluon"]))
        failed += not ok
        print(f"{str(dtype)[6:]:8s} {case[0][:48]:48s} Lq={case[1]:5d} Lk={case[2]:5d} "
              f"D={case[6]:3d} out {a[0]:.2e} (sdpa {s[0]:.2e}) lse {a[1]:.1e} dq {a[2]:.2e} "
              f"({s[2]:.2e}) dk {a[3]:.2e} ({s[3]:.2e}) dv {a[4]:.2e} ({s[4]:.2e}) "
              f"ratio {ratio:.2f} direct {res['direct']} gluon {res['gluon_fwd']}/{res['gluon']} "
              f"{'bshd ' if bshd else ''}{'unsorted ' if kw.get('unsorted') else ''}"
              f"{'ok' if ok else 'NONFINITE, REPEAT DIFFERS, NOT DIRECT OR NOT GLUON'} "
              f"{time.time() - t:.1f}s",
              flush=True)
        torch.cuda.empty_cache()
    print(f"worst bf16 error ratio attnlang/SDPA: {worst_ratio:.2f}; cases not ok: {failed}")
    name = "gpu_check_gluon.json" if bands else "gpu_check.json"
    with open(os.path.join(os.environ.get("OUT", "benchmarks/results"), name), "w") as fh:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                       rows=rows, worst_bf16_ratio=worst_ratio), fh, indent=1)


if __name__ == "__main__":
    main()
