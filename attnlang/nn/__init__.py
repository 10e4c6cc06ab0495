"""PyTorch modules with the APIs of the documents attnlang started from, on attnlang kernels.

* ``SparseAttention``, ``attention_impl``, ``blocksparse_attention_impl``: the Sparse
  Transformer's modes (OpenAI's reference semantics) with zeta's names.
* ``LocalAttention``: ``local-attention`` 1.11.2's module, argument for argument.
* ``FlashAttention``: dense attention with causal / boolean mask / additive bias.

Each builds an attnlang pattern and calls ``attnlang.functional.attention``; code written for
zeta runs unchanged apart from the import line (``from attnlang.nn import ...``).
"""
from .flash import FlashAttention
from .local import LocalAttention
from .sparse import SparseAttention, attention_impl, blocksparse_attention_impl

__all__ = ["FlashAttention", "LocalAttention", "SparseAttention", "attention_impl",
           "blocksparse_attention_impl"]
