"""The order in which launches take the heads, A/B on the GPU (NOTES round 23): the Gluon
backward's HEAD_GROUP (heads whose key blocks its grid interleaves) and the `tl` query
programs' INTERLEAVE (causal-like rows on short sequences), each variant set on the generated
module as attnlang runs it, variants interleaved over three rounds on the same inputs,
`do_bench` medians.

    python benchmarks/head_order.py backward [128] [64]   # HEAD_GROUP 1 / 2 / 4: training steps
    python benchmarks/head_order.py forward               # INTERLEAVE 1 / 2: forwards (and the
                                                          # causal step), d = 128 and 64
    python benchmarks/head_order.py gluon-forward         # the Gluon forward's HEAD_GROUP
                                                          # 1 / 2 / 4 / 8 on causal rows

The last one calls `gluon_forward.forward` itself: first each group against one head at a time
on shapes whose heads do not fill the last group (outputs and log-sum-exps equal bit for bit),
then five rounds that alternate the variants' order, each variant's median and its rounds.

`causal & segment` takes the benchmark's 64 random documents (`attnlang.bench`) and runs the
Gluon backward at every length here (GLUON_DOCS all 0), with the `tl` backward's
step beside it ("tl").  The first variant's gradients are compared with the last's.
"""
import os
import sys

import torch
from triton.testing import do_bench

import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module
from gluon_bwd import max_rel

BANDS = ["causal", "causal & window(1023, 0)", "window(512)", "all"]


def _inputs(B, H, L, D):
    q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    return q, k, v, do, [t.detach().requires_grad_(True) for t in (q, k, v)]


def _medians(pattern, variants, set_variant, run, rounds=3):
    """{variant: median over rounds of do_bench's time} and {variant: last result}."""
    generated = load_module(pattern)
    times, results = {name: [] for name in variants}, {}
    for _ in range(rounds):
        for name in variants:
            set_variant(generated, name)
            generated._CALLS.clear()
            generated._SHAPES.clear()
            generated._SEG_MEMO.clear()
            results[name], time = run()
            times[name].append(time)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}, results


def alternating(runs, rounds, rep=150):
    """{name: [do_bench median of each round]} of ``runs`` ({name: fn}): ``rounds`` rounds, each
    timing every run once, the order reversed every other round, so that a drift of the GPU's
    speed over the run falls on every run alike."""
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(do_bench(runs[name], warmup=25, rep=rep, return_mode="median"))
    return times


def variant_rounds(names, rounds, set_variant, forward, step, params):
    """Forwards and training steps of each variant of ``names`` (set by ``set_variant(name)``),
    alternated as `alternating` does: ({name: [forward ms per round]}, {name: [step ms per
    round]}, {name: (its last output, its last gradients of ``params``)}); ``forward()`` returns
    the output (run without autograd), ``step()`` runs a forward and its backward."""
    fwd, steps, results = {name: [] for name in names}, {name: [] for name in names}, {}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            set_variant(name)
            with torch.no_grad():
                out = forward().float()
                fwd[name].append(do_bench(forward, warmup=25, rep=150, return_mode="median"))
            for t in params:
                t.grad = None
            step()
            results[name] = out, [t.grad.float().clone() for t in params]
            steps[name].append(do_bench(step, warmup=10, rep=150, grad_to_none=params,
                                        return_mode="median"))
    return fwd, steps, results


