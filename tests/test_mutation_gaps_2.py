"""Cases the rest of the suite did not pin down, found by a second round of mutation testing (one
deliberate bug at a time in validate, predicate, layout, layout_prims, printer, formatter, parser
and torch_backend; each test here fails on the bug named in its docstring and passes on the real
code).  Small and deterministic: no Hypothesis."""
from __future__ import annotations

import pytest
import torch

import attnlang
from attnlang import ir
from attnlang.reference import mask

from strategies import mix32_int
from test_layout import truth_classes

I = ir.Int
V = ir.Var
q, k = V("q"), V("k")


# ---------------------------------------------------------------- validate


def _qkv(b=2, hq=4, hkv=2, lq=8, lk=8, d=16, dv=None):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, hq, lq, d, generator=g), torch.randn(b, hkv, lk, d, generator=g),
            torch.randn(b, hkv, lk, d if dv is None else dv, generator=g))


def _rejects(argument, fragment, qkv=None, **call):
    from attnlang.validate import validate

    with pytest.raises(ValueError) as info:
        validate(*(qkv or _qkv()), **call)
    message = str(info.value)
    assert message.startswith(argument + ":"), message
    assert fragment in message, message


@pytest.mark.parametrize("shape", [(2, 4, 0, 16), (2, 0, 8, 16)])
def test_queries_of_zero_length_or_zero_heads_are_refused(shape):
    """``Lq = 0`` and ``Hq = 0`` are refused by name (mutants: ``lq < 0``; ``hq < 1`` dropped,
    as ``0 % Hkv == 0`` lets zero query heads through the GQA check)."""
    _, k, v = _qkv()
    _rejects("q", "batch, heads and length of at least 1", qkv=(torch.randn(*shape), k, v))


def test_key_and_value_head_dims_must_be_the_query_head_dim():
    """k's head dim must be q's, and v's shape k's, head dim included (mutants: the k head-dim
    check dropped; ``v.shape[:3]`` compared): otherwise a matmul fails later, unnamed."""
    q, _, _ = _qkv()
    _, k32, v32 = _qkv(d=32)
    _rejects("k", "[2, Hkv, Lk, 16]", qkv=(q, k32, v32))
    _rejects("v", "the shape of k", qkv=_qkv(dv=32))


def test_segment_ids_at_two_to_the_31_do_not_fit_int32():
    """``2**31`` is the first id int32 cannot hold; it would wrap to ``-2**31`` and join another
    document (mutant: ``hi > 2**31``)."""
    _rejects("segments", "fit in int32", segments=torch.full((8,), 2 ** 31))
    _rejects("segments", "fit in int32", segments=torch.tensor([0] * 7 + [2 ** 31]))


def test_boolean_segment_ids_are_refused_by_validate():
    """``validate`` refuses bool ids as the layout and the reference do (mutant: the bool check
    dropped; True/False silently became documents 1/0)."""
    _rejects("segments", "integer dtype", segments=torch.ones(8, dtype=torch.bool))


def test_int32_segment_ids_of_the_wrong_length_are_refused():
    """int32 ids on q's device take a fast path, which still checks the length (mutant: the
    length test dropped from it: 7 ids for 8 keys, or a [2, 5] pair half, went through)."""
    _rejects("segments", "[8] or [2, 8]", segments=torch.zeros(7, dtype=torch.int32))
    _rejects("segments", "[8] or [2, 8]", segments=torch.zeros(2, 9, dtype=torch.int32))
    _rejects("segments[0] (query ids)", "[8] or [2, 8]",
             segments=(torch.zeros(5, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)))


# ---------------------------------------------------------------- predicate


def _grid(expr, q_len, k_len):
    from attnlang.predicate import evaluate

    return evaluate(expr, torch.arange(q_len).view(-1, 1), torch.arange(k_len).view(1, -1),
                    q_len=q_len, k_len=k_len)


@pytest.mark.parametrize("expr", [
    ir.Prefix(I(9)),
    ir.Global(ir.Listed((I(8), I(-2)))),
    ir.Global(ir.Range(I(3), I(6))),
    ir.Rows(ir.Listed((I(9),))),
], ids=str)
@pytest.mark.parametrize("q_len, k_len", [(5, 12), (12, 5)])
def test_row_sets_read_the_aligned_position_p(expr, q_len, k_len):
    """``prefix`` and ``global`` test the query's aligned position ``p = q + Lk - Lq``, not
    ``q``, at ``Lq != Lk`` (mutants: ``q < m`` in prefix; ``q`` in global's row side)."""
    assert torch.equal(_grid(expr, q_len, k_len), mask(expr, q_len, k_len)[0])


