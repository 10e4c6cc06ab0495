"""The Sparse Transformer's attention (Child et al. 2019) with zeta's API, on attnlang kernels.

Three names from the zeta documents this project started from: the module ``SparseAttention``
and the functions ``attention_impl`` and ``blocksparse_attention_impl``.  Their meaning is that
of OpenAI's reference (``get_attn_mask`` in ``openai/sparse_attention``), not of zeta's broken
copy.  For a query ``i`` and key ``j`` (``i`` in key coordinates, bottom-right aligned):

* ``all``:      ``j <= i``                                   -> ``causal``
* ``local``:    ``0 <= i - j < ctx``                          -> ``causal & window(ctx - 1, 0)``
* ``strided``:  ``j <= i`` and ``(i - j) mod ctx == 0``       -> ``causal & stride(ctx)``
* ``fixed``:    the paper's fixed pattern: ``j`` in the query's own chunk of ``l = ctx`` tokens, or
  ``j mod l`` among the last ``c`` positions of its chunk (the "summary" columns)
  -> ``causal & (chunk(l) | cols(every(l, l - c..l)))``

``causal=False`` drops ``causal &`` and makes the window symmetric (``window(ctx - 1)``), giving
the bidirectional versions.  Inputs are ``[B, L, heads * D]``; heads are split as the reference's
``split_heads`` does (the last dimension viewed as ``[heads, D]``), the scale is ``1/sqrt(D)``.
Both functions compute the same thing: in the reference, ``blocksparse_attention_impl`` differs
only in how it is computed (and ``blocksize`` is its block size, here the layout block size).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import (attend, check_bool, check_int, check_sizes, check_tensor, layout_block,
                      prepare)

MODES = ("all", "local", "strided", "fixed")

__all__ = ["SparseAttention", "attention_impl", "blocksparse_attention_impl", "sparse_pattern"]


def sparse_pattern(attn_mode: str, local_attn_ctx=None, *, causal: bool = True,
                   summary_size=None) -> str:
    """The attnlang pattern expression of a Sparse Transformer mode (see the module docstring).

    ``summary_size`` is the fixed pattern's ``c`` (default ``max(1, ctx // 16)``, from the
    paper's ``c = 8`` for ``l = 128``); it must lie in ``[1, ctx]``.
    """
    if attn_mode not in MODES:
        raise ValueError(f"attn_mode: got {attn_mode!r}; expected one of "
                         + ", ".join(repr(m) for m in MODES))
    check_bool("causal", causal)
    # Checked whenever given, also where the mode does not use them: a negative context size
    # is a mistake in the caller's configuration whatever the mode.
    if local_attn_ctx is not None:
        check_int("local_attn_ctx", local_attn_ctx, 1)
    if summary_size is not None:
        check_int("summary_size", summary_size, 1)
    if attn_mode == "all":
        return "causal" if causal else "all"
    if local_attn_ctx is None:
        raise ValueError(f"local_attn_ctx: got None; expected an integer >= 1 "
                         f"(attn_mode {attn_mode!r} needs a context size)")
    ctx = check_int("local_attn_ctx", local_attn_ctx, 1)
    if attn_mode == "local":
        body = f"window({ctx - 1}, 0)" if causal else f"window({ctx - 1})"
    elif attn_mode == "strided":
        body = f"stride({ctx})"
    else:
        c = max(1, ctx // 16) if summary_size is None else summary_size
        c = check_int("summary_size", c, 1)
        if c > ctx:
            raise ValueError(f"summary_size: got {c}; expected at most local_attn_ctx ({ctx})")
        body = f"(chunk({ctx}) | cols(every({ctx}, {ctx - c}..{ctx})))"
    return f"causal & {body}" if causal else body


def _split_heads(x: torch.Tensor, heads: int, name: str) -> torch.Tensor:
    """``[B, L, heads * D]`` -> ``[B, heads, L, D]`` (the reference's ``split_heads``)."""
    check_tensor(name, x, 3)
    check_sizes(name, x, "[B, L, heads * D]")
    if x.shape[-1] % heads:
        raise ValueError(f"{name}: got last dimension {x.shape[-1]}; expected a multiple of "
                         f"heads ({heads})")
    b, length, e = x.shape
    return x.reshape(b, length, heads, e // heads).transpose(1, 2)


def _run(q, k, v, heads, attn_mode, local_attn_ctx, causal, blocksize, summary_size):
    heads = check_int("heads", heads, 1)
    text = sparse_pattern(attn_mode, local_attn_ctx, causal=causal, summary_size=summary_size)
    qh, kh, vh = (_split_heads(t, heads, n) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    if kh.shape != vh.shape or kh.shape[0] != qh.shape[0] or kh.shape[-1] != qh.shape[-1]:
        raise ValueError(f"k, v: got shapes {list(k.shape)} and {list(v.shape)}; expected "
                         f"[{q.shape[0]}, Lk, {q.shape[-1]}] each")
    out = attend(qh, kh, vh, text, block=blocksize)
    b, _, length, _ = out.shape
    return out.transpose(1, 2).reshape(b, length, q.shape[-1])  # merge_heads


def attention_impl(q, k, v, heads, attn_mode, local_attn_ctx=None, *, causal=True,
                   summary_size=None):
    """Sparse Transformer attention on ``[B, L, heads * D]`` inputs; returns ``[B, Lq, heads * D]``.

    ``attn_mode`` is ``"all"``, ``"local"``, ``"strided"`` or ``"fixed"``; ``local_attn_ctx`` is
    the window / stride / chunk length (required except for ``"all"``).
    """
    return _run(q, k, v, heads, attn_mode, local_attn_ctx, causal, None, summary_size)


def blocksparse_attention_impl(q, k, v, heads, attn_mode, local_attn_ctx=None, blocksize=32, *,
                               causal=True, summary_size=None):
    """``attention_impl`` computed with layout blocks of about ``blocksize`` tokens (same numbers;
    ``_common.layout_block`` rounds it to a power of two in [16, 64])."""
    blocksize = check_int("blocksize", blocksize, 1)
    return _run(q, k, v, heads, attn_mode, local_attn_ctx, causal, blocksize, summary_size)


class _Default(int):
    """The default block size, told apart from an explicit ``blocksize=32`` by identity."""


_BLOCKSIZE = _Default(32)


class SparseAttention(nn.Module):
    """``SparseAttention(heads=1, attn_mode="all", local_attn_ctx=None, blocksize=32)``.

    ``forward(q, k, v)`` is ``blocksparse_attention_impl`` with the stored settings.  The zeta
    documents also spell the block size ``block_size=``; both spellings are accepted (not both
    at once).  ``causal=False`` selects the bidirectional patterns; ``summary_size`` is the fixed
    pattern's ``c``.  The pattern is checked when the module is built.
    """

    def __init__(self, heads=1, attn_mode="all", local_attn_ctx=None, blocksize=_BLOCKSIZE, *,
                 block_size=None, causal=True, summary_size=None):
        super().__init__()
        if block_size is not None:
            if blocksize is not _BLOCKSIZE and blocksize != block_size:
                raise ValueError(f"block_size: got {block_size!r} and blocksize={blocksize!r}; "
                                 "expected only one of the two spellings")
            blocksize = block_size
        spelled = "blocksize" if block_size is None else "block_size"  # (for its error)
        blocksize = int(blocksize) if blocksize is _BLOCKSIZE else blocksize
        self.heads = check_int("heads", heads, 1)
        self.attn_mode = attn_mode
        self.local_attn_ctx = local_attn_ctx
        self.blocksize = check_int(spelled, blocksize, 1)
        self.causal = causal
        self.summary_size = summary_size
        self.pattern_text = sparse_pattern(attn_mode, local_attn_ctx, causal=causal,
                                           summary_size=summary_size)
        # the pattern and its ops made now, before any torch.compile trace reaches forward
        prepare(self.pattern_text, layout_block(self.blocksize))

    def forward(self, q, k, v):
        return blocksparse_attention_impl(q, k, v, self.heads, self.attn_mode,
                                          self.local_attn_ctx, self.blocksize,
                                          causal=self.causal, summary_size=self.summary_size)

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, attn_mode={self.attn_mode!r}, "
                f"local_attn_ctx={self.local_attn_ctx}, blocksize={self.blocksize}, "
                f"pattern={self.pattern_text!r}")
