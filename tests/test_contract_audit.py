"""Contract audit against /work/shared/LANGUAGE.md: cases where attnlang did not do what the
reference says, or answered with a traceback or a silently wrong result instead of an error at
the user's source.  Each test failed before its fix."""
import pytest

import attnlang
from attnlang.errors import AttnError

BIG = 2 ** 62

# ---------------------------------------------------------------- where arithmetic is exact
# LANGUAGE.md section 4: "Integer arithmetic is exact (no overflow)".  Every evaluator works in
# int64; arithmetic that could leave it must be refused (at the expression), never wrap.


@pytest.mark.parametrize("build", ["mask", "layout", "plan"])
@pytest.mark.parametrize("cond, column", [
    (f"q * {BIG} div {BIG} == q", 19),  # true for every pair; int64 wrap kept only q < 2
    (f"q * {BIG} > k * {BIG}", 26 + len(str(BIG))),  # is q > k; int64 wrap got it wrong
    ("q * 1000000000000 * 1000000000 > k", 19),
])
def test_where_overflow_is_an_error_not_a_wrong_mask(build, cond, column):
    pattern = attnlang.parse(f"pattern a = where({cond})", "w.attn")["a"]
    with pytest.raises(AttnError) as info:
        getattr(pattern, build)(5, block_m=16, block_n=16) if build != "mask" \
            else pattern.mask(5)
    err = info.value
    assert (err.filename, err.line, err.column) == ("w.attn", 1, column)
    assert "2**62" in err.message and "^" in str(err)


def test_where_within_int64_still_works():
    pattern = attnlang.parse(f"pattern a = where(q * {2 ** 40} >= k * {2 ** 40})")["a"]
    assert int(pattern.mask(7).sum()) == 28
    assert pattern.plan(7, block_m=16, block_n=16).kept_pairs == 28


def test_constant_overflow_inside_where_is_caught_by_check():
    """``attnlang check`` used to accept it; only ``mask``/``layout`` (binding) refused it."""
    with pytest.raises(AttnError) as info:
        attnlang.parse(f"pattern a = where(q + ({BIG} * 2) > 0)", "c.attn")
    assert (info.value.line, info.value.column) == (1, 24)
    assert "too large" in info.value.message


# ---------------------------------------------------------------- default values, inlined
# LANGUAGE.md section 7: the caret goes under the offending column.  A default that breaks a
# rule inside a pattern used by the declaration was reported in the *used* pattern's text,
# which is fine with its own defaults.


@pytest.mark.parametrize("source, line, column, note", [
    ("pattern a(w = 2) = stride(w - 1)\npattern b(v = 1) = a(v)", 2, 9,
     "inside a pattern that 'b' uses"),
    ("pattern a0(w = 2) = where(q == w)\n"
     + "\n".join(f"pattern a{i}(w = 2) = a{i - 1}(w * w)" for i in range(1, 8)), 7, 9,
     "inside a pattern that 'a6' uses"),
    ("pattern a(w = 2) = where(q == w)\npattern b(v = 4611686018427387904) = a(v * 2)", 2, 40,
     "too large"),
])
def test_default_value_errors_point_into_the_declaration(source, line, column, note):
    with pytest.raises(AttnError) as info:
        attnlang.parse(source, "d.attn")
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert note in err.message and "default values" in err.message


@pytest.mark.parametrize("text", ["rows({}) | causal", "cols({})", "heads({}) | causal",
                                  "global({}) | window(1)", "causal & ~cols({} | {3})",
                                  "heads({}) & window(2) | heads({0}) & causal"])
def test_the_empty_index_set_on_every_path(text):
    """`{}` is the empty index set (docs/language.md): the reference took it, while layouts,
    plans and both backends indexed an empty table of members (IndexError)."""
    import torch

    from attnlang import reference
    from attnlang.runtime import run

    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    want = reference.mask(pattern.ir, 20, 20, num_heads=2)
    pattern.layout(20, 20, block_m=16, block_n=16, num_heads=2)
    plan = pattern.plan(20, 20, block_m=16, block_n=16, num_heads=2)
    assert plan.kept_pairs == int(want.sum())
    q = torch.randn(1, 2, 20, 16, generator=torch.Generator().manual_seed(0))
    out = run(pattern, q, q, q, backend="torch", block_m=16, block_n=16)
    want_out = reference.attention(q.double(), q.double(), q.double(), want[None])[0]
    torch.testing.assert_close(out.double(), want_out, atol=1e-5, rtol=1e-5)
