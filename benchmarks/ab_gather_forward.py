"""The fixed pattern's forward on the Gluon kernel (GLUON_GATHER_FWD: each tile's packed summary
columns, then its chunk) against the `tl` one-pass forward, in one process on the same inputs:
outputs against the `tl` forward's (bf16: max difference over max value), then interleaved
rounds of `do_bench` medians -- the forward alone (`tl`; Gluon one program a tile; Gluon
persistent, `gluon_forward.GATHER_PERSISTENT_MIN` set to 0, two heads at a time or every head:
`GATHER_HEAD_GROUP`) and the training step with each forward (the backward as the module runs
it).  16 heads, 16k tokens per batch, d = 128, or (``--d 64``) d = 64, which the generated
modules do not give the Gluon forward: the script lets it (GLUON_GATHER_FWD_DIMS) for its own
calls, with `gluon_forward.config_of`'s gather tiles.

    python benchmarks/ab_gather_forward.py [--d 64] [--lengths 8192,16384,32768] [--rounds 5]
        [--base FILE] [--profile]

``--base FILE``: another version of attnlang/gluon_forward.py (``git show REV:...``) against
this one, both persistent with every head at once, in place of the Gluon variants above.
``--profile``: then each variant's forward kernels' GPU time (torch.profiler, 20 calls), apart
from the host's.

(results/ab_gather_forward_r58d.log ran it with GATHER_PERSISTENT, the flag that
GATHER_PERSISTENT_MIN replaced, off and on.)
"""
import importlib.util
import os
import statistics
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attnlang  # noqa: E402
from profile_kernels import kernel_times  # noqa: E402
from attnlang.cache import load_module  # noqa: E402

FIXED = "causal & (chunk(128) | cols(every(128, 112..128)))"


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def load_file(name, path):
    """The file ``path`` imported as the module ``name`` (its relative imports from name's
    package): another version of a module beside this tree's."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_base(gen, path):
    """The file ``path`` as a Gluon forward module of the generated module ``gen`` (its own
    imports relative to the copies the module loads)."""
    module = load_file(f"{gen.__name__}._support.gluon_forward_base", path)
    if not hasattr(module, "reads_runs"):  # (before round 59: packed keys copied)
        module.reads_runs = lambda *args: False
    return module


def main():
    lengths = [int(n) for n in arg("--lengths", "8192,16384,32768").split(",")]
    rounds = int(arg("--rounds", "5"))
    D = int(arg("--d", "128"))
    pattern = attnlang.parse(f"pattern x = {FIXED}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    gf = gen._gluon_module("gluon_forward")
    rule, chosen = gen._gluon_forward_ok, (gf.GATHER_PERSISTENT_MIN, gf.GATHER_HEAD_GROUP)
    gen.GLUON_GATHER_FWD_DIMS = (D,)  # (the module's rule at d = 128; d = 64 let in here)

    def use(ok, order, module=gf):
        gen._gluon_forward_ok = ok
        gen._GLUON["gluon_forward"] = module
        module.GATHER_PERSISTENT_MIN, module.GATHER_HEAD_GROUP = order

    # (the forward's rule, (GATHER_PERSISTENT_MIN, GATHER_HEAD_GROUP)[, its module])
    variants = {"tl": (lambda *a: False, (1 << 30, None)), "gluon": (rule, (1 << 30, None)),
                "gluon persistent 2": (rule, (0, 2)), "gluon persistent": (rule, (0, None))}
    if "--base" in sys.argv:
        variants = {"tl": variants["tl"],
                    "base persistent": (rule, (0, None), load_base(gen, arg("--base", ""))),
                    "gluon persistent": variants["gluon persistent"]}
    for L in lengths:
        B, H = max(1, 16384 // L), 16
        q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def step():
            mod(qg, kg, vg).backward(do)
        outs = {}
        for name, how in variants.items():
            use(*how)
            with torch.no_grad():
                outs[name] = mod(q, k, v).float()
        scale = outs["tl"].abs().max().item()
        print(f"D={D} L={L}: outputs against tl's, max difference / max value: " + ", ".join(
            f"{n} {(o - outs['tl']).abs().max().item() / scale:.1e}"
            for n, o in outs.items() if n != "tl"), flush=True)
        fwd = {n: [] for n in variants}
        steps = {n: [] for n in variants}
        for _ in range(rounds):
            for name, how in variants.items():
                use(*how)
                with torch.no_grad():
                    fwd[name].append(do_bench(lambda: mod(q, k, v), warmup=10, rep=100,
                                              return_mode="median"))
                steps[name].append(do_bench(step, warmup=10, rep=100, grad_to_none=[qg, kg, vg],
                                            return_mode="median"))
        base_f, base_s = statistics.median(fwd["tl"]), statistics.median(steps["tl"])
        for name in variants:
            f, s = statistics.median(fwd[name]), statistics.median(steps[name])
            print(f"D={D} L={L} {name:18s} forward {f:.4f} ms ({base_f / f:.3f}x tl)  step "
                  f"{s:.4f} ms ({base_s / s:.3f}x)  rounds "
                  + " ".join(f"{x:.4f}" for x in fwd[name]), flush=True)
        if "--profile" in sys.argv:
            for name, how in variants.items():
                use(*how)
                with torch.no_grad():
                    times = kernel_times(lambda: mod(q, k, v), reps=20)
                print(f"D={D} L={L} {name:18s} kernels (µs a call): " + ", ".join(
                    f"{kern[:40]} {t / n:.1f}" for kern, (t, n) in times.items()), flush=True)
        use(rule, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
