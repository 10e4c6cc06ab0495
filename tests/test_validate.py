"""validate.validate: every rejected argument is named, with what was given and what is accepted;
what passes comes back normalised."""
import math

import pytest
import torch

from attnlang.validate import validate


def qkv(b=2, hq=4, hkv=2, lq=8, lk=8, d=16, dtype=torch.float32):
    return (torch.randn(b, hq, lq, d, dtype=dtype), torch.randn(b, hkv, lk, d, dtype=dtype),
            torch.randn(b, hkv, lk, d, dtype=dtype))


def rejects(argument, accepted_fragment, **call):
    """Call validate and check the ValueError names ``argument`` first and says what is accepted."""
    q, k, v = call.pop("qkv", None) or qkv()
    with pytest.raises(ValueError) as info:
        validate(q, k, v, **call)
    message = str(info.value)
    assert message.startswith(argument + ":") or message.startswith(argument + " "), message
    assert "got" in message and "expected" in message, message
    assert accepted_fragment in message, message


def test_qkv_shapes_and_types():
    q, k, v = qkv()
    rejects("q", "4 dimensions", qkv=(q[0], k, v))
    rejects("q", "float16", qkv=(q.long(), k, v))
    rejects("k", "dtype of q", qkv=(q, k.half(), v.half()))
    rejects("q", "head dim from 16 to 256", qkv=qkv(d=8))
    rejects("q", "head dim from 16 to 256", qkv=qkv(d=264))
    rejects("k", "divides the 4 query heads", qkv=qkv(hkv=3))
    rejects("k", "[2, Hkv, Lk, 16]", qkv=(q, k[:1], v[:1]))
    rejects("v", "the shape of k", qkv=(q, k, v[:, :, :4]))
    rejects("q", "torch.Tensor", qkv=([1.0], k, v))


def test_segments():
    rejects("segments", "the pattern uses 'segment'", needs_segments=True)
    rejects("segments", "integer dtype", segments=torch.zeros(8))
    rejects("segments", "[8] or [2, 8]", segments=torch.zeros(7, dtype=torch.long))
    rejects("segments", "[8] or [2, 8]", segments=torch.zeros(3, 8, dtype=torch.long))
    rejects("segments[1] (key ids)", "[12] or [2, 12]", qkv=qkv(lk=12),
            segments=(torch.zeros(8, dtype=torch.long), torch.zeros(11, dtype=torch.long)))
    rejects("segments", "a pair (seg_q, seg_k)", qkv=qkv(lq=9, lk=8),
            segments=torch.zeros(8, dtype=torch.long))
    rejects("segments", "fit in int32", segments=torch.full((8,), 2 ** 40))
    rejects("segments", "fit in int32", segments=torch.full((8,), -2 ** 31 - 1))
    rejects("segments", "int64 or a narrower", segments=torch.zeros(8, dtype=torch.uint64))


def test_segment_ids_of_every_accepted_integer_dtype_become_int32():
    from attnlang.validate import validate

    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        ids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2], dtype=dtype)
        args = validate(*qkv(), segments=ids)
        assert args.seg_k.dtype == torch.int32 and args.seg_k.tolist() == [ids.tolist()]
    edge = torch.tensor([-2 ** 31] * 4 + [2 ** 31 - 1] * 4)  # the int32 range's ends pass
    assert validate(*qkv(), segments=edge).seg_k.tolist() == [edge.tolist()]


def test_masks_bias_scale_dropout():
    rejects("key_padding_mask", "bool tensor [B, Lk]", key_padding_mask=torch.ones(2, 8))
    rejects("key_padding_mask", "[2, 8]", key_padding_mask=torch.ones(2, 7, dtype=torch.bool))
    rejects("attn_mask", "pass additive float masks as attn_bias", attn_mask=torch.zeros(8, 8))
    rejects("attn_mask", "broadcastable to [2, 4, 8, 8]",
            attn_mask=torch.ones(3, 8, dtype=torch.bool))
    rejects("attn_bias", "floating-point", attn_bias=torch.zeros(8, 8, dtype=torch.long))
    rejects("attn_bias", "broadcastable", attn_bias=torch.zeros(1, 1, 1, 8, 8))
    rejects("attn_bias", "broadcastable to [2, 4, 1, 8]", qkv=qkv(lq=1),
            attn_bias=torch.zeros(3, 8))  # would broadcast, but to a larger shape
    for bad in (0.0, -1.0, math.inf, math.nan, "1", True):
        rejects("scale", "positive finite", scale=bad)
    for bad in (1.0, -0.1, math.nan, "0.1"):
        rejects("dropout_p", "[0, 1)", dropout_p=bad)


def test_normal_form():
    q, k, v = qkv(lq=5, lk=8)
    seg = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    bias = torch.randn(5, 8)
    args = validate(q, k, v, segments=seg, attn_bias=bias,
                    attn_mask=torch.ones(8, dtype=torch.bool),
                    key_padding_mask=torch.ones(8, dtype=torch.bool))
    assert args.scale == pytest.approx(1 / 4)
    assert args.seg_q.dtype == torch.int32 and args.seg_q.tolist() == [[1, 1, 2, 2, 2]]  # last Lq
    assert args.seg_k.shape == (1, 8)
    assert args.attn_bias.shape == (2, 4, 5, 8) and args.attn_bias.stride()[:2] == (0, 0)
    assert args.attn_bias4.shape == (1, 1, 5, 8)
    assert args.attn_mask.shape == (2, 4, 5, 8)
    assert args.key_padding_mask.shape == (2, 8)
    assert args.dropout_p == 0.0
    pair = validate(q, k, v, segments=(torch.zeros(2, 5, dtype=torch.int8), seg))
    assert pair.seg_q.shape == (2, 5) and pair.seg_k.shape == (1, 8)
