"""Fast paths against the dense reference for constructs and combinations that the shared
strategies (tests/strategies.py) never bring to them (found by an inventory of LANGUAGE.md's
constructs against the strategies, round 62):

* plans: every kept pair in exactly one component, each class's layout right about its
  blocks (compared pair by pair with ``reference.mask``, not only by count);
* parameters, defaults, symbolic arguments and references between patterns (``decls()`` only
  reached the printer/parser round trip): ``bind``/inlining/``simplify`` against substituting
  the values by hand, through mask, layout, plan and the torch backend;
* the Triton kernels with ``segment`` anywhere in a pattern (not only ``causal & segment``),
  with key padding and two batches; with per-head patterns (``heads(...)``, ``where`` over
  ``h``) under grouped heads of ratio 3 and 4;
* LANGUAGE.md's forms as text (chained comparisons, ``%``/``//``, ``div``/``mod`` by negative
  numbers, ``abs``/``min``/``max``, ``Lq``/``Lk``, ``{}``, ``-m..``, ``..b``, residue ranges,
  keyword arguments, negative ``heads`` members, ``random`` with negative block indices)
  against an independent formula written from LANGUAGE.md, then through every fast path.

Example counts follow the Hypothesis profile (``HYPOTHESIS_PROFILE=thorough`` for more).
"""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import attnlang
from attnlang import ir, reference
from attnlang.api import Pattern
from attnlang.runtime import run

from kernel_utils import check_against_reference, generated, pattern_of, random_inputs
from test_layout import per_head, truth_classes
from strategies import (DENSITIES, FLOAT_PARAM, _valid_with, bound_patterns, decls, lengths,
                        mix32_int, num_heads, primitives, segments_for)

I = ir.Int
_BASE = settings.default.max_examples  # 25 under the ci profile, 500 under thorough
TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="needs a GPU or TRITON_INTERPRET=1")


def examples(fraction: float, least: int = 3) -> int:
    return max(least, int(_BASE * fraction))


# ---------------------------------------------------------------- helpers


def _ref_mask(expr, lq, lk, heads, segments):
    """The reference mask, or reject the example where the reference refuses the `where`
    arithmetic (magnitudes past 63 bits, as test_runtime_torch does)."""
    try:
        return reference.mask(expr, lq, lk, num_heads=heads, segments=segments)
    except ValueError:
        assume(False)


def assert_layout_right(lay, keep, what=""):
    """No FULL block with a masked pair, no skipped block with a kept pair; exact if it says
    so.  ``keep``: the [H, n, m] truth in the layout's own (mapped) coordinates."""
    got = per_head(lay)
    truth = truth_classes(keep, lay.block_m, lay.block_n)
    assert got.shape == truth.shape, (what, got.shape, truth.shape)
    wrong_full = (got == 2) & (truth != 2)
    wrong_skip = (got == 0) & (truth != 0)
    assert not wrong_full.any(), f"{what}: FULL blocks with a masked pair {wrong_full.nonzero()}"
    assert not wrong_skip.any(), f"{what}: skipped blocks with a kept pair {wrong_skip.nonzero()}"
    if lay.exact:
        assert torch.equal(got, truth), f"{what}: exact but wrong at {(got != truth).nonzero()[:4]}"
    return got


def assert_plan_is_the_mask(plan, want, segments):
    """Each component's classes are right about their blocks (in mapped coordinates, against the
    reference mask of the component's predicate), the visited blocks hold every pair of the
    predicate, components are disjoint and together keep exactly ``want`` ([H, Lq, Lk])."""
    H, lq, lk = want.shape
    count = torch.zeros(H, lq, lk, dtype=torch.int64)
    for i, comp in enumerate(plan.components):
        pred = reference.mask(comp.predicate, lq, lk, num_heads=H, segments=segments)
        for c, (qa, ka, lay) in enumerate(zip(comp.q_axes, comp.k_axes, comp.layouts)):
            qp, kp = qa.positions(), ka.positions()
            assert qp.numel() == qa.length and kp.numel() == ka.length
            assert (qp >= 0).all() and (qp < lq).all() and (kp >= 0).all() and (kp < lk).all()
            sub = pred[:, qp][:, :, kp]
            got = assert_layout_right(lay, sub, f"component {i} ({comp.kind}) class {c}")
            visited = (got > 0).repeat_interleave(lay.block_m, 1)[:, :qa.length]
            visited = visited.repeat_interleave(lay.block_n, 2)[:, :, :ka.length]
            count[:, qp[:, None], kp[None, :]] += (sub & visited).long()
    twice = count > 1
    assert not twice.any(), f"pairs in two components: {twice.nonzero()[:4]}"
    wrong = (count == 1) != want
    assert not wrong.any(), f"plan and reference differ at (h, q, k) {wrong.nonzero()[:4]}"
    assert plan.kept_pairs == int(want.sum())


