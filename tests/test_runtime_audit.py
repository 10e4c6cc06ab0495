"""Call-time arguments that gave a traceback from inside attnlang or torch, or a wrong answer,
checked against a float64 dense reference computed here (softmax over the kept keys, zeros for a
query with none)."""
import math
import os

import numpy as np
import pytest
import torch

import attnlang
from attnlang import functional as F
from attnlang.nn import FlashAttention, LocalAttention
from attnlang.runtime import make_module

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def dense(text, batch, heads, lq, lk, segments=None):
    """The pattern's mask [B, H, Lq, Lk] (one id row, or a pair, for all batches)."""
    m = F.as_pattern(text).mask(lq, lk, num_heads=heads, segments=segments)
    return m.view(-1, lq, lk).expand(heads, lq, lk).unsqueeze(0).expand(batch, heads, lq, lk)


def reference(q, k, v, keep, bias=None, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if bias is not None:
        s = s + bias.double()
    s = s.masked_fill(~keep, -math.inf)
    mx = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)))
    total = e.sum(-1, keepdim=True)
    return (e / torch.where(total > 0, total, torch.ones_like(total))) @ v


def inputs(batch=2, hq=2, hkv=1, lq=24, lk=24, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, hq, lq, d, generator=g), torch.randn(batch, hkv, lk, d, generator=g),
            torch.randn(batch, hkv, lk, d, generator=g))


def close(got, want, tol=1e-4):
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("shape", [(1, 1, 24, 1), (1, 2, 1, 24), (2, 1, 24, 24)])
def test_a_bias_expanded_by_the_caller_gets_its_gradient(shape):
    """An ``attn_bias`` passed expanded (stride 0 on dimensions of size > 1) entered autograd in
    its full shape while its gradient came back reduced: a RuntimeError in backward."""
    q, k, v = inputs()
    leaf = torch.randn(shape, requires_grad=True)
    out = F.attention(q, k, v, "causal & window(5, 0)", backend="torch", block_m=16,
                      block_n=16, attn_bias=leaf.expand(2, 2, 24, 24))
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (got,) = torch.autograd.grad(out, leaf, do)
    leaf64 = leaf.detach().double().requires_grad_()
    want = reference(q, k, v, dense("causal & window(5, 0)", 2, 2, 24, 24),
                     bias=leaf64.expand(2, 2, 24, 24))
    close(out, want)
    (want_grad,) = torch.autograd.grad(want, leaf64, do.double())
    assert got.shape == leaf.shape
    close(got, want_grad)


@pytest.mark.skipif(not INTERPRETED, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("mask_shape", [(24, 1), (1, 1, 1, 24), (1, 2, 1, 24), (1, 1, 24, 1)])
def test_triton_masks_broadcast_over_queries_or_keys(mask_shape, tmp_path):
    """The generated module's block tables (`_restrict_to_mask`) read a mask broadcast over
    queries or keys as one query and one key, and skipped blocks it keeps (wrong rows from the
    second query block); batch and head broadcasts as before."""
    q, k, v = inputs(batch=1)
    q.requires_grad_()
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(2)) > 0.4
    layer = attnlang.parse("pattern c = causal")["c"].module(
        backend="triton", block_m=16, block_n=16, cache_dir=tmp_path)
    out = layer(q, k, v, attn_mask=mask)
    want = reference(q.detach(), k, v, dense("causal", 1, 2, 24, 24) & mask)
    close(out, want)
    if mask_shape == (24, 1):
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        q64 = q.detach().double().requires_grad_()
        (want_dq,) = torch.autograd.grad(
            reference(q64, k, v, dense("causal", 1, 2, 24, 24) & mask), q64, do.double())
        close(torch.autograd.grad(out, q, do)[0], want_dq)


def test_a_tuple_of_two_id_lists_is_the_pair():
    """``segments=(ids_q, ids_k)`` as lists was read as per-batch ids ``[2, L]`` (silently the
    wrong mask when B = 2; a confusing shape error otherwise)."""
    q, k, v = inputs()
    ids_q = [0] * 10 + [1] * 14
    ids_k = [0] * 4 + [1] * 20
    out = F.attention(q, k, v, "segment & causal", backend="torch", segments=(ids_q, ids_k))
    keep = dense("segment & causal", 2, 2, 24, 24,
                 segments=(torch.tensor(ids_q), torch.tensor(ids_k)))
    close(out, reference(q, k, v, keep))
    per_batch = [ids_q, ids_k]  # a list of lists stays ids [B, L]
    out = F.attention(q, k, v, "segment & causal", backend="torch", segments=per_batch)
    keep = torch.stack([dense("segment & causal", 1, 2, 24, 24, segments=torch.tensor(ids))[0]
                        for ids in per_batch])
    close(out, reference(q, k, v, keep))
    with pytest.raises(ValueError, match=r"^segments\[0\] \(query ids\): got NoneType None; "):
        F.attention(q, k, v, "segment", backend="torch", segments=(None, torch.tensor(ids_k)))


def test_messages_describe_large_arguments_briefly():
    q, k, v = inputs()
    with pytest.raises(ValueError) as info:
        F.attention(q.tolist(), k, v, "causal", backend="torch")
    message = str(info.value)
    assert message.startswith("q: got list [[[[") and len(message) < 250, message
    assert message.endswith("expected a torch.Tensor of shape [B, H, L, D]")
    ids = torch.zeros(24, dtype=torch.long)
    with pytest.raises(ValueError) as info:
        F.attention(q, k, v, "segment", backend="torch", segments=(ids, ids, ids))
    message = str(info.value)
    assert "\n" not in message and len(message) < 350, message
    assert message.startswith("segments: got a tuple of 3 items (a torch.int64 tensor of shape")


