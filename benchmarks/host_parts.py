"""Host time of the pieces of a document mask's layout build (`_prepare` of a training forward:
the bounds of its query blocks and its backward's key blocks in one launch) on the GPU host, at
32k tokens, d = 64 and 128: each piece called alone, back to back, median of five rounds
(the logs were made with the same loop written out here, which stopped each round's clock before
its final synchronisation instead of after it: a difference of one wait in 2000 calls).

    python benchmarks/host_parts.py

Results: benchmarks/results/host_parts_r18a.log (at d46514a), host_parts_r18b.log (at ed03e5a)."""
import os
import torch
import attnlang
from attnlang.bench import _host_ms, random_documents
from attnlang.cache import load_module


def host(fn):
    """µs per call of ``fn`` called back to back (median of five rounds of 2000)."""
    return _host_ms(fn, reps=2000) * 1000


gen = load_module(attnlang.parse("pattern x = causal & segment")["x"])
for n, d in ((32768, 64), (32768, 128)):
    q = torch.randn(1, 16, n, d, device="cuda", dtype=torch.bfloat16)
    seg = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0)).to(torch.int32)[None]
    kt = gen._tiles(q, d, "dkdv", n, q)[:2]
    bm, bn, opts = gen._tiles(q, d, "fwd", n, q)
    build = lambda: gen._prepare(q, q, "fwd", seg, seg, None, None, kt)
    build(); torch.cuda.synchronize()
    p, sizes = gen._bounds_launch("fwd", n, n, 1, bm, bn, kt, str(q.device))
    parts = torch.empty(sum(sizes), dtype=torch.int32, device="cuda").split(sizes)
    head = (parts[-1], seg, seg, parts[0], seg, seg, parts[1], gen._token())
    key = (0, gen._specialisation(head), None)
    compiled, named = p.direct[key]
    stream = gen._current_stream()[1]
    ptrs = [t.data_ptr() if isinstance(t, torch.Tensor) else t for t in head]
    rows = [
        ("whole _prepare", build),
        ("_tiles fwd", lambda: gen._tiles(q, d, "fwd", n, q)),
        ("_segment_tables", lambda: gen._segment_tables(q, q, "fwd", seg, seg, bm, bn, None, kt)),
        ("torch.empty", lambda: torch.empty(sum(sizes), dtype=torch.int32, device=q.device)),
        ("torch.empty + split", lambda: torch.empty(sum(sizes), dtype=torch.int32, device=q.device).split(sizes)),
        ("_current_stream", gen._current_stream),
        ("_token", gen._token),
        ("_specialisation(head)", lambda: gen._specialisation(head)),
        ("_launch_prepared", lambda: gen._launch_prepared(p, head, p.options)),
        ("compiled.run tensors", lambda: compiled.run(p.grid[0], p.grid[1], 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *head, *p.addresses, *named)),
        ("compiled.run addresses", lambda: compiled.run(p.grid[0], p.grid[1], 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *ptrs, *p.addresses, *named)),
        ("seg.data_ptr x3", lambda: (seg.data_ptr(), seg.data_ptr(), seg.data_ptr())),
        ("dict(_TABLES[...]) copy", lambda: dict(next(iter(gen._TABLES.values())))),
        ("str(q.device)", lambda: str(q.device)),
        ("os.environ.get", lambda: os.environ.get("ATTNLANG_TILES")),
        ("_direct_ok(head)", lambda: gen._direct_ok(head)),
        ("knobs hooks", lambda: (gen._knobs.runtime.launch_enter_hook, gen._knobs.runtime.launch_exit_hook)),
        ("head[0].is_cuda", lambda: head[0].is_cuda),
    ]
    for name, fn in rows:
        print(f"n={n} d={d} {name:28s} {host(fn):7.2f} us")
