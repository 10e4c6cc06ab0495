"""Helpers for the generated-kernel tests: render a pattern's module once and compare it with
the float64 reference."""

import torch

from attnlang import ir, reference
from attnlang.api import Pattern
from attnlang.cache import load_module


def pattern_of(expr) -> Pattern:
    return Pattern(ir.PatternDecl("p", (), expr))


def generated(expr, tmp_dir, block=16):
    """The generated standalone module of ``expr`` with fixed (small) tiles, from the cache."""
    return load_module(pattern_of(expr), block, block, tmp_dir)


def record_launches(mod, monkeypatch):
    """The kernels the generated module ``mod`` launches from now on, in order (each still
    runs)."""
    launched = []
    monkeypatch.setattr(mod, "_launch", lambda kernel, *a, real=mod._launch: (
        launched.append(kernel), real(kernel, *a))[1])
    return launched


def record_host_work(mod, monkeypatch, tag=lambda: None):
    """The generated module ``mod``'s launches and preparing calls from now on, in order (each
    still runs): ``(tag(), (kernel, grid, args, options))`` per launch, ``(tag(), name)`` per call
    of `_prepare`, `_call_args` or `_tiles` (the tiles, tables and argument lists of a call)."""
    work = []
    monkeypatch.setattr(mod, "_launch", lambda *launch, real=mod._launch: (
        work.append((tag(), launch)), real(*launch))[1])
    for name in ("_prepare", "_call_args", "_tiles"):
        monkeypatch.setattr(mod, name, lambda *a, real=getattr(mod, name), name=name: (
            work.append((tag(), name)), real(*a))[1])
    return work


def shapes_of(values):
    """``values`` with each tensor replaced by its dtype, shape and strides."""
    return [(v.dtype, tuple(v.shape), v.stride()) if isinstance(v, torch.Tensor) else v
            for v in values]


def randn(*shape, seed=0, **kw):
    """A standard-normal tensor from a generator of its own (the global RNG is untouched)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), **kw)


def random_inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    return q, k, v


def rel_err(x, ref):
    x = x.detach().double()
    ref = ref.detach().double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def check_against_reference(attention_fn, expr, B, Hq, Hkv, Lq, Lk, D, dtype, segments=None,
                            key_padding_mask=None, seed=0, bias=None):
    """Run ``attention_fn`` forward and backward; compare out, lse, dq, dk, dv with float64."""
    q, k, v = random_inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    kwargs = {}
    if segments is not None:
        kwargs["segments"] = segments
    if key_padding_mask is not None:
        kwargs["key_padding_mask"] = key_padding_mask
    out, lse = attention_fn(q, k, v, return_lse=True, **kwargs)
    assert torch.isfinite(out).all()
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    out.backward(do)

    mask = reference.mask(expr, Lq, Lk, num_heads=Hq, segments=segments)[None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref_out, ref_lse = reference.attention(qd, kd, vd, mask)
    ref_out.backward(do.double())
    tol = TOL[dtype]
    assert rel_err(out, ref_out) < tol, rel_err(out, ref_out)
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty), "empty rows must give lse = -inf"
    finite = ~empty
    if finite.any():
        assert torch.allclose(lse[finite].double(), ref_lse[finite], atol=10 * tol, rtol=10 * tol)
    assert (out.detach()[empty] == 0).all(), "empty rows must give zeros"
    for name, got, want in (("dq", q.grad, qd.grad), ("dk", k.grad, kd.grad),
                            ("dv", v.grad, vd.grad)):
        assert torch.isfinite(got).all(), name
        if want.norm() > 1e-3:
            assert rel_err(got, want) < 2 * tol + 1e-6, (name, rel_err(got, want))
        else:  # e.g. one key per row: the true gradient is 0, rounding leaves crumbs
            assert got.abs().max() < 50 * tol, (name, got.abs().max())
    # empty rows pass exactly zero gradient
    assert (q.grad[empty] == 0).all(), "empty rows must have dq = 0"
