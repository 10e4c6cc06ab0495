"""Validate and normalise the arguments of an attention call.

Every attention entry point (the blocked PyTorch path, the generated Triton modules) accepts the
same arguments and promises the same checks, so they live here.  This file imports only the
standard library and torch: ``attnlang compile`` copies it verbatim into standalone modules.

Each failure is a ``ValueError`` naming the argument, what was given and what is accepted.  What
passes comes back as an ``Inputs`` tuple in the normal form the kernels expect:

* ``q`` ``[B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]`` (strides untouched);
* ``seg_q`` / ``seg_k``: int32 ``[B or 1, L]`` or ``None``;
* ``key_padding_mask``: bool ``[B, Lk]`` (True = keep) or ``None``;
* ``attn_mask`` (bool) / ``attn_bias`` (float): broadcast views of ``[B, Hq, Lq, Lk]`` (stride
  0 on broadcast dimensions) or ``None``; ``attn_bias4`` is the bias before expansion, as a
  4-D view whose broadcast dimensions have size 1 (gradients are reduced to that shape);
* ``scale``: a positive finite float (``1/sqrt(D)`` by default); ``dropout_p`` in ``[0, 1)``.
"""
from __future__ import annotations

import math
import numbers
import weakref
from typing import NamedTuple, Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


class Inputs(NamedTuple):
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    seg_q: Optional[torch.Tensor]
    seg_k: Optional[torch.Tensor]
    key_padding_mask: Optional[torch.Tensor]
    attn_mask: Optional[torch.Tensor]
    attn_bias: Optional[torch.Tensor]
    attn_bias4: Optional[torch.Tensor]
    scale: float
    dropout_p: float


def records_grad(q, k, v, attn_bias) -> bool:
    """Whether autograd records a call with these inputs: grad mode on and one of them requiring
    grad (the entry points run the forward alone otherwise, without an autograd.Function)."""
    return torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad
        or (attn_bias is not None and attn_bias.requires_grad))


def _compiling() -> bool:
    """Under torch.compile, value checks (which read tensor data) are skipped."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _fail(name, given, accepted):
    return ValueError(f"{name}: got {given}; expected {accepted}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)} on {x.device}"
    if isinstance(x, (tuple, list)) and any(isinstance(i, torch.Tensor) for i in x):
        # a tensor's repr runs over many lines: describe the items instead
        items = ", ".join(_describe(i) for i in x[:3]) + (", ..." if len(x) > 3 else "")
        return f"a {type(x).__name__} of {len(x)} items ({items})"
    return f"{type(x).__name__} {_short_repr(x)}"


def _short_repr(x) -> str:
    text = repr(x)
    if len(text) > 80:  # a long list of numbers: its start says what it is
        text = f"{text[:72]}... ({len(text)} characters)"
    return text


def validate(q, k, v, *, segments=None, key_padding_mask=None, attn_mask=None, attn_bias=None,
             scale=None, dropout_p=0.0, needs_segments=False) -> Inputs:
    """Check every argument of an attention call and return them normalised (see module doc).

    ``needs_segments``: the pattern uses ``segment``, so ``segments`` must be given.
    """
    q, k, v = _check_qkv(q, k, v)
    batch, hq, lq, dim = q.shape
    lk = k.shape[2]
    seg_q, seg_k = _check_segments(segments, batch, lq, lk, q.device, needs_segments)
    kpm = _check_key_padding(key_padding_mask, batch, lk, q.device)
    full = (batch, hq, lq, lk)
    mask = _check_dense("attn_mask", attn_mask, full, q.device, boolean=True)
    bias4 = _check_dense("attn_bias", attn_bias, full, q.device, boolean=False)
    bias = bias4.expand(full) if bias4 is not None else None
    if mask is not None:
        mask = mask.expand(full)
    return Inputs(q, k, v, seg_q, seg_k, kpm, mask, bias, bias4,
                  _check_scale(scale, dim), check_dropout("dropout_p", dropout_p))


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise _fail(name, _describe(t), "a torch.Tensor of shape [B, H, L, D]")
        check_strided(name, t, _PADDING_HINT)
        if t.dim() != 4:
            raise _fail(name, f"a tensor of shape {list(t.shape)}",
                        "4 dimensions [batch, heads, length, head_dim]")
        if t.dtype not in FLOAT_DTYPES:
            raise _fail(name, f"dtype {t.dtype}", "torch.float16, torch.bfloat16 or torch.float32")
    for name, t in (("k", k), ("v", v)):
        check_like_q(name, t, q)
    batch, hq, lq, dim = q.shape
    if batch < 1 or hq < 1 or lq < 1:
        raise _fail("q", f"shape {list(q.shape)}", "batch, heads and length of at least 1")
    if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
        raise _fail("q", f"head dim {dim}", f"a head dim from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if k.shape[0] != batch or k.shape[3] != dim or k.shape[1] < 1 or k.shape[2] < 1:
        raise _fail("k", f"shape {list(k.shape)}",
                    f"[{batch}, Hkv, Lk, {dim}] (batch and head dim of q, Hkv >= 1, Lk >= 1)")
    if hq % k.shape[1] != 0:
        raise _fail("k", f"{k.shape[1]} heads",
                    f"a number of heads that divides the {hq} query heads (GQA/MQA)")
    if v.shape != k.shape:
        raise _fail("v", f"shape {list(v.shape)}", f"the shape of k {list(k.shape)}")
    return q, k, v


def check_like_q(name, t, q) -> None:
    """A ValueError naming ``name`` unless the tensor ``t`` has ``q``'s dtype and device."""
    if t.dtype != q.dtype:
        raise _fail(name, f"dtype {t.dtype}", f"the dtype of q ({q.dtype})")
    if t.device != q.device:
        raise _fail(name, f"a tensor on {t.device}", f"the device of q ({q.device})")


