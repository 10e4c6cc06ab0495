"""Compile attnlang's Gluon kernels (`attnlang/gluon_backward.py`, `attnlang/gluon_forward.py`)
for sm_90 without a GPU and report what ptxas says: shared memory, `setmaxnreg`, spills, and
whether it serialised the wgmma instructions (and why: C7512, C7514...).  Run it with the GPU
image's Triton (3.6) and with CI's:

    python -m venv /tmp/v36 && /tmp/v36/bin/pip install torch==2.13.0 triton==3.6.0 numpy
    /tmp/v36/bin/python benchmarks/gluon_compile.py [--fp16]   # --fp16: fp16 kernels too
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from attnlang import gluon_backward as gb  # noqa: E402
from attnlang import gluon_forward as gf  # noqa: E402
from attnlang.gluon_hopper import block_layout, shared_layout  # noqa: E402
from compile_check import SHARED  # noqa: E402  (sm_90's shared memory a program may use)


NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # Triton's names of the dtypes


GLOBALS = ("ra", "rb", "ca", "cb")  # a band's global rows and columns (`band.banded_of`)


def compile_bwd(D=128, dtype=torch.bfloat16, segments=False, glob=False, first=False,
                keys=None):
    """The backward's kernel at head dimension D, for bands, (``segments``) document masks,
    (``glob``) bands with global rows and columns or (``first``) a gather component's keys, with
    the key block and ring that `gb.backward` and `gb.gather_backward` give them (``keys``: a
    band's key block where given, `gb.backward`'s ``keys``)."""
    name = NAMES[dtype]
    BN = keys or gb.tile(segments)[1]
    BM, stages = gb.tile_config(BN, D)
    lq, lk = shared_layout(BM, D, dtype), shared_layout(BN, D, dtype)
    qd = f"tensordesc<{name}[1, 1, {BM}, {D}],{lq!r}>"
    kd = f"tensordesc<{name}[1, 1, {BN}, {D}],{lk!r}>"
    dqd = f"tensordesc<fp32[1, 1, {BM}, {D}],{shared_layout(BM, D, torch.float32)!r}>"
    signature = {"q_desc": qd, "k_desc": kd, "v_desc": kd, "do_desc": qd, "dk_desc": kd,
                 "dv_desc": kd, "dq_desc": dqd,
                 "rows_desc": f"tensordesc<fp32[2, 1, {BM}],{gb.ROWS_LAYOUT!r}>", "BH": "i32",
                 "H": "i32", "Lq": "i32", "Lk": "i32", "back": "i32",
                 "ahead": "i32", **{n: "i32" for n in GLOBALS + ("c0", "c1")},
                 "group": "i32", "reverse": "i32", "qk_scale": "fp32",
                 "sm_scale": "fp32", "bounds_ptr": "*i32", "flag_ptr": "*i32",
                 "segq_desc": (f"tensordesc<i32[{BM}],{gb.SEGQ_LAYOUT!r}>" if segments
                               else f"tensordesc<fp32[2, 1, {BM}],{gb.ROWS_LAYOUT!r}>"),
                 "segk_ptr": "*i32", "per_batch": "i32", "BM": "constexpr",
                 "BN": "constexpr", "D": "constexpr", "STAGES": "constexpr",
                 "SEGMENTS": "constexpr", "GLOBAL": "constexpr", "FIRST": "constexpr"}
    constexprs = {"BM": BM, "BN": BN, "D": D, "STAGES": stages, "SEGMENTS": segments,
                  "GLOBAL": glob, "FIRST": first}
    source = GluonASTSource(gb.band_backward_kernel, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=BN // 16, maxnreg=gb.MAXNREG[BN]))


def compile_fwd(D=128, dtype=torch.bfloat16, glob=False, classes=False, gather=False,
                persistent=False, runs=0):
    """The forward's kernel with its configuration at head dimension D (`gf.config_of`), for
    bands, (``glob``) bands with global rows and columns, (``classes``) a strided band's
    residue classes or (``gather``) the fixed pattern's chunks and packed summary columns, one
    program a tile or (``persistent``: the gather patterns' launch) persistent, the packed keys
    copies or (``runs``) read in place in runs of that many keys (RUNS)."""
    name = NAMES[dtype]
    config = gf.config_of(D, glob, gather)
    rows, BN = gf.ROWS.value, config["BN"]
    qd = f"tensordesc<{name}[1, 1, {rows}, {D}],{shared_layout(rows, D, dtype)!r}>"
    kd = f"tensordesc<{name}[1, 1, {BN}, {D}],{shared_layout(BN, D, dtype)!r}>"
    ids = "*i32" if gather else "*fp32"  # (without GATHER the launch passes lse there)
    rd = kd
    if runs:
        block = (1, BN // runs, runs, D)
        rd = f"tensordesc<{name}{list(block)},{block_layout(block, dtype)!r}>"
    signature = {"q_desc": qd, "k_desc": kd, "v_desc": kd, "o_desc": qd, "lse_ptr": "*fp32",
                 **{n: "i32" for n in ("BH", "H", "group", "Lq", "Lk", "back", "ahead")
                    + GLOBALS + ("t0", "t1")},
                 "qk_scale": "fp32", "kp_desc": rd, "vp_desc": rd, "counts_ptr": ids,
                 "first_ptr": ids, "P": "i32", **{n: "constexpr" for n in (
                     "BN", "D", "STAGES", "NUM_WG", "OVERLAP", "PINGPONG", "EARLY", "GLOBAL",
                     "CLASSES", "REGS", "EARLY_Q", "GATHER", "CHUNK", "RUNS")}}
    persistent = config["PERSISTENT"] and not glob and (not gather or persistent)
    constexprs = {"D": D, "GLOBAL": glob, "CLASSES": classes, "GATHER": gather,
                  "CHUNK": 128 if gather else 0, "RUNS": runs,
                  "EARLY_Q": config.get("EARLY_Q", False) and persistent, **{n: config[n] for n in (
                      "BN", "STAGES", "NUM_WG", "OVERLAP", "PINGPONG", "EARLY", "REGS")}}
    source = GluonASTSource(gf.band_forward_kernel, signature, constexprs,
                            {(4,): [["tt.divisibility", 16]]})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def compile_rows(D=128, dtype=torch.bfloat16):
    """The `tl` kernel that prepares the band kernel's rows (`row_terms`)."""
    from triton.compiler import ASTSource
    name = "*" + NAMES[dtype]
    signature = {"O": name, "DO": name, "LSE": "*fp32", "LSE2": "*fp32", "DELTA": "*fp32",
                 "DQ": "*fp32",
                 **{s: "i32" for s in ("sob", "soh", "som", "sdob", "sdoh", "sdom", "slb",
                                       "slh", "slm", "sqb", "sqh", "sqm", "H", "Lq", "lq_pad",
                                       "dq_rows")},
                 "ROWS": "constexpr", "D": "constexpr"}
    source = ASTSource(gb._rows_kernel, signature, {"ROWS": gb.BM, "D": D})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


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
    registers = re.search(r"Used (\d+) registers", text)
    if out.returncode:  # a Triton whose PTX is newer than its bundled ptxas (3.9): no report
        return "unknown (ptxas: " + text.strip().splitlines()[0][-60:] + ")", "unknown", None
    # C7510-C7520: the reasons ptxas gives for serialising them (C7514: a non-wgmma instruction
    # reads an accumulator mid-pipeline; C7512: too few registers)
    serialised = sorted(set(re.findall(r"\((C75\d\d)\)[^\n]*serialized", text)))
    return ((int(spills.group(1)) if spills else None), ", ".join(serialised) or "no",
            int(registers.group(1)) if registers else None)


def _over(compiled):
    """Whether ``compiled`` asks for more shared memory than an sm_90 multiprocessor has (Triton
    compiles it; only a launch on the GPU refuses it)."""
    return compiled.metadata.shared > SHARED


def _report(compiled):
    spills, serialised, _ = ptxas_report(compiled.asm["ptx"])
    regs = sorted(set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                 compiled.asm["ptx"])))
    # `gluon_hopper.named_barrier`'s (the forward's ping-pong): a barrier number in a register,
    # where Triton's own barriers name theirs
    turns = len(re.findall(r"\bbar\.(?:sync|arrive)\s+%r", compiled.asm["ptx"]))
    over = f" OVER sm_90's {SHARED}" if _over(compiled) else ""  # (`main` fails the run)
    return (f"shared {compiled.metadata.shared} bytes{over}, setmaxnreg {regs}, spill stores "
            f"{spills} bytes, wgmma serialised: {serialised}, ping-pong barriers {turns}")