def test_where_range_allows_exactly_two_to_the_62():
    """A bound of exactly ``2**62`` fits int64 and is allowed; one step beyond is refused
    (mutant: ``bound >= WHERE_LIMIT``)."""
    from attnlang.predicate import check_where_range

    expr = ir.Where(ir.Compare(">=", ir.BinOp("*", q, I(2 ** 60)), I(0)))  # |q| <= Lq
    check_where_range(expr, 4, 4)
    assert bool(mask(expr, 4, 4).all())
    with pytest.raises(attnlang.AttnError, match="63 bits"):
        check_where_range(expr, 5, 5)


def test_where_range_keeps_the_dividends_bound_through_div():
    """``(q * 2**61) div 1 * 4`` reaches ``2**63`` at ``q = 1``: refused (mutant: ``div`` bounded
    by 1, accepted; int64 then wraps and ``> 0`` is false at q = 1)."""
    from attnlang.predicate import check_where_range

    big = ir.BinOp("*", ir.BinOp("div", ir.BinOp("*", q, I(2 ** 61)), I(1)), I(4))
    expr = ir.Where(ir.Compare(">", big, I(0)))
    with pytest.raises(attnlang.AttnError, match="63 bits"):
        check_where_range(expr, 2, 2)
    with pytest.raises(attnlang.AttnError):
        mask(expr, 2, 2)


# ---------------------------------------------------------------- layout_prims / layout


def _truth_on_axes(expr, qa, ka, q_len, k_len, bm, bn, segments=None):
    full = mask(expr, q_len, k_len, segments=segments)[0]
    sub = full[qa.positions()][:, ka.positions()]
    return truth_classes(sub[None], bm, bn)[0]


@pytest.mark.parametrize("expr, q_len, k_len", [
    (ir.Prefix(I(15)), 64, 64),          # block 0 holds position 15, outside prefix(15)
    (ir.Prefix(I(31)), 40, 70),
    (ir.Cols(ir.Every(I(32), ir.Range(I(0), I(16)))), 64, 64),   # residue 16 is outside
    (ir.Rows(ir.Every(I(32), ir.Range(I(16), I(32)))), 64, 64),
])
def test_set_and_threshold_blocks_at_their_edges(expr, q_len, k_len):
    """Block classes of ``prefix(m)`` with a block ending at ``m`` and of ``every(s, a..b)``
    with a block starting at ``b`` (mutants: ``hi <= m`` FULL; ``r <= hi`` in every)."""
    from attnlang.layout import build_layout

    lay = build_layout(expr, q_len, k_len, 16, 16, refine_limit=0)
    assert torch.equal(lay.classes().long(), truth_classes(mask(expr, q_len, k_len), 16, 16))


def test_window_on_strided_axes_narrower_than_the_step_is_refined():
    """On residue axes of step 4, ``window(0, 2)`` (3 diagonals) can miss every pair of a block:
    its edge blocks are UNKNOWN and refined, here to SKIP (mutant: exact when ``back + ahead + 2
    >= step``: PARTIAL blocks without a kept pair, in a layout that says it is exact)."""
    from attnlang.layout import Axis, classify

    expr = ir.Window(I(0), I(2))
    qa, ka = Axis(64, start=1, step=4), Axis(64, start=0, step=4)  # d = 1 (mod 4): never kept
    lay = classify(expr, qa, ka, block_m=16, block_n=16, q_len=256, k_len=256)
    truth = _truth_on_axes(expr, qa, ka, 256, 256, 16, 16)
    assert int(truth.sum()) == 0
    assert lay.exact and lay.kept_blocks == 0
    assert torch.equal(lay.classes()[0].long(), truth)


@pytest.mark.parametrize("kind", ["arithmetic past the end", "index shorter than length"])
def test_axes_outside_their_range_are_refused(kind):
    """An arithmetic axis whose last position is ``q_len`` itself, and a gather axis with fewer
    positions than its length, are refused (mutants: ``last > orig_len``; the index length check
    dropped)."""
    from attnlang.layout import Axis, classify

    axis = Axis(16, start=1, step=4) if kind.startswith("arithmetic") else \
        Axis(5, index=torch.arange(4))  # last position 61 = q_len; 4 positions for length 5
    with pytest.raises(ValueError, match="q_axis"):
        classify(ir.Causal(), axis, Axis(61), block_m=16, block_n=16, q_len=61, k_len=61)


