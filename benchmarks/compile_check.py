"""Compile the generated kernels for a Hopper GPU (sm_90) on a machine without one: every kernel a
forward and backward launches, with the tiles and launch options a GPU call would pick, through
the locally installed Triton's full pipeline (to PTX and cubin).  What the interpreter cannot
show -- a kernel Triton cannot compile for the GPU, a tile whose shared memory does not fit --
shows here before any GPU time is spent.  It checks compilation only: the numbers come from
`benchmarks/gpu_check.py` on the GPU.  The local Triton may be newer than a GPU image's.

    python benchmarks/compile_check.py [--tiles "dq=64x64:4:2:d:j"] [--pattern TEXT ...] [--ptxas]
                                       [--ptx DIR] [--host-desc]

How: the module's launches are recorded instead of run (CPU tensors), with `_tiles` answering as
on a GPU (and the PAIRS kernel's launch, which only a GPU's Gluon gather path makes, built
directly: `record_pairs_launch`), float32 inputs' products in the precision a GPU call takes
(tf32x3; until round 53 the CPU's ieee, whose kernels were not the GPU's); each distinct
(kernel, argument types, constexprs, warps, stages) is then compiled with `triton.compile` for
`GPUTarget("cuda", 90, 32)`. Exits 1 if any fails. ``--ptxas`` adds each kernel's registers and
spill stores; ``--ptx DIR`` writes each kernel's PTX there without its debug information (line
records, file names), so that two commits' kernels can be compared with ``diff -r``: the same
instructions or not. The launches recorded here are of one batch of two heads, below
HOST_DESC_MIN_PROGRAMS, so their kernels make their own descriptors; ``--host-desc`` records
them with the host's wherever the tensors allow it, as the benchmark's launches read (the
strided band forward at d = 128: 127 registers that way since round 53, 150 the other).
"""
import argparse
import contextlib
import math
import os
import re
import sys

import torch

CASES = [  # (pattern, L, D, dtype): the benchmark's patterns at both head dimensions, and more
    ("causal", 8192, 128, torch.bfloat16), ("causal", 8192, 64, torch.bfloat16),
    ("window(512)", 8192, 128, torch.bfloat16), ("window(512)", 8192, 64, torch.bfloat16),
    ("causal & (window(127, 0) | stride(128))", 8192, 128, torch.bfloat16),
    # (d = 64's tiles for rows of fewer than four blocks, TILES_FEW: round 44)
    ("causal & (window(127, 0) | stride(128))", 8192, 64, torch.bfloat16),
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 8192, 64, torch.bfloat16),
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 8192, 128, torch.bfloat16),
    # (its long rows' forward tile: two programs per multiprocessor, round 37)
    ("causal & (chunk(128) | cols(every(128, 112..128)))", 32768, 128, torch.bfloat16),
    ("window(512) | global(0..128)", 8192, 128, torch.bfloat16),
    # (its global rows in pieces, the forward capped at 96 registers, round 39)
    ("window(512) | global(0..128)", 32768, 64, torch.bfloat16),
    ("window(2048) & stride(4)", 8192, 64, torch.bfloat16),
    ("causal & segment", 8192, 128, torch.bfloat16), ("causal & segment", 8192, 64, torch.bfloat16),
    ("causal", 2048, 128, torch.float32), ("prefix(300) | causal", 2000, 256, torch.float16),
]
SHARED = 232448  # bytes of shared memory one program may use on an H100 or H200 (227 KiB)
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
          torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.bool: "i1",
          torch.uint8: "u8"}


class _OnGpu:
    """A CPU tensor that `_tiles` takes for a GPU tensor."""

    def __init__(self, t):
        self._t = t
        self.device = torch.device("cuda")

    def __getattr__(self, name):
        return getattr(self._t, name)


def _type(value):
    if type(value).__name__ == "TensorDescriptor":  # made on the host (HOST_DESC)
        base = value.base._t if isinstance(value.base, _OnGpu) else value.base
        return f"tensordesc<{DTYPES[base.dtype]}[{', '.join(map(str, value.block_shape))}]>"
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"an argument of type {type(value).__name__}")


