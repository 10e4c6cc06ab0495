"""Host-bound speed per CPU core of the GPU host: the 8k, d = 64 document forward (`causal &
segment`, the same ids every call, bound by host time) in this process, by `_host_ms` (calls back
to back) and `do_bench`; run it once per core with `taskset -c CORE` and unpinned.

    for c in 0 3 7 8 11 15; do taskset -c $c python benchmarks/host_core_probe.py core$c; done

Results: benchmarks/results/pin_r18.log."""
import os, sys, time, torch
import attnlang
from attnlang import bench
from triton.testing import do_bench
n, d = 8192, 64
m = attnlang.parse("pattern x = causal & segment")["x"].module(backend="triton")
q, k, v = (torch.randn(2, 16, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
seg = bench.random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
f = lambda: m(q, k, v, segments=seg)
f(); torch.cuda.synchronize()
host = bench._host_ms(f) * 1000
db = do_bench(f, warmup=25, rep=150, return_mode="median") * 1000
print(f"{sys.argv[1]:>10s} cpu now {os.sched_getaffinity(0) if len(os.sched_getaffinity(0)) < 4 else 'all'} "
      f"host {host:6.1f} us  do_bench {db:6.1f} us", flush=True)