def test_axis_with_an_offset_is_not_the_identity():
    """``Axis(48, start=16)`` is not the identity (mutant: ``start == 0`` dropped): a document
    mask over it must not take the identity-only document path, and its layout is no BlockMask."""
    from attnlang.layout import Axis, classify

    qa, ka = Axis(48, start=16), Axis(64)
    assert not qa.is_identity
    ids = torch.tensor([0] * 20 + [1] * 24 + [2] * 20)
    lay = classify(ir.Segment(), qa, ka, block_m=16, block_n=16, q_len=64, k_len=64,
                   segments=ids)
    assert not lay.identity
    assert torch.equal(lay.classes()[0].long(),
                       _truth_on_axes(ir.Segment(), qa, ka, 64, 64, 16, 16, segments=ids))
    with pytest.raises(ValueError, match="to_block_mask"):
        lay.to_block_mask()


@pytest.mark.parametrize("source", ["segment", "causal & segment", "window(8, 3) & segment"])
def test_document_masks_over_a_mapped_key_axis(source):
    """Only identity query AND key axes take the document path (mutant: the key axis's identity
    not checked: key blocks of the strided axis were read as identity blocks)."""
    from attnlang.layout import Axis, classify

    expr = attnlang.parse(f"pattern x = {source}")["x"].ir
    ids = torch.tensor([0] * 20 + [1] * 24 + [2] * 20)
    qa, ka = Axis(64), Axis(32, start=1, step=2)
    lay = classify(expr, qa, ka, block_m=16, block_n=16, q_len=64, k_len=64, segments=ids)
    assert lay.exact
    assert torch.equal(lay.classes()[0].long(),
                       _truth_on_axes(expr, qa, ka, 64, 64, 16, 16, segments=ids))


# ---------------------------------------------------------------- printer / formatter

A, B, C = (ir.Compare("==", q, I(0)), ir.Compare("==", k, I(0)), ir.Compare("==", q, I(1)))
ROUND_TRIP = [
    ir.Where(ir.BoolOp("and", ir.BoolOp("or", A, B), C)),
    ir.Where(ir.BoolOp("and", C, ir.BoolOp("or", A, B))),
    ir.Where(ir.BoolNot(ir.BoolOp("and", ir.BoolNot(A), ir.BoolNot(B)))),
    ir.Where(ir.BoolNot(ir.BoolOp("or", A, B))),
]


@pytest.mark.parametrize("expr", ROUND_TRIP, ids=str)
def test_printed_conditions_keep_their_grouping(expr):
    """``(a or b) and c`` and ``not (a and b)`` keep their parentheses in the printed text
    (mutants: ``or`` printed at ``and``'s precedence; ``not``'s operand wrapped below ``and``)."""
    from attnlang.printer import to_source

    text = to_source(expr)
    back = attnlang.parse(f"pattern x = {text}")["x"].ir
    for q_len, k_len in ((4, 4), (3, 6)):
        assert torch.equal(mask(back, q_len, k_len), mask(expr, q_len, k_len)), text


@pytest.mark.parametrize("source, kept", [
    ("where(-(k div 2) == -q)", "-(k div 2)"),
    ("where(not (q == 0 and k == 0))", "not (q == 0 and k == 0)"),
    ("where(-(k mod 3) < 0)", "-(k mod 3)"),
])
def test_formatted_unary_operands_keep_their_parentheses(source, kept):
    """The formatter wraps a unary operator's operand at the operator's own precedence:
    ``-(k div 2)`` is not ``(-k) div 2`` (floor division), ``not (a and b)`` not
    ``(not a) and b`` (mutant: the operand wrapped one level lower)."""
    from attnlang.formatter import format_source

    text = format_source(f"pattern x = {source}\n")
    assert kept in text, text
    before = attnlang.parse(f"pattern x = {source}")["x"].ir
    after = attnlang.parse(text)["x"].ir
    assert torch.equal(mask(after, 9, 9), mask(before, 9, 9)), text


def _cols(length):
    """``cols({1111111111, ...})`` of exactly ``length`` characters (at least 9)."""
    members, left = [], length - 8
    while left > 20:
        members.append("1" * 10)
        left -= 12
    members.append("1" * left)
    text = "cols({" + ", ".join(members) + "})"
    assert len(text) == length
    return text


def test_formatter_line_limit_is_inclusive():
    """A declaration of exactly 100 characters stays on one line, one of 101 whose body is a
    chain of two ``|`` operands splits, and a continuation line may reach exactly 100 characters
    (mutants: ``< LINE_LIMIT`` for the whole declaration; a chain of two operands never split;
    ``< LINE_LIMIT`` when filling a continuation line)."""
    from attnlang.formatter import LINE_LIMIT, format_source

    head = "pattern x = "
    a = _cols(30)
    exact = f"{head}{a} | {_cols(55)}"
    assert len(exact) == LINE_LIMIT
    assert format_source(exact + "\n") == exact + "\n"
    longer = f"{head}{a} | {_cols(56)}"
    assert format_source(longer + "\n") == f"{head}{a}\n    | {_cols(56)}\n"
    first = head + _cols(95)                          # alone on its line
    x, y = _cols(48), _cols(43)                       # "    | " + x + " | " + y: 100
    out = format_source(f"{first} | {x} | {y}\n")
    assert out == f"{first}\n    | {x} | {y}\n"
    assert len(f"    | {x} | {y}") == LINE_LIMIT