def main():
    """Every kernel in bf16 at both head dimensions (``--fp16``: in fp16 too); exits 1 where one
    needs more shared memory than an sm_90 multiprocessor has."""
    print("triton", triton.__version__)
    reported = []

    def report(compiled):  # (every reported kernel kept for the shared memory check)
        reported.append(compiled)
        return _report(compiled)
    for dtype in (torch.bfloat16, torch.float16)[:2 if "--fp16" in sys.argv else 1]:
        for D in gb.HEAD_DIMS:
            backward, rows, forward = compile_bwd(D, dtype), compile_rows(D, dtype), \
                compile_fwd(D, dtype)
            documents = compile_bwd(D, dtype, segments=True)
            extra = ""
            if dtype == torch.bfloat16:  # (the bounds' code is the same in either dtype)
                extra = (f"; with global rows and columns: backward "
                         f"{report(compile_bwd(D, dtype, glob=True))}, forward "
                         f"{report(compile_fwd(D, dtype, glob=True))}; the forward of "
                         f"residue classes {report(compile_fwd(D, dtype, classes=True))}; "
                         f"the backward of a gather component's keys "
                         f"{report(compile_bwd(D, dtype, first=True))}")
                extra += (f"; the forward of a gather pattern "
                          f"{report(compile_fwd(D, dtype, gather=True))}, persistent "
                          f"{report(compile_fwd(D, dtype, gather=True, persistent=True))}, "
                          f"reading runs of 16 keys in place "
                          f"{report(compile_fwd(D, dtype, gather=True, persistent=True, runs=16))}")
            if dtype == torch.bfloat16 and D == 64:  # (bands' 64-key blocks: at d = 64 only)
                narrow = report(compile_bwd(D, dtype, keys=gb.DOCS_BN))
                banded = report(compile_bwd(D, dtype, glob=True, keys=gb.DOCS_BN))
                extra += (f"; bands' backward with 64-key blocks {narrow}, with global rows and "
                          f"columns {banded}")
            print(f"{str(dtype)[6:]} D={D}: backward {report(backward)}; documents' backward "
                  f"{report(documents)}; forward {report(forward)}{extra}; cubins "
                  f"{len(backward.asm['cubin'])}, {len(documents.asm['cubin'])}, "
                  f"{len(rows.asm['cubin'])} and {len(forward.asm['cubin'])} bytes")
    if any(_over(compiled) for compiled in reported):
        sys.exit(1)


if __name__ == "__main__":
    main()
