"""The blocked PyTorch backend and the runtime around it, against the float64 reference.

Outputs, lse and gradients (dq, dk, dv, dbias) over random patterns, shapes, dtypes, GQA/MQA,
Lq != Lk, segments, key padding, dense masks and biases, dropout and empty rows.
"""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import attnlang
from attnlang import functional as F, ir, reference
from attnlang.runtime import make_module, run
from attnlang.torch_backend import dropout_keep, uses_segments
from strategies import bound_patterns, lengths, segment_ids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


class Expr:
    """The least a pattern must offer the runtime: its bound, simplified IR."""

    def __init__(self, expr):
        self.ir = expr


def dense_mask(expr, lq, lk, heads, seg_q=None, seg_k=None, batch=1):
    """Reference mask [B, H, Lq, Lk]; per-batch segment ids are [B, L] tensors."""
    if not uses_segments(expr):
        return reference.mask(expr, lq, lk, num_heads=heads).unsqueeze(0)
    return torch.stack([reference.mask(expr, lq, lk, num_heads=heads,
                                       segments=(seg_q[min(b, seg_q.shape[0] - 1)],
                                                 seg_k[min(b, seg_k.shape[0] - 1)]))
                        for b in range(batch)])


def close(got, want, tol):
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


def grads(out, inputs, seed=0):
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad(out, inputs, do.to(out.dtype), allow_unused=True)


