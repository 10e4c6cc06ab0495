"""Edge cases from a stress audit of the CPU stages (simplify, printer/parser round trip, layouts,
plans) against the dense reference, with inputs beyond tests/strategies.py's ranges."""
from __future__ import annotations

import pytest
import torch

import attnlang
from attnlang.errors import AttnError
from attnlang.layout import build_layout
from attnlang.plan import build_plan
from attnlang.reference import mask as ref_mask
from attnlang.simplify import simplify
from tests.test_layout import assert_correct, truth_classes

BIG = 1 << 62  # the largest literal the checker accepts

CASES = [
    f"window({BIG})", f"window(-{BIG}, {BIG})", f"chunk({BIG}, 1)", f"chunk(3, -{BIG}, {BIG})",
    f"stride({BIG})", f"prefix({BIG})", f"rows(-{BIG}..)", f"cols({{{BIG}, -{BIG}, 3}})",
    f"cols(every({BIG}, 5..{BIG}))", f"random(0.5, block = {BIG}, seed = 4294967295)",
    "heads({-1, -3} | every(3, 1..)) & window(7, -2) | heads(-2..) & stride(5)",
    "where(q div -3 == k mod -5 or (q - k) mod (h - 1) == 0) & ~chunk(17, -1, 3)",
    "random(0.3, block = 24, seed = 7) - causal | cols(every(48, 40..)) & stride(33)",
]


@pytest.mark.parametrize("source", CASES)
@pytest.mark.parametrize("q_len,k_len,bm,bn", [(70, 201, 16, 32), (201, 23, 32, 16)])
def test_edge_patterns_against_reference(source, q_len, k_len, bm, bn):
    expr = attnlang.parse(f"pattern t = {source}")["t"].ir
    heads = 5
    dense = ref_mask(expr, q_len, k_len, num_heads=heads)
    assert torch.equal(ref_mask(simplify(expr), q_len, k_len, num_heads=heads), dense)
    lay = build_layout(expr, q_len, k_len, bm, bn, num_heads=heads)
    assert lay.exact
    assert_correct(lay, truth_classes(dense, bm, bn), exact=True)
    plan = build_plan(simplify(expr), q_len, k_len, block_m=bm, block_n=bn, num_heads=heads)
    assert plan.kept_pairs == int(dense.sum())
    decl = attnlang.parse(f"pattern t = {source}")["t"].decl
    assert attnlang.parse(str(decl))["t"].decl == decl


def test_document_layout_with_shuffled_negative_ids():
    ids = torch.tensor([5] * 20 + [-3] * 7 + [0] * 40 + [-9] * 33)
    for source in ("segment", "causal & segment", "window(9, -2) & segment"):
        expr = attnlang.parse(f"pattern t = {source}")["t"].ir
        lay = build_layout(expr, 100, 100, 16, 32, segments=ids)
        assert_correct(lay, truth_classes(ref_mask(expr, 100, segments=ids), 16, 32))


@pytest.mark.parametrize("form, last, line", [
    ("cols({{{i}}}) | p{j}", 101, 101),  # right-nested: a bracket a level, past 100
    ("p{j} | cols({{{i}}})", 198, 198),  # a flat chain whose parse tree passes 200 levels
])
def test_an_inlined_pattern_that_would_not_print_back_is_refused(form, last, line):
    """The checker accepted inlined patterns whose canonical text (``str(pattern)``) the parser
    refuses; it now refuses them itself, at the declaration, and what it accepts prints back."""
    lines = ["pattern p0 = cols({0})"] + [f"pattern p{i} = " + form.format(i=i, j=i - 1)
                                          for i in range(1, last + 1)]
    with pytest.raises(AttnError) as info:
        attnlang.parse("\n".join(lines), "deep.attn")
    assert (info.value.line, info.value.column) == (line, 9)
    assert "its canonical text would not parse back" in info.value.message
    accepted = attnlang.parse("\n".join(lines[:line - 1]))
    deepest = accepted[f"p{line - 2}"].decl
    assert attnlang.parse(str(deepest))[deepest.name].decl == deepest