_PADDING_HINT = "; pad variable lengths and pass key_padding_mask or segments"


def check_strided(name, t, hint="") -> None:
    """A ValueError naming ``name`` unless the tensor ``t`` is a dense (strided) tensor with
    data: sparse, nested and meta tensors are refused here, before anything reads them
    (``hint`` ends the message of a tensor that is not dense)."""
    if t.layout is not torch.strided or t.is_nested:
        kind = "nested" if t.is_nested else str(t.layout).replace("torch.", "")
        raise _fail(name, f"a {kind} tensor", "a dense (strided) tensor" + hint)
    if t.is_meta:
        raise _fail(name, "a tensor on the meta device", "a tensor with data (CPU or CUDA)")


def broadcasts_to(shape, full) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``full``: each size, aligned from the
    right, 1 or the full one.  Spelled as comparisons, not ``torch.broadcast_shapes``, whose
    failure under ``torch.compile`` is Dynamo's own error rather than a RuntimeError to catch."""
    if len(shape) > len(full):
        return False
    return all(_one_or(size, want) for size, want in zip(reversed(shape), reversed(full)))


def _one_or(size, batch) -> bool:
    """``size in (1, batch)``, spelled as comparisons: under ``torch.compile`` with dynamic
    shapes, ``in`` on a tuple holding a symbolic size answered False for equal sizes."""
    return size == 1 or size == batch


