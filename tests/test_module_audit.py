"""The attention modules as a careful PyTorch user handles an ``nn.Module``: copying, pickling
and saving, state dicts, autocast, double backward, ``torch.compile``, ``functional_call``,
hooks, train/eval, no_grad/inference_mode and threads -- outputs against a float64 dense
reference (softmax over the kept keys; a row with no kept key gives zeros)."""
import copy
import io
import math
import pickle
import re
import threading

import pytest
import torch

import attnlang
from attnlang import functional as F
from attnlang.custom_ops import DOUBLE_BACKWARD
from attnlang.nn import FlashAttention, LocalAttention, SparseAttention
from attnlang.runtime import make_module

from kernel_utils import randn

BF16_TOL = 3e-2


def keep_mask(lq, lk, lo, hi):
    """``lo <= i - j <= hi`` (bottom-right aligned); ``hi=None``: no upper bound."""
    i = torch.arange(lq)[:, None] + (lk - lq)
    j = torch.arange(lk)[None, :]
    keep = (i - j) >= lo
    return keep if hi is None else keep & ((i - j) <= hi)


def reference(q, k, v, keep):
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~keep, -math.inf)
    return torch.softmax(s, -1).nan_to_num(0.0) @ v



class Model(torch.nn.Module):
    """A small model holding every kind of attention module (and a functional call)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)
        self.pattern = attnlang.parse("pattern lf(w = 4) = window(w) | global(0..2)")["lf"] \
            .module(backend="torch")
        self.flash = FlashAttention(causal=True, dropout=0.0)
        self.sparse = SparseAttention(heads=2, attn_mode="local", local_attn_ctx=4)
        self.local = LocalAttention(window_size=4, causal=True, dim=16, dropout=0.0,
                                    shared_qk=True)

    def forward(self, x):  # x [1, 12, 32]
        x = self.proj(x)
        h = x.view(1, 12, 2, 16).transpose(1, 2)  # [1, 2, 12, 16]
        out = self.pattern(h, h, h) + self.flash(h, h, h) + self.local(h, h, h)
        out = out + F.attention(h, h, h, "causal & window(3, 0)", backend="torch")
        return out.transpose(1, 2).reshape(1, 12, 32) + self.sparse(x, x, x)


def test_copy_pickle_and_torch_save_keep_modules_and_outputs():
    """PatternAttention holds process-local ops (closures): it pickled with an AttributeError."""
    model = Model().eval()
    x = randn(1, 12, 32)
    want = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
              torch.load(buf, weights_only=False)]
    for other in copies:
        assert repr(other) == repr(model)
        torch.testing.assert_close(other(x), want, rtol=0, atol=0)
    # no parameters: no state of their own (LocalAttention's rotary buffer is the package's)
    keys = set(model.state_dict())
    assert keys == {"proj.weight", "proj.bias", "local.rel_pos.inv_freq"}
    fresh = Model().eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), want, rtol=0, atol=0)


def _autocast_cases():
    h = randn(1, 2, 24, 16)
    g = randn(1, 2, 24, 16, seed=1)
    m = make_module("causal & window(8, 0)", backend="torch")
    yield "pattern", m, (h, g, h), keep_mask(24, 24, 0, 8)
    yield "flash", FlashAttention(causal=True).eval(), (h, g, h), keep_mask(24, 24, 0, None)
    yield "local", LocalAttention(window_size=4, causal=True, dropout=0.0).eval(), \
        (h, g, h), keep_mask(24, 24, 0, None) & (
            torch.arange(24)[:, None] // 4 - torch.arange(24)[None, :] // 4 <= 1)


@pytest.mark.parametrize("inside", [False, True])
def test_autocast_runs_in_its_dtype_like_sdpa(inside):
    """Under autocast the inputs are cast to the autocast dtype (as SDPA does) and the
    implementation runs with autocast off: the torch backend's float32 accumulation was
    autocast to bfloat16 and a backward inside autocast failed on an index_put_ dtype clash."""
    for name, module, (q, k, v), keep in _autocast_cases():
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        do = randn(*q.shape, seed=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(q, k, v)
            if inside:
                out.backward(do.to(out.dtype))
        if not inside:
            out.backward(do.to(out.dtype))
        assert out.dtype == torch.bfloat16, name
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        want = reference(qd, kd, vd, keep)
        want.backward(do.double())
        torch.testing.assert_close(out.double(), want, atol=BF16_TOL, rtol=BF16_TOL)
        for got, ref in ((q, qd), (k, kd), (v, vd)):
            assert got.grad.dtype == torch.float32
            torch.testing.assert_close(got.grad.double(), ref.grad, atol=BF16_TOL,
                                       rtol=BF16_TOL)


def test_local_shared_qk_under_autocast_keeps_the_kernel_dtype():
    module = LocalAttention(window_size=4, causal=True, dropout=0.0, shared_qk=True).eval()
    x = randn(1, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x, x, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x, x, x), atol=BF16_TOL, rtol=BF16_TOL)


@pytest.mark.parametrize("kind", ["pattern", "flash", "functional"])
def test_double_backward_is_a_clear_error(kind):
    """The gradients of a create_graph backward were silently constant: a gradient penalty
    through attention contributed nothing."""
    q, k, v = (randn(1, 2, 20, 16, seed=s).requires_grad_() for s in range(3))
    if kind == "pattern":
        out = make_module("causal & window(8, 0)", backend="torch")(q, k, v)
    elif kind == "flash":
        out = FlashAttention(causal=True).eval()(q, k, v)
    else:
        out = F.attention(q, k, v, "causal", backend="torch")
    gq, = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    assert gq.requires_grad
    with pytest.raises(RuntimeError, match="^" + re.escape(DOUBLE_BACKWARD)):
        torch.autograd.grad(gq.sum(), q)
    out2 = F.attention(q, k, v, "causal", backend="torch")
    gk, = torch.autograd.grad(out2.sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="^" + re.escape(DOUBLE_BACKWARD)):
        (out2.sum() + gk.pow(2).sum()).backward()
    # first-order gradients are unchanged by create_graph
    g1, = torch.autograd.grad(F.attention(q, k, v, "causal").sum(), q, create_graph=True)
    g2, = torch.autograd.grad(F.attention(q, k, v, "causal").sum(), q)
    torch.testing.assert_close(g1.detach(), g2, rtol=0, atol=0)


def test_compile_fullgraph_of_a_model_with_every_module():
    """The attnlang.nn modules and a functional call with a text pattern traced into parsing
    (functools.lru_cache and the op lookup): fullgraph=True failed on them."""
    model = Model().eval()
    x = randn(1, 12, 32, requires_grad=True)
    want = model(x)  # (also makes the functional call's entry, as an eager call would)
    (gw,) = torch.autograd.grad(want.sum(), x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (gg,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gg, gw)


def test_compile_dynamic_changing_lengths_matches_the_reference():
    module = make_module("causal & window(8, 0)", backend="torch")
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (17, 40):
        q, k, v = (randn(1, 2, n, 16, seed=s) for s in range(3))
        want = reference(q, k, v, keep_mask(n, n, 0, 8))
        torch.testing.assert_close(compiled(q, k, v).double(), want, atol=2e-5, rtol=2e-5)


def test_functional_call_hooks_and_grad_modes():
    model = Model().eval()
    x = randn(1, 12, 32)
    params = {n: p.detach() * 0.5 for n, p in model.named_parameters()}
    got = torch.func.functional_call(model, params, (x,))
    with torch.no_grad():
        model.proj.weight.mul_(0.5)
        model.proj.bias.mul_(0.5)
    torch.testing.assert_close(got, model(x), rtol=0, atol=0)
    seen = []
    handle = model.pattern.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    model(x)
    handle.remove()
    assert seen == [torch.Size([1, 2, 12, 16])]
    want = model(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    model.zero_grad()
    names = [n for n, _ in model.named_modules()]
    assert {"pattern", "flash", "sparse", "local", "local.rel_pos"} <= set(names)


def test_train_eval_switches_dropout():
    for module in (make_module("window(2)", backend="torch", dropout=0.5),
                   FlashAttention(dropout=0.5),
                   LocalAttention(window_size=4, dropout=0.5)):
        q, k, v = (randn(1, 1, 16, 16, seed=s) for s in range(3))
        module.eval()
        assert torch.equal(module(q, k, v), module(q, k, v))
        module.train()
        assert not torch.equal(module(q, k, v), module.eval()(q, k, v))


def test_float64_gradcheck_on_the_plain_path_and_a_clear_error_on_the_kernels():
    module = FlashAttention(causal=True, flash=False)
    q, k, v = (randn(1, 2, 5, 4, seed=s, dtype=torch.float64).requires_grad_() for s in range(3))
    mask = randn(1, 1, 5, 5, seed=4) > 0
    mask[..., 2, :] = False
    bias = randn(1, 2, 5, 5, seed=5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: module(*a[:3], mask=mask, attn_bias=a[3]),
                                    (q, k, v, bias))
    with pytest.raises(ValueError, match="^q: got dtype torch.float64"):
        make_module("causal", backend="torch")(q, k, v)


def test_two_threads_share_one_module():
    module = make_module("causal & window(8, 0)", backend="torch")
    errors = []

    def work(seed):
        for step in range(5):
            q, k, v = (randn(2, 2, 48, 16, seed=seed * 100 + step * 3 + s) for s in range(3))
            want = reference(q, k, v, keep_mask(48, 48, 0, 8))
            errors.append((module(q, k, v).double() - want).abs().max().item())

    threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 10 and max(errors) < 1e-5


def test_compiled_dropout_takes_its_seed_as_a_tensor():
    """Under torch.compile the dropout seed was read back with .item(): the next graph took it as
    a constant, so with dynamic=False every step compiled again (the recompile limit after 8);
    as a tensor it is one graph, fullgraph too, and with a generator the same numbers as eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layer = make_module("causal & window(8, 0)", backend="torch", dropout=0.3).train()
    q, k, v = (randn(1, 2, 24, 16, seed=s, requires_grad=True) for s in range(3))
    compiled = torch.compile(layer, dynamic=False, backend="aot_eager")
    outs = [compiled(q, k, v) for _ in range(4)]
    assert counters["stats"]["unique_graphs"] == 1
    assert not torch.equal(outs[0], outs[1])  # a new mask every step
    torch._dynamo.reset()
    full = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert not torch.equal(full(q, k, v), full(q, k, v))
    torch._dynamo.reset()  # a generator: a graph break, and the seed eager draws from it
    step = torch.compile(lambda g: layer(q, k, v, generator=g), backend="aot_eager")
    got = step(torch.Generator().manual_seed(5))
    want = layer(q, k, v, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grads = torch.autograd.grad(got.sum(), (q, k, v))
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q, k, v))):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_compiled_int64_ids_past_int32_are_refused_when_the_op_runs():
    """Traced, int64 ids skipped the range check that reads them and wrapped: 2**32 became 0
    and two documents one (silently). The op checks them when it runs."""
    torch._dynamo.reset()
    q = randn(1, 1, 16, 16)
    ids = torch.cat([torch.zeros(8, dtype=torch.int64), torch.full((8,), 2 ** 32)])
    F.attention(q, q, q, "causal & segment", segments=ids.clamp(max=1), backend="torch")
    call = torch.compile(lambda q, ids: F.attention(q, q, q, "causal & segment", segments=ids,
                                                    backend="torch"), backend="aot_eager")
    with pytest.raises(ValueError, match=r"segments: got ids from 0 to 4294967296"):
        call(q, ids)
    fine = torch.cat([torch.zeros(8, dtype=torch.int64), torch.full((8,), 2 ** 31 - 1)])
    want = F.attention(q, q, q, "causal & segment", segments=fine, backend="torch")
    torch.testing.assert_close(call(q, fine), want, rtol=0, atol=0)


