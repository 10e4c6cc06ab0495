"""Triton's launcher on the GPU host: does it check tensor pointers with the driver (prints the
launcher's source around `cuPointerGetAttribute`), the host time of one launch of a kernel with 24
pointer arguments given as tensors and as integer addresses, a few host costs (an allocation, a
zero-fill, three slices, the current stream), and the document layout's host time per call with
a cProfile of it.

    python benchmarks/launcher_probe.py

Results: benchmarks/results/probe_r17.log."""
import cProfile, pstats, time, inspect
import torch, triton, triton.language as tl

print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())
import triton.backends.nvidia.driver as drv
src = inspect.getsource(drv)
print("driver.py mentions cuPointerGetAttribute:", "cuPointerGetAttribute" in src,
      "| PyLong_Check:", "PyLong_Check" in src)
i = src.find("cuPointerGetAttribute")
print(src[max(0, i - 900): i + 300] if i >= 0 else "(not in driver.py)")

N = 24
params = ", ".join(f"P{i}" for i in range(N))
code = f"""
@triton.jit
def many({params}, n0, n1, n2, n3, n4, n5, n6, n7, BLOCK: tl.constexpr):
    x = tl.load(P0 + tl.arange(0, BLOCK))
    tl.store(P1 + tl.arange(0, BLOCK), x + n0)
"""
ns = dict(triton=triton, tl=tl)
import tempfile, importlib.util, os
path = os.path.join(tempfile.mkdtemp(), "many_mod.py")
open(path, "w").write("import triton\nimport triton.language as tl\n" + code)
spec = importlib.util.spec_from_file_location("many_mod", path)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
ts = [torch.zeros(128, device="cuda", dtype=torch.float32) for _ in range(N)]
ints = [3, 5, 7, 9, 11, 13, 15, 17]
compiled = mod.many[(1,)](*ts, *ints, BLOCK=128)
stream = triton.runtime.driver.active.get_current_stream(0)
ptrs = [t.data_ptr() for t in ts]
def run_t():
    compiled.run(1, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *ts, *ints, 128)
def run_i():
    compiled.run(1, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *ptrs, *ints, 128)
def host(fn, reps=2000):
    for _ in range(50): fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps): fn()
        best.append((time.perf_counter() - t) / reps * 1e6)
        torch.cuda.synchronize()
    return sorted(best)[2]
try:
    run_t(); run_i(); torch.cuda.synchronize()
    for _ in range(2):
        print(f"launcher, {N} tensors: {host(run_t):6.1f} us   {N} ints: {host(run_i):6.1f} us")
except Exception as exc:
    print("compiled.run signature differs:", type(exc).__name__, exc)
print(f"torch.empty(4096 int32): {host(lambda: torch.empty(4096, dtype=torch.int32, device='cuda')):.1f} us;"
      f" torch.zeros(2 int32): {host(lambda: torch.zeros(2, dtype=torch.int32, device='cuda')):.1f} us;"
      f" data_ptr x24: {host(lambda: [t.data_ptr() for t in ts]):.1f} us")

buf = torch.empty(4096, dtype=torch.int32, device="cuda")
def slices():
    return buf[:2], buf[2:2050], buf[2050:]
import os
print(f"3 slices: {host(slices):.1f} us; current_stream: "
      f"{host(lambda: (torch.cuda.current_device(), triton.runtime.driver.active.get_current_stream(0))):.1f} us;"
      f" torch.cuda.current_stream().cuda_stream: {host(lambda: torch.cuda.current_stream().cuda_stream):.1f} us;"
      f" environ.get: {host(lambda: os.environ.get('ATTNLANG_TILES')):.2f} us")

import attnlang
from attnlang.bench import random_documents
from attnlang.cache import load_module
for n, d in ((32768, 64), (32768, 128), (8192, 64)):
    pattern = attnlang.parse("pattern x = causal & segment")["x"]
    gen = load_module(pattern)
    B = max(1, 16384 // n)
    q = torch.randn(B, 16, n, d, device="cuda", dtype=torch.bfloat16)
    segments = random_documents(n, 64, "cuda", torch.Generator().manual_seed(0))
    seg = segments.to(torch.int32)[None]
    keys_tile = gen._tiles(q, d, "dkdv", n, q)[:2]
    build = lambda: gen._prepare(q, q, "fwd", seg, seg, None, None, keys_tile)
    print(f"n={n} d={d}: layout build {host(build, 300):.1f} us per call (host)")
    if n == 32768 and d == 64:
        pr = cProfile.Profile()
        build(); torch.cuda.synchronize()
        pr.enable()
        for _ in range(300): build()
        pr.disable(); torch.cuda.synchronize()
        pstats.Stats(pr).sort_stats("tottime").print_stats(14)
