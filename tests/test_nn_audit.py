"""Audit of attnlang.nn and attnlang.functional: bad arguments give ValueErrors naming the
argument (not tracebacks from torch or the planner), both FlashAttention paths take the same
inputs, and the Sparse Transformer modes stay exact (and fast) with context sizes far larger
than the sequences."""
import math
import signal

import pytest
import torch

from attnlang.errors import AttnError
from attnlang.functional import as_pattern, attention
from attnlang.nn import FlashAttention, LocalAttention, SparseAttention, attention_impl
from attnlang.nn.sparse import blocksparse_attention_impl
from test_nn_sparse import openai_mask, reference


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


# ---------------------------------------------------------------- FlashAttention


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("call, message", [
    (lambda m: m(t(1, 2, 4, 8), t(1, 2, 4, 8, dtype=torch.float16), t(1, 2, 4, 8)),
     r"k: got dtype torch.float16; expected the dtype of q"),
    (lambda m: m(t(1, 2, 4, 8), t(1, 2, 4, 8), t(1, 2, 4, 8, dtype=torch.float64)),
     r"v: got dtype torch.float64; expected the dtype of q"),
    (lambda m: m(t(1, 2, 4, 8), t(1, 2, 0, 8), t(1, 2, 0, 8)), r"k: got a tensor of shape"),
    (lambda m: m(t(1, 2, 4, 0), t(1, 2, 4, 0), t(1, 2, 4, 0)), r"q: got a tensor of shape"),
    (lambda m: m(t(1, 2, 4, 8), t(1, 2, 4, 8), t(1, 2, 4, 8),
                 mask=torch.ones(4, 4, dtype=torch.bool, device="meta")),
     r"mask: got a tensor on meta; expected the device of q"),
])
def test_flash_bad_inputs_name_the_argument_on_both_paths(flash, call, message):
    with pytest.raises(ValueError, match=message):
        call(FlashAttention(flash=flash))


@pytest.mark.parametrize("flash", ["no", None, 1])
def test_flash_flag_must_be_a_bool(flash):
    with pytest.raises(ValueError, match="flash: got"):
        FlashAttention(flash=flash)


@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float64])
def test_flash_plain_path_takes_a_bias_of_another_float_dtype(bias_dtype):
    torch.manual_seed(0)
    q, k, v = (t(1, 2, 5, 16, dtype=torch.bfloat16) for _ in range(3))
    bias = torch.randn(5, 5, dtype=bias_dtype)
    plain = FlashAttention(flash=False).eval()(q, k, v, attn_bias=bias)
    kernel = FlashAttention(flash=True).eval()(q, k, v, attn_bias=bias)
    assert plain.dtype == kernel.dtype == torch.bfloat16
    torch.testing.assert_close(plain.float(), kernel.float(), atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------- Sparse Transformer


@pytest.mark.parametrize("shape", [(2, 0, 32), (0, 8, 32), (2, 8, 0)])
def test_sparse_empty_inputs_name_the_argument(shape):
    x = torch.randn(*shape)
    with pytest.raises(ValueError, match=r"q: got a tensor of shape \[" + str(shape[0])):
        attention_impl(x, x, x, 2, "all")


@pytest.mark.parametrize("kwargs, message", [
    (dict(attn_mode="all", local_attn_ctx=-5), "local_attn_ctx: got -5"),
    (dict(attn_mode="local", local_attn_ctx=4, summary_size=-3), "summary_size: got -3"),
])
def test_sparse_given_sizes_are_checked_in_every_mode(kwargs, message):
    x = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match=message):
        attention_impl(x, x, x, 2, **kwargs)
    with pytest.raises(ValueError, match=message):
        SparseAttention(2, **kwargs)


