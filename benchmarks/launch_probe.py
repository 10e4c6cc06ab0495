"""Where the host time of one Triton launch goes, for the generated forward kernel of a pattern:
the whole `kernel[grid](...)` call against its parts (argument binding and specialisation, the
cache-key computation, the compiled launcher alone).  Host microseconds per call, GPU never
waited for inside the loop -- which measures the host only while the GPU keeps up: at large sizes
the launch queue fills and the numbers become the GPU's time (results/launch_probe_round7.log),
so use a small call:

    python benchmarks/launch_probe.py --n 1024 --batch 1 [--d 128] [--pattern TEXT]
"""
import argparse
import math

import torch
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import compute_cache_key

import attnlang
from attnlang.bench import HEADS, TOKENS_PER_BATCH
from attnlang.cache import load_module
from host_overhead import host_us


class Recorder:
    """Stands in for the forward kernel (KERNELS[0] or FUSED) and records one launch."""

    def __init__(self, jit):
        self.jit, self.calls = jit, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.jit[grid](*args, **kwargs)
        return launch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--pattern", default="window(512)")
    parser.add_argument("--batch", type=int, help="default: 16k tokens per batch; a small call "
                        "(--n 1024 --batch 1) keeps the GPU ahead of the host")
    args = parser.parse_args()
    n, d = args.n, args.d
    batch = args.batch or max(1, TOKENS_PER_BATCH // n)
    q, k, v = (torch.randn(batch, HEADS, n, d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    mod = load_module(attnlang.parse(f"pattern x = {args.pattern}")["x"])
    fused = mod.FUSED is not None  # the forward is FUSED's, not the components'

    def swap(kernel):
        if fused:
            mod.FUSED = (kernel, *mod.FUSED[1:])
        else:
            mod.KERNELS[0] = (kernel, *mod.KERNELS[0][1:])
    jit = mod.FUSED[0] if fused else mod.KERNELS[0][0]
    recorder = Recorder(jit)
    swap(recorder)
    scale = 1 / math.sqrt(d)

    def forward():
        return mod.attention_forward(q, k, v, scale, None, None, None, None, None, 0.0, 0)
    forward()
    grid, pos, kw = recorder.calls[-1]
    swap(jit)
    print(f"{args.pattern}: {len(pos)} positional arguments, {len(kw)} keyword arguments")
    device = driver.active.get_current_device()
    stream = driver.active.get_current_stream(device)
    compiled = jit[grid](*pos, **kw)
    rows = [("attention_forward (whole call)", forward),
            ("kernel[grid](...)", lambda: jit[grid](*pos, **kw)),
            ("get_current_stream", lambda: driver.active.get_current_stream(device))]
    try:  # the parts, as JITFunction.run does them (names of Triton 3.6 and later)
        kernel_cache, key_cache, _, _, binder = jit.device_caches[device]
        kw_run = dict(kw, debug=False)
        for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
            if hasattr(knobs.compilation, name):
                kw_run[name] = getattr(knobs.compilation, name)
        bound, spec, options = binder(*pos, **kw_run)
        values = list(bound.values())

        def direct():
            compiled.run(grid[0], grid[1], 1, stream, compiled.function,
                         compiled.packed_metadata, None, None, None, *values)
        rows += [("binder (bind + specialise)", lambda: binder(*pos, **kw_run)),
                 ("compute_cache_key", lambda: compute_cache_key(key_cache, spec, options)),
                 ("compiled launcher alone", direct)]
    except Exception as exc:  # another Triton's internals
        print(f"  (parts not measured: {type(exc).__name__}: {exc})")
    for name, fn in rows:
        try:
            print(f"  {name:34s} {host_us(fn, reps=500):8.1f} us", flush=True)
        except Exception as exc:
            print(f"  {name:34s} failed: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    main()
