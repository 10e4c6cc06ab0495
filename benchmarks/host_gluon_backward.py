"""Host time of the pieces of a Gluon backward over residue classes (the dilated pattern
`window(2048) & stride(4)` at 8k tokens, d = 64, where its training step is bound by the host),
and of training steps on the GPU host.

    taskset -c 11 python benchmarks/host_gluon_backward.py [--n 8192] [--d 64]
        [--old attnlang._old_gb] [--steps materialize|threads]

Each piece is called back to back 100 times per round (fewer than the launch queue holds, so the
host never waits for the GPU), median of five rounds; ``--old`` names another copy of
`gluon_backward` (an earlier version, copied into the package) whose whole backward is timed
beside this one's.  The steps (module, fwd+bwd) as `host_overhead.py` times them, the host's
time and `do_bench`'s, two variants interleaved in five rounds: with and without the zero
gradient autograd made for the log-sum-exp (``materialize``: `custom_ops._Eager`'s
``set_materialize_grads(False)``, patched out), or the backward on autograd's device thread (as
the benchmark runs it) and on the calling thread (``threads``).
Results: benchmarks/results/host_gluon_bwd_r45a.log (``materialize``), host_gluon_bwd_r45b.log.
"""
import argparse
import importlib
import math

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH, _host_ms, random_documents
from attnlang.cache import load_module


def host_us(fn, reps=100, rounds=5):
    """Median over rounds of the host's µs per call of ``fn`` (`bench._host_ms` without the
    wait; the logs were made with the same loop written out here, five warm-up calls instead of
    ten)."""
    return _host_ms(fn, reps=reps, rounds=rounds, wait=False) * 1000