@contextlib.contextmanager
def as_on_gpu(mod, launch):
    """The generated module ``mod`` choosing its tiles as on a GPU for CPU tensors, and calling
    ``launch(kernel, grid, args, options)`` instead of launching, its launches made as on a
    Hopper GPU (`_pdl_ok`), float32 inputs' products in a GPU's precision (`_dot_precision`);
    restored on exit."""
    real_tiles, real_rows, real_precision = mod._tiles, mod._row_blocks, mod._dot_precision
    saved = (mod._launch, mod._tiles, mod._row_blocks, mod._pdl_ok, mod._dot_precision)
    mod._launch = launch
    mod._pdl_ok = lambda t: True  # (a Hopper GPU: dependent launches, PDL_FORWARD)
    mod._tiles = lambda q, *rest: real_tiles(_OnGpu(q), *rest)
    mod._dot_precision = lambda q: real_precision(_OnGpu(q))
    mod._row_blocks = lambda *shape_and_device, **kw: real_rows(*shape_and_device[:-1], "cpu",
                                                                 **kw)
    try:
        yield mod
    finally:
        mod._launch, mod._tiles, mod._row_blocks, mod._pdl_ok, mod._dot_precision = saved


def record_launches(text, length, d, dtype, host_desc=False):
    """The launches of one forward+backward of ``text`` as a GPU call would make them, and the
    PAIRS kernel's (`record_pairs_launch`); with ``host_desc``, descriptors made on the host
    wherever the tensors allow them, as in the benchmark's launches (HOST_DESC_MIN_PROGRAMS 0:
    the launches here, of one batch of two heads, are below it)."""
    import attnlang
    from attnlang.bench import random_documents
    from attnlang.cache import load_module

    mod = load_module(attnlang.parse(f"pattern x = {text}")["x"])
    launches, saved = [], mod.HOST_DESC_MIN_PROGRAMS
    if host_desc:
        mod.HOST_DESC_MIN_PROGRAMS = 0
    with as_on_gpu(mod, lambda kernel, grid, args, options: launches.append((kernel, args,
                                                                            options))):
        batch, heads = 1, 2
        q, k, v, do = (torch.randn(batch, heads, length, d, dtype=dtype) for _ in range(4))
        seg = None
        if mod.USES_SEGMENT:
            seg = random_documents(length, 16, "cpu", torch.Generator().manual_seed(0))
            seg = seg.to(torch.int32)[None]
        for t in (q, k, v):
            t.requires_grad_(True)
        scale = 1 / math.sqrt(d)
        out, lse = mod.attention_forward(q, k, v, scale, seg, seg, None, None, None, 0.0, 0)
        mod.attention_backward(do, q, k, v, out, lse, scale, seg, seg, None, None, None, 0.0, 0,
                               False)
        record_pairs_launch(mod, q, k, v, do, scale, launches)
    mod.HOST_DESC_MIN_PROGRAMS = saved
    return launches


def record_pairs_launch(mod, q, k, v, do, scale, launches):
    """Append to ``launches`` the PAIRS kernel's launch of the generated module ``mod``
    (`_pairs_launches`: the fixed pattern's chunks at d = 128) as a GPU step on the Gluon gather
    path makes it, where the module has one at this head dim.  That path itself runs only on a
    GPU, so the launch is built directly: the tile a GPU takes (TILES_PAIRS), descriptors, and
    dQ stored through one (TMA_REDUCE)."""
    if not getattr(mod, "PAIRS", None):
        return
    real_tile = mod._pair_tile
    mod._pair_tile = lambda q: real_tile(_OnGpu(q))
    try:
        shared = mod._call_args(q, k, scale, None, None, None, None, None, 0.0, 0)
        pairs = mod._pairs_launches(q, k, shared)
        if pairs is None:
            return
        rows = torch.zeros(q.shape[:3])
        mod._launch_kv(pairs[0], q, k, v, do, rows, rows, torch.empty_like(k),
                       torch.empty_like(v), torch.zeros(q.shape), True)
    finally:
        mod._pair_tile = real_tile
    kernel, args, options = launches[-1]
    launches[-1] = kernel, args, dict(options, TMA_REDUCE=bool(options["DESC"]))