def test_compiled_calls_with_a_mask_of_the_wrong_shape_name_it():
    """torch.broadcast_shapes' failure under a trace is Dynamo's error, which the check's
    `except RuntimeError` never saw: the message was Dynamo's, not the argument's."""
    torch._dynamo.reset()
    q = randn(1, 2, 16, 16)
    F.attention(q, q, q, "causal", backend="torch")
    for name, bad in (("attn_mask", torch.ones(16, 15, dtype=torch.bool)),
                      ("attn_bias", torch.zeros(3, 16))):
        call = torch.compile(lambda q, m, name=name: F.attention(
            q, q, q, "causal", backend="torch", **{name: m}), backend="aot_eager")
        with pytest.raises(ValueError, match=rf"^{name}: got shape \[{bad.shape[0]}, "):
            call(q, bad)
    flash = torch.compile(FlashAttention(), backend="aot_eager")
    with pytest.raises(ValueError, match=r"^mask: got a torch.bool tensor of shape \[16, 15\]"):
        flash(q, q, q, mask=torch.ones(16, 15, dtype=torch.bool))


def test_a_modules_settings_assigned_later_take_effect_or_are_refused():
    """Assigning ``pattern`` (or a block size, the backend) after construction was silently
    ignored: the ops were made once. Settings are checked when set and the ops made again."""
    layer = make_module("causal", backend="torch")
    q = randn(1, 1, 8, 16)
    causal = layer(q, q, q)
    layer.pattern = "all"
    torch.testing.assert_close(layer(q, q, q), F.attention(q, q, q, "all", backend="torch"),
                               rtol=0, atol=0)
    assert not torch.equal(layer(q, q, q), causal)
    layer.pattern = attnlang.parse("pattern c = causal")["c"]
    torch.testing.assert_close(layer(q, q, q), causal, rtol=0, atol=0)
    layer.block_m = 32
    torch.testing.assert_close(layer(q, q, q), causal)
    for name, value, message in (("backend", "gpu", "^backend: got 'gpu'"),
                                 ("block_n", 24, "^block_n: got 24"),
                                 ("dropout", 1.5, "^dropout: got 1.5"),
                                 ("pattern", "causal &", "^<pattern>:1:9: error")):
        with pytest.raises(ValueError, match=message):
            setattr(layer, name, value)
    torch.testing.assert_close(layer(q, q, q), causal)  # a refused setting changed nothing
    assert copy.deepcopy(layer).block_m == 32
