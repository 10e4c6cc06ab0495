"""Versions of attnlang/gluon_forward.py side by side on the GPU: each FILE (``git show
REV:attnlang/gluon_forward.py > FILE``, or a branch's) and this tree's, in one process on the
same inputs.  Outputs (and log-sum-exps) are compared with the first FILE's, then interleaved
rounds of `do_bench` medians are taken (odd rounds in reverse order):

* the fixed pattern's forward through its module (the generated module's Gluon forward swapped
  for each version) at 8k and 32k tokens, d = 128, and at 8k its forward kernel's GPU time
  (torch.profiler, 20 calls);
* `gluon_forward.forward` called directly: the benchmark's d = 128 bands that take a persistent
  launch, causal at d = 128 and d = 64 (one program a tile), and a window over fewer keys than
  queries (Lk = Lq - 1000: the first tiles have no keys).

16 heads, 16k tokens a batch, bf16.

    python benchmarks/ab_forward_files.py NAME=FILE [NAME=FILE ...] [--rounds 5] [--host]
        [--only TEXT[,TEXT...]]

``--only``: only the rows whose label (as printed: "fixed pattern L=8192", "causal L=8192
d=128") contains one of the texts.

``--host``: then the host's time of this tree's fixed-pattern forward at 8k (200 calls back to
back, the benchmark's `_host_ms`) and the functions that take it (cProfile).

(results/ab_across_r60a.log was made by this script's first form -- a scratch copy without the
causal rows, timing its own rounds and host loop, this tree's column named "tree" -- with
``base=`` round 59's file and ``flat=`` the one-loop form of ACROSS, this tree then holding its
peeled form: NOTES round 60.)
"""
import cProfile
import math
import os
import pstats
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attnlang  # noqa: E402
from ab_gather_forward import FIXED, load_file  # noqa: E402  (this script's folder is on the path)
from attnlang import gluon_forward as gf  # noqa: E402
from attnlang.bench import _host_ms, time_in_rounds  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from profile_kernels import kernel_times  # noqa: E402

# (row, L, back, ahead, step, D, Lk - Lq)
ROWS = [("all", 8192, None, None, 1, 128, 0), ("window(512)", 8192, 512, 512, 1, 128, 0),
        ("window(512)", 32768, 512, 512, 1, 128, 0),
        ("causal & window(1023, 0)", 32768, 1023, 0, 1, 128, 0),
        ("window(2048) & stride(4)", 8192, 2048, 2048, 4, 128, 0),
        ("window(2048) & stride(4)", 32768, 2048, 2048, 4, 128, 0),
        ("window(100, 37), Lk < Lq", 5000, 100, 37, 1, 128, -1000),
        ("causal", 8192, None, 0, 1, 128, 0), ("causal", 8192, None, 0, 1, 64, 0),
        ("causal", 32768, None, 0, 1, 64, 0)]


def _rounds(variants, call, rounds):
    """{name: median ms} of ``call(module)`` for each variant: the benchmark's interleaved
    rounds (`attnlang.bench.time_in_rounds`, 100 ms of `do_bench` a round), their median."""
    benches = {name: ((lambda m=module: call(m)), None) for name, module in variants.items()}
    times = time_in_rounds(benches, rounds, 10, 100 * rounds, do_bench)
    return {name: statistics.median(t) for name, t in times.items()}


def _gap(a, b):
    """The largest difference of two outputs (-inf, of rows that keep nothing, as a number)."""
    return (torch.nan_to_num(a.float(), neginf=-1e9)
            - torch.nan_to_num(b.float(), neginf=-1e9)).abs().max().item()


def _line(label, med, diffs):
    base = next(iter(med.values()))
    return f"{label:34s} " + ", ".join(
        f"{name} {ms:.4f} ms ({base / ms:.3f}x; {diffs[name]})" for name, ms in med.items())


def _chosen(label):
    """Whether ``--only`` (if given) lets the row of this label run."""
    if "--only" not in sys.argv:
        return True
    return any(text in label for text in sys.argv[sys.argv.index("--only") + 1].split(","))


def fixed(files, rounds):
    pattern = attnlang.parse(f"pattern x = {FIXED}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    tree = gen._gluon_module("gluon_forward")
    variants = {name: load_file(f"{gen.__name__}._support.gf_{name}", path)
                for name, path in files.items()}
    variants["this tree"] = tree

    def call(module):
        gen._GLUON["gluon_forward"] = module
        with torch.no_grad():
            return mod(q, k, v)
    for L in (8192, 32768):
        if not _chosen(f"fixed pattern L={L}"):
            continue
        q, k, v = (torch.randn(max(1, 16384 // L), 16, L, 128, device="cuda",
                               dtype=torch.bfloat16) for _ in range(3))
        outs = {name: call(m).float() for name, m in variants.items()}
        first = next(iter(outs.values()))
        scale = first.abs().max().item()
        diffs = {name: f"out {(o - first).abs().max().item() / scale:.1e}"
                 for name, o in outs.items()}
        print(_line(f"fixed pattern L={L}", _rounds(variants, call, rounds), diffs), flush=True)
        if L == 8192:
            for name, m in variants.items():
                times = kernel_times(lambda: call(m), reps=20)
                print(f"    kernels, {name}: " + ", ".join(
                    f"{kern[:30]} {t / n:.1f} µs" for kern, (t, n) in times.items()), flush=True)
    gen._GLUON["gluon_forward"] = tree
    return mod


def bands(files, rounds):
    variants = {name: load_file(f"attnlang.gf_{name}", path) for name, path in files.items()}
    variants["this tree"] = gf
    for name, L, back, ahead, step, D, extra in ROWS:
        if not _chosen(f"{name} L={L} d={D}"):
            continue
        B = max(1, 16384 // L)
        q = torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, 16, L + extra, D, device="cuda", dtype=torch.bfloat16)
                for _ in range(2))
        scale = 1 / math.sqrt(D)

        def call(module):
            return module.forward(q, k, v, scale, back, ahead, step=step)
        outs = {n: call(m) for n, m in variants.items()}
        o0, l0 = next(iter(outs.values()))
        diffs = {n: f"out {_gap(o, o0):.1e}, lse {_gap(lse, l0):.1e}"
                 for n, (o, lse) in outs.items()}
        print(_line(f"{name} L={L} d={D}", _rounds(variants, call, rounds), diffs), flush=True)


def host(mod):
    q, k, v = (torch.randn(2, 16, 8192, 128, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    with torch.no_grad():
        took = _host_ms(lambda: mod(q, k, v), reps=200, wait=False)  # (median of five rounds)
        print(f"host µs a call (200 back to back): {took * 1000:.1f}", flush=True)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(200):
            mod(q, k, v)
        profiler.disable()
        torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main():
    files = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    if not files:
        print(__doc__)
        return 2
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    mod = fixed(files, rounds)
    bands(files, rounds)
    if "--host" in sys.argv:
        host(mod)
    return 0


if __name__ == "__main__":
    sys.exit(main())