@pytest.mark.parametrize("lq, lk", [(7, 7), (3, 9), (9, 4), (1, 1)])
@pytest.mark.parametrize("mode, ctx, c", [("strided", 10 ** 9, None), ("strided", 10, None),
                                          ("fixed", 10 ** 12, None), ("fixed", 12, 5),
                                          ("fixed", 20, 15), ("fixed", 11, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_sparse_context_larger_than_the_sequence(lq, lk, mode, ctx, c, causal):
    """A context far beyond the lengths used to hang in the planner (its cost grew with the
    stride / the summary range); now it is swapped for an equal small pattern."""
    gen = torch.Generator().manual_seed(lq * 31 + lk)
    q = torch.randn(2, lq, 32, generator=gen)
    k, v = (torch.randn(2, lk, 32, generator=gen) for _ in range(2))
    expected = reference(q, k, v, 2, openai_mask(lq, lk, mode, ctx, causal, c))

    def too_slow(signum, frame):
        raise AssertionError(f"{mode} with local_attn_ctx={ctx} took over 20 s on {lk} keys")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        outs = (attention_impl(q, k, v, 2, mode, ctx, causal=causal, summary_size=c),
                blocksparse_attention_impl(q, k, v, 2, mode, ctx, 16, causal=causal,
                                           summary_size=c))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for out in outs:
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- LocalAttention


@pytest.mark.parametrize("kwargs, message", [
    (dict(causal="no"), "causal: got 'no'; expected True or False"),
    (dict(autopad=1), "autopad: got 1"),
    (dict(shared_qk=None), "shared_qk: got None"),
    (dict(exact_windowsize="yes"), "exact_windowsize: got 'yes'"),
    (dict(dropout="0.1"), r"dropout: got str '0.1'; expected a number in \[0, 1\)"),
    (dict(dropout=1.0), r"dropout: got 1.0; expected a number in \[0, 1\)"),
    (dict(rel_pos_emb_config=16), "rel_pos_emb_config: got 16"),
    (dict(dim=16, use_xpos=True, xpos_scale_base="2"), "xpos_scale_base: got '2'"),
])
def test_local_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocalAttention(4, **kwargs)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((2, 0, 16), {}, r"q: got a tensor of shape \[2, 0, 16\]"),
    ((2, 0, 16), {"autopad": True}, r"q: got a tensor of shape \[2, 0, 16\]"),
    ((2, 8, 0), {}, r"q: got a tensor of shape \[2, 8, 0\]"),
])
def test_local_empty_inputs_name_the_argument(shape, kwargs, message):
    x = torch.randn(*shape)
    with pytest.raises(ValueError, match=message):
        LocalAttention(4, **kwargs)(x, x, x)


def test_local_empty_mask_and_bias_name_the_argument():
    x = torch.randn(2, 8, 16)
    m = LocalAttention(4, dropout=0.0)
    with pytest.raises(ValueError, match="mask: got 0 rows"):
        m(x, x, x, mask=torch.ones(0, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_bias: got shape \[0, 4, 12\]"):
        m(x, x, x, attn_bias=torch.randn(0, 4, 12))


# ---------------------------------------------------------------- functional


@pytest.mark.parametrize("text", ["", "   ", "# only a comment", "\n\n"])
def test_empty_pattern_text_says_so(text):
    with pytest.raises(AttnError, match="expected a pattern expression") as info:
        as_pattern(text)
    assert "pattern _" not in str(info.value)  # the hidden wrapper never shows
    assert info.value.line == 1


def test_positions_in_messages_refer_to_the_text_as_given():
    with pytest.raises(AttnError, match=r"close the '\(' at 1:1") as info:
        as_pattern("(causal")
    assert info.value.line == 1
    with pytest.raises(AttnError, match=r"close the '\(' at 1:10") as info:
        as_pattern("causal & (window(2)\n | stride(3)")
    assert info.value.line == 2


def test_a_declaration_after_the_expression_is_an_error():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(AttnError, match="found a declaration after it") as info:
        attention(q, q, q, "causal\npattern y = window(3)")
    assert info.value.line == 2
    assert str(as_pattern("causal # a comment")) == "pattern _ = causal"


def test_flash_reference_scale_unchanged():
    # sanity: the plain path's scale is still 1/sqrt(D) after the bias cast
    q, k, v = (torch.randn(1, 1, 3, 4) for _ in range(3))
    out = FlashAttention(flash=False).eval()(q, k, v)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), -1)
    torch.testing.assert_close(out, probs @ v)


def test_a_head_dim_past_the_kernels_names_only_the_upper_bound():
    """nn modules zero-pad head dims below 16, so the error for 300 gives the upper bound only
    (it said "from 16 to 256", as if 8 were refused too)."""
    from attnlang.nn import FlashAttention

    q = torch.randn(1, 1, 8, 300)
    with pytest.raises(ValueError, match=r"^q: got head dim 300; expected a head dim of at most "
                                         r"256 \(head dims below 16 are zero-padded\)$"):
        FlashAttention()(q, q, q)
    small = torch.randn(1, 1, 8, 8)
    assert FlashAttention()(small, small, small).shape == small.shape


@pytest.mark.parametrize("make", [lambda p: FlashAttention(dropout=p),
                                  lambda p: LocalAttention(window_size=4, dropout=p),
                                  lambda p: as_pattern("causal").module(dropout=p)])
def test_every_dropout_is_checked_alike(make):
    """The nn modules and PatternAttention take any real dropout in [0, 1) (numpy's scalars
    too, as functional's dropout_p) and refuse the rest with the argument's name."""
    import numpy as np
    def rate(module):  # LocalAttention keeps an nn.Dropout
        return getattr(module.dropout, "p", module.dropout)
    assert rate(make(np.float32(0.25))) == 0.25 and rate(make(0)) == 0.0
    for bad, given in ((1.0, "1.0"), (True, "bool True"), ("x", "str 'x'"),
                       (float("nan"), "nan"), (np.float32(-0.5), r"np\.float32\(-0\.5\)")):
        with pytest.raises(ValueError, match=rf"^dropout: got {given}; expected a number in "):
            make(bad)
