"""FlashAttention (both paths) against float64 masked attention, fully masked rows included."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang.nn import FlashAttention


def reference(q, k, v, causal, mask, bias):
    lq, lk = q.shape[-2], k.shape[-2]
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    keep = torch.ones(scores.shape, dtype=torch.bool)
    if causal:
        keep = keep & (torch.arange(lk).view(1, lk) <= torch.arange(lq).view(lq, 1) + lk - lq)
    if mask is not None:
        keep = keep & mask
    probs = torch.softmax(scores.masked_fill(~keep, -math.inf), -1).nan_to_num(0.0)
    return probs @ v.double(), keep


MASK_SHAPES = st.sampled_from(["none", "full", "key", "query", "head"])


@settings(deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), lq=st.integers(1, 20), lk=st.integers(1, 20),
       d=st.sampled_from([8, 16, 24]), causal=st.booleans(), mask_shape=MASK_SHAPES,
       density=st.floats(0.0, 1.0), use_bias=st.booleans(), flash=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_matches_float64_reference(b, h, lq, lk, d, causal, mask_shape, density, use_bias,
                                   flash, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen, requires_grad=True)
    k = torch.randn(b, h, lk, d, generator=gen, requires_grad=True)
    v = torch.randn(b, h, lk, d, generator=gen, requires_grad=True)
    shape = {"none": None, "full": (b, h, lq, lk), "key": (b, 1, 1, lk), "query": (lq, 1),
             "head": (h, lq, lk)}[mask_shape]
    mask = None if shape is None else torch.rand(shape, generator=gen) < density
    bias = torch.randn(1, h, lq, lk, generator=gen, requires_grad=True) if use_bias else None
    module = FlashAttention(causal=causal, dropout=0.3, flash=flash).eval()
    out = module(q, k, v, mask=mask, attn_bias=bias)
    expected, keep = reference(q, k, v, causal, mask, bias)
    assert out.shape == (b, h, lq, d) and not out.isnan().any()
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    empty = ~keep.any(-1)
    assert (out[empty] == 0).all()  # fully masked rows are zeros, not a mean
    inputs = (q, k, v) + ((bias,) if use_bias else ())
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad((out * g).sum(), inputs)
    want = torch.autograd.grad((expected * g.double()).sum(), inputs)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4)


def test_both_paths_agree_and_dropout_only_in_training():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 12, 16, generator=gen) for _ in range(3))
    flash = FlashAttention(causal=True, dropout=0.5, flash=True)
    plain = FlashAttention(causal=True, dropout=0.5, flash=False)
    flash.eval(), plain.eval()
    torch.testing.assert_close(flash(q, k, v), plain(q, k, v), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(flash(q, k, v), flash(q, k, v))  # eval: deterministic
    ref = plain(q, k, v)
    for m in (flash, plain):
        m.train()
        assert not torch.allclose(m(q, k, v), ref)


def test_causal_is_bottom_right_with_more_keys():
    q = torch.randn(1, 1, 3, 16)
    k, v = torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16)
    out = FlashAttention(causal=True)(q, k, v)
    # The last query sees every key: plain softmax attention over all 8 keys.
    full = torch.softmax(q[..., -1:, :] @ k.transpose(-1, -2) / 4.0, -1) @ v
    torch.testing.assert_close(out[..., -1:, :], full, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kwargs, call, message", [
    ({}, lambda m: m(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8),
                     mask=torch.ones(1, 1, 4, 4)), "mask: got a torch.float32 tensor"),
    ({}, lambda m: m(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8),
                     mask=torch.ones(3, 4, dtype=torch.bool)), "broadcastable to"),
    ({}, lambda m: m(torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 8)),
     "q: got a tensor of shape"),
    ({"dropout": 1.5}, None, "dropout: got 1.5"),
])
def test_errors_name_the_argument(kwargs, call, message):
    with pytest.raises(ValueError, match=message):
        module = FlashAttention(**kwargs)
        call(module)
