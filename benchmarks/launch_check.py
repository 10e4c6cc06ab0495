"""Launches through Triton (a call's first) and straight to the compiled kernels (the calls after
it: `_launch`'s direct path and `_bare_launcher`, which on Triton 3.6 calls the C launcher beneath
`CudaLauncher` with host descriptors' TMA maps kept) give the same results: the forward and dK/dV
bit for bit, dQ within float32 rounding (the Gluon backward adds it up with atomics), for every
pattern of the benchmark at 8k tokens, d = 64 and 128.  Also counts, per generated module, the
compiled kernels whose launcher `_bare_launcher` knows, and how many take host descriptors.

    python benchmarks/launch_check.py        # on the GPU machine
"""
import sys

import torch

import attnlang
from attnlang.bench import HEADS, SUITE, random_documents
from attnlang.cache import load_module


def main():
    bad = 0
    for d in (64, 128):
        n, B = 8192, 2
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(B, HEADS, n, d, device="cuda", dtype=torch.bfloat16,
                                   generator=g) for _ in range(4))
        seg = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
        for text in list(SUITE) + ["all"]:
            pattern = attnlang.parse(f"pattern x = {text}")["x"]
            mod, gen = pattern.module(backend="triton"), load_module(pattern)
            kw = dict(segments=seg) if "segment" in text else {}
            outs = [mod(q, k, v, **kw) for _ in range(3)]
            grads = []
            for _ in range(3):
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                mod(qg, kg, vg, **kw).backward(do)
                grads.append((qg.grad, kg.grad, vg.grad))
            torch.cuda.synchronize()
            entries = [e for e in gen._DIRECT.values() if e]
            known = [gen._triton_launch(e[0].run) for e in entries]
            same_out = all(torch.equal(outs[0], o) for o in outs[1:])
            same_kv = all(torch.equal(grads[0][i], later[i]) for later in grads[1:]
                          for i in (1, 2))
            dq = max(((later[0].float() - grads[0][0].float()).abs().max()
                      / grads[0][0].float().abs().max()).item() for later in grads[1:])
            ok = same_out and same_kv and dq < 1e-2
            bad += not ok
            print(f"{text:52s} d={d} n={n} out same {same_out} dk/dv same {same_kv} dq rel "
                  f"{dq:.1e} direct {len(entries)} bare-known "
                  f"{sum(x is not None for x in known)} with-desc "
                  f"{sum(bool(x and x[1]) for x in known)} {'ok' if ok else 'FAIL'}", flush=True)
    print("FAILED" if bad else "all ok", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
