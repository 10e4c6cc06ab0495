"""A document call whose ids sit at an address that is not a multiple of 16 bytes (a view 4 bytes
into a tensor) on the GPU: the Gluon backward copies them before making its descriptor of the
query ids, so it must give the gradients of the same ids at an aligned address, and keep the
Gluon module (a failure would warn, which this script turns into an error).

    python benchmarks/docs_ids_check.py
"""
import warnings

import torch

import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module
warnings.simplefilter("error")
torch.manual_seed(0)
for D in (64, 128):
    L = 4000
    q, k, v, do = (torch.randn(2, 4, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    ids = random_documents(L, 16, "cuda", torch.Generator().manual_seed(1)).to(torch.int32)
    big = torch.cat([torch.zeros(1, dtype=torch.int32, device="cuda"), ids])
    odd = big[1:]
    assert odd.data_ptr() % 16 and torch.equal(odd, ids)
    pat = attnlang.parse("pattern x = causal & segment")["x"]
    mod = pat.module(backend="triton")
    gen = load_module(pat)
    gen.GLUON_DOCS = dict.fromkeys(gen.GLUON_DOCS, 0)
    res = []
    for seg in (ids, odd):
        g = [t.detach().requires_grad_(True) for t in (q, k, v)]
        mod(*g, segments=seg).backward(do)
        res.append([t.grad for t in g])
    gm = load_module(pat)._GLUON.get("gluon_backward")
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(*res))
    print(f"D={D} gluon module loaded: {gm is not None}; aligned vs unaligned ids max grad diff "
          f"{diff:.2e}")
    assert gm is not None and diff < 1e-2
print("unaligned ids ok")