def assert_torch_backend(pattern, expr_for_ref, lq, lk, hq, hkv, segments, batch=1, seed=0):
    """The blocked torch backend (forward and gradients) against the float64 reference."""
    q, k, v = random_inputs(batch, hq, hkv, lq, lk, 16, torch.float32, seed)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    seg = None
    if segments is not None:
        sq, sk = segments if isinstance(segments, tuple) else (segments, segments)
        seg = (sq[None], sk[None])
    out, lse = run(pattern, q, k, v, segments=seg, return_lse=True, backend="torch",
                   block_m=16, block_n=16)
    keep = _ref_mask(expr_for_ref, lq, lk, hq, segments)[None]
    want, want_lse = reference.attention(q, k, v, keep)
    torch.testing.assert_close(out.double(), want.double(), atol=2e-4, rtol=2e-4)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    got = torch.autograd.grad(out, (q, k, v), do)
    ref = torch.autograd.grad(want, (q, k, v), do.double())
    for name, g, r in zip("qkv", got, ref):
        torch.testing.assert_close(g.double(), r.double(), atol=1e-3, rtol=1e-3, msg=name)


# ---------------------------------------------------------------- plans, pair by pair


@st.composite
def plan_patterns(draw):
    """Random patterns, often shaped to make residue (``stride``) and gather (scattered
    ``cols``) components, whose predicates then carry differences of the earlier ones."""
    base = draw(bound_patterns(max_leaves=5))
    shape = draw(st.sampled_from(["plain", "or_stride", "and_stride", "or_cols", "mixed"]))
    stride = ir.Stride(I(draw(st.integers(2, 9))))
    if shape == "or_stride":
        return ir.Union(base, stride)
    if shape == "and_stride":
        return ir.Intersect(base, stride)
    if shape == "or_cols":
        return ir.Union(base, draw(primitives("cols")))
    if shape == "mixed":
        other = draw(bound_patterns(max_leaves=2))
        return ir.Union(ir.Union(ir.Intersect(base, stride), draw(primitives("cols"))),
                        ir.Intersect(other, ir.Causal()))
    return base


@settings(max_examples=examples(1.0), deadline=None)
@given(data=st.data(), expr=plan_patterns(), lens=lengths(80), heads=num_heads(5),
       blocks=st.sampled_from([(16, 16), (16, 32), (32, 16)]))
def test_plan_components_keep_exactly_the_reference_pairs(data, expr, lens, heads, blocks):
    """``Pattern.plan``: disjoint components whose union is the reference mask, pair by pair
    (the existing plan tests compare with a slower path of the same classifier, or counts)."""
    lq, lk = lens
    uses_segment = any(isinstance(n, ir.Segment) for n in expr.walk())
    segments = data.draw(segments_for(lq, lk)) if uses_segment else None
    want = _ref_mask(expr, lq, lk, heads, segments)
    plan = pattern_of(expr).plan(lq, lk, block_m=blocks[0], block_n=blocks[1], num_heads=heads,
                                 segments=segments)
    assert_plan_is_the_mask(plan, want, segments)


# ---------------------------------------------------------------- parameters and references


def _substitute(node, env):
    """``node`` with each parameter replaced by its value's literal (by hand: no ``bind``)."""
    if isinstance(node, ir.Param):
        value = env[node.name]
        return ir.Float(value) if isinstance(value, float) else I(value)
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, ir.Node):
            changes[f.name] = _substitute(value, env)
        elif isinstance(value, tuple):
            changes[f.name] = tuple(_substitute(v, env) if isinstance(v, ir.Node) else v
                                    for v in value)
    return dataclasses.replace(node, **changes) if changes else node


