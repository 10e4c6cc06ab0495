"""Deterministic tests for behaviour of ``attnlang.nn`` that mutation testing found unchecked.

Each test names the mutant it kills and the documented behaviour (docs/nn/*.md).  Expected
values come from a naive dense computation here (a hand-built keep mask, plain softmax), never
from the modules' own helpers.
"""
import math

import pytest
import torch

from attnlang.nn import FlashAttention, LocalAttention, SparseAttention, attention_impl
from attnlang.nn import blocksparse_attention_impl

from kernel_utils import randn


def naive(q, k, v, keep, scale, bias=None):
    """Masked softmax attention in float64; rows with no kept key give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.double()
    scores = scores.masked_fill(~keep, -math.inf)
    probs = torch.softmax(scores, -1)
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs @ v



def close(a, b, tol=1e-4):
    return torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


# ------------------------------------------------------------------------- FlashAttention

def test_flash_head_dim_256_is_accepted():
    """Kills ``_common.attend`` ``dim > MAX_HEAD_DIM`` -> ``>=``: docs/nn/flash_attention.md,
    "a head dim of at most 256" on the flash=True path."""
    q, k, v = randn(1, 1, 3, 256, seed=1), randn(1, 1, 3, 256, seed=2), randn(1, 1, 3, 256)
    out = FlashAttention(causal=True, flash=True)(q, k, v)
    keep = torch.ones(3, 3).tril().bool()
    assert close(out, naive(q, k, v, keep, 1 / 16))


def test_flash_three_dim_q_error_names_q():
    """Kills ``check_tensor`` ``value.dim() != dims`` -> ``>``: q must be [B, H, L, D]; a
    3-D q is a ValueError naming q ("Bad arguments raise ValueErrors naming the argument")."""
    q = randn(1, 3, 16)
    with pytest.raises(ValueError, match="^q: "):
        FlashAttention(flash=True)(q, q, q)


# ------------------------------------------------------------------------- LocalAttention

def bucket_keep(n, w, lb, lf, causal):
    keep = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            keep[i, j] = -lf <= i // w - j // w <= lb and (not causal or j <= i)
    return keep


def dense_bias(bias, n, w, lb, lf):
    """The package's per-bucket bias [w, (lb + lf + 1) * w] as a dense [n, n] bias."""
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            rel = j // w - i // w + lb
            if 0 <= rel <= lb + lf:
                out[i, j] = bias[i % w, rel * w + j % w]
    return out


def _assert_local_bias_matches_dense(w, lb, lf, n, bias_scale, d=16):
    """LocalAttention with a per-bucket attn_bias equals dense attention over its buckets'
    look-around with that bias spread out (`dense_bias`)."""
    q, k, v = randn(1, n, d, seed=1), randn(1, n, d, seed=2), randn(1, n, d, seed=3)
    bias = randn(1, w, (lb + lf + 1) * w, seed=4) * bias_scale
    attn = LocalAttention(w, look_backward=lb, look_forward=lf, dropout=0.0,
                          use_rotary_pos_emb=False)
    out = attn(q, k, v, attn_bias=bias)
    expect = naive(q[0], k[0], v[0], bucket_keep(n, w, lb, lf, False), d ** -0.5,
                   dense_bias(bias[0], n, w, lb, lf))
    assert close(out[0], expect)


def test_local_bias_with_unequal_look_backward_and_forward():
    """Kills ``_dense_bias`` ``+ lb`` -> ``+ lf``: attn_bias is the package's per-bucket bias
    ``[h, w, (lb + lf + 1) * w]``, its column block ``r`` being key bucket ``query - lb + r``
    (docs/nn/local_attention.md, Inputs)."""
    _assert_local_bias_matches_dense(w=2, lb=2, lf=1, n=8, bias_scale=3)


def test_local_bias_split_into_calls_keeps_look_around():
    """Kills the span bounds in ``forward`` (``g1 + look_forward`` / ``g0 - look_backward``
    dropped): with a bias the queries are split into calls of ~256, and "each span covers its
    queries' whole look-around, so results are exact" (docs/nn/local_attention.md)."""
    _assert_local_bias_matches_dense(w=64, lb=1, lf=1, n=512, bias_scale=1)


