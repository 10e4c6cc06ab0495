"""Does a long benchmark process slow the host-bound rows?  The document mask's 8k d = 64 rows
(attnlang's forward ~0.08 ms, bound by its host time) timed as `attnlang bench` times them,
fresh and then after the suite's other 8k patterns (attnlang and FlexAttention) in the same
process; then with Python's collector off, with every object frozen (`gc.freeze`), and after
`torch._dynamo.reset()`. Each line: live objects, collections per generation during the timing, the
share of the pinned cores' time stolen by the hypervisor (/proc/stat), and each implementation's
best round; before the first and the second timing, what the process's other threads and its
children take of the CPU while the main thread sleeps (pinned with `taskset`, they share its core)
and the pinned cores' clocks.

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
import os
import pstats
import sys
import threading
import time

import torch

import attnlang
from attnlang import bench

DOCS = "causal & segment"


def _ticks(path):
    """utime + stime (clock ticks) from a /proc stat file, 0 if it went away."""
    try:
        with open(path) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _others():
    """{name: stat path} of this process's other threads and of every process it started."""
    me = os.getpid()
    paths = {f"thread {tid}": f"/proc/{me}/task/{tid}/stat"
             for tid in os.listdir(f"/proc/{me}/task")
             if int(tid) != threading.get_native_id()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            paths[f"child {pid}"] = f"/proc/{pid}/stat"
    return paths


def snapshot(tag, idle=2.0):
    """While this thread sleeps ``idle`` s: the CPU time the process's other threads and its
    children take (they share its pinned core), and the pinned cores' clocks."""
    paths = _others()
    before = {name: _ticks(path) for name, path in paths.items()}
    time.sleep(idle)
    used = {name: _ticks(path) - before[name] for name, path in paths.items()}
    busy = sorted(((t, n) for n, t in used.items() if t), reverse=True)[:5]
    cores = sorted(os.sched_getaffinity(0))
    clocks = []
    with open("/proc/cpuinfo") as handle:
        for block in handle.read().split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if fields.get("processor", "").isdigit() and int(fields["processor"]) in cores[:4]:
                clocks.append(fields.get("cpu MHz", "?"))
    hz = os.sysconf("SC_CLK_TCK")
    print(f"{tag:20s} cores {cores[:4]} MHz {clocks}; {len(paths)} other threads/children, "
          f"busy while idle: " + (", ".join(f"{n} {t / hz / idle:.0%}" for t, n in busy) or "none"),
          flush=True)


def _core_ticks():
    """{field: ticks} summed over the pinned cores' lines of /proc/stat (user ... steal)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    total = dict.fromkeys(names, 0)
    with open("/proc/stat") as handle:
        for line in handle:
            fields = line.split()
            if fields and fields[0] in cores:
                for name, value in zip(names, fields[1:]):
                    total[name] += int(value)
    return total


def time_docs(tag):
    """The documents' 8k d = 64 rows through `bench.run`, with the collector's activity and the
    share of the pinned cores' time that the hypervisor gave to others (steal)."""
    before = [g["collections"] for g in gc.get_stats()]
    ticks = _core_ticks()
    start = time.time()
    records = bench.run(patterns=[DOCS], lengths=[8192], dims=[64], impls=("attnlang", "flex"),
                        log=lambda *args: None)
    after = [g["collections"] for g in gc.get_stats()]
    spent = {name: value - ticks[name] for name, value in _core_ticks().items()}
    steal = spent["steal"] / max(1, sum(spent.values()))
    rows = sorted((r.impl, r.mode, r.ms) for r in records if r.mode in ("fwd", "fwd+bwd"))
    print(f"{tag:20s} objects {len(gc.get_objects()):8d} collections "
          f"{[b - a for a, b in zip(before, after)]} steal {steal:.1%} "
          + " ".join(f"{impl}/{mode} {ms:.3f}" for impl, mode, ms in rows)
          + f" ms ({time.time() - start:.0f} s)", flush=True)


def drift():
    print(sys.version.split()[0], torch.__version__, flush=True)
    snapshot("fresh")
    time_docs("fresh")
    start = time.time()
    bench.run(patterns=[p for p in bench.SUITE if p != DOCS], lengths=[8192], dims=[128, 64],
              impls=("attnlang", "flex"), log=lambda *args: None)
    print(f"(the other 8k patterns: {time.time() - start:.0f} s)", flush=True)
    snapshot("after the others")
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
        snapshot("after the benchmark")
        profile("after the benchmark")
    else:
        snapshot("fresh")
        profile("fresh")


if __name__ == "__main__":
    main(sys.argv[1:])
