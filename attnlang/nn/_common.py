"""What the ``attnlang.nn`` modules share: cached patterns and one call into the runtime.

Every module in this package is a thin layer: it turns its arguments into an attnlang pattern
(source text such as ``"causal & window(31, 0)"``) and runs ``attnlang.functional.attention``.
No module here computes attention itself, apart from ``FlashAttention(flash=False)``, whose whole
point is to be the plain-PyTorch reference path.

``pattern(text)`` parses and checks a pattern expression once per distinct text (an LRU cache),
so building a module or calling it in a loop never re-parses.  ``attend`` adapts the few things
the kernels do not take directly: head dims below the kernels' minimum are zero-padded (zeros in
``q``/``k`` add nothing to the scores, zeros in ``v`` give columns that are cut off again), with
the scale fixed to the caller's ``1/sqrt(D)`` so that padding never changes the numbers.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F

MIN_HEAD_DIM = 16  # the smallest head dim the generated kernels accept (attnlang.validate)


@functools.lru_cache(maxsize=256)
def pattern(text: str):
    """The checked ``attnlang.Pattern`` for the pattern expression ``text`` (cached)."""
    from ..api import parse

    return parse(f"pattern nn_pattern = {text}", filename="<attnlang.nn>")["nn_pattern"]


@functools.lru_cache(maxsize=1)
def _runtime():
    """``attnlang.functional.attention`` and whether it takes ``block_m``/``block_n``."""
    from ..functional import attention

    try:
        names = inspect.signature(attention).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        names = {}
    return attention, ("block_m" in names and "block_n" in names)


def attend(q, k, v, text, *, key_padding_mask=None, attn_mask=None, attn_bias=None,
           scale=None, dropout_p=0.0, return_lse=False, block=None):
    """Run ``attnlang.functional.attention`` with the pattern ``text`` on ``[B, H, L, D]`` inputs.

    ``scale`` defaults to ``1/sqrt(D)`` of the *unpadded* head dim.  ``block`` is a layout block
    size passed as ``block_m``/``block_n`` where the runtime takes them and the value is a power
    of two >= 16 (otherwise the runtime's default blocks; the result is the same either way).
    Returns ``out`` (and ``lse`` when ``return_lse``), ``out`` with ``q``'s head dim.
    """
    attention, takes_blocks = _runtime()
    dim = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    if dim < MIN_HEAD_DIM:
        pad = (0, MIN_HEAD_DIM - dim)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    extra = {}
    if block is not None and takes_blocks and block >= MIN_HEAD_DIM and not block & (block - 1):
        extra = dict(block_m=block, block_n=block)  # kernels take powers of two >= 16
    result = attention(q, k, v, pattern(text), key_padding_mask=key_padding_mask,
                       attn_mask=attn_mask, attn_bias=attn_bias, scale=scale,
                       dropout_p=dropout_p, return_lse=return_lse, **extra)
    if return_lse:
        out, lse = result
        return out[..., :dim], lse
    return result[..., :dim]


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: got {value!r}; expected an integer >= {minimum}")
    return value


def check_tensor(name: str, value, dims=None) -> torch.Tensor:
    """``value`` if it is a floating-point tensor (with ``dims`` dimensions when given)."""
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        given = (f"a {value.dtype} tensor" if isinstance(value, torch.Tensor)
                 else type(value).__name__)
        raise ValueError(f"{name}: got {given}; expected a floating-point torch.Tensor")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name}: got a tensor of shape {list(value.shape)}; expected "
                         f"{dims} dimensions")
    return value