def test_local_mask_rows_apply_to_consecutive_flattened_rows():
    """Kills ``_key_rows`` ``repeat_interleave`` -> ``repeat``: "flattened row i uses mask row
    i // (b / B')": with q [batch, heads, n, d] each batch's mask applies to all its heads."""
    w, n, d = 2, 4, 16
    q, k, v = randn(2, 2, n, d, seed=1), randn(2, 2, n, d, seed=2), randn(2, 2, n, d, seed=3)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    attn = LocalAttention(w, dropout=0.0, use_rotary_pos_emb=False)
    out = attn(q, k, v, mask=mask)
    base = bucket_keep(n, w, 1, 1, False)
    for b in range(2):
        for h in range(2):
            expect = naive(q[b, h], k[b, h], v[b, h], base & mask[b][None, :], d ** -0.5)
            assert close(out[b, h], expect)


def test_local_scale_zero_is_an_error():
    """Kills ``LocalAttention`` ``not scale > 0`` -> ``scale < 0``: ``scale`` is a positive
    number or None; 0 is a ValueError naming scale (0 would make every softmax uniform)."""
    with pytest.raises(ValueError, match="^scale: "):
        LocalAttention(4, scale=0)
    with pytest.raises(ValueError, match="^scale: "):
        LocalAttention(4, scale=0.0)


# ------------------------------------------------------------------------- SparseAttention

def fixed_keep(lq, lk, ctx, c, causal=True):
    keep = torch.zeros(lq, lk, dtype=torch.bool)
    for qi in range(lq):
        i = qi + lk - lq
        for j in range(lk):
            ok = i // ctx == j // ctx or j % ctx >= ctx - c
            keep[qi, j] = ok and (not causal or j <= i)
    return keep


def test_sparse_summary_size_equal_to_ctx_is_accepted():
    """Kills ``sparse_pattern`` ``c > ctx`` -> ``c >= ctx``: the fixed pattern's
    ``1 <= c <= l`` (docs/nn/sparse_attention.md, Modes); c = l keeps every causal pair."""
    heads, d, n, ctx = 1, 16, 8, 4
    q, k, v = randn(1, n, d, seed=1), randn(1, n, d, seed=2), randn(1, n, d, seed=3)
    out = attention_impl(q, k, v, heads, "fixed", ctx, summary_size=ctx)
    expect = naive(q[0], k[0], v[0], fixed_keep(n, n, ctx, ctx), d ** -0.5)
    assert close(out[0], expect)


def test_sparse_block_size_alone_is_accepted():
    """Kills ``SparseAttention`` dropping the ``blocksize is not _BLOCKSIZE`` test: only giving
    both spellings with different values is an error; ``block_size=64`` alone is allowed."""
    assert SparseAttention(block_size=64).blocksize == 64
    with pytest.raises(ValueError, match="block_size"):
        SparseAttention(blocksize=32, block_size=64)


def test_blocksparse_blocksize_zero_is_an_error():
    """Kills ``blocksparse_attention_impl`` ``check_int(..., 1)`` -> ``0``: ``blocksize`` is an
    integer >= 1 (docs/nn/sparse_attention.md)."""
    q = randn(1, 4, 16)
    with pytest.raises(ValueError, match="^blocksize: "):
        blocksparse_attention_impl(q, q, q, 1, "all", blocksize=0)


def test_sparse_k_batch_must_match_q():
    """Kills ``_run`` dropping ``kh.shape[0] != qh.shape[0]``: k/v must be [B, Lk, heads * D]
    with q's batch; a mismatch is a ValueError naming k, v."""
    q, k = randn(2, 4, 16), randn(1, 4, 16)
    with pytest.raises(ValueError, match="^k, v: "):
        attention_impl(q, k, k, 1, "all")


def test_bool_is_not_an_integer_argument():
    """Kills ``check_int`` dropping ``isinstance(value, bool)``: integer arguments such as
    ``window_size`` and ``heads`` reject True ("Errors are ValueErrors naming the argument")."""
    with pytest.raises(ValueError, match="^window_size: "):
        LocalAttention(True)
    with pytest.raises(ValueError, match="^heads: "):
        SparseAttention(heads=True)


def test_a_bad_block_size_is_named_as_the_caller_spelled_it():
    """``SparseAttention(block_size=0)`` names ``block_size`` (the documents' other spelling),
    ``blocksize=0`` names ``blocksize``: until round 65 both errors said ``blocksize``."""
    with pytest.raises(ValueError, match="^block_size: got 0"):
        SparseAttention(block_size=0)
    with pytest.raises(ValueError, match="^blocksize: got 0"):
        SparseAttention(blocksize=0)