def compile_launch(kernel, args, options, stages=None):
    """The kernel compiled for sm_90 as a GPU launch with these arguments would compile it:
    Triton's own binder specialises the arguments (16-byte alignment of pointers, divisibility
    of integers), which decides how loads vectorise and pipeline."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, kwargs = binder(*args, **options)
    launch, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                             specialization, kwargs)
    source = triton.compiler.ASTSource(kernel, signature, constexprs, attrs)
    if stages is not None:
        launch.__dict__["num_stages"] = stages
    return triton.compile(source, target=target, options=launch.__dict__)


def code_only(ptx):
    """PTX without what names the source (line records, file names, the debug sections): what
    two compilations of the same kernel from differently numbered sources share."""
    lines = []
    for line in ptx.splitlines():
        if line.lstrip().startswith(".section") and ".debug" in line:
            break
        if not line.lstrip().startswith((".loc", ".file")):
            lines.append(line)
    return "\n".join(lines) + "\n"


def compile_one(kernel, args, options, report=None, ptx_path=None):
    """Compile one launch for sm_90; None if it compiled and fits, else what went wrong.
    ``report``: a list that takes ptxas's registers and spill stores of the kernel (`--ptxas`);
    ``ptx_path``: where to write its PTX, debug information left out (`--ptx`)."""
    try:
        compiled = compile_launch(kernel, args, options)
        if compiled.metadata.shared > SHARED and options.get("num_stages", 1) > 1:
            # `_compile_and_launch` then runs it unpipelined: that must fit
            compiled = compile_launch(kernel, args, options, stages=1)
    except Exception as exc:  # what Triton raises varies: its first line is the report
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    if compiled.metadata.shared > SHARED:
        return f"needs {compiled.metadata.shared} bytes of shared memory, over sm_90's {SHARED}"
    if ptx_path is not None:
        with open(ptx_path, "w") as out:
            out.write(code_only(compiled.asm["ptx"]))
    if report is not None:
        from gluon_compile import ptxas_report  # (imports Triton: only when asked)
        spills, _, registers = ptxas_report(compiled.asm["ptx"])
        report.append(f"registers {registers}, spill stores {spills} bytes, "
                      f"shared {compiled.metadata.shared} bytes")
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", help="ATTNLANG_TILES for the run (e.g. an experiment's flag)")
    parser.add_argument("--pattern", action="append", help="instead of the built-in cases "
                        "(at 8k tokens, d = 128 and 64, bf16)")
    parser.add_argument("--ptxas", action="store_true", help="also report each kernel's "
                        "registers and spill stores from ptxas (Triton's own, for sm_90a)")
    parser.add_argument("--host-desc", action="store_true", help="descriptors made on the "
                        "host wherever the tensors allow them (the benchmark's launches)")
    parser.add_argument("--ptx", metavar="DIR", help="write each kernel's PTX there, without "
                        "debug information (to diff two commits' kernels)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (interpreted kernels do not compile)")
    if args.tiles:
        os.environ["ATTNLANG_TILES"] = args.tiles
    cases = [(text, 8192, d, torch.bfloat16) for text in args.pattern for d in (128, 64)] \
        if args.pattern else CASES
    if args.ptx:
        os.makedirs(args.ptx, exist_ok=True)
    seen, failed = set(), 0
    for text, length, d, dtype in cases:
        for kernel, kargs, options in record_launches(text, length, d, dtype, args.host_desc):
            key = (kernel, tuple(_type(a) if a is not None else None for a in kargs),
                   tuple(sorted(options.items())))
            if key in seen:
                continue
            seen.add(key)
            report = [] if args.ptxas else None
            tile = f"{options.get('BLOCK_M', '')}x{options.get('BLOCK_N', '')}"
            ptx_path = None
            if args.ptx:
                slug = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")
                ptx_path = os.path.join(args.ptx, f"{slug}_L{length}_d{d}_{str(dtype)[6:]}_"
                                        f"{kernel.__name__}_{tile}_{len(seen)}.ptx")
            error = compile_one(kernel, kargs, options, report, ptx_path)
            failed += error is not None
            print(f"{'FAIL' if error else 'ok  '} {text:52s} L={length} d={d} {str(dtype)[6:]:8s} "
                  f"{kernel.__name__:18s} {tile:8s}" + (f"\n     {error}" if error else "")
                  + "".join(f"\n     {line}" for line in report or ()), flush=True)
    print(f"{len(seen)} kernels compiled for sm_90, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
