"""Does a long benchmark process slow the host-bound rows?  The document mask's 8k d = 64 rows
(attnlang's forward ~0.08 ms, bound by its host time) timed as `attnlang bench` times them,
fresh and then after the suite's other 8k patterns (attnlang and FlexAttention) in the same
process; then with Python's collector off, with every object frozen (`gc.freeze`), and after
`torch._dynamo.reset()`.  Each line: live objects, collections per generation during the
timing, and each implementation's best round.

    python benchmarks/host_drift.py                      # the above (~3 minutes on the H200)
    python benchmarks/host_drift.py --profile            # the forward's host time and profile
    python benchmarks/host_drift.py --profile --bench --dims 128,64 -o latest.json
        # the whole benchmark (`attnlang bench`'s arguments), then the profile in its process

--profile times 300 forwards back to back (per call, and with one synchronisation) and prints
cProfile's top functions by own time: the same calls fresh and after a benchmark show whether
the host's slowdown is one part of the call or all of it.
"""
import cProfile
import gc
import io
import pstats
import sys
import time

import torch

import attnlang
from attnlang import bench

DOCS = "causal & segment"


def time_docs(tag):
    """The documents' 8k d = 64 rows through `bench.run`, with the collector's activity."""
    before = [g["collections"] for g in gc.get_stats()]
    start = time.time()
    records = bench.run(patterns=[DOCS], lengths=[8192], dims=[64], impls=("attnlang", "flex"),
                        log=lambda *args: None)
    after = [g["collections"] for g in gc.get_stats()]
    rows = sorted((r.impl, r.mode, r.ms) for r in records if r.mode in ("fwd", "fwd+bwd"))
    print(f"{tag:20s} objects {len(gc.get_objects()):8d} collections "
          f"{[b - a for a, b in zip(before, after)]} "
          + " ".join(f"{impl}/{mode} {ms:.3f}" for impl, mode, ms in rows)
          + f" ms ({time.time() - start:.0f} s)", flush=True)


def drift():
    print(sys.version.split()[0], torch.__version__, flush=True)
    time_docs("fresh")
    start = time.time()
    bench.run(patterns=[p for p in bench.SUITE if p != DOCS], lengths=[8192], dims=[128, 64],
              impls=("attnlang", "flex"), log=lambda *args: None)
    print(f"(the other 8k patterns: {time.time() - start:.0f} s)", flush=True)
    time_docs("after the others")
    gc.disable()
    time_docs("collector off")
    gc.enable()
    gc.collect()
    gc.freeze()
    time_docs("objects frozen")
    gc.unfreeze()
    torch._dynamo.reset()
    gc.collect()
    time_docs("dynamo reset")


def profile(tag, calls=300):
    """Host time per forward call (documents, 8k, d = 64, B = 2, 16 heads) and its profile."""
    n, d = 8192, 64
    segments = bench.random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    q, k, v = (torch.randn(2, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    module = attnlang.parse(f"pattern x = {DOCS}")["x"].module(backend="triton")
    for _ in range(50):
        module(q, k, v, segments=segments)
    torch.cuda.synchronize()
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            module(q, k, v, segments=segments)
        queued = time.perf_counter()
        torch.cuda.synchronize()
        done = time.perf_counter()
        print(f"{tag}: host {1e6 * (queued - start) / calls:.1f} µs a call, with the "
              f"synchronisation {1e6 * (done - start) / calls:.1f}", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        module(q, k, v, segments=segments)
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
    print(text.getvalue(), flush=True)


def main(argv):
    if "--profile" not in argv:
        drift()
        return
    rest = [a for a in argv if a not in ("--profile", "--bench")]
    if "--bench" in argv:
        bench.main(rest)
        profile("after the benchmark")
    else:
        profile("fresh")


if __name__ == "__main__":
    main(sys.argv[1:])