@st.composite
def problems(draw):
    expr = draw(bound_patterns(max_leaves=5))
    lq, lk = draw(lengths(40))
    hkv = draw(st.sampled_from([1, 2]))
    hq = hkv * draw(st.sampled_from([1, 2, 3]))
    batch = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16]))
    block = draw(st.sampled_from([(16, 16), (16, 32), (32, 16)]))
    seg_q = seg_k = None
    if uses_segments(expr) or draw(st.booleans()):
        rows = draw(st.sampled_from([1, batch]))
        seg_q = torch.stack([draw(segment_ids(lq)) for _ in range(rows)])
        seg_k = torch.stack([draw(segment_ids(lk)) for _ in range(rows)])
    kpm = None
    if draw(st.booleans()):
        kpm = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * lk,
                                         max_size=batch * lk))).view(batch, lk)
    extra = draw(st.sampled_from([None, "bias", "mask"]))
    if extra is not None:
        shape = (draw(st.sampled_from([1, batch])), draw(st.sampled_from([1, hq])), lq, lk)
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
        extra = (torch.randn(shape, generator=gen) if extra == "bias"
                 else torch.rand(shape, generator=gen) > 0.3)
    return expr, (batch, hq, hkv, lq, lk), dtype, block, seg_q, seg_k, kpm, extra


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_matches_reference(problem):
    expr, (batch, hq, hkv, lq, lk), dtype, (bm, bn), seg_q, seg_k, kpm, extra = problem
    try:
        keep = dense_mask(expr, lq, lk, hq, seg_q, seg_k, batch)
    except ValueError:  # where arithmetic the int64 reference refuses
        assume(False)
    gen = torch.Generator().manual_seed(lq * 131 + lk)
    q = torch.randn(batch, hq, lq, 16, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(batch, hkv, lk, 16, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(batch, hkv, lk, 16, generator=gen).to(dtype).requires_grad_()
    segments = None if seg_q is None else (seg_q, seg_k)
    bias = amask = None
    if extra is not None and extra.dtype == torch.bool:
        amask = extra
    elif extra is not None:
        bias = extra.requires_grad_()
    out, lse = run(Expr(expr), q, k, v, segments=segments, key_padding_mask=kpm,
                   attn_mask=amask, attn_bias=bias, return_lse=True, backend="torch",
                   block_m=bm, block_n=bn)
    if kpm is not None:
        keep = keep & kpm[:, None, None, :]
    if amask is not None:
        keep = keep & amask
    want_out, want_lse = reference.attention(q, k, v, keep, bias=bias)
    tol = TOL[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    close(out, want_out, tol)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    close(lse[finite], want_lse[finite], tol)
    inputs = (q, k, v) if bias is None else (q, k, v, bias)
    for got, want in zip(grads(out, inputs), grads(want_out, inputs)):
        close(got, want, 4 * tol)


def test_bias_mask_and_bias_gradient():
    torch.manual_seed(0)
    expr = ir.Union(ir.Window(ir.Int(3), ir.Int(3)), ir.Cols(ir.Every(ir.Int(5), ir.Int(1))))
    q, k, v = (torch.randn(2, 2, 21, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 21, 21)
    bias[0, 0, 3, :5] = -math.inf
    bias.requires_grad_()
    amask = torch.rand(21, 21) > 0.3
    pattern = attnlang.Pattern(ir.PatternDecl("t", (), expr))
    out, lse = F.attention(q, k, v, pattern, attn_bias=bias, attn_mask=amask, return_lse=True,
                           backend="torch")
    keep = reference.mask(expr, 21).unsqueeze(0) & amask
    want_out, want_lse = reference.attention(q, k, v, keep, bias=bias)
    close(out, want_out, 1e-4)
    got = grads(out, (q, k, v, bias))
    want = grads(want_out, (q, k, v, bias))
    assert got[3].shape == bias.shape
    for g, w in zip(got, want):
        close(g, w, 1e-4)


def test_dropout_is_seeded_reproducible_and_exact():
    expr = ir.Intersect(ir.Causal(), ir.Window(ir.Int(9), ir.Int(0)))
    pattern = Expr(expr)
    q, k, v = (torch.randn(2, 2, 30, 16, requires_grad=True) for _ in range(3))
    p = 0.25

    def call(seed, block):
        return run(pattern, q, k, v, dropout_p=p, generator=torch.Generator().manual_seed(seed),
                   backend="torch", block_m=block, block_n=block)

    a, b, c = call(1, 16), call(1, 32), call(2, 16)
    assert torch.equal(a, b)          # same seed: same result, whatever the blocking
    assert not torch.allclose(a, c)   # another seed: other weights dropped
    # The exact keep decisions: the documented hash of (seed, b * Hq + h, q, k).
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=torch.Generator().manual_seed(1)))
    idx = [torch.arange(n).view([-1 if i == d else 1 for i in range(4)])
           for d, n in enumerate((2, 2, 30, 30))]
    drop = dropout_keep(seed, *idx, num_heads=2, p=p)
    keep = reference.mask(expr, 30).unsqueeze(0)
    want, _ = reference.attention(q, k, v, keep, dropout_mask=drop, dropout_p=p)
    close(a, want, 1e-4)
    for g, w in zip(grads(a, (q, k, v)), grads(want, (q, k, v))):
        close(g, w, 1e-4)
    kept = drop[keep.expand_as(drop)].float().mean().item()
    assert 0.6 < kept < 0.9


def test_module_dropout_only_in_training():
    module = make_module("window(2)", backend="torch", dropout=0.5)
    q, k, v = (torch.randn(1, 1, 12, 16) for _ in range(3))
    module.eval()
    assert torch.equal(module(q, k, v), module(q, k, v))
    module.train()
    assert not torch.allclose(module(q, k, v), module.eval()(q, k, v))


def test_empty_rows_give_zeros_minus_inf_and_zero_gradients():
    q, k, v = (torch.randn(2, 2, 9, 16, requires_grad=True) for _ in range(3))
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[1] = False  # batch 1: every key padded
    out, lse = F.attention(q, k, v, "rows(0..4)", key_padding_mask=kpm, return_lse=True,
                           backend="torch")
    assert torch.equal(out[:, :, 4:], torch.zeros_like(out[:, :, 4:]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isinf(lse[:, :, 4:]).all() and torch.isinf(lse[1]).all()
    assert torch.isfinite(lse[0, :, :4]).all()
    dq, dk, dv = grads(out, (q, k, v))
    assert not any(torch.isnan(g).any() for g in (dq, dk, dv))
    assert torch.equal(dq[:, :, 4:], torch.zeros_like(dq[:, :, 4:]))
    assert torch.equal(dk[1], torch.zeros_like(dk[1]))
    nothing = F.attention(q, k, v, "none", backend="torch")
    assert torch.equal(nothing, torch.zeros_like(nothing))


def test_string_patterns_and_errors():
    q, k, v = (torch.randn(1, 2, 10, 16) for _ in range(3))
    a = F.attention(q, k, v, "causal & window(3, 0)", backend="torch")
    b = F.attention(q, k, v, attnlang.parse("pattern x = causal & window(3, 0)")["x"],
                    backend="torch")
    assert torch.equal(a, b)
    with pytest.raises(attnlang.AttnError) as info:
        F.attention(q, k, v, "causal & windw(3)", backend="torch")
    assert info.value.line == 1 and "<pattern>:1:" in str(info.value)
    # messages about what may follow the expression speak of the text, not of declarations
    for text, message, column in (("causal)", "expected the end of the expression, found ')'", 7),
                                  ("causal window(3)", "expected an operator or the end of the "
                                   "expression, found the name 'window'", 8)):
        with pytest.raises(attnlang.AttnError) as info:
            F.attention(q, k, v, text, backend="torch")
        assert (info.value.line, info.value.column) == (1, column) and \
            info.value.message == message, str(info.value)
    with pytest.raises(ValueError, match="^backend: got 'cuda'"):
        F.attention(q, k, v, "causal", backend="cuda")
    with pytest.raises(ValueError, match="^backend: got 'gpu'"):
        make_module("causal", backend="gpu")
    with pytest.raises(ValueError, match="^pattern: got int"):
        F.attention(q, k, v, 3)
    with pytest.raises(ValueError, match="^segments: got None"):
        F.attention(q, k, v, "causal & segment", backend="torch")
    with pytest.raises(ValueError, match="^dropout: got 2"):
        make_module("causal", dropout=2)
    with pytest.raises(ValueError, match="^colour: got an unknown option"):
        make_module("causal", colour="red")
    with pytest.raises(ValueError, match="^block_m: got 24"):
        make_module("causal", block_m=24)


def test_functional_block_sizes_reach_the_op_and_keep_the_numbers():
    """``block_m``/``block_n`` of ``functional.attention`` pick the op (its cache key) and are
    checked; every valid choice gives the same result."""
    from attnlang import runtime

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=gen) for _ in range(3))
    text = "causal & window(9, 0) | global(0..3)"
    expr = str(F.as_pattern(text).ir)
    base = F.attention(q, k, v, text, backend="torch")
    for bm, bn in ((16, 16), (16, 32), (32, 16), (64, 64)):
        out = F.attention(q, k, v, text, backend="torch", block_m=bm, block_n=bn)
        torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
        assert any(key.startswith(f"torch|{bm}|{bn}|") and key.endswith(f"|{expr}")
                   for key in runtime._IMPLS), (bm, bn)
    for name, bad in (("block_m", 24), ("block_n", 8), ("block_m", "32"), ("block_n", True)):
        with pytest.raises(ValueError, match=f"^{name}: got {bad!r}"):
            F.attention(q, k, v, text, backend="torch", **{name: bad})


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = (torch.randn(1, 1, 8, 16) for _ in range(3))
    with pytest.raises(ValueError, match="^backend: got 'triton' for tensors on cpu"):
        F.attention(q, k, v, "causal", backend="triton")


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of a module on the torch backend, output and gradients."""
    module = make_module("causal & (window(3, 0) | stride(5)) | segment", backend="torch",
                         block_m=16, block_n=16)
    q, k, v = (torch.randn(2, 2, 23, 16, requires_grad=True) for _ in range(3))
    seg = torch.tensor([[0] * 10 + [1] * 13, [0] * 20 + [1] * 3])
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v, segments=seg)
    want = module(q, k, v, segments=seg)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, (q, k, v)), grads(want, (q, k, v))):
        torch.testing.assert_close(g, w)


def test_segment_ids_under_dynamic_shapes():
    """A module compiled after one that ran at two lengths (forward's sizes then traced as
    symbols): the ids' check ``size in (1, batch)`` answered False for equal sizes."""
    first = torch.compile(make_module("causal & window(8, 0)", backend="torch"), fullgraph=True,
                          dynamic=True, backend="aot_eager")
    for n in (17, 40):
        first(*(torch.randn(1, 2, n, 16) for _ in range(3)))
    module = make_module("causal & (window(3, 0) | stride(5)) | segment", backend="torch",
                         block_m=16, block_n=16)
    q, k, v = (torch.randn(2, 2, 23, 16) for _ in range(3))
    seg = torch.tensor([[0] * 10 + [1] * 13, [0] * 20 + [1] * 3])
    got = torch.compile(module, fullgraph=True, backend="aot_eager")(q, k, v, segments=seg)
    torch.testing.assert_close(got, module(q, k, v, segments=seg))


TRITON_SCRIPT = textwrap.dedent("""
    import torch, attnlang
    from attnlang import reference
    from attnlang.runtime import make_module
    torch.manual_seed(0)
    pattern = attnlang.parse("pattern sp = causal & (window(3, 0) | stride(8))")["sp"]
    q, k, v = (torch.randn(1, 2, 24, 16, requires_grad=True) for _ in range(3))
    module = make_module(pattern, backend="triton")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    want, _ = reference.attention(q, k, v, reference.mask(pattern.ir, 24, num_heads=2))
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    eager = module(q, k, v)  # outside torch.compile: the op's functions without the dispatcher
    torch.testing.assert_close(eager, out)
    eager.sum().backward()
    for t, g in zip((q, k, v), grads):
        torch.testing.assert_close(t.grad, g)
    print("OK")
""")


def test_triton_path_compiles_fullgraph_in_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", ATTNLANG_CACHE_DIR=str(tmp_path),
               PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_eager_path_equals_the_custom_op():
    """Eager calls bypass the dispatcher (custom_ops._Eager); the custom op (what torch.compile
    sees) gives the same output, lse and gradients, the broadcast bias's gradient included."""
    from attnlang.custom_ops import compact
    from attnlang.runtime import _op

    pattern = attnlang.parse("pattern x = causal & (window(5, 0) | stride(4)) & segment")["x"]
    op = _op(pattern, "torch", None, None, None)
    g = torch.Generator().manual_seed(0)
    seg = torch.tensor([[0] * 20 + [1] * 17])
    results = []
    # the op takes the dropout seed as a tensor (custom_ops._seed_tensor), the eager path an int
    for call, seed in ((op, 7), (op.op, torch.tensor(7))):
        q, k, v = (torch.randn(2, 4, 37, 8, generator=torch.Generator().manual_seed(i))
                   .requires_grad_(True) for i in range(3))
        bias = torch.randn(1, 4, 37, 37, generator=g.manual_seed(5)).requires_grad_(True)
        mask = torch.rand(37, 37, generator=g.manual_seed(6)) > 0.2
        out, lse = call(q, k, v, 0.3, seg, seg, None, compact(mask.expand(2, 4, 37, 37)),
                        bias, 0.2, seed)
        (out * torch.arange(8.0)).sum().backward()
        results.append([out, lse, q.grad, k.grad, v.grad, bias.grad])
    for eager, custom in zip(*results):
        assert eager.shape == custom.shape and eager.dtype == custom.dtype
        assert torch.equal(eager, custom)


@pytest.mark.parametrize("mode", ["inputs without grad", "no_grad", "inference_mode"])
def test_calls_autograd_does_not_record_skip_the_autograd_function(monkeypatch, mode):
    """An eager call that autograd does not record runs the forward alone (no autograd.Function:
    its apply is host time), with the output and lse of a recorded call, bit for bit; a call
    with inputs that need gradients still goes through `_Eager`."""
    from attnlang import custom_ops
    from attnlang.runtime import _op

    pattern = attnlang.parse("pattern x = causal & (window(5, 0) | stride(4)) & segment")["x"]
    op = _op(pattern, "torch", None, None, None)
    seg = torch.tensor([[0] * 20 + [1] * 17])
    q, k, v = (torch.randn(2, 4, 37, 8, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    recorded = op(*(t.clone().requires_grad_(True) for t in (q, k, v)), 0.3, seg, seg, None,
                  None, None, 0.0, 0)
    assert recorded[0].requires_grad
    applied = []
    real = custom_ops._Eager.apply
    monkeypatch.setattr(custom_ops._Eager, "apply",
                        lambda *args: applied.append(1) or real(*args))
    inputs = (q, k, v) if mode == "inputs without grad" else \
        tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(
        mode, torch.enable_grad)
    with context():
        out, lse = op(*inputs, 0.3, seg, seg, None, None, None, 0.0, 0)
    assert not applied and not out.requires_grad
    assert torch.equal(out, recorded[0].detach()) and torch.equal(lse, recorded[1])
    op(*(t.clone().requires_grad_(True) for t in (q, k, v)), 0.3, seg, seg, None, None, None,
       0.0, 0)
    assert applied == [1]


def test_the_generated_module_records_only_what_autograd_needs(monkeypatch):
    """The generated module's own `attention` too: AttentionFunction only where autograd
    records the call, the same output either way."""
    from attnlang.cache import load_module

    module = load_module(attnlang.parse("pattern x = causal & window(9, 0)")["x"])
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    recorded = module.attention(*(t.clone().requires_grad_(True) for t in (q, k, v)))
    applied = []
    real = module.AttentionFunction.apply
    monkeypatch.setattr(module.AttentionFunction, "apply",
                        lambda *args: applied.append(1) or real(*args))
    out = module.attention(q, k, v)
    assert not applied and torch.equal(out, recorded.detach())
    module.attention(*(t.clone().requires_grad_(True) for t in (q, k, v)))
    assert applied == [1]


@pytest.mark.parametrize("text", ["stride(100000000)", "causal & stride(100000000)",
                                  "window(2) | stride(1000000000000)"])
@pytest.mark.parametrize("lq, lk", [(8, 8), (8, 5), (5, 9)])
def test_a_stride_beyond_the_lengths_runs_and_matches_the_reference(text, lq, lk):
    """The plan keeps only the residue classes holding a query or a key (every class of
    ``s = 10**8`` never finished); the outputs, lse and gradients are the reference's."""
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    gen = torch.Generator().manual_seed(lq * 7 + lk)
    q = torch.randn(1, 2, lq, 16, generator=gen).requires_grad_()
    k = torch.randn(1, 2, lk, 16, generator=gen).requires_grad_()
    v = torch.randn(1, 2, lk, 16, generator=gen).requires_grad_()
    out, lse = run(Expr(expr), q, k, v, return_lse=True, backend="torch", block_m=16,
                   block_n=16)
    want_out, want_lse = reference.attention(q, k, v, dense_mask(expr, lq, lk, 2))
    close(out, want_out, 1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    close(lse[torch.isfinite(want_lse)], want_lse[torch.isfinite(want_lse)], 1e-6)
    for got, want in zip(grads(out, (q, k, v)), grads(want_out, (q, k, v))):
        close(got, want, 1e-5)


def test_functional_with_a_pattern_object_compiles_fullgraph_and_its_cache_stays_bounded():
    """A Pattern object's ops are kept under its id after an eager call (the lookup traced through
    the op's string key and failed under fullgraph=True); the cache starts again at 1024."""
    from attnlang import runtime

    pattern = attnlang.parse("pattern x = causal & window(3, 0)")["x"]
    q = torch.randn(1, 2, 20, 16)
    want = F.attention(q, q, q, pattern, backend="torch")
    compiled = torch.compile(lambda t: F.attention(t, t, t, pattern, backend="torch"),
                             fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q), want)
    for i in range(1100 - len(runtime._PREPARED)):
        runtime._PREPARED[("filler", i)] = None
    F.attention(q, q, q, attnlang.parse("pattern y = causal")["y"], backend="torch")
    assert len(runtime._PREPARED) == 1


def test_the_torch_backends_work_cache_is_bounded_by_bytes(monkeypatch):
    """The blocked backend keeps each geometry's work (index tensors) for the next call: by
    count and by bytes, least recently used first, so varying lengths cannot pin gigabytes."""
    from attnlang import torch_backend

    monkeypatch.setattr(torch_backend, "_WORK", type(torch_backend._WORK)())
    monkeypatch.setattr(torch_backend, "WORK_BYTES", 200_000)
    expr = attnlang.parse("pattern c = causal")["c"].ir
    cpu = torch.device("cpu")
    first = torch_backend._cached_work(expr, 64, 64, 16, 16, 1, cpu)
    assert torch_backend._cached_work(expr, 64, 64, 16, 16, 1, cpu) is first  # kept
    for length in range(100, 400, 20):
        torch_backend._cached_work(expr, length, length, 16, 16, 1, cpu)
        sizes = [size for _, size in torch_backend._WORK.values()]
        assert sum(sizes) <= 200_000 or len(sizes) == 1
    assert (expr, 64, 64, 16, 16, 1, cpu) not in torch_backend._WORK  # the oldest went first
    assert (expr, 380, 380, 16, 16, 1, cpu) in torch_backend._WORK
