"""Compile `gluon_bwd.py`'s kernel for sm_90 without a GPU and report what ptxas says: shared
memory, spills, and whether it serialised the wgmma instructions (C7514).  Run it with the
GPU image's Triton (3.6; the kernel uses Gluon, whose API changes between releases):

    python -m venv /tmp/v36 && /tmp/v36/bin/pip install torch==2.13.0 triton==3.6.0
    /tmp/v36/bin/python benchmarks/gluon_compile.py
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

import gluon_bwd  # noqa: E402


def compile_bwd(BM=64, BN=128, D=128, STAGES=2, maxnreg=168):
    lq, lk = gluon_bwd.layouts(BM, BN, D)
    qd, kd = f"tensordesc<bf16[{BM}, {D}],{lq!r}>", f"tensordesc<bf16[{BN}, {D}],{lk!r}>"
    signature = {"q_desc": qd, "k_desc": kd, "v_desc": kd, "do_desc": qd, "dk_desc": kd,
                 "dv_desc": kd, "lse_ptr": "*fp32", "delta_ptr": "*fp32", "dq_ptr": "*fp32",
                 "L": "i32", "left": "i32", "right": "i32", "qk_scale": "fp32",
                 "sm_scale": "fp32", "BM": "constexpr", "BN": "constexpr", "D": "constexpr",
                 "STAGES": "constexpr"}
    constexprs = {"BM": BM, "BN": BN, "D": D, "STAGES": STAGES}
    attrs = {(i,): [["tt.divisibility", 16]] for i in (6, 7, 8, 9)}
    source = GluonASTSource(gluon_bwd.attention_bwd_ws, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=8, maxnreg=maxnreg))


def ptxas_report(ptx):
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", path + ".cubin"],
                             capture_output=True, text=True)
    text = out.stdout + out.stderr
    spills = re.search(r"(\d+) bytes spill stores", text)
    return (int(spills.group(1)) if spills else None), "C7514" in text


def main():
    print("triton", triton.__version__)
    for D in (128, 64):
        compiled = compile_bwd(D=D)
        spills, serialised = ptxas_report(compiled.asm["ptx"])
        regs = sorted(set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                     compiled.asm["ptx"])))
        print(f"D={D}: shared {compiled.metadata.shared} bytes, setmaxnreg {regs}, "
              f"spill stores {spills} bytes, wgmma serialised (C7514): {serialised}")


if __name__ == "__main__":
    main()
