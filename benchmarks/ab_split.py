"""Longformer's forward and step: this tree's plan (global rows and columns as components of
their own) against the old tree's (one component), on the `tl` and Gluon kernels.

    git archive <the tree before> attnlang templates grammar | tar -x -C _old
    python benchmarks/ab_split.py _old [--dims 64,128] [--lengths 8192,32768] [--rounds 3]
"""
import argparse
import importlib
import importlib.util
import os
import sys

import torch
from triton.testing import do_bench

PATTERN = "window(512) | global(0..128)"


def load_tree(name, root):
    package = f"attnlang_{name}"
    spec = importlib.util.spec_from_file_location(
        package, os.path.join(root, "attnlang", "__init__.py"),
        submodule_search_locations=[os.path.join(root, "attnlang")])
    sys.modules[package] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[package])
    return sys.modules[package], importlib.import_module(f"{package}.cache")


def reference(q, k, v, do):
    """out and grads in float32 of Longformer's mask."""
    L = q.shape[2]
    p = torch.arange(L, device=q.device)
    keep = ((p[:, None] - p[None, :]).abs() <= 512) | (p[:, None] < 128) | (p[None, :] < 128)
    q, k, v = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
    out.backward(do.float())
    return out.detach(), [t.grad for t in (q, k, v)]


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = {"new": load_tree("new", os.getcwd()), "old": load_tree("old", args.old)}
    mods, gens = {}, {}
    for name, (pkg, cache) in trees.items():
        pattern = pkg.parse(f"pattern x = {PATTERN}")["x"]
        mods[name] = pattern.module(backend="triton")
        gens[name] = cache.load_module(pattern)
        gens[name].GLUON_GLOBALS_FWD_64 = 0  # Gluon forward at every length where asked
        plans, tables = gens[name]._plans(2048, 2048, 1, 128, 128, None, None, "cpu")
        print(name, "components:", [c.kind for c in plans[0].components],
              "ranges:", [t["use_ranges"] for t in tables], flush=True)
    rules = {name: g._gluon_forward_ok for name, g in gens.items()}

    def setv(variant):
        tree, fwd, bwd = variant.split("/")
        os.environ["ATTNLANG_GLUON"] = "1" if bwd == "gluon" else "0"
        gens[tree]._gluon_forward_ok = rules[tree] if fwd == "gluon" else (lambda *a: False)
        gens[tree]._CALLS.clear()
        return mods[tree]

    # correctness: small shapes against float32, every variant
    torch.manual_seed(0)
    variants = ["old/gluon/gluon", "old/tl/gluon", "new/tl/gluon", "new/tl/tl", "old/tl/tl"]
    for D in [int(x) for x in args.dims.split(",")]:
        for L in (1000, 2085):
            q, k, v, do = (torch.randn(1, 4, L, D, device="cuda", dtype=torch.bfloat16)
                           for _ in range(4))
            ref, rgrads = reference(q, k, v, do)
            for variant in variants:
                mod = setv(variant)
                g = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
                out = mod(*g)
                out.backward(do)
                errs = [rel(out, ref)] + [rel(t.grad, r) for t, r in zip(g, rgrads)]
                print(f"check D={D} L={L} {variant}: rel err out/dq/dk/dv "
                      + " ".join(f"{e:.1e}" for e in errs)
                      + (" OK" if max(errs) < 2e-2 else " FAIL"), flush=True)
    for D in [int(x) for x in args.dims.split(",")]:
        for L in [int(x) for x in args.lengths.split(",")]:
            B, H = max(1, 16384 // L), 16
            q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                           for _ in range(4))
            g = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
            fwd = {vr: [] for vr in ["old/gluon/gluon", "old/tl/gluon", "new/tl/gluon"]}
            step = {vr: [] for vr in variants}
            outs = {}
            for r in range(args.rounds):
                for vr in (list(fwd) if r % 2 == 0 else list(fwd)[::-1]):
                    mod = setv(vr)
                    with torch.no_grad():
                        outs[vr] = mod(q, k, v)
                        fwd[vr].append(do_bench(lambda: mod(q, k, v), warmup=25, rep=150,
                                                return_mode="median"))
                for vr in (variants if r % 2 == 0 else variants[::-1]):
                    mod = setv(vr)

                    def run():
                        mod(*g).backward(do)
                    step[vr].append(do_bench(run, warmup=10, rep=150, grad_to_none=g,
                                             return_mode="median"))
            base = outs["old/gluon/gluon"]
            print(f"D={D} L={L} fwd ms: " + " | ".join(
                f"{vr} {sorted(t)[len(t) // 2]:.4f} ({rel(outs[vr], base):.0e})"
                for vr, t in fwd.items()), flush=True)
            print(f"D={D} L={L} step ms: " + " | ".join(
                f"{vr} {sorted(t)[len(t) // 2]:.4f}" for vr, t in step.items()), flush=True)
            print(f"   rounds: fwd {fwd} step {step}", flush=True)
            del q, k, v, do, g
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
