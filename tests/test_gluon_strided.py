"""Strided bands (the dilated window ``window(2048) & stride(4)``) on the Gluon kernels, as far as
a machine without a GPU can check them.

Which patterns are such bands (`band.strided_band_of`, against the dense masks, and their
residue classes' bands, `gluon_hopper.class_band`); and the host's side of the kernels -- the
strided views of the residue classes (`gluon_hopper.residue_classes`), the classes' band, where
the forward writes each row's log-sum-exp (`gluon_hopper.row_offset`, its own code run as
Python), the rows kernel reading the natural log-sum-exp through a strided view, dQ cast back
into the natural order -- with the two band kernels emulated in float64 on the tensors their
descriptors read and write (`_emulate`): the Gluon host functions, and a generated module's
training step through them, against the dense float64 reference.  The kernels themselves run on
sm_90 GPUs only: `benchmarks/gpu_check.py --gluon` checks them there."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import ir
from attnlang.band import band_of, strided_band_of
from attnlang.cache import load_module
from attnlang.reference import mask as dense_mask

from strategies import band_intersections as _bands
from budget import scaled

gh = pytest.importorskip("attnlang.gluon_hopper")
gf = pytest.importorskip("attnlang.gluon_forward")
gb = pytest.importorskip("attnlang.gluon_backward")
from gluon_python import as_python, check_tiles, emulate_backward  # noqa: E402


def _strided():
    """Intersections of bands with one or two strides, in any order."""
    strides = st.integers(1, 6).map(lambda s: ir.Stride(ir.Int(s)))
    leaves = st.one_of(_bands(), strides)
    return st.recursive(leaves, lambda kids: st.builds(ir.Intersect, kids, kids), max_leaves=4)


def _kept(back, ahead, Lq, Lk):
    """The band's pairs as the kernels keep them (`gluon_hopper.kept`, their own code, with the
    bounds `band_bounds` gives them)."""
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    p = torch.arange(Lq)[:, None] + (Lk - Lq)
    return as_python(gh.kept)(p, torch.arange(Lk)[None, :], back, ahead, (0,) * 6, False)


@settings(max_examples=scaled(200), deadline=None)
@given(_strided(), st.integers(1, 40), st.integers(0, 30))
def test_strided_band_of_names_exactly_the_kept_pairs(expr, Lq, extra):
    """Where strided_band_of finds (s, band), the pattern keeps exactly the band's pairs whose
    distance is a multiple of s, at any lengths; an intersection of strides (one above 1) and
    bands that keeps a pair is always found."""
    Lk = Lq + extra
    found = strided_band_of(expr)
    mask = dense_mask(expr, Lq, Lk)[0]
    if found is not None:
        step, band = found
        d = torch.arange(Lq)[:, None] + (Lk - Lq) - torch.arange(Lk)[None, :]
        assert step > 1 and torch.equal(mask, _kept(*band, Lq, Lk) & (d % step == 0))
    elif band_of(expr) is None and dense_mask(expr, 90, 90).any():
        assert not any(isinstance(node, ir.Stride) and node.s.value > 1
                       for node in _nodes(expr))


def _nodes(expr):
    yield expr
    if isinstance(expr, ir.Intersect):
        yield from _nodes(expr.left)
        yield from _nodes(expr.right)


@settings(max_examples=scaled(200), deadline=None)
@given(_strided(), st.integers(1, 12), st.integers(0, 6))
def test_each_residue_class_is_the_class_band_of_its_own_positions(expr, lq, extra):
    """With lengths that are multiples of s: the queries of class r meet only the keys of class
    r, and between them keep exactly `class_band`'s band of the classes' own positions (what
    the kernels compute on `residue_classes`' views)."""
    found = strided_band_of(expr)
    if found is None:
        return
    step, band = found
    lk = lq + extra
    mask = dense_mask(expr, lq * step, lk * step)[0]
    within = _kept(*gh.class_band(*band, step), lq, lk)
    for r in range(step):
        for c in range(step):
            part = mask[r::step, c::step]
            assert torch.equal(part, within) if r == c else not part.any()


def test_strided_band_of_examples():
    def of(text):
        return strided_band_of(attnlang.parse(f"pattern x = {text}")["x"].ir)
    assert of("window(2048) & stride(4)") == (4, (2048, 2048))
    assert of("causal & window(100, 0) & stride(8)") == (8, (100, 0))
    assert of("stride(3)") == (3, (None, None))
    assert of("stride(2) & window(9) & stride(3)") == (6, (9, 9))
    assert of("window(5, -3) & stride(4)") == (4, (5, -3))  # the distance 4 alone
    assert of("window(5, -3) & stride(6)") is None  # distances 3..5: no multiple of 6
    assert of("window(8)") is None  # a band alone: band_of's
    assert of("causal & (window(127, 0) | stride(128))") is None
    assert of("window(8) & stride(1)") is None
    assert gh.class_band(2048, 2048, 4) == (512, 512)
    assert gh.class_band(None, 0, 4) == (None, 0)
    assert gh.class_band(5, -3, 4) == (1, -1)


def test_residue_classes_are_views_of_the_natural_rows():
    """A class r of a [B, H, L, D] tensor's view holds the rows r, r + s, ... of each head, and
    writing the view writes those rows."""
    t = torch.arange(2 * 3 * 12 * 4).reshape(2, 3, 12, 4)
    view = gh.residue_classes(t, 4)
    assert view.shape == (6, 4, 3, 4) and view.data_ptr() == t.data_ptr()
    for bh in range(6):
        for r in range(4):
            assert torch.equal(view[bh, r], t[bh // 3, bh % 3, r::4])
    view[5, 1] = -1
    assert torch.all(t[1, 2, 1::4] == -1) and (t == -1).sum() == 3 * 4


@pytest.mark.parametrize("shape,order", [
    ((2, 3, 12, 4), (0, 1, 2, 3)),   # contiguous
    ((1, 3, 12, 4), (2, 0, 1, 3)),   # one batch, heads apart from rows
    ((2, 1, 12, 4), (1, 2, 0, 3)),   # one head, batches apart from rows
    ((2, 3, 12), (0, 1, 2)),         # a log-sum-exp
    ((1, 1, 8), (2, 1, 0)),
    ((1, 1, 8, 4), (0, 1, 2, 3))])
def test_class_view_is_the_residue_classes_view(shape, order):
    """`gluon_hopper.class_view`'s arithmetic gives the shape and strides of the view
    `residue_classes` (a [B, H, L, D] tensor) or the log-sum-exp's reshape makes ([B, H, L]),
    for tensors whose batches and heads are one dimension in memory, in several layouts; and
    without a step the tensor's own."""
    t = torch.zeros([shape[i] for i in order]).permute(*[order.index(i) for i in
                                                          range(len(shape))])
    assert t.shape == shape
    for step in (2, 4):
        if len(shape) == 4:
            want = gh.residue_classes(t, step)
        else:
            want = t.reshape(-1, shape[2] // step, step).transpose(1, 2)
        assert gh.class_view(t.shape, t.stride(), step) == (tuple(want.shape), want.stride())
    assert gh.class_view(t.shape, t.stride(), 1) == (shape, t.stride())


def test_a_geometry_seen_before_takes_its_plan(monkeypatch):
    """`gluon_backward.backward` checks a geometry's descriptors once: later calls of the same
    shapes and strides on new tensors make none (`descriptor_fields`), a log-sum-exp whose
    batches and heads are not one in memory included (made contiguous first), and a new scale
    plans again; every call gives the float64 reference's gradients (the band kernel
    emulated)."""
    made = []
    real = gb.descriptor_fields
    monkeypatch.setattr(gb, "descriptor_fields", lambda *a: made.append(1) or real(*a))
    monkeypatch.setattr(gb, "_PLANS", {})
    expr = ir.Intersect(ir.Window(ir.Int(4), ir.Int(4)), ir.Stride(ir.Int(2)))
    step, (back, ahead) = strided_band_of(expr)
    for seed, transposed, scale, plans in ((1, False, 0.125, 8), (2, False, 0.125, 0),
                                           (3, True, 0.125, 0), (4, False, 0.25, 8)):
        torch.manual_seed(seed)
        q, k, v, do = (torch.randn(2, 2, 12, 64) for _ in range(4))
        out, lse = gf.forward(q, k, v, scale, back, ahead, step=step, launch=_emulate)
        if transposed:  # [H, B, L] in memory
            lse = lse.transpose(0, 1).contiguous().transpose(0, 1)
        made.clear()
        grads = gb.backward(q, k, v, out, do, lse, scale, back, ahead, step=step,
                            launch=_emulate)
        assert len(made) == plans
        for got, want in zip(grads, _reference(expr, q, k, v, do, scale)[2]):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def _reference(expr, q, k, v, do, scale):
    """(out, lse, (dq, dk, dv)) of the pattern in float64, dO = ``do`` (rows that keep nothing:
    lse -inf, out 0, no gradient)."""
    keep = dense_mask(expr, q.shape[2], k.shape[2])[0]
    qs, ks, vs = (t.double().requires_grad_(True) for t in (q, k, v))
    s = (qs @ ks.transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    out = torch.nan_to_num(torch.softmax(s, -1)) @ vs  # rows that keep nothing: 0
    out.backward(do.double())
    return out.detach(), torch.logsumexp(s, -1).detach(), (qs.grad, ks.grad, vs.grad)


def _check_step(module, expr, q, k, v, do):
    """A training step of the generated ``module`` (scale 1/sqrt(D)) gives the float64
    reference's output and gradients of ``expr``."""
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = module.attention(qs, ks, vs)
    out.backward(do)
    want_out, _, want_grads = _reference(expr, q, k, v, do, q.shape[3] ** -0.5)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-4, atol=1e-4)
    for got, want in zip((qs.grad, ks.grad, vs.grad), want_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


_BLOCKS = []  # the key block of each emulated backward launch


def _emulate(kernel, grid, args, options, key=()):
    """A launch of the Gluon band kernels emulated in float64 on the tensors their descriptors
    read and write (the band they are given, on [B, H, L, D] descriptors' tensors, here views of
    residue classes): the forward's output, its log-sum-exp stored where the kernel's own
    `row_offset` puts it; the backward's dK and dV, and dQ added to its float32 sums, from the
    rows kernel's terms.  Other kernels (the rows kernel) launch as they are (the
    interpreter)."""
    name = getattr(getattr(kernel, "fn", None), "__name__", "")
    a = dict(zip(kernel.arg_names, args))
    if name == "band_forward_kernel":
        q, k, v, o = (a[n].base for n in ("q_desc", "k_desc", "v_desc", "o_desc"))
        keep = _kept(a["back"], a["ahead"], a["Lq"], a["Lk"])
        s = (q.double() @ k.double().transpose(-1, -2)) * (a["qk_scale"] / gh.LOG2E)
        s = s.masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
        o.copy_(p @ v.double())
        offset = as_python(gh.row_offset)
        rows = torch.arange(a["Lq"])
        flat = a["lse_ptr"].view(-1)
        for bh in range(a["BH"]):
            b, h = divmod(bh, a["H"])
            at = offset(torch.tensor(b), h, torch.tensor(bh), rows, a["H"], a["Lq"],
                        options["CLASSES"])
            flat[at] = lse[b, h].float()
    elif name == "band_backward_kernel":  # (one program per key block of BN, batch and head)
        assert grid == (-(-a["Lk"] // options["BN"]) * a["BH"],)
        assert options["num_warps"] == options["BN"] // 16
        _BLOCKS.append(options["BN"])
        check_tiles(kernel, a, options)
        emulate_backward(a, _kept(a["back"], a["ahead"], a["Lq"], a["Lk"]))
    else:
        gh.jit_launch(kernel, grid, args, options)


@st.composite
def _strided_case(draw):
    """(expr, (s, band), Lq, Lk): a band with stride(s), lengths that are multiples of s."""
    band = draw(_bands())
    step = draw(st.integers(2, 5))
    expr = ir.Intersect(band, ir.Stride(ir.Int(step))) if draw(st.booleans()) else \
        ir.Intersect(ir.Stride(ir.Int(step)), band)
    found = strided_band_of(expr)
    lq = draw(st.integers(1, 9))
    return expr, found, lq * step, (lq + draw(st.integers(0, 4))) * step


@settings(max_examples=scaled(12), deadline=None)
@given(_strided_case(), st.integers(1, 2), st.integers(1, 2), st.sampled_from([128, 64]))
def test_the_gluon_host_functions_of_residue_classes_match_the_reference(case, B, H, keys):
    """`gluon_forward.forward` and `gluon_backward.backward` with ``step`` (the kernels
    emulated: `_emulate`) give the pattern's output, natural log-sum-exp and gradients, with
    either key block of the backward."""
    expr, found, Lq, Lk = case
    if found is None:
        return
    step, (back, ahead) = found
    torch.manual_seed(Lq * 7 + Lk)
    q = torch.randn(B, H, Lq, 64)
    k, v = torch.randn(B, H, Lk, 64), torch.randn(B, H, Lk, 64)
    do = torch.randn(B, H, Lq, 64)
    scale = 0.125
    out, lse = gf.forward(q, k, v, scale, back, ahead, step=step, launch=_emulate)
    want_out, want_lse, want_grads = _reference(expr, q, k, v, do, scale)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse.float().double(), rtol=1e-5, atol=1e-5)
    dq, dk, dv = gb.backward(q, k, v, out, do, lse, scale, back, ahead, step=step,
                             launch=_emulate, keys=keys)
    assert _BLOCKS[-1] == keys
    for got, want in zip((dq, dk, dv), want_grads):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def _module(text):
    return load_module(attnlang.parse(f"pattern x = {text}")["x"])


def test_a_training_step_of_a_strided_band_through_the_gluon_paths(monkeypatch):
    """A generated module of `window(6) & stride(3)` sends its forward and backward to the Gluon
    host functions with its step (the kernels emulated), whose output and gradients are the
    reference's; where the lengths are not multiples of the step, or the tensors' batches and
    heads are not one dimension in memory, the `tl` kernels run instead (the same results)."""
    module = _module("window(6) & stride(3)")
    assert module.STRIDED == (3, (6, 6)) and module.GLUON_BAND == (6, 6)
    assert module.GLUON_CLASSES == dict(step=3) and module.BAND is None
    if module._gluon_module("gluon_forward") is None:
        pytest.skip("this Triton has no Gluon")
    ran = []
    launch = module._launch

    def emulate(kernel, grid, args, options, extra=()):
        name = getattr(getattr(kernel, "fn", None), "__name__", "")
        if name.startswith("band_"):
            ran.append(name)
            return _emulate(kernel, grid, args, options)
        return launch(kernel, grid, args, options, extra)
    monkeypatch.setattr(module, "_launch", emulate)
    monkeypatch.setattr(module, "_gluon_ok", lambda q, k, *rest: q.shape[2] % 3 == 0)
    monkeypatch.setattr(module, "_gluon_forward_ok", lambda q, k, *rest: q.shape[2] % 3 == 0)
    monkeypatch.setattr(module, "_CALLS", {})
    expr = attnlang.parse("pattern x = window(6) & stride(3)")["x"].ir
    for L, layout in ((24, "bhld"), (24, "blhd"), (20, "bhld")):
        torch.manual_seed(L)
        ran.clear()

        def tensor():
            if layout == "blhd":  # batches and heads apart in memory: no residue view
                return torch.randn(2, L, 2, 64).transpose(1, 2)
            return torch.randn(2, 2, L, 64)
        _check_step(module, expr, tensor(), tensor(), tensor(), tensor())
        if L == 24 and layout == "bhld":
            assert ran == ["band_forward_kernel", "band_backward_kernel"]
        else:
            assert ran == []


def test_which_calls_of_a_strided_band_take_the_gluon_kernels(monkeypatch):
    """The band rules on the residue classes: at d = 128 every strided band whose lengths are
    multiples of its step; at d = 64 where the classes' rows (the classes' band, clipped to a
    class's keys) have at least GLUON_MIN_KEYS_64 keys, and the backward of narrower ones from
    GLUON_CLASSES_BWD_64 queries; and the usual checks."""
    from test_gluon_band import NO_EXTRAS, _fake
    dilated, strided = _module("window(2048) & stride(4)"), _module("causal & stride(4)")
    assert "gluon_forward" in dilated._LAZY_SUPPORT and "gluon_backward" in dilated._LAZY_SUPPORT
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("ATTNLANG_GLUON", raising=False)
    if dilated._gluon_module("gluon_forward") is None:
        pytest.skip("this Triton has no Gluon")
    for ok in (dilated._gluon_ok, strided._gluon_ok):
        assert ok(*_fake(), NO_EXTRAS, False)
        assert not ok(*_fake(L=8190), NO_EXTRAS, False)  # not a multiple of 4
    for ok in (dilated._gluon_forward_ok, strided._gluon_forward_ok):
        assert ok(*_fake(), NO_EXTRAS) and not ok(*_fake(L=8190), NO_EXTRAS)
    # d = 64: the dilated window's classes keep 1025 keys; causal's classes 2048 at 8k: the
    # backward from GLUON_CLASSES_BWD_64 (8k) queries on, the forward on wide rows only
    assert dilated.GLUON_CLASSES_BWD_64 == 8192
    assert dilated._gluon_ok(*_fake(D=64), NO_EXTRAS, False)
    assert not dilated._gluon_ok(*_fake(D=64, L=8188), NO_EXTRAS, False)
    assert not dilated._gluon_forward_ok(*_fake(D=64, L=65536), NO_EXTRAS)
    assert not strided._gluon_ok(*_fake(D=64, L=4096), NO_EXTRAS, False)
    assert not strided._gluon_forward_ok(*_fake(D=64), NO_EXTRAS)
    assert strided._gluon_ok(*_fake(D=64, L=16384), NO_EXTRAS, False)
    assert strided._gluon_forward_ok(*_fake(D=64, L=16384), NO_EXTRAS)
    assert not dilated._gluon_ok(*_fake(), dict(NO_EXTRAS, HAS_KPM=True), False)
    bhld = torch.zeros(2, 3, 8, 64)
    assert dilated._classes_ok(bhld, bhld[:1], torch.zeros(1, 3, 8, 64).transpose(1, 2))
    assert not dilated._classes_ok(bhld, torch.zeros(2, 8, 3, 64).transpose(1, 2))
    assert _module("causal")._classes_ok(torch.zeros(2, 8, 3, 64).transpose(1, 2))
