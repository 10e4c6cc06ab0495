"""attnlang's backward with and without its Gluon kernel (`attnlang/gluon_backward.py`), on the
band patterns it serves, in one run on the same inputs: the forward and the whole training step
(forward and backward) with ATTNLANG_GLUON=1 and =0, and the backward as each step less its
forward (with =1 the forward is Gluon's too where `gluon_forward` serves the call).  Gradients
of the two paths are compared before timing.  GLUON_MIN_KEYS_64 and GLUON_DOCS's lengths are
set to 0, so that d = 64 runs the Gluon kernel on narrow bands too, and documents at every
length (the modules' defaults give them the `tl` kernels).

    python benchmarks/gluon_bwd.py [128] [64]   # on the GPU machine
    python benchmarks/gluon_bwd.py 128 --only segment --lengths 8192,16384,32768
                                       # the patterns holding a word, at these lengths

`causal & segment` takes the benchmark's 64 random documents per sequence (`attnlang.bench`);
its kernel runs at the head dimensions of the module's GLUON_DOCS only.

Round 19's standalone version of the kernel (results/gluon_bwd_r19*.log) is in git history
(ed9f467); this script times the kernel as attnlang runs it.
"""
import os
import sys

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module

PATTERNS = ["causal", "all", "causal & window(1023, 0)", "window(512)", "causal & segment"]


def max_rel(x, ref):
    """Largest absolute difference, relative to the reference's largest magnitude."""
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def main():
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    dims = [int(a) for a in sys.argv[1:] if a.isdigit()] or [128, 64]
    lengths = [int(x) for x in sys.argv[sys.argv.index("--lengths") + 1].split(",")] \
        if "--lengths" in sys.argv else [8192, 32768]
    for D in dims:
        for L, B in ((L, max(1, 16384 // L)) for L in lengths):
            H = 16
            q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                           for _ in range(4))
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            kw = dict(segments=random_documents(L, 64, "cuda", torch.Generator().manual_seed(0)))
            for text in PATTERNS:
                if only not in text:
                    continue
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                extra = kw if "segment" in text else {}
                mod = pattern.module(backend="triton")
                generated = load_module(pattern)
                if "segment" in text and D not in generated.GLUON_DOCS:
                    continue
                generated.GLUON_MIN_KEYS_64 = 0
                generated.GLUON_DOCS = dict.fromkeys(generated.GLUON_DOCS, 0)
                times, fwd, grads = {}, {}, {}
                for flag in ("0", "1"):  # (with =1 the forward may be Gluon's too: timed apart)
                    os.environ["ATTNLANG_GLUON"] = flag

                    def step():
                        mod(qg, kg, vg, **extra).backward(do)
                    qg.grad = kg.grad = vg.grad = None
                    step()
                    grads[flag] = [t.grad.clone() for t in (qg, kg, vg)]
                    times[flag] = do_bench(step, warmup=25, rep=200, grad_to_none=[qg, kg, vg])
                    fwd[flag] = do_bench(lambda: mod(q, k, v, **extra), warmup=25, rep=200)
                diff = max(max_rel(a, b) for a, b in zip(grads["1"], grads["0"]))
                flops = 4.0 * D * B * H * pattern.plan(L, L, **extra).kept_pairs
                bwd0, bwd1 = times["0"] - fwd["0"], times["1"] - fwd["1"]
                print(f"{text:26s} L={L:6d} D={D:3d} grads gluon vs tl {diff:.1e} | fwd tl "
                      f"{fwd['0']:.3f} gluon {fwd['1']:.3f} "
                      f"| bwd tl {bwd0:.3f} gluon {bwd1:.3f} ({bwd0 / bwd1:.2f}x) | fwd+bwd "
                      f"TFLOP/s tl {3.5 * flops / times['0'] / 1e9:.0f} gluon "
                      f"{3.5 * flops / times['1'] / 1e9:.0f}", flush=True)
            del q, k, v, do, qg, kg, vg
            torch.cuda.empty_cache()
    os.environ.pop("ATTNLANG_GLUON")


if __name__ == "__main__":
    sys.exit(main())
