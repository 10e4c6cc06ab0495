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


def test_a_document_mask_and_a_one_pass_pattern_compile_for_sm90():
    """A forward and backward of a document mask (both bounds in one launch, 32-key tiles at
    d = 64) and of the fixed pattern (one pass over a gather component), at both head
    dimensions, with the tiles a GPU call picks: every kernel compiles to a cubin and fits in
    shared memory."""
    out = _compile_check("--pattern", "causal & segment",
                         "--pattern", "causal & (chunk(128) | cols(every(128, 112..128)))")
    assert "kernels compiled for sm_90, 0 failed" in out
    assert out.count("\nok ") + out.startswith("ok ") >= 10

