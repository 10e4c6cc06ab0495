"""The canonical printer and the parser agree: ``parse(str(decl)) == decl``."""
from __future__ import annotations

import attnlang
from attnlang import ir
from hypothesis import given, settings

from strategies import bound_patterns, decls


def _reparse(decl: ir.PatternDecl) -> ir.PatternDecl:
    return attnlang.parse(str(decl))[decl.name].decl


@settings(deadline=None)
@given(decls())
def test_random_declarations_round_trip(decl):
    assert _reparse(decl) == decl, str(decl)


@settings(deadline=None)
@given(bound_patterns())
def test_random_bound_patterns_round_trip(body):
    decl = ir.PatternDecl("t", (), body)
    assert _reparse(decl) == decl, str(decl)


@settings(deadline=None)
@given(decls(), decls())
def test_programs_round_trip(a, b):
    b = ir.PatternDecl(a.name + "_2", b.params, b.body)
    program = ir.Program((a, b))
    again = attnlang.parse(str(program)).ir
    assert again == program
    assert str(again) == str(program)
