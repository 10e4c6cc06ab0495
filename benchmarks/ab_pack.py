"""The fixed pattern's gather keys packed from strided views (`Axis.runs`, round 35) against
`index_select`, on the GPU: the packing of K and V and one gradient's scatter at 32k tokens,
d = 128, alone; then the fixed pattern's forward and training step at 8k and 32k, d = 128 and
64, with each variant set on the generated module (its tables built again without runs for
"index"), three rounds on the same inputs (`head_order._medians`), `do_bench` medians,
gradients compared.

    python benchmarks/ab_pack.py
"""
import os
import sys

import torch
from triton.testing import do_bench
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from gluon_bwd import max_rel  # noqa: E402
from head_order import _inputs, _medians, _step_runner  # noqa: E402

TEXT = "causal & (chunk(128) | cols(every(128, 112..128)))"


def packing_alone(gen):
    """Print the packing of K and V, and one gradient's scatter, each way (32k, d = 128)."""
    k = torch.randn(1, 16, 32768, 128, device="cuda", dtype=torch.bfloat16)
    idx = torch.arange(32768, device="cuda").view(-1, 128)[:, 112:].flatten()
    runs = (112, 128, 16, 256)
    assert torch.equal(gen._packed((idx, runs), k, k)[0], k.index_select(2, idx))
    dkp = torch.randn(1, 16, 4096, 128, device="cuda", dtype=torch.bfloat16)

    def scatter_runs():
        view = gen._strided_keys(k, runs)
        view.add_(dkp.view(view.shape))
    us = {name: do_bench(call, warmup=25, rep=200) * 1e3 for name, call in (
        ("pack runs", lambda: gen._packed((idx, runs), k, k)),
        ("pack index", lambda: gen._packed((idx, None), k, k)),
        ("scatter runs", scatter_runs),
        ("scatter index", lambda: k.index_copy_(2, idx, k.index_select(2, idx).add_(dkp))))}
    print(f"pack K,V 32k d=128: runs {us['pack runs']:.1f} us, index_select "
          f"{us['pack index']:.1f} us; scatter one: runs {us['scatter runs']:.1f} us, index "
          f"{us['scatter index']:.1f} us", flush=True)


def main():
    pattern = attnlang.parse(f"pattern x = {TEXT}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    axis = gen._support.layout.Axis
    runs = axis.runs

    def set_variant(generated, name):  # "index": the tables built again without runs
        axis.runs = runs if name == "runs" else (lambda self: None)
        generated._TABLES.clear()
    packing_alone(gen)
    for D in (128, 64):
        for L in (32768, 8192):
            B = max(1, 16384 // L)
            q, k, v, do, leaves = _inputs(B, 16, L, D)
            fwd, _ = _medians(pattern, ("runs", "index"), set_variant,
                              lambda: (None, do_bench(lambda: mod(q, k, v), warmup=25, rep=150)))
            step, grads = _medians(pattern, ("runs", "index"), set_variant,
                                   _step_runner(mod, leaves, do, {}))
            err = max(max_rel(a, b) for a, b in zip(grads["runs"], grads["index"]))
            print(f"L={L} D={D}: fwd runs {fwd['runs']:.4f} index {fwd['index']:.4f} "
                  f"({fwd['index'] / fwd['runs']:.3f}x); step runs {step['runs']:.4f} index "
                  f"{step['index']:.4f} ({step['index'] / step['runs']:.3f}x); grads max rel "
                  f"{err:.2e}", flush=True)
    set_variant(gen, "runs")


if __name__ == "__main__":
    main()
