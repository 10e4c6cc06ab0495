"""SparseAttention, attention_impl and blocksparse_attention_impl against a float64
implementation of OpenAI's Sparse Transformer masks (written here from the definitions)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang.nn import SparseAttention, attention_impl, blocksparse_attention_impl
from attnlang.nn.sparse import sparse_pattern


def openai_mask(lq, lk, mode, ctx, causal=True, c=None):
    """``get_attn_mask`` of the reference (queries bottom-right aligned), plus the paper's fixed
    pattern and the bidirectional variants."""
    i = torch.arange(lq).view(lq, 1) + (lk - lq)
    j = torch.arange(lk).view(1, lk)
    if mode == "all":
        keep = torch.ones(lq, lk, dtype=torch.bool)
    elif mode == "local":
        keep = (i - j).abs() < ctx
    elif mode == "strided":
        keep = (i - j) % ctx == 0
    else:
        c = max(1, ctx // 16) if c is None else c
        keep = (i // ctx == j // ctx) | (j % ctx >= ctx - c)
    if causal:
        keep = keep & (j <= i)
    return keep


def reference(q, k, v, heads, keep):
    """Split heads as the reference, float64 masked softmax, empty rows zero, merge heads."""
    b, lq, e = q.shape
    d = e // heads
    split = lambda t: t.double().reshape(b, t.shape[1], heads, d).transpose(1, 2)
    qh, kh, vh = split(q), split(k), split(v)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~keep, -math.inf)
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return (probs @ vh).transpose(1, 2).reshape(b, lq, e)


MODES = st.sampled_from(["all", "local", "strided", "fixed"])


@settings(deadline=None)
@given(heads=st.integers(1, 3), d=st.sampled_from([4, 8, 16]), length=st.integers(1, 40),
       ctx=st.integers(1, 12), mode=MODES, causal=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_matches_openai_masks(heads, d, length, ctx, mode, causal, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, length, heads * d, generator=gen) for _ in range(3))
    expected = reference(q, k, v, heads, openai_mask(length, length, mode, ctx, causal))
    got = [attention_impl(q, k, v, heads, mode, ctx, causal=causal),
           blocksparse_attention_impl(q, k, v, heads, mode, ctx, blocksize=16, causal=causal),
           SparseAttention(heads, mode, ctx, 32, causal=causal)(q, k, v)]
    for out in got:
        assert out.shape == q.shape and out.dtype == q.dtype
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


@settings(deadline=None)
@given(lq=st.integers(1, 20), extra=st.integers(0, 20), ctx=st.integers(1, 8), mode=MODES,
       causal=st.booleans(), c=st.integers(1, 8))
def test_fewer_queries_than_keys_align_bottom_right(lq, extra, ctx, mode, causal, c):
    c = min(c, ctx)
    gen = torch.Generator().manual_seed(lq * 100 + extra)
    lk = lq + extra
    q = torch.randn(1, lq, 32, generator=gen)
    k, v = (torch.randn(1, lk, 32, generator=gen) for _ in range(2))
    expected = reference(q, k, v, 2, openai_mask(lq, lk, mode, ctx, causal, c))
    out = attention_impl(q, k, v, 2, mode, ctx, causal=causal, summary_size=c)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


def test_patterns_are_the_documented_ones():
    assert sparse_pattern("all") == "causal"
    assert sparse_pattern("all", causal=False) == "all"
    assert sparse_pattern("local", 32) == "causal & window(31, 0)"
    assert sparse_pattern("local", 32, causal=False) == "window(31)"
    assert sparse_pattern("strided", 8) == "causal & stride(8)"
    assert sparse_pattern("fixed", 128) == "causal & (chunk(128) | cols(every(128, 120..128)))"
    assert sparse_pattern("fixed", 16, summary_size=4, causal=False) == \
        "(chunk(16) | cols(every(16, 12..16)))"


def test_gradients_match_reference():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 19, 32, generator=gen, requires_grad=True) for _ in range(3))
    keep = openai_mask(19, 19, "strided", 4)
    expected = reference(q, k, v, 2, keep)
    out = attention_impl(q, k, v, 2, "strided", 4)
    g = torch.randn(out.shape, generator=gen)
    want = torch.autograd.grad((expected * g.double()).sum(), (q, k, v))
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_defaults_and_block_size_spelling():
    m = SparseAttention(block_size=16)
    assert (m.heads, m.attn_mode, m.blocksize) == (1, "all", 16)
    q = torch.randn(1, 10, 16)
    torch.testing.assert_close(m(q, q, q).double(),
                               reference(q, q, q, 1, openai_mask(10, 10, "all", None)),
                               atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda: SparseAttention(2, "dense"), "attn_mode: got 'dense'"),
    (lambda: SparseAttention(2, "local"), "local_attn_ctx: got None"),
    (lambda: SparseAttention(2, "strided", 0), "local_attn_ctx: got 0"),
    (lambda: SparseAttention(0, "all"), "heads: got 0"),
    (lambda: SparseAttention(2, "all", blocksize=64, block_size=16), "block_size"),
    (lambda: SparseAttention(2, "all", blocksize=32, block_size=16), "block_size: got 16 and "
     "blocksize=32"),  # an explicit 32 is not the default
    (lambda: SparseAttention(2, "fixed", 8, summary_size=9), "summary_size: got 9"),
    (lambda: attention_impl(torch.randn(1, 4, 10), torch.randn(1, 4, 10),
                            torch.randn(1, 4, 10), 3, "all"), "multiple of heads"),
    (lambda: attention_impl(torch.randn(4, 10), torch.randn(4, 10), torch.randn(4, 10), 1,
                            "all"), "q: got a tensor of shape [4, 10]"),
])
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


@pytest.mark.parametrize("blocksize, block", [(1, 16), (16, 16), (17, 32), (32, 32), (48, 64),
                                              (64, 64), (128, 64), (1000, 64)])
def test_blocksize_reaches_the_runtime(monkeypatch, blocksize, block):
    """``blocksize`` becomes ``block_m = block_n`` (rounded up to a power of two in [16, 64]);
    ``attention_impl`` leaves the runtime's default (None)."""
    import attnlang.runtime as runtime

    seen = []
    real_run = runtime.run

    def spy(*args, **kwargs):
        seen.append((kwargs.get("block_m"), kwargs.get("block_n")))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runtime, "run", spy)
    q = torch.randn(1, 12, 32)
    blocksparse_attention_impl(q, q, q, 2, "local", 4, blocksize=blocksize)
    SparseAttention(2, "strided", 3, blocksize)(q, q, q)
    attention_impl(q, q, q, 2, "all")
    assert seen == [(block, block), (block, block), (None, None)]


def test_results_equal_across_blocksizes():
    """Layout blocks change only how the work is split: the same numbers for every blocksize."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 150, 64, generator=gen, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 150, 64, generator=gen)
    expected = reference(q, k, v, 4, openai_mask(150, 150, "fixed", 24, True, 3))
    results = []
    for blocksize in (16, 32, 64):
        out = blocksparse_attention_impl(q, k, v, 4, "fixed", 24, blocksize, summary_size=3)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
        results.append((out, *torch.autograd.grad((out * g).sum(), (q, k, v))))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
