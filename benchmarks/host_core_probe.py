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
