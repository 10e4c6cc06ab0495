'''Every usage example of the seed documents runs verbatim, with only the import line changed
(``zeta`` -> ``attnlang.nn``), and computes the right thing.

The examples are copied here character for character (the seeds live outside the repository).
Two edits, both documented in docs/nn/sparse_attention.md: the Sparse Attention page's example
has no import line (one is added) and contains a truncated line, ``attention_impl(q, k, v,
heads=4`` without its closing parenthesis, followed by the complete call; the truncated line is a
syntax error in any Python, so it is left out.
'''
import math

import torch

SPARSE_CLASS_PAGE = """
import torch

from attnlang.nn import SparseAttention

# Define parameters
n_batch = 4
n_ctx = 1024
n_embd = 256
heads = 4
attn_mode = "all"
local_attn_ctx = 32
blocksize = 32

# Create input tensors
q = torch.randn(n_batch, n_ctx, n_embd)
k = torch.randn(n_batch, n_ctx, n_embd)
v = torch.randn(n_batch, n_ctx, n_embd)

# Create SparseAttention model
model = SparseAttention(heads, attn_mode, local_attn_ctx, blocksize)

# Forward pass
output = model(q, k, v)

# Print output
print(output[0])
"""

SPARSE_OVERVIEW_PAGE = """
import torch
from attnlang.nn import SparseAttention, attention_impl, blocksparse_attention_impl

# Initialize the SparseAttention module
sparse_attn = SparseAttention(block_size=32)

# Create random inputs
B, L, E = 4, 1024, 256  # batch size, sequence length, embedding size
q = torch.randn(B, L, E)
k = torch.randn(B, L, E)
v = torch.randn(B, L, E)

# Forward pass through the SparseAttention module
output = sparse_attn(q, k, v)

# Forward pass through the attention_impl function

output_attention = attention_impl(q, k, v, heads=4, attn_mode="all")

# Forward pass through the blocksparse_attention_impl function
output_blocksparse = blocksparse_attention_impl(q, k, v, heads=4, attn_mode="all", blocksize=32)
"""

FLASH_EXAMPLES = ["""
import torch
from attnlang.nn import FlashAttention

q = torch.randn(2, 4, 6, 8)
k = torch.randn(2, 4, 10, 8)
v = torch.randn(2, 4, 10, 8)

attention = FlashAttention(causal=False, dropout=0.1, flash=False)
output = attention(q, k, v)

print(output.shape)  # torch.Size([2, 4, 6, 8])
""", """
import torch
from attnlang.nn import FlashAttention

q = torch.randn(2, 4, 6, 8)
k = torch.randn(2, 4, 10, 8)
v = torch.randn(2, 4, 10, 8)

attention = FlashAttention(causal=True, dropout=0.1, flash=True)
output = attention(q, k, v)

print(output.shape)  # torch.Size([2, 4, 6, 8])
""", """
import torch
from attnlang.nn import FlashAttention

q = torch.randn(2, 4, 6, 8)
k = torch.randn(2, 4, 10, 8)
v = torch.randn(2, 4, 10, 8)
mask = torch.ones(2, 4, 6, 10).bool()

attention = FlashAttention(causal=False, dropout=0.1, flash=True)
output = attention(q, k, v, mask=mask)

print(output.shape)  # torch.Size([2, 4, 6, 8])
"""]

LOCAL_PAGE = """
import torch
import torch.nn as nn

from attnlang.nn import LocalAttention

q = torch.randn(1, 100, 32)
k = torch.randn(1, 100, 32)
v = torch.randn(1, 100, 32)

local_attn = LocalAttention(window_size=5, causal=True, dim=32)
out = local_attn(q, k, v)
"""


def run(source):
    namespace = {}
    exec(compile(source, "<seed example>", "exec"), namespace)
    return namespace