def test_scale_and_dropout_take_any_real_number():
    """numpy's float32 scale was refused; an int beyond float's range raised OverflowError."""
    q, k, v = inputs()
    keep = dense("causal", 2, 2, 24, 24)
    out = F.attention(q, k, v, "causal", backend="torch", scale=np.float32(0.5),
                      dropout_p=np.float32(0.0))
    close(out, reference(q, k, v, keep, scale=0.5))
    with pytest.raises(ValueError, match=r"^scale: got 1000000000.*\(401 characters\); "
                                         r"expected a positive finite number"):
        F.attention(q, k, v, "causal", backend="torch", scale=10 ** 400)
    with pytest.raises(ValueError, match=r"^scale: got \S*nan\)?; expected"):
        F.attention(q, k, v, "causal", backend="torch", scale=np.float32("nan"))
    with pytest.raises(ValueError, match=r"^dropout_p: got \S*1\.0\)?; expected a number in "):
        F.attention(q, k, v, "causal", backend="torch", dropout_p=np.float32(1.0))
    layer = attnlang.parse("pattern c = causal")["c"].module(backend="torch",
                                                            dropout=np.float32(0.25))
    assert layer.dropout == 0.25


def test_cache_dir_of_the_wrong_type_is_named():
    """``cache_dir=3`` raised a TypeError from os.path when the generated module was loaded."""
    pattern = attnlang.parse("pattern c = causal")["c"]
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"^cache_dir: got int 3; expected a directory "):
            pattern.module(backend=backend, cache_dir=3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_where_too_large_at_call_time_points_at_the_users_text(backend, tmp_path):
    """A `where` whose arithmetic could pass 2**62 at the call's lengths is found when the call
    plans: its error points at the expression in the text as given (functional and a module
    made from text: line 1 of the text, not of the hidden wrapper) and, on the Triton path,
    whose generated module plans from text without positions, still at the user's source."""
    if backend == "triton" and not INTERPRETED:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    q = torch.randn(1, 1, 4, 16)
    huge = "q * 100000000000 * 100000000000"
    with pytest.raises(attnlang.AttnError) as info:
        F.attention(q, q, q, f"where({huge} > k)", backend=backend)
    assert (info.value.filename, info.value.line, info.value.column) == ("<pattern>", 1, 7)
    assert info.value.source_line == f"where({huge} > k)"
    layer = make_module(f"causal &\n  where({huge} > k)", backend=backend,
                        cache_dir=tmp_path)
    with pytest.raises(attnlang.AttnError) as info:
        layer(q, q, q)
    assert (info.value.line, info.value.column) == (2, 9), str(info.value)
    program = attnlang.parse(f"pattern a = causal\npattern b = a & where({huge} < 3)", "f.attn")
    with pytest.raises(attnlang.AttnError) as info:
        program["b"].module(backend=backend, cache_dir=tmp_path)(q, q, q)
    assert (info.value.filename, info.value.line, info.value.column) == ("f.attn", 2, 23)


def _sparse(t):
    return t.to_sparse()


def _meta(t):
    return t.to("meta")


@pytest.mark.parametrize("convert, given", [(_sparse, "a sparse_coo tensor"),
                                            (_meta, "a tensor on the meta device")])
def test_tensors_without_dense_data_name_the_argument(convert, given):
    """Sparse and meta tensors (nested ones too) were internal errors of torch's operators or
    of autocast's device check; every tensor argument now names itself."""
    q = torch.randn(1, 2, 8, 16)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2], dtype=torch.int32)
    calls = {"q": dict(q=convert(q)),
             "attn_mask": dict(attn_mask=convert(torch.ones(8, 8, dtype=torch.bool))),
             "attn_bias": dict(attn_bias=convert(torch.zeros(8, 8))),
             "key_padding_mask": dict(key_padding_mask=convert(torch.ones(1, 8, dtype=torch.bool))),
             "segments": dict(segments=convert(ids))}
    for name, change in calls.items():
        args = {"q": q, "segments": ids, **change}
        with pytest.raises(ValueError, match=rf"^{name}: got {given}; expected "):
            F.attention(args.pop("q"), q, q, "causal & segment", backend="torch", **args)
    for module in (FlashAttention(), LocalAttention(window_size=4, dropout=0.0)):
        with pytest.raises(ValueError, match=rf"^q: got {given}; expected "):
            module(convert(q), q, q)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_nested_tensors_name_the_argument():
    nested = torch.nested.nested_tensor([torch.randn(2, 4, 16), torch.randn(2, 3, 16)])
    with pytest.raises(ValueError, match=r"^q: got a nested tensor; expected a dense \(strided\) "
                                         r"tensor; pad variable lengths"):
        F.attention(nested, nested, nested, "causal", backend="torch")


def test_an_int32_copy_of_wider_ids_goes_with_the_callers_ids():
    """validate keeps the int32 copy of int64 ids while the caller's ids live (their range
    check runs once); it kept the copy after them until its table filled."""
    import gc

    from attnlang import validate as checks

    q = torch.randn(1, 1, 8, 16)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    F.attention(q, q, q, "causal & segment", segments=ids, backend="torch")
    assert id(ids) in checks._INT32_IDS
    key = id(ids)
    del ids
    gc.collect()
    assert key not in checks._INT32_IDS
