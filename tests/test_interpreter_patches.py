"""The test suite's faster Triton interpreter (tests/interpreter_patches.py) computes what the
interpreter computes, and leaves triton.language as it found it; 32-bit integers wrap as on the
GPU, unchecked."""
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="Triton's interpreter only")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _twice_plus(x, y):
    return x * 2 + y


@triton.jit
def _nested(X, Y, OUT, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    acc = tl.zeros([N], tl.float32)
    for i in range(3):  # a device function called in a loop, as the generated kernels do
        acc = _twice_plus(x, acc) + tl.load(Y + offs) * i
    tl.store(OUT + offs, acc)


def test_device_function_calls_inside_a_launch_compute_the_same_and_restore_the_language():
    from triton.runtime import interpreter
    import interpreter_patches

    if not getattr(interpreter, "_attnlang", 0):  # installed by conftest.py where it can be
        pytest.skip("this Triton's interpreter lacks the names interpreter_patches replaces")
    assert not interpreter_patches.install()  # once only
    before = {name: getattr(tl, name) for name in ("range", "static_range", "arange", "load")}
    x, y = torch.arange(16.0), torch.arange(16.0).flip(0)
    out = torch.empty(16)
    _nested[(1,)](x, y, out, N=16)
    want = torch.zeros(16)
    for i in range(3):
        want = x * 2 + want + y * i
    assert torch.equal(out, want)
    assert {name: getattr(tl, name) for name in before} == before


@triton.jit
def _times(X, Y, OUT, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(OUT + offs, tl.load(X + offs) * tl.load(Y + offs) + 1)


def test_int32_products_wrap_unchecked_as_on_the_gpu():
    from triton.runtime import interpreter

    if not getattr(interpreter, "_attnlang", 0):
        pytest.skip("this Triton's interpreter lacks the names interpreter_patches replaces")
    assert not interpreter.interpreter_builder.options.sanitize_overflow
    x = torch.tensor([3, 2 ** 20, -(2 ** 30), 46341], dtype=torch.int32)
    y = torch.tensor([5, 2 ** 12, 4, 46341], dtype=torch.int32)
    out = torch.empty(4, dtype=torch.int32)
    _times[(1,)](x, y, out, N=4)  # (the sanitizer would assert on the last three)
    want = ((x.long() * y.long() + 1 + 2 ** 31) % 2 ** 32 - 2 ** 31).int()
    assert torch.equal(out, want)
