"""What this Triton offers for a hand-written Hopper kernel in Gluon (`triton.experimental.gluon`):
its version, whether `gl.warp_specialize` and Hopper's asynchronous operations (`warpgroup_mma`,
`tma`, `mbarrier`) are there, and whether a small Gluon kernel runs on this backend (a CUDA
device, or the interpreter with TRITON_INTERPRET=1).

    python benchmarks/gluon_probe.py                     # on the GPU machine
    TRITON_INTERPRET=1 python benchmarks/gluon_probe.py  # here: the interpreter

Results: benchmarks/results/gluon_probe_r18.log."""
import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def add_one(X, Y, N: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    offs = gl.arange(0, N, layout=layout)
    gl.store(Y + offs, gl.load(X + offs) + 1)


if __name__ == "__main__":
    import triton.experimental.gluon.language.nvidia.hopper as hopper

    print("triton", triton.__version__)
    print("gl.warp_specialize:", hasattr(gl, "warp_specialize"))
    print("hopper:", [n for n in ("warpgroup_mma", "warpgroup_mma_wait", "tma", "mbarrier",
                                  "fence_async_shared") if hasattr(hopper, n)])
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    x = torch.arange(128, dtype=torch.float32, device="cpu" if interpret else "cuda")
    y = torch.empty_like(x)
    try:
        add_one[(1,)](x, y, 128)
        print("a Gluon kernel", "in the interpreter" if interpret else "on the GPU", "runs:",
              torch.equal(y, x + 1))
    except Exception as exc:
        print("a Gluon kernel", "in the interpreter" if interpret else "on the GPU", "fails:",
              type(exc).__name__, str(exc).splitlines()[0][:160])
