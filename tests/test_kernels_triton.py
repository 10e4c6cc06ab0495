"""The generated Triton kernels (in the interpreter on CPU) against the float64 reference:
output, log-sum-exp and the three gradients, for random patterns and shapes."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang import ir

from kernel_utils import check_against_reference, generated, pattern_of
from strategies import bound_patterns, lengths, segments_for

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU machines)")

STRUCTURED = [
    "causal",
    "window(3, 1)",
    "causal & window(7, 0)",
    "causal & (window(5, 0) | stride(8))",
    "causal & (chunk(8) | cols(every(8, 6..8)))",
    "window(4) | global(0..3)",
    "window(16) & stride(4)",
    "causal & stride(6)",
    "random(0.3, block = 8, seed = 5)",
    "prefix(9) | causal",
    "where((q + k) mod 3 == 0)",
    "none",
    "heads(0..1) & causal | heads(1..) & window(2)",
]


def _expr(text):
    import attnlang

    return attnlang.parse(f"pattern x = {text}")["x"].ir


@pytest.mark.parametrize("text", STRUCTURED)
def test_structured_patterns_match_reference(text, tmp_path):
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=45, Lk=45, D=16,
                            dtype=torch.float32)


@settings(max_examples=8)
@given(expr=bound_patterns(max_leaves=4, allow_segment=False), shape=lengths(max_len=40),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]), d=st.sampled_from([16, 24]),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_random_patterns_match_reference(tmp_path_factory, expr, shape, heads, d, dtype):
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    Lq, Lk = shape
    check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq, Lk=Lk,
                            D=d, dtype=dtype)


@settings(max_examples=6)
@given(data=st.data(), shape=lengths(max_len=40))
def test_segments_and_padding(tmp_path_factory, data, shape):
    Lq, Lk = shape
    expr = _expr("causal & segment")
    segments = data.draw(segments_for(Lq, Lk))
    kpm = torch.rand(1, Lk, generator=torch.Generator().manual_seed(Lk)) > 0.3
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=2, Lq=Lq, Lk=Lk, D=16,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)


def test_dropout_is_seeded_reproducible_and_differentiable(tmp_path):
    expr = _expr("causal & window(9, 0)")
    mod = generated(expr, tmp_path)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i))
               .requires_grad_(True) for i in range(3))
    plain = mod.attention(q, k, v)
    outs = [mod.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], plain)
    other = mod.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(outs[0], other)
    outs[0].sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
