"""What the ``attnlang.nn`` modules share: cached patterns and one call into the runtime.

Every module in this package is a thin layer: it turns its arguments into an attnlang pattern
(source text such as ``"causal & window(31, 0)"``) and runs it as ``attnlang.functional.attention``
does (``runtime.run``, with the ops made beforehand by ``prepare``).
No module here computes attention itself, apart from ``FlashAttention(flash=False)``, whose whole
point is to be the plain-PyTorch reference path.

``pattern(text)`` parses and checks a pattern expression once per distinct text (a dict cache,
which ``torch.compile`` can trace, unlike ``functools.lru_cache``), so building a module or
calling it in a loop never re-parses.  ``attend`` adapts the few things
the kernels do not take directly: head dims below the kernels' minimum are zero-padded (zeros in
``q``/``k`` add nothing to the scores, zeros in ``v`` give columns that are cut off again), with
the scale fixed to the caller's ``1/sqrt(D)`` so that padding never changes the numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..validate import MAX_HEAD_DIM, MIN_HEAD_DIM, check_strided

MIN_BLOCK = 16  # the smallest layout block the kernels take (a power of two)
MAX_BLOCK = 64  # the largest layout block ``layout_block`` picks


_PATTERNS: dict = {}


def pattern(text: str):
    """The checked ``attnlang.Pattern`` for the pattern expression ``text`` (cached)."""
    hit = _PATTERNS.get(text)
    if hit is None:
        from ..api import parse

        parsed = parse(f"pattern nn_pattern = {text}", filename="<attnlang.nn>")["nn_pattern"]
        hit = _PATTERNS.setdefault(text, parsed)
    return hit


def prepare(text: str, block=None):
    """``(pattern, ops, needs_segments)`` for the pattern ``text`` with layout blocks ``block``
    (already a ``layout_block`` or None), made once per process (``runtime.prepared``); the
    modules call this at construction so that the ops exist before any trace reaches them."""
    from ..runtime import prepared

    return prepared(("nn", text), lambda: pattern(text), block, block)


def layout_block(blocksize: int) -> int:
    """The layout block size (``block_m = block_n``) used for a requested ``blocksize``.

    The kernels take powers of two from 16 up; ``blocksize`` is rounded up to the next power
    of two, raised to at least ``MIN_BLOCK`` and capped at ``MAX_BLOCK`` (larger tiles would not
    fit the backward kernels' shared memory at the larger head dims).  The block size changes
    only the speed, never the numbers.
    """
    block = 1 << max(0, int(blocksize) - 1).bit_length()  # next power of two >= blocksize
    return min(MAX_BLOCK, max(MIN_BLOCK, block))


def attend(q, k, v, text, *, key_padding_mask=None, attn_mask=None, attn_bias=None,
           scale=None, dropout_p=0.0, return_lse=False, block=None):
    """Run ``attnlang.functional.attention`` with the pattern ``text`` on ``[B, H, L, D]`` inputs.

    ``scale`` defaults to ``1/sqrt(D)`` of the *unpadded* head dim.  ``block`` is a requested
    layout block size: ``layout_block(block)`` is passed as ``block_m`` and ``block_n`` (None:
    the backend's default blocks).  The result is the same either way.
    Returns ``out`` (and ``lse`` when ``return_lse``), ``out`` with ``q``'s head dim.
    """
    from ..runtime import run

    dim = q.shape[-1]
    if dim > MAX_HEAD_DIM:  # (below MIN_HEAD_DIM the head dim is zero-padded, below)
        raise ValueError(f"q: got head dim {dim}; expected a head dim of at most "
                         f"{MAX_HEAD_DIM} (head dims below {MIN_HEAD_DIM} are zero-padded)")
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    if dim < MIN_HEAD_DIM:
        pad = (0, MIN_HEAD_DIM - dim)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    block = None if block is None else layout_block(block)
    pat, ops, needs_segments = prepare(text, block)
    result = run(pat, q, k, v, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                 attn_bias=attn_bias, scale=scale, dropout_p=dropout_p, return_lse=return_lse,
                 block_m=block, block_n=block, ops=ops, needs_segments=needs_segments)
    if return_lse:
        out, lse = result
        return out[..., :dim], lse
    return result[..., :dim]


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: got {value!r}; expected an integer >= {minimum}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False, or a ValueError naming the argument (a string such as
    ``"no"`` would otherwise count as True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: got {value!r}; expected True or False")
    return value


def check_sizes(name: str, value: torch.Tensor, what: str) -> None:
    """A ValueError naming ``name`` unless every dimension of ``value`` is at least 1 (``what``
    spells the dimensions, e.g. ``"[B, H, L, D]"``); the kernels take no empty tensors."""
    if any(size < 1 for size in value.shape):
        raise ValueError(f"{name}: got a tensor of shape {list(value.shape)}; expected every "
                         f"dimension of {what} to be at least 1")


def check_tensor(name: str, value, dims=None) -> torch.Tensor:
    """``value`` if it is a floating-point tensor (with ``dims`` dimensions when given)."""
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        given = (f"a {value.dtype} tensor" if isinstance(value, torch.Tensor)
                 else type(value).__name__)
        raise ValueError(f"{name}: got {given}; expected a floating-point torch.Tensor")
    check_strided(name, value)
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name}: got a tensor of shape {list(value.shape)}; expected "
                         f"{dims} dimensions")
    return value
