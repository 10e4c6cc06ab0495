"""The generated kernels compile for a Hopper GPU (sm_90) with the installed Triton, on a machine
without one: `benchmarks/compile_check.py` in a process of its own, since compiling needs
Triton's real JIT functions and this suite runs the kernels in its interpreter."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compile_check(*args):
    """`benchmarks/compile_check.py` with these arguments, outside the interpreter; its output."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/compile_check.py"), *args],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_a_document_mask_and_a_one_pass_pattern_compile_for_sm90(tmp_path):
    """A forward and backward of a document mask (both bounds in one launch, 32-key tiles at
    d = 64) and of the fixed pattern (one pass over a gather component), at both head
    dimensions, with the tiles a GPU call picks: every kernel compiles to a cubin and fits in
    shared memory.  ``--ptx`` writes one PTX file per kernel compiled, its instructions without
    the line records and file names that differ between commits."""
    out = _compile_check("--pattern", "causal & segment",
                         "--pattern", "causal & (chunk(128) | cols(every(128, 112..128)))",
                         "--ptx", str(tmp_path))
    assert "kernels compiled for sm_90, 0 failed" in out
    compiled = out.count("\nok ") + out.startswith("ok ")
    assert compiled >= 10
    files = sorted(tmp_path.iterdir())
    assert len(files) == compiled
    forward = [f for f in files if f.name.startswith("causal_segment_L8192_d64_") and "_fwd_0_" in
               f.name]
    assert len(forward) == 1
    for f in files:
        ptx = f.read_text()
        assert ".entry" in ptx and "mma" in ptx or "_segment_bounds" in f.name, f.name
        assert ".loc" not in ptx and ".file" not in ptx and ".debug" not in ptx, f.name


def test_the_strided_pattern_on_host_descriptors_compiles_for_sm90():
    """The strided pattern's kernels as the benchmark's launches (2048 programs and more) read:
    through descriptors made on the host (`--host-desc`; this suite's calls are below
    HOST_DESC_MIN_PROGRAMS), the forward's band kernel its partial output too (OP_DESC)."""
    out = _compile_check("--pattern", "causal & (window(127, 0) | stride(128))", "--host-desc")
    assert "kernels compiled for sm_90, 0 failed" in out
    assert out.count("_fwd_0 ") == 2  # (both head dims)