def print_variants(head, fwd, steps, notes):
    """Print what `variant_rounds` measured: ``head``, then each variant's median forward with
    ``notes[name]`` beside it; each variant's median step; every round's times."""
    med = {name: sorted(t)[len(t) // 2] for name, t in fwd.items()}
    smed = {name: sorted(t)[len(t) // 2] for name, t in steps.items()}
    print(f"{head} | " + " | ".join(f"{n} {med[n]:.4f} ({notes[n]})" for n in fwd), flush=True)
    print(f"{'':30s} step | " + " | ".join(f"{n} {smed[n]:.4f}" for n in steps), flush=True)
    print(f"   rounds fwd {fwd} step {steps}", flush=True)


def _step_runner(module, grads, do, extra):
    """A `_medians` run of training steps: one step's gradients, and do_bench's time."""
    def run():
        def step():
            module(*grads, **extra).backward(do)
        for t in grads:
            t.grad = None
        step()
        return ([t.grad.clone() for t in grads],
                do_bench(step, warmup=25, rep=150, grad_to_none=grads))
    return run


def backward(dims):
    for D in dims:
        for L in (8192, 16384, 32768):
            B, H = max(1, 16384 // L), 16
            q, k, v, do, grads = _inputs(B, H, L, D)
            ids = random_documents(L, 64, "cuda", torch.Generator().manual_seed(0))
            for text in BANDS + ["causal & segment"]:
                segment = "segment" in text
                if (segment and D != 128) or (L == 16384 and not segment):
                    continue
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                module = pattern.module(backend="triton")
                extra = dict(segments=ids) if segment else {}
                gen = load_module(pattern)
                gen.GLUON_DOCS = dict.fromkeys(gen.GLUON_DOCS, 0)

                def set_variant(generated, name):
                    os.environ["ATTNLANG_GLUON"] = "0" if name == "tl" else "1"
                    if name != "tl":
                        generated._gluon_module("gluon_backward").HEAD_GROUP = int(name)

                run = _step_runner(module, grads, do, extra)
                variants = ["1", "2", "4"] + (["tl"] if segment else [])
                ms, res = _medians(pattern, variants, set_variant, run)
                diff = max(max_rel(a, b) for a, b in zip(res["4"], res["1"]))
                print(f"{text:26s} L={L:6d} D={D:3d} grads 4 vs 1 {diff:.1e} | step ms "
                      + " ".join(f"{name} {ms[name]:.3f}" for name in variants)
                      + f" | 2: {ms['1'] / ms['2']:.3f}x 4: {ms['1'] / ms['4']:.3f}x", flush=True)
            del q, k, v, do, grads
            torch.cuda.empty_cache()
    os.environ.pop("ATTNLANG_GLUON", None)


def forward():
    for D in (128, 64):
        for L in (8192, 32768):
            B, H = max(1, 16384 // L), 16
            q, k, v, do, grads = _inputs(B, H, L, D)
            for text in BANDS:
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                module = pattern.module(backend="triton")

                def set_variant(generated, name):
                    generated.INTERLEAVE = int(name)

                def run():
                    out = module(q, k, v)
                    return out, do_bench(lambda: module(q, k, v), warmup=25, rep=100)
                ms, res = _medians(pattern, ["1", "2"], set_variant, run)
                same = torch.equal(res["1"], res["2"])
                line = (f"{text:26s} L={L:6d} D={D:3d} same output {same}"
                        f" | fwd ms 1 {ms['1']:.3f} 2 {ms['2']:.3f} ({ms['1'] / ms['2']:.3f}x)")
                if text == "causal":
                    def run_step():
                        def step():
                            module(*grads).backward(do)
                        return None, do_bench(step, warmup=10, rep=100, grad_to_none=grads)
                    st, _ = _medians(pattern, ["1", "2"], set_variant, run_step)
                    line += f" | step ms 1 {st['1']:.3f} 2 {st['2']:.3f} ({st['1'] / st['2']:.3f}x)"
                print(line, flush=True)
            del q, k, v, do, grads
            torch.cuda.empty_cache()


def gluon_forward(groups=(1, 2, 4, 8), rounds=5):
    from attnlang import gluon_forward as gf
    chosen = dict(gf.HEAD_GROUP)
    for D in (128, 64):
        for B, H, L in ((1, 3, 1000), (2, 3, 777)):
            q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            gf.HEAD_GROUP[D] = 1
            want = gf.forward(q, k, v, D ** -0.5, None, 0)
            for G in groups[1:]:
                gf.HEAD_GROUP[D] = G
                got = gf.forward(q, k, v, D ** -0.5, None, 0)
                same = all(torch.equal(a, b) for a, b in zip(got, want))
                print(f"check D={D} B={B} H={H} L={L} G={G}: "
                      f"{'equal' if same else 'DIFFERENT'}", flush=True)
    for D in (128, 64):
        for L in (8192, 32768):
            B = max(1, 16384 // L)
            q, k, v = (torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))

            def run(G):
                def forward():
                    gf.HEAD_GROUP[D] = G
                    return gf.forward(q, k, v, D ** -0.5, None, 0)
                return forward
            times = alternating({G: run(G) for G in groups}, rounds)
            med = {G: sorted(t)[len(t) // 2] for G, t in times.items()}
            print(f"causal D={D} L={L:6d} " + " ".join(
                f"G{G} {med[G]:.3f} ({med[groups[0]] / med[G]:.3f}x)" for G in groups)
                + "  rounds " + str({G: [round(x, 3) for x in t] for G, t in times.items()}),
                flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    gf.HEAD_GROUP.update(chosen)


if __name__ == "__main__":
    if sys.argv[1:2] == ["forward"]:
        forward()
    elif sys.argv[1:2] == ["gluon-forward"]:
        gluon_forward()
    else:
        backward([int(a) for a in sys.argv[2:] if a.isdigit()] or [128, 64])
