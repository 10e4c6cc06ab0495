"""What the Gluon kernels' launches cost the host.

    python benchmarks/gluon_host.py            # on the GPU machine
    python benchmarks/gluon_host.py --product

The first form times the Gluon backward's parts (`attnlang/gluon_backward.py`, launched through
Triton's binder) on small shapes, so that the GPU never holds the host back.  The second times
generated modules of band patterns at 8k tokens, their Gluon kernels launched through Triton's
binder ("jit") and directly after a first launch (the modules' `_launch`, "direct"), twice each
in turn: host time per call (calls back to back) and `do_bench`'s median of a forward and of a
training step.
"""
import sys
import torch
import triton
from triton.testing import do_bench

import attnlang
from attnlang import gluon_backward as gb
from attnlang.cache import load_module
from attnlang.gluon_hopper import LOG2E, descriptor, jit_launch
from host_overhead import host_us

B, H, L, D = 1, 2, 1024, 128


def timeit(name, fn):
    print(f"{name:40s} {host_us(fn, reps=300):8.1f} us", flush=True)


def product():
    for text, D in (("causal & window(1023, 0)", 128), ("window(512)", 128), ("causal", 64)):
        L, B, H = 8192, 2, 16
        q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        pattern = attnlang.parse(f"pattern x = {text}")["x"]
        mod = pattern.module(backend="triton")
        generated = load_module(pattern)
        direct = generated._launch

        def binder(kernel, grid, args, options, extra=()):
            return jit_launch(kernel, grid, args, options)
        for mode in ("jit", "direct", "jit", "direct"):
            generated._launch = direct if mode == "direct" else binder
            results = []
            for fn in (lambda: mod(q, k, v), lambda: mod(qg, kg, vg).backward(do)):
                host = host_us(fn, reps=40)
                ms = do_bench(fn, warmup=25, rep=200, grad_to_none=[qg, kg, vg],
                              return_mode="median")
                results.append(f"host {host:6.0f} us bench {ms:.4f} ms")
            print(f"{text:26s} D={D} {mode:6s} fwd: {results[0]} | step: {results[1]}",
                  flush=True)
        generated._launch = direct


def main():
    if "--product" in sys.argv:
        return product()
    q, k, v, out, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
                        for _ in range(5))
    lse = torch.randn(B, H, L, device="cuda")
    scale = D ** -0.5
    timeit("whole backward()", lambda: gb.backward(q, k, v, out, do, lse, scale, None, 0))
    timeit("row_terms (and dQ's zeros)", lambda: gb.row_terms(out, do, lse))
    timeit("torch.empty dk", lambda: torch.empty(k.shape, dtype=k.dtype, device="cuda"))
    timeit("descriptor x1", lambda: descriptor(q, gb.BM))
    rows, dq = gb.row_terms(out, do, lse)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    rows_desc = gb.rows_descriptor(rows)
    descs = [descriptor(q, gb.BM), descriptor(k, gb.BN), descriptor(v, gb.BN),
             descriptor(do, gb.BM), descriptor(dk, gb.BN), descriptor(dv, gb.BN),
             descriptor(dq, gb.BM), rows_desc]

    def launch():
        return gb.band_backward_kernel[(triton.cdiv(L, gb.BN) * B * H,)](
            *descs, B * H, H, L, L, 2 * L, 0, *(0,) * 6, gb.HEAD_GROUP, 0, scale * LOG2E,
            scale, rows, rows, rows_desc, rows, 0, gb.BM, gb.BN, D, gb.STAGES[D], False, False,
            False, num_warps=gb.BN // 16, maxnreg=gb.MAXNREG[gb.BN])
    timeit("kernel launch (JIT, descriptors kept)", launch)
    timeit("cast dq", lambda: dq[:, :, :L].to(q.dtype))


if __name__ == "__main__":
    main()