def _as_ids(name, t, batch, length, device):
    if type(t) is torch.Tensor and t.dtype == torch.int32 and t.device == device \
            and t.layout is torch.strided and not t.is_nested:
        # the kernels' own dtype: the checks below that apply, in a few µs less of host time
        ids = t.unsqueeze(0) if t.dim() == 1 else t
        if ids.dim() == 2 and ids.shape[1] == length and _one_or(ids.shape[0], batch):
            return ids
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise _fail(name, _describe(t), "an integer tensor of segment ids") from None
    check_strided(name, t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise _fail(name, f"dtype {t.dtype}", "an integer dtype (segment ids)")
    if t.dtype == getattr(torch, "uint64", None):  # no range check exists for it: ids may wrap
        raise _fail(name, f"dtype {t.dtype}", "int64 or a narrower integer dtype (segment ids)")
    if t.device != device:
        raise _fail(name, f"a tensor on {t.device}", f"the device of q ({device})")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or not _one_or(t.shape[0], batch) or t.shape[1] != length:
        raise _fail(name, f"shape {list(t.shape)}", f"[{length}] or [{batch}, {length}]")
    if t.dtype == torch.int32:
        return t
    if _compiling():  # the range check reads the ids: int64 ids are checked by the op, at run time
        return t if t.dtype == torch.int64 else t.to(torch.int32)
    known = ids_identity(t)
    hit = _INT32_IDS.get(id(known[0])) if known else None
    if hit is not None and hit[0]() is known[0] and hit[1] == known[1]:
        return hit[2]
    ids = int32_ids(name, t)
    if known is None:
        return ids
    if len(_INT32_IDS) >= 64:  # the id tensors of a few steps: never grows without bound
        _INT32_IDS.clear()
    key = id(known[0])

    def forget(ref):  # the caller's ids are gone: so is their copy (unless the key was reused)
        entry = _INT32_IDS.get(key)
        if entry is not None and entry[0] is ref:
            del _INT32_IDS[key]

    _INT32_IDS[key] = (weakref.ref(known[0], forget), known[1], ids)
    return ids


def int32_ids(name, t):
    """Integer ids ``t`` as int32, what the kernels compare, or a ValueError naming ``name``
    where an int64 id does not fit (a wrapped id could join two documents).  On a GPU the check
    reads two numbers back (one host sync per call): int32 ids skip it."""
    if t.dtype == torch.int64 and t.numel():
        lo, hi = torch.stack(torch.aminmax(t)).tolist()
        if lo < -2 ** 31 or hi >= 2 ** 31:
            raise _fail(name, f"ids from {lo} to {hi}", "ids that fit in int32")
    return t.to(torch.int32)


# Wider ids converted to int32, kept while the caller's ids stay the same (`ids_identity`): the
# next layer's call with them gets the same int32 tensor (so the generated modules' document
# bounds, kept per ids, are built once per step) and skips the range check's host sync.  Keyed
# by the tensor owning the ids' memory; an entry holds a weak reference to it and the ids' place.
_INT32_IDS: dict = {}


def ids_identity(t):
    """How segment ids are recognised across calls (here, and by the generated modules' kept
    document bounds): (the tensor that owns their memory, their place in it with its version
    counter), or None for an inference tensor, which has no version counter.  Fresh views of one
    tensor at one place are the same ids; any in-place change (the version counter is shared by
    a tensor and its views) makes them new ones."""
    if t.is_inference():
        return None
    owner = t if t._base is None else t._base
    return owner, (t._version, t.dtype, t.storage_offset(), tuple(t.shape), t.stride())


def _is_pair(segments) -> bool:
    """Whether ``segments`` is the pair form ``(seg_q, seg_k)``: two tensors in a tuple or a
    list, or a tuple of two items that are not single numbers (``(ids_q, ids_k)`` as lists, or
    with an item missing, which is then reported by name), rather than one id tensor (a list of
    lists is ids ``[B, L]``, as ``torch.as_tensor`` reads it)."""
    if not isinstance(segments, (tuple, list)) or len(segments) != 2:
        return False
    if all(isinstance(s, torch.Tensor) for s in segments):
        return True
    return isinstance(segments, tuple) and not all(
        isinstance(s, numbers.Number) for s in segments)


def _check_segments(segments, batch, lq, lk, device, needs):
    if segments is None:
        if needs:
            raise _fail("segments", "None", "segment ids (the pattern uses 'segment'): a tensor "
                        "[Lk] or [B, Lk], or a pair (seg_q, seg_k)")
        return None, None
    if _is_pair(segments):
        return (_as_ids("segments[0] (query ids)", segments[0], batch, lq, device),
                _as_ids("segments[1] (key ids)", segments[1], batch, lk, device))
    seg_k = _as_ids("segments", segments, batch, lk, device)
    if lq > lk:
        raise _fail("segments", f"one id tensor with Lq={lq} > Lk={lk}",
                    "a pair (seg_q, seg_k) when there are more queries than keys")
    # Bottom-right alignment: query q sits at key position q + Lk - Lq.
    return (seg_k if lq == lk else seg_k[:, lk - lq:]), seg_k


def _check_key_padding(mask, batch, lk, device):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise _fail("key_padding_mask", _describe(mask), "a bool tensor [B, Lk] (True = keep)")
    check_strided("key_padding_mask", mask)
    if mask.device != device:
        raise _fail("key_padding_mask", f"a tensor on {mask.device}", f"the device of q ({device})")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2 or not _one_or(mask.shape[0], batch) or mask.shape[1] != lk:
        raise _fail("key_padding_mask", f"shape {list(mask.shape)}", f"[{batch}, {lk}]")
    return mask.expand(batch, lk)


def _check_dense(name, t, full, device, boolean):
    if t is None:
        return None
    accepted = (f"a bool tensor broadcastable to {list(full)} (True = keep)" if boolean else
                f"a floating-point tensor broadcastable to {list(full)} (added to the scores)")
    if not isinstance(t, torch.Tensor):
        raise _fail(name, _describe(t), accepted)
    check_strided(name, t)
    if boolean and t.dtype != torch.bool:
        hint = "; pass additive float masks as attn_bias" if t.dtype.is_floating_point else ""
        raise _fail(name, f"dtype {t.dtype}", accepted + hint)
    if not boolean and not t.dtype.is_floating_point:
        raise _fail(name, f"dtype {t.dtype}", accepted)
    if t.device != device:
        raise _fail(name, f"a tensor on {t.device}", f"the device of q ({device})")
    if t.dim() > 4:
        raise _fail(name, f"shape {list(t.shape)}", accepted)
    if not broadcasts_to(t.shape, full):
        raise _fail(name, f"shape {list(t.shape)}", accepted)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _check_scale(scale, dim):
    if scale is None:
        return 1.0 / math.sqrt(dim)
    accepted = "a positive finite number (or None for 1/sqrt(D))"
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise _fail("scale", _describe(scale), accepted)
    try:
        value = float(scale)  # numpy's scalars too; an int beyond float's range overflows
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise _fail("scale", _short_repr(scale), accepted)
    return value


def check_dropout(name, p) -> float:
    """``p`` as a float in ``[0, 1)`` (any real number, numpy's scalars too; not a bool), or a
    ValueError naming the argument ``name`` (every entry point's dropout is checked here)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise _fail(name, _describe(p), "a number in [0, 1)")
    if not 0.0 <= p < 1.0:
        raise _fail(name, _short_repr(p), "a number in [0, 1)")
    return float(p)