def _literal_text(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


@st.composite
def bound_declarations(draw):
    """``(decl, env, passed)``: a declaration from ``decls()``, a value for each parameter
    (``env``, its default where the use leaves it out) and the values a use passes
    (``passed``: every required one, some of the others)."""
    decl = draw(decls(max_leaves=5))
    env, passed = {}, {}
    for p in decl.params:
        if p.default is not None and draw(st.booleans()):
            env[p.name] = p.default.value
            continue
        if p.name == FLOAT_PARAM:
            value = draw(st.sampled_from(DENSITIES))
        else:
            value = draw(st.one_of(st.integers(-3, 12), st.integers(13, 90)))
        env[p.name] = passed[p.name] = value
    assume(_valid_with(decl.body, env))
    return decl, env, passed


def _call_text(decl, passed, positional):
    """A use of ``decl`` passing ``passed``: the first ``positional`` parameters (if all are
    passed) by position, the rest by name."""
    if not passed:
        return decl.name
    names = [p.name for p in decl.params]
    n = 0
    while n < positional and n < len(names) and names[n] in passed:
        n += 1
    args = [_literal_text(passed[name]) for name in names[:n]]
    args += [f"{name} = {_literal_text(passed[name])}" for name in names[n:] if name in passed]
    return f"{decl.name}({', '.join(args)})"


COMBINE = {"|": ir.Union, "&": ir.Intersect, "-": ir.Difference}


@settings(max_examples=examples(1.0), deadline=None)
@given(data=st.data(), bound=bound_declarations(), other=bound_patterns(max_leaves=2),
       op=st.sampled_from(sorted(COMBINE)), positional=st.integers(0, 3), lens=lengths(40),
       heads=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2)]))
def test_parameters_defaults_and_references_match_substitution(data, bound, other, op,
                                                               positional, lens, heads):
    """``Pattern.bind`` and a reference ``name(args) op other`` in a second declaration
    (inlined, defaults filled in, folded, simplified) keep what the body keeps with the values
    written in by hand: mask, layout, plan and the torch backend against the reference."""
    decl, env, passed = bound
    lq, lk = lens
    hq, hkv = heads
    body = _substitute(decl.body, env)
    want_expr = COMBINE[op](body, other)
    uses_segment = any(isinstance(n, ir.Segment) for n in want_expr.walk())
    segments = data.draw(segments_for(lq, lk)) if uses_segment else None
    want_body = _ref_mask(body, lq, lk, hq, segments)
    want = _ref_mask(want_expr, lq, lk, hq, segments)

    bound_pattern = Pattern(decl).bind(**passed)
    assert torch.equal(bound_pattern.mask(lq, lk, num_heads=hq, segments=segments), want_body), \
        f"{decl} bound with {passed}: {bound_pattern.ir}"

    text = f"{decl}\npattern top = ({_call_text(decl, passed, positional)}) {op} ({other})\n"
    top = attnlang.parse(text)["top"]
    assert torch.equal(top.mask(lq, lk, num_heads=hq, segments=segments), want), text
    lay = top.layout(lq, lk, block_m=16, block_n=16, num_heads=hq, segments=segments)
    assert_layout_right(lay, want, text)
    assert_plan_is_the_mask(top.plan(lq, lk, block_m=16, block_n=32, num_heads=hq,
                                     segments=segments), want, segments)
    assert_torch_backend(top, want_expr, lq, lk, hq, hkv, segments)


# ---------------------------------------------------------------- the Triton kernels


def _gen_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "gen_gaps"


@st.composite
def segment_patterns(draw):
    """``segment`` anywhere: with a random pattern by ``&``, ``|``, ``-`` either way round,
    under a complement, or deeper in a random pattern."""
    base = draw(bound_patterns(max_leaves=3, allow_segment=False))
    form = draw(st.sampled_from(["and", "or", "minus", "rminus", "not", "deep"]))
    seg = ir.Segment()
    if form == "and":
        return ir.Intersect(base, seg)
    if form == "or":
        return ir.Union(base, seg)
    if form == "minus":
        return ir.Difference(base, seg)
    if form == "rminus":
        return ir.Difference(seg, base)
    if form == "not":
        return ir.Intersect(ir.Complement(seg), base)
    expr = draw(bound_patterns(max_leaves=5).filter(
        lambda e: any(isinstance(n, ir.Segment) for n in e.walk())))
    return expr