# ---------------------------------------------------------------- parser


def test_integer_literals_with_leading_zeros_are_their_value():
    """Leading zeros do not count towards the size limit: 21 characters holding 1 is 1 (mutant:
    the digits measured with their zeros, "integer literal is too large")."""
    pattern = attnlang.parse("pattern x = cols({000000000000000000001, 00})")["x"]
    assert pattern.ir == ir.Cols(ir.Listed((I(1), I(0))))


def test_a_float_literal_that_overflows_is_refused_as_such():
    """``1e999`` is "float literal is too large" at the literal (mutant: the check dropped; the
    error then says the density must be in [0, 1], got inf)."""
    with pytest.raises(attnlang.AttnError) as info:
        attnlang.parse("pattern x = random(1e999)")
    assert "float literal is too large" in info.value.message
    assert (info.value.line, info.value.column) == (1, 20)


def test_brackets_inside_comments_are_not_counted():
    """The bracket-depth guard skips comments: 150 ``(`` in a comment are fine (mutant: comments
    not skipped, "brackets are nested too deeply")."""
    source = "# " + "(" * 150 + "\npattern x = causal  # " + "{" * 150 + "\n"
    assert attnlang.parse(source)["x"].ir == ir.Causal()


# ---------------------------------------------------------------- torch backend


def _keep(seed, counter, qi, ki, p):
    """The module doc's dropout hash of ``(seed, counter, q, k)``, in plain integers."""
    m = 0xFFFFFFFF
    x = mix32_int(seed & m)
    for value in ((seed >> 32) & m, counter, qi, ki):
        x = mix32_int((x + (value & m)) & m)
    return x >= int(p * 4294967296.0)


def test_dropout_hash_uses_the_whole_seed_and_the_flat_head_index():
    """Dropout keeps pair ``(b, h, q, k)`` by the hash of ``(seed, b * Hq + h, q, k)`` with all
    64 bits of the seed (mutants: the seed's high word ignored; ``b + h`` for ``b * Hq + h``,
    so that (b=1, h=0) and (b=0, h=1) drop the same pairs)."""
    from attnlang.torch_backend import dropout_keep

    heads, p = 3, 0.4
    b = torch.arange(2).view(-1, 1, 1, 1)
    h = torch.arange(heads).view(1, -1, 1, 1)
    qi = torch.arange(6).view(1, 1, -1, 1)
    ki = torch.arange(7).view(1, 1, 1, -1)
    for seed in (5, 5 + (1 << 32), (1 << 62) + 12345):
        got = dropout_keep(seed, b, h, qi, ki, heads, p)
        want = torch.tensor([[[[_keep(seed, bb * heads + hh, x, y, p) for y in range(7)]
                               for x in range(6)] for hh in range(heads)] for bb in range(2)])
        assert torch.equal(got, want), seed
    assert not torch.equal(dropout_keep(5, b, h, qi, ki, heads, p),
                           dropout_keep(5 + (1 << 32), b, h, qi, ki, heads, p))


def test_per_batch_key_ids_with_one_row_of_query_ids():
    """Segment ids as a pair ``([1, Lq], [B, Lk])``: each batch element gets its own plan
    (mutant: one plan, from row 0 of the key ids, for every batch element)."""
    from attnlang import reference
    from attnlang.runtime import run

    from test_runtime_torch import Expr

    expr = ir.Segment()
    g = torch.Generator().manual_seed(3)
    qt, kt, vt = (torch.randn(2, 2, 24, 16, generator=g) for _ in range(3))
    seg_q = torch.tensor([[0] * 8 + [1] * 8 + [2] * 8])
    seg_k = torch.tensor([[0] * 8 + [1] * 8 + [2] * 8, [0] * 20 + [2] * 4])
    out = run(Expr(expr), qt, kt, vt, segments=(seg_q, seg_k), backend="torch", block_m=16,
              block_n=16)
    keep = torch.stack([reference.mask(expr, 24, 24, segments=(seg_q[0], seg_k[b]))
                        for b in range(2)])
    want, _ = reference.attention(qt, kt, vt, keep)
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