def pieces(n, d, batch, old=None):
    text = "window(2048) & stride(4)"
    gen = load_module(attnlang.parse(f"pattern x = {text}")["x"])
    gb = gen._gluon_module("gluon_backward")
    gh = gen._gluon_module("gluon_hopper")
    q, k, v, do = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    scale = 1 / math.sqrt(d)
    out, lse, plan = gen.attention_forward_with_plan(q, k, v, scale, None, None, None, None,
                                                     None, 0.0, 0, False)
    print(f"{text} n={n} d={d}: plan.gluon={plan.gluon}, GLUON_CLASSES={gen.GLUON_CLASSES}")
    step = gen.GLUON_CLASSES.get("step", 1)
    keys = gen._gluon_keys(q, k)
    views = [gh.residue_classes(t, step) for t in (q, k, v, out, do)]
    dq32 = torch.empty(q.shape, dtype=torch.float32, device="cuda")
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dqv, dkv, dvv = (gh.residue_classes(t, step) for t in (dq32, dk, dv))
    lsev = lse.reshape(-1, lse.shape[2] // step, step).transpose(1, 2)
    terms, _ = gb.row_terms(views[3], views[4], lsev, gen._launch, dqv)
    back, ahead = gh.band_bounds(*gh.class_band(*gen.GLUON_BAND, step), n // step, n // step)
    bounds = (back, ahead, 0, 0, 0, 0, 0, 0, min(gb.HEAD_GROUP, batch * HEADS * step),
              int(back < ahead))
    modes = dict(SEGMENTS=False, GLOBAL=False, FIRST=False)
    tensors = (views[0], views[1], views[2], views[4], dkv, dvv, dqv)
    rows = {
        "backward, planned (template)": lambda: gen.attention_backward(
            do, q, k, v, out, lse, scale, None, None, None, None, None, 0.0, 0, False, plan),
        "gluon_backward.backward": lambda: gb.backward(
            q, k, v, out, do, lse, scale, *gen.GLUON_BAND, launch=gen._launch, keys=keys,
            **gen.GLUON_GLOBALS, **gen.GLUON_CLASSES),
        **({} if old is None else {f"{old.__name__}.backward": lambda: old.backward(
            q, k, v, out, do, lse, scale, *gen.GLUON_BAND, launch=gen._launch, keys=keys,
            **gen.GLUON_GLOBALS, **gen.GLUON_CLASSES)}),
        "3 empty (dk, dv, dq f32)": lambda: (torch.empty(k.shape, dtype=k.dtype, device="cuda"),
                                             torch.empty(v.shape, dtype=v.dtype, device="cuda"),
                                             torch.empty(q.shape, dtype=torch.float32,
                                                         device="cuda")),
        "8 residue_classes views": lambda: [gh.residue_classes(t, step)
                                            for t in (q, k, v, out, do, dq32, dk, dv)],
        "lse class view": lambda: lse.reshape(-1, lse.shape[2] // step, step).transpose(1, 2),
        "row_terms (empty + launch)": lambda: gb.row_terms(views[3], views[4], lsev,
                                                           gen._launch, dqv),
        "8 descriptors": lambda: ([gh.descriptor(t, gb.BM) for t in (views[0], views[4], dqv)]
                                  + [gh.descriptor(t, keys) for t in (views[1], views[2], dkv,
                                                                      dvv)]
                                  + [gb.rows_descriptor(terms)]),
        "band kernel launch (_launch_kernel)": lambda: gb._launch_kernel(
            gen._launch, tensors, terms, keys, bounds, (terms, terms, None, terms, 0), scale,
            modes),
        "cast dq f32 -> bf16": lambda: dq32.to(q.dtype),
        "one torch.empty": lambda: torch.empty(q.shape, dtype=q.dtype, device="cuda"),
        "one view + transpose": lambda: q.view(batch * HEADS, n // step, step, d).transpose(1, 2),
        "one as_strided": lambda: q.as_strided((batch * HEADS, step, n // step, d),
                                               (n * d, d, step * d, 1)),
        "one shape + stride + data_ptr": lambda: (q.shape, q.stride(), q.data_ptr()),
    }
    for name, fn in rows.items():
        print(f"  {name:40s} {host_us(fn):8.1f} us", flush=True)


def steps(n, d, batch, what):
    """Training steps (module, fwd+bwd) in two variants (``what``: the module docstring's)."""
    from torch.autograd.function import FunctionCtx
    real = FunctionCtx.set_materialize_grads
    seg = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    q, k, v = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(q)
    variants = {"materialize": ("zero dlse", "no zero dlse"),
                "threads": ("device thread", "calling thread")}[what]
    print(f"{'pattern':42s} {'variant':16s} {'host us':>9s} {'do_bench us':>12s}")
    for text in ("causal & segment", "causal & (window(127, 0) | stride(128))",
                 "window(2048) & stride(4)"):
        module = attnlang.parse(f"pattern x = {text}")["x"].module(backend="triton")
        kw = dict(segments=seg) if "segment" in text else {}

        def step(one_thread):
            with torch.autograd.set_multithreading_enabled(not one_thread):
                for t in (qg, kg, vg):
                    t.grad = None
                module(qg, kg, vg, **kw).backward(do)
        found = {}
        for _ in range(5):
            for variant in variants:
                if variant == "zero dlse":
                    FunctionCtx.set_materialize_grads = lambda self, value: None
                one = variant != "device thread"
                try:
                    found.setdefault(variant, []).append(
                        (host_us(lambda: step(one), reps=50, rounds=1),
                         do_bench(lambda: step(one), warmup=5, rep=40,
                                  return_mode="median") * 1000))
                finally:
                    FunctionCtx.set_materialize_grads = real
        for variant, got in found.items():
            hosts, benches = sorted(h for h, _ in got), sorted(b for _, b in got)
            print(f"{text:42s} {variant:16s} {hosts[2]:9.1f} {benches[2]:12.1f}  "
                  f"(min {hosts[0]:.1f} / {benches[0]:.1f})", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--old", help="another copy of gluon_backward to time beside it")
    parser.add_argument("--steps", choices=["materialize", "threads"], default="threads")
    args = parser.parse_args()
    batch = max(1, TOKENS_PER_BATCH // args.n)
    pieces(args.n, args.d, batch, args.old and importlib.import_module(args.old))
    steps(args.n, args.d, batch, args.steps)


if __name__ == "__main__":
    main()
