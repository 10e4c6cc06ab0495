"""GPU check of launches rebound to new document ids (`_rebound`): for each new ids tensor, the
module's fwd+bwd through the rebound launches must equal, bit for bit, the same call with
nothing kept (launches prepared from scratch), and the rebound path must be the one taken.
Two document patterns, d = 64 and 128, 8k tokens, B = 2, 16 heads; six ids tensors each: sorted,
out of order, one row for the batch and one per batch row (the first of each shape has no
earlier call to take launches from).

    python benchmarks/rebind_check.py

Results: benchmarks/results/rebind_check_r17.log."""
import torch
import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module

n = 8192
for d in (64, 128):
    for text in ("causal & segment", "window(256, 0) & segment"):
        pattern = attnlang.parse(f"pattern x = {text}")["x"]
        m = pattern.module(backend="triton")
        gen = load_module(pattern)
        q, k, v = (torch.randn(2, 16, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        prepared = []
        real = gen._forward_launches
        gen._forward_launches = lambda *a: (prepared.append(1), real(*a))[1]
        def step(seg):
            for t in (q, k, v):
                t.grad = None
            out = m(q, k, v, segments=seg)
            out.backward(do)
            torch.cuda.synchronize()
            return [t.clone() for t in (out, q.grad, k.grad, v.grad)]
        ids = [random_documents(n, c, "cuda", torch.Generator().manual_seed(c)) for c in (64, 64, 8, 200)]
        ids[2] = ids[2].flip(0)  # out of order
        ids.append(torch.stack([ids[0], ids[3]]))  # per batch row
        ids.append(torch.stack([ids[1], ids[2]]))
        ok, rebound = True, 0
        for i, seg in enumerate(ids):
            prepared.clear()
            got = step(seg.clone())
            rebound += not prepared
            gen._SHAPES.clear(); gen._SEG_MEMO.clear()
            want = step(seg.clone())
            ok &= all(torch.equal(a, b) for a, b in zip(got, want))
            step(seg.clone())  # leaves this shape's template for the next ids
        gen._forward_launches = real
        print(f"{text:28s} d={d:3d}: {len(ids)} new ids tensors, {rebound} rebound, "
              f"rebound == from scratch bit for bit: {ok}")