@needs_triton
@settings(max_examples=examples(0.16), deadline=None)
@given(data=st.data(), expr=segment_patterns(), shape=lengths(56),
       heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), batch=st.integers(1, 2),
       d=st.sampled_from([16, 32]), dtype=st.sampled_from([torch.float32, torch.float16]),
       padding=st.booleans())
def test_kernels_with_segment_anywhere(tmp_path_factory, data, expr, shape, heads, batch, d,
                                       dtype, padding):
    """The generated kernels with ``segment`` in any position of a pattern (the kernel tests
    had only ``causal & segment`` and three other document bands), sorted or unsorted ids,
    Lq != Lk, key padding, two batches and grouped heads."""
    lq, lk = shape
    segments = data.draw(segments_for(lq, lk))
    kpm = None
    if padding:
        kpm = torch.rand(batch, lk, generator=torch.Generator().manual_seed(lq * 7 + lk)) > 0.25
    mod = generated(expr, _gen_dir(tmp_path_factory))
    check_against_reference(mod.attention, expr, B=batch, Hq=heads[0], Hkv=heads[1], Lq=lq,
                            Lk=lk, D=d, dtype=dtype, segments=segments, key_padding_mask=kpm)


@st.composite
def per_head_patterns(draw):
    """Per-head mixtures ``heads(S1) & P1 | heads(S2) & P2 ...`` (negative and ``every``
    members too), sometimes with a ``where`` over ``h`` (or any variable) on top."""
    terms = []
    for _ in range(draw(st.integers(1, 3))):
        s = draw(primitives("heads"))
        p = draw(bound_patterns(max_leaves=2, allow_segment=False, allow_heads=False))
        terms.append(ir.Intersect(s, p))
    expr = terms[0]
    for t in terms[1:]:
        expr = ir.Union(expr, t)
    extra = draw(st.sampled_from(["none", "where_or", "where_and", "complement"]))
    if extra == "where_or":
        expr = ir.Union(expr, draw(primitives("where")))
    elif extra == "where_and":
        expr = ir.Intersect(expr, ir.Union(draw(primitives("where")), ir.Causal()))
    elif extra == "complement":
        expr = ir.Complement(expr)
    return expr


@needs_triton
@settings(max_examples=examples(0.16), deadline=None)
@given(expr=per_head_patterns(), shape=lengths(48),
       heads=st.sampled_from([(3, 1), (4, 1), (4, 2), (5, 5), (3, 3)]), batch=st.integers(1, 2),
       d=st.sampled_from([16, 32]), dtype=st.sampled_from([torch.float32, torch.float16]),
       padding=st.booleans())
def test_kernels_with_per_head_patterns_under_grouped_heads(tmp_path_factory, expr, shape, heads,
                                                            batch, d, dtype, padding):
    """Head-dependent patterns in the generated kernels with up to five query heads, grouped
    3:1 and 4:1 (the random kernel tests draw at most two heads, 2:1): negative ``heads``
    members count from Hq, ``h`` is the query head, and key padding on top."""
    lq, lk = shape
    kpm = None
    if padding:
        kpm = torch.rand(batch, lk, generator=torch.Generator().manual_seed(lq + 3 * lk)) > 0.25
    mod = generated(expr, _gen_dir(tmp_path_factory))
    check_against_reference(mod.attention, expr, B=batch, Hq=heads[0], Hkv=heads[1], Lq=lq,
                            Lk=lk, D=d, dtype=dtype, key_padding_mask=kpm)


# ---------------------------------------------------------------- the language's forms as text

_M32 = 0xFFFFFFFF


def _random(density, block, seed):
    """LANGUAGE.md section 5, in plain Python integers."""
    def keep(q, k, p, d, h, Lq, Lk, H):
        i, j = p // block, k // block
        value = mix32_int((mix32_int((mix32_int(seed) + i) & _M32) + j) & _M32)
        return value < math.floor(density * 2 ** 32)
    return keep


def _div(a, b):
    """``div`` by a zero met at run time is 0 (docs/language.md; LANGUAGE.md is silent)."""
    return 0 if b == 0 else a // b


def _mod(a, b):
    """``mod`` by a zero met at run time is the dividend (docs/language.md)."""
    return a if b == 0 else a % b


