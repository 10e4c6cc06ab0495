"""GPU check of the descriptors made on the host (HOST_DESC, docs/runtime.md): each pattern's
module runs fwd+bwd four times on the same inputs (8k tokens, B = 2, 16 heads, d = 64 and 128);
calls 2-4, through the kept calls' direct launches, must equal call 1 bit for bit, and the whole
run must equal the same four calls with the kernels making their own descriptors bit for bit.

    python benchmarks/descriptor_check.py

Prints per pattern and head dim how many launches through `_launch` carried host descriptors and
both comparisons (results/direct_check_r15.log, direct_check_r15b.log).  It checks the `tl`
kernels (ATTNLANG_GLUON=0): the Gluon backward adds dQ up with atomics, in no fixed order, so
its calls do not repeat bit for bit (`gpu_check.py --gluon` checks the Gluon kernels)."""
import os

import torch
import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module
os.environ["ATTNLANG_GLUON"] = "0"
torch.manual_seed(0)
n = 8192
seg = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
for text in ["causal", "window(512)", "window(512) | global(0..128)", "causal & segment",
             "causal & (window(127, 0) | stride(128))", "window(2048) & stride(4)"]:
    for d in (64, 128):
        pattern = attnlang.parse(f"pattern x = {text}")["x"]
        m = pattern.module(backend="triton")
        gen = load_module(pattern)
        q, k, v = (torch.randn(2, 16, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        kw = dict(segments=seg) if "segment" in text else {}
        host = []
        orig = gen._launch
        def spy(kernel, grid, args, options, *extra, orig=orig):
            host.append(bool(options.get("HOST_DESC")))
            return orig(kernel, grid, args, options, *extra)
        gen._launch = spy
        runs = {}
        for mode in ("host", "kernel-made"):
            if mode == "kernel-made":
                saved, gen._TensorDescriptor = gen._TensorDescriptor, None
            results = []
            for call in range(4):
                for t in (q, k, v):
                    t.grad = None
                out = m(q, k, v, **kw)
                out.backward(do)
                torch.cuda.synchronize()
                results.append([out.detach().clone()] + [t.grad.clone() for t in (q, k, v)])
            if mode == "kernel-made":
                gen._TensorDescriptor = saved
            runs[mode] = results
        gen._launch = orig
        same = all(torch.equal(a, b) for r in runs["host"][1:] for a, b in zip(r, runs["host"][0]))
        equal = all(torch.equal(a, b) for a, b in zip(runs["host"][0], runs["kernel-made"][0]))
        print(f"{text:42s} d={d:3d} host-desc launches via _launch: {sum(host)}/{len(host)}; calls 2-4 == call 1: {same}; host == kernel-made: {equal}", flush=True)