def causal_attention(q, k, v, heads):
    """Float64 causal attention with heads split as OpenAI's ``split_heads``."""
    b, n, e = q.shape
    split = lambda t: t.double().reshape(b, n, heads, e // heads).transpose(1, 2)
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(e // heads)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, e)


def test_sparse_attention_class_page(capsys):
    torch.manual_seed(0)
    ns = run(SPARSE_CLASS_PAGE)
    assert ns["output"].shape == (4, 1024, 256)
    assert "tensor(" in capsys.readouterr().out
    q, k, v = ns["q"][:1], ns["k"][:1], ns["v"][:1]
    torch.testing.assert_close(ns["output"][:1].double(), causal_attention(q, k, v, 4),
                               atol=2e-5, rtol=1e-4)


def test_sparse_attention_overview_page():
    torch.manual_seed(1)
    ns = run(SPARSE_OVERVIEW_PAGE)
    q, k, v = ns["q"][:1], ns["k"][:1], ns["v"][:1]
    # Defaults chosen for SparseAttention(block_size=32): one head, mode "all" (causal).
    torch.testing.assert_close(ns["output"][:1].double(), causal_attention(q, k, v, 1),
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ns["output_attention"][:1].double(), causal_attention(q, k, v, 4),
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ns["output_blocksparse"], ns["output_attention"],
                               atol=2e-6, rtol=1e-5)


def test_flash_attention_pages(capsys):
    for i, source in enumerate(FLASH_EXAMPLES):
        torch.manual_seed(i)
        ns = run(source)
        assert ns["output"].shape == (2, 4, 6, 8)
        assert capsys.readouterr().out.strip() == "torch.Size([2, 4, 6, 8])"
        # Modules are built in training mode, so dropout is on; in eval mode the output is
        # plain attention (bottom-right causal in example 2).
        q, k, v = ns["q"].double(), ns["k"].double(), ns["v"].double()
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        if ns["attention"].causal:
            later = torch.arange(10).view(1, 10) > torch.arange(6).view(6, 1) + 4
            scores = scores.masked_fill(later, -math.inf)
        ns["attention"].eval()
        out = ns["attention"](ns["q"], ns["k"], ns["v"], mask=ns.get("mask"))
        torch.testing.assert_close(out.double(), scores.softmax(-1) @ v, atol=2e-5, rtol=1e-4)


def test_local_attention_page():
    torch.manual_seed(2)
    ns = run(LOCAL_PAGE)
    out, q, k, v = ns["out"], ns["q"], ns["k"], ns["v"]
    assert out.shape == (1, 100, 32)
    # Causal buckets of 5 looking one bucket back; rotary embeddings (dim=32) are on.  Without
    # dropout, query 0 sees only key 0, so its output is v[0] exactly.
    ns["local_attn"].eval()
    out = ns["local_attn"](q, k, v)
    torch.testing.assert_close(out[0, 0], v[0, 0])
    assert not out.isnan().any()


SELF_CONTAINED_LOCAL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

class LocalAttention(nn.Module):
    def __init__(self, d_model, window_size):
        super().__init__()
        self.d_model = d_model
        self.window_size = window_size 
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)

    def forward(self, x):
        batch_size, seq_len, d_model = x.shape
        Q = self.query(x)  
        K = self.key(x)    
        V = self.value(x)  
        scores = torch.matmul(Q, K.transpose(-2, -1)) / (d_model ** 0.5)
        half_window = (self.window_size - 1) // 2
        i = torch.arange(seq_len, device=x.device).unsqueeze(1)
        j = torch.arange(seq_len, device=x.device).unsqueeze(0)
        distance_matrix = torch.abs(i - j)
        local_mask = (distance_matrix <= half_window).to(x.device)
        scores = scores.masked_fill(~local_mask, -torch.inf)
        attention_weights = F.softmax(scores, dim=-1) # (batch_size, seq_len, seq_len)
        output = torch.matmul(attention_weights, V) # (batch_size, seq_len, d_model)
        return output

d_model = 64
seq_len = 50
batch_size = 2
window_size = 7

input_data = torch.randn(batch_size, seq_len, d_model)
local_attn_layer = LocalAttention(d_model=d_model, window_size=window_size)
output = local_attn_layer(input_data)

print(f"{input_data.shape}")
print(f"{output.shape}")
'''


def test_self_contained_local_attention_equals_attnlang_window(capsys):
    """The fourth seed defines its own single-head LocalAttention (no import to change; its
    Japanese comments are dropped here).  Its mask is ``|i - j| <= (window_size - 1) // 2``:
    attnlang's ``window(3)`` for window_size 7, which gives the same numbers."""
    from attnlang.functional import attention

    torch.manual_seed(3)
    ns = run(SELF_CONTAINED_LOCAL)
    assert capsys.readouterr().out.split() == ["torch.Size([2,", "50,", "64])"] * 2
    layer, x = ns["local_attn_layer"], ns["input_data"]
    qkv = [m(x).unsqueeze(1) for m in (layer.query, layer.key, layer.value)]
    with torch.no_grad():
        ours = attention(*qkv, "window(3)").squeeze(1)
    torch.testing.assert_close(ours, ns["output"].detach(), atol=2e-5, rtol=1e-4)