SEG_IDS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3]  # repeated to the length; unsorted: 3 then 0


def _seg(i):
    return SEG_IDS[i % len(SEG_IDS)] + 4 * (i // 40)


# (text, keeps(q, k, p, d, h, Lq, Lk, H) written from LANGUAGE.md, independent of attnlang)
FORMS = [
    ("where(0 <= d < 8)", lambda q, k, p, d, h, Lq, Lk, H: 0 <= d < 8),
    ("where((q + k) % 3 == 0 and k // 2 != q // 3)",
     lambda q, k, p, d, h, Lq, Lk, H: (q + k) % 3 == 0 and k // 2 != q // 3),
    ("where(d div -3 == k mod -4 or p mod 5 == -d div 2)",
     lambda q, k, p, d, h, Lq, Lk, H: d // -3 == k % -4 or p % 5 == -d // 2),
    ("where(abs(d) <= 2 or min(q, k) == max(p - 5, 0))",
     lambda q, k, p, d, h, Lq, Lk, H: abs(d) <= 2 or min(q, k) == max(p - 5, 0)),
    ("where(p == Lk - 1 or k >= Lq or not (q < Lk - Lq + 3))",
     lambda q, k, p, d, h, Lq, Lk, H: p == Lk - 1 or k >= Lq or not (q < Lk - Lq + 3)),
    ("where(h * 7 >= Lk - k and q != h)",
     lambda q, k, p, d, h, Lq, Lk, H: h * 7 >= Lk - k and q != h),
    ("where(q mod k == 1 or k div (q - 3) == 0 and q != 3 or d mod (h - 1) == d)",
     lambda q, k, p, d, h, Lq, Lk, H: _mod(q, k) == 1 or _div(k, q - 3) == 0 and q != 3
     or _mod(d, h - 1) == d),
    ("where((q + 1) * 1000000 * (k + 1) mod 7 == 3 or p * k * 99991 > 2147483647 * 2)",
     lambda q, k, p, d, h, Lq, Lk, H: (q + 1) * 1000000 * (k + 1) % 7 == 3
     or p * k * 99991 > 2147483647 * 2),
    ("rows({}) | cols({-1, 0, 5})",
     lambda q, k, p, d, h, Lq, Lk, H: k in (Lk - 1, 0, 5)),
    ("rows(-3..) | cols(..2) | rows(-30..-27)",
     lambda q, k, p, d, h, Lq, Lk, H: p >= Lk - 3 or k < 2 or Lk - 30 <= p < Lk - 27),
    ("cols(every(5, 3..)) & causal", lambda q, k, p, d, h, Lq, Lk, H: k % 5 >= 3 and d >= 0),
    ("global(every(4, ..1) | {-2}) & window(6)",
     lambda q, k, p, d, h, Lq, Lk, H: (p % 4 < 1 or p == Lk - 2 or k % 4 < 1 or k == Lk - 2)
     and -6 <= d <= 6),
    ("heads(-1..) & window(1) | heads({0, -2}) & chunk(4, 1, 0) | heads(every(2, 1)) & none",
     lambda q, k, p, d, h, Lq, Lk, H: h >= H - 1 and abs(d) <= 1
     or h in (0, H - 2) and 0 <= p // 4 - k // 4 <= 1),
    ("window(back = 3, ahead = -1) | chunk(size = 5, ahead = 1)",
     lambda q, k, p, d, h, Lq, Lk, H: 1 <= d <= 3 or -1 <= p // 5 - k // 5 <= 0),
    ("prefix(7) | stride(3) & causal",
     lambda q, k, p, d, h, Lq, Lk, H: p < 7 and k < 7 or d % 3 == 0 and d >= 0),
    ("random(0.5, seed = 9, block = 4) - window(0)",
     lambda *a: _random(0.5, 4, 9)(*a) and a[3] != 0),
    ("random(0.3, 3) | random(1, block = 1) & window(0) | random(0.0)",
     lambda *a: _random(0.3, 3, 0)(*a) or a[3] == 0),
    ("~(causal - stride(2)) & cols(every(3, 0..2) | 40..)",
     lambda q, k, p, d, h, Lq, Lk, H: not (d >= 0 and d % 2 != 0) and (k % 3 < 2 or k >= 40)),
    ("segment | window(1) & ~segment",
     lambda q, k, p, d, h, Lq, Lk, H: _seg(q) == _seg(k) or abs(d) <= 1),
    ("causal & segment - chunk(6)",
     lambda q, k, p, d, h, Lq, Lk, H: d >= 0 and _seg(q) == _seg(k) and p // 6 != k // 6),
]
SHAPES = [(37, 37, 3), (45, 29, 2), (23, 50, 4)]  # Lq = Lk, Lq > Lk (p < 0), Lq < Lk


def _formula_mask(keeps, lq, lk, H):
    out = torch.zeros(H, lq, lk, dtype=torch.bool)
    for h in range(H):
        for q in range(lq):
            p = q + lk - lq
            for k in range(lk):
                out[h, q, k] = bool(keeps(q, k, p, p - k, h, lq, lk, H))
    return out


def _form(text):
    return attnlang.parse(f"pattern x = {text}")["x"]


def _form_segments(text, lq, lk):
    if "segment" not in text:
        return None
    return (torch.tensor([_seg(i) for i in range(lq)]), torch.tensor([_seg(i) for i in range(lk)]))


@pytest.mark.parametrize("text, keeps", FORMS, ids=[f[0] for f in FORMS])
def test_language_forms_match_the_contract_on_every_cpu_path(text, keeps):
    """Each form: the reference against the formula from LANGUAGE.md, then layout, plan and
    the torch backend (two grouped heads to one where the heads allow) against the reference."""
    pattern = _form(text)
    for lq, lk, H in SHAPES:
        segments = _form_segments(text, lq, lk)
        want = _formula_mask(keeps, lq, lk, H)
        got = reference.mask(pattern.ir, lq, lk, num_heads=H, segments=segments)
        assert torch.equal(got, want), (lq, lk, H, (got != want).nonzero()[:4])
        raw = reference.mask(pattern.decl.body, lq, lk, num_heads=H, segments=segments)
        assert torch.equal(raw, want), "simplify changed the mask"
        assert_layout_right(pattern.layout(lq, lk, block_m=16, block_n=16, num_heads=H,
                                           segments=segments), want, text)
        assert_plan_is_the_mask(pattern.plan(lq, lk, block_m=16, block_n=16, num_heads=H,
                                             segments=segments), want, segments)
    # the torch backend at one of the shapes (which one turns with the form), for the time
    lq, lk, H = SHAPES[[f[0] for f in FORMS].index(text) % len(SHAPES)]
    hkv = 1 if H % 2 else H // 2
    assert_torch_backend(pattern, pattern.decl.body, lq, lk, H, hkv,
                         _form_segments(text, lq, lk))


KERNEL_FORMS = [
    # a divisor that is zero at some pairs (the kernels divided by it: garbage there)
    "where(3 mod q == 0 or k div (q - 3) == 1) & segment",
    "where(q mod k == 1 or k div (q - 3) == 0 and q != 3 or d mod (h - 1) == d)",
    "where((q + 1) * 1000000 * (k + 1) mod 7 == 3 or p * k * 99991 > 2147483647 * 2)",
    "where(d div -3 == k mod -4 or p mod 5 == -d div 2)",
    "where(p == Lk - 1 or k >= Lq or not (q < Lk - Lq + 3))",
    "rows(-3..) | cols(..2) | rows(-30..-27)",
    "heads(-1..) & window(1) | heads({0, -2}) & chunk(4, 1, 0) | heads(every(2, 1)) & none",
    "random(0.5, seed = 9, block = 4) - window(0)",
    "segment | window(1) & ~segment",
]


@needs_triton
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # (numpy, in the interpreter)
@pytest.mark.parametrize("text", KERNEL_FORMS)
def test_language_forms_in_the_kernels(text, tmp_path):
    """The forms the kernel tests never had, in the generated kernels with Lq > Lk (negative
    query positions and random block indices) and four query heads on two key heads."""
    expr = _form(text).decl.body
    mod = generated(expr, tmp_path)
    lq, lk = 45, 29
    check_against_reference(mod.attention, expr, B=1, Hq=4, Hkv=2, Lq=lq, Lk=lk, D=16,
                            dtype=torch.float32, segments=_form_segments(text, lq, lk))
