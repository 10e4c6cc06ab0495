"""Code generation: a pattern becomes the source of a standalone Python module.

The module (rendered from ``templates/attention.py.jinja``, which includes the other templates'
parts in order: kernels first, then the host code) holds, per plan component, a Triton
forward kernel and two backward kernels (dK/dV and dQ), the launchers that run the components and
merge their results by log-sum-exp (when every component reads the queries in order -- identity
and gather components -- one forward and one dQ kernel run all of them in one pass instead), a
``torch.autograd.Function``, a ``torch.nn.Module``, and a copy
of the few attnlang modules the launchers need at run time to build block tables for new lengths
(``ir``, ``layout``, ``plan``, ``validate``: standard library and torch only).  It imports nothing
from attnlang, so it runs where attnlang is not installed.

Logic lives here, in Python; the template only lays the pieces out.  The in-block mask of each
component is a Triton expression built by ``MaskEmitter`` (one case per IR node) over:
``qp`` (original query positions, ``[BLOCK_M, 1]``), ``kp`` (original key positions,
``[1, BLOCK_N]``), ``h`` (query head), ``H``, ``Lq``, ``Lk`` and, for ``segment``, ``sq``/``sk``
(the segment ids at ``qp``/``kp``).  Primitives compute in int32 (positions and distances of
sequences shorter than 2^30 fit), which is what the partial blocks' hot loop wants; their
constants are clamped to +-2^30 (``KERNEL_LIMIT``), which compares with every such position as
the written value does (a constant past int32 would not even compile); ``where`` and the
``random`` hash compute in int64, so ``where`` predicates are exact for any realistic length.
Division and modulo floor (helpers).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from . import ir
from .resources import templates_dir

def _template_version() -> str:
    """Changes whenever a template, this file or a copied support module changes, so cached
    generated modules are never stale."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(templates_dir().glob("*.jinja")) + [Path(__file__)] + sorted(
            package.glob("layout*.py")) + [package / f"{n}.py"
                                           for n in SUPPORT_MODULES + LAZY_SUPPORT_MODULES]:
        digest.update(path.read_bytes())
    return "1." + digest.hexdigest()[:12]

# attnlang modules copied into generated code (standard library and torch only); ``layout`` may
# be split into ``layout_*.py`` helpers, which come along.
SUPPORT_MODULES = ("ir", "errors", "printer", "predicate", "layout", "plan", "validate")
# ... and, in modules of band patterns (``band.band_of``, bands with global rows and columns:
# ``band.banded_of``, and strided bands: ``band.strided_band_of``), the Gluon forward and
# backward, which they load only when they are about to use them (they import Triton's Gluon,
# which not every Triton has); document masks (``layout_segment.band_of``) take the first two,
# the backward.
LAZY_SUPPORT_MODULES = ("gluon_hopper", "gluon_backward", "gluon_forward")


def mix32(x: int) -> int:
    """LANGUAGE.md section 5's mixer of a constant seed (the predicate evaluator's own)."""
    import torch

    from .predicate import MASK32, mix32 as mix32_tensor

    return int(mix32_tensor(torch.tensor(x & MASK32, dtype=torch.int64)))


# Positions in the kernels lie in (-KERNEL_LIMIT, KERNEL_LIMIT): a primitive's constant past it
# compares with each of them as KERNEL_LIMIT (with its sign) does.
KERNEL_LIMIT = 1 << 30


def _clamped(value: int) -> int:
    return max(-KERNEL_LIMIT, min(KERNEL_LIMIT, value))


class MaskEmitter:
    """Builds the Triton expression of a bound pattern predicate (see the module docstring)."""

    def __init__(self):
        self.uses_segment = False
        self.uses_heads = False

    # -- integers
    def int_expr(self, e) -> str:
        if isinstance(e, ir.Int):
            return f"({e.value})"
        if isinstance(e, ir.Var):
            self.uses_heads |= e.name == "h"
            # where: int64, so products of positions stay exact
            q, k, lq, lk = "qp.to(tl.int64)", "kp.to(tl.int64)", "Lq.to(tl.int64)", "Lk.to(tl.int64)"
            return {"q": q, "k": k, "p": f"({q} + ({lk} - {lq}))",
                    "d": f"({q} + ({lk} - {lq}) - {k})", "h": "h.to(tl.int64)", "Lq": lq,
                    "Lk": lk}[e.name]
        if isinstance(e, ir.BinOp):
            a, b = self.int_expr(e.left), self.int_expr(e.right)
            if e.op in ("div", "mod"):
                # a divisor over the coordinates may be zero at some pairs (x div 0 = 0,
                # x mod 0 = x: docs/language.md); a literal one never is (the checker)
                safe = isinstance(e.right, ir.Int)
                helper = {"div": ("_floordiv", "_where_div"),
                          "mod": ("_floormod", "_where_mod")}[e.op][0 if safe else 1]
                return f"{helper}({a}, {b})"
            return f"({a} {e.op} {b})"
        if isinstance(e, ir.Neg):
            return f"(-{self.int_expr(e.operand)})"
        if isinstance(e, ir.Func):
            args = [self.int_expr(a) for a in e.args]
            if e.name == "abs":
                return f"tl.abs({args[0]})"
            return f"tl.{'minimum' if e.name == 'min' else 'maximum'}({args[0]}, {args[1]})"
        raise TypeError(f"not a bound integer expression: {e}")

    # -- booleans (where)
    def bool_expr(self, e) -> str:
        if isinstance(e, ir.Compare):
            return f"({self.int_expr(e.left)} {e.op} {self.int_expr(e.right)})"
        if isinstance(e, ir.BoolOp):
            op = "&" if e.op == "and" else "|"
            return f"({self.bool_expr(e.left)} {op} {self.bool_expr(e.right)})"
        if isinstance(e, ir.BoolNot):
            return f"(~{self.bool_expr(e.operand)})"
        raise TypeError(f"not a boolean expression: {e}")

    # -- index sets: membership of `x` (an expression); `end` is the length negatives count from
    def member(self, s, x: str, end: str) -> str:
        if isinstance(s, ir.SetUnion):
            return f"({self.member(s.left, x, end)} | {self.member(s.right, x, end)})"
        if isinstance(s, ir.Range):
            parts = []
            if s.lo is not None:
                parts.append(f"({x} >= {self._bound(s.lo, end)})")
            if s.hi is not None:
                parts.append(f"({x} < {self._bound(s.hi, end)})")
            return "(" + " & ".join(parts) + ")" if parts else f"({x} == {x})"
        if isinstance(s, ir.Listed):
            if not s.items:
                return f"({x} != {x})"
            return "(" + " | ".join(f"({x} == {self._bound(i, end)})" for i in s.items) + ")"
        if isinstance(s, ir.Every):
            m = ir.const(s.modulus)
            if isinstance(s.residue, ir.Range):
                lo = 0 if s.residue.lo is None else ir.const(s.residue.lo)
                hi = m if s.residue.hi is None else ir.const(s.residue.hi)
            else:
                lo = hi = ir.const(s.residue)
                hi += 1
            if m <= KERNEL_LIMIT:
                r = f"_floormod({x}, {m})"
                return f"(({r} >= {_clamped(lo)}) & ({r} < {_clamped(hi)}))"
            # x mod m is x where x >= 0 and x + m where x < 0 (|x| < KERNEL_LIMIT < m)
            return (f"((({x} >= 0) & ({x} >= {_clamped(lo)}) & ({x} < {_clamped(hi)})) | "
                    f"(({x} < 0) & ({x} >= {_clamped(lo - m)}) & ({x} < {_clamped(hi - m)})))")
        raise TypeError(f"not an index set: {s}")

    @staticmethod
    def _bound(e, end: str) -> str:
        v = _clamped(ir.const(e))
        return f"({end} - {-v})" if v < 0 else f"({v})"

    # -- patterns
    def pattern(self, e) -> str:  # noqa: C901 - one case per primitive
        p, d = "(qp + (Lk - Lq))", "(qp + (Lk - Lq) - kp)"
        if isinstance(e, ir.All):
            return "(kp == kp)"
        if isinstance(e, ir.Nothing):
            return "(kp != kp)"
        if isinstance(e, ir.Causal):
            return f"({d} >= 0)"
        if isinstance(e, ir.Window):
            back, ahead = _clamped(ir.const(e.back)), _clamped(ir.const(e.ahead))
            return f"(({d} >= {-ahead}) & ({d} <= {back}))"
        if isinstance(e, ir.Stride):
            return f"(_floormod({d}, {_clamped(ir.const(e.s))}) == 0)"
        if isinstance(e, ir.Chunk):
            size = _clamped(ir.const(e.size))
            t = f"(_floordiv({p}, {size}) - _floordiv(kp, {size}))"
            back, ahead = _clamped(ir.const(e.back)), _clamped(ir.const(e.ahead))
            return f"(({t} >= {-ahead}) & ({t} <= {back}))"
        if isinstance(e, ir.Rows):
            return self.member(e.set, p, "Lk")
        if isinstance(e, ir.Cols):
            return self.member(e.set, "kp", "Lk")
        if isinstance(e, ir.Global):
            return f"({self.member(e.set, p, 'Lk')} | {self.member(e.set, 'kp', 'Lk')})"
        if isinstance(e, ir.Prefix):
            m = _clamped(ir.const(e.m))
            return f"(({p} < {m}) & (kp < {m}))"
        if isinstance(e, ir.Random):
            density = float(ir.const(e.density))
            threshold = int(density * 2 ** 32)
            block, seed = _clamped(ir.const(e.block)), ir.const(e.seed)
            return (f"(_block_hash(_floordiv({p}, {block}), _floordiv(kp, {block}), {mix32(seed)})"
                    f" < {threshold})")
        if isinstance(e, ir.Segment):
            self.uses_segment = True
            return "(sq == sk)"
        if isinstance(e, ir.Heads):
            self.uses_heads = True
            return self.member(e.set, "h", "H")
        if isinstance(e, ir.Where):
            return self.bool_expr(e.pred)
        if isinstance(e, ir.Union):
            return f"({self.pattern(e.left)} | {self.pattern(e.right)})"
        if isinstance(e, ir.Intersect):
            return f"({self.pattern(e.left)} & {self.pattern(e.right)})"
        if isinstance(e, ir.Difference):
            return f"({self.pattern(e.left)} & ~{self.pattern(e.right)})"
        if isinstance(e, ir.Complement):
            return f"(~{self.pattern(e.operand)})"
        raise TypeError(f"not a pattern: {e}")


def mask_expression(expr) -> str:
    """The Triton expression of a bound pattern (public for tests and ``--emit``)."""
    return MaskEmitter().pattern(expr)


def _support_sources(lazy=()):
    package = Path(__file__).resolve().parent
    names = list(SUPPORT_MODULES) + sorted(p.stem for p in package.glob("layout_*.py")) + \
        list(lazy)
    return [(name, (package / f"{name}.py").read_text()) for name in names]


TEMPLATE_VERSION = _template_version()


def render_module(pattern, *, block_m=None, block_n=None) -> str:
    """The standalone module for a (bound) ``attnlang.Pattern``: deterministic text."""
    import jinja2

    from . import layout_segment
    from .band import band_of, banded_of, strided_band_of
    from .plan import GATHER, IDENTITY, decompose, one_pass

    expr = pattern.ir
    specs = decompose(expr)
    components = []
    uses_segment = False
    per_head = []  # components whose pairs differ between heads (`heads(...)`, `h`)
    for i, spec in enumerate(specs):
        emitter = MaskEmitter()
        mask = emitter.pattern(spec.predicate)
        uses_segment |= emitter.uses_segment
        per_head.append(emitter.uses_heads)
        components.append(dict(index=i, kind=spec.kind, modulus=spec.modulus,
                               predicate=str(spec.predicate), mask=mask))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    template = env.get_template("attention.py.jinja")
    layout_picture = _layout_picture(pattern)
    one = len(specs) == 1 and specs[0].kind == IDENTITY
    band = band_of(expr) if one else None
    # a band with global rows and columns (Longformer's) takes both Gluon kernels too
    banded = banded_of(expr) if one and band is None else None
    # ... and a band with stride(s) (the dilated window), each residue class a band of its own
    strided = strided_band_of(expr) if band is None and banded is None else None
    # document masks (one band and one document) take the Gluon backward only
    documents = one and band is None and layout_segment.band_of(expr) is not None
    # a gather component whose forward and dQ run in one pass with identity ones (the fixed
    # pattern) may take the Gluon backward for its own share (the template's GLUON_GATHER)
    fused = one_pass(spec.kind for spec in specs)
    gathers = [i for i, spec in enumerate(specs) if spec.kind == GATHER]
    gluon_gather = gathers[0] if fused and len(gathers) == 1 and not uses_segment and \
        not per_head[gathers[0]] else None
    # ... and its forward the Gluon forward's, where its one other component is a band, or a band
    # within chunks (the fixed pattern's ``causal & chunk(128)``): (back, ahead, chunk size or 0)
    gluon_gather_fwd = _gather_forward_band(specs, gluon_gather, per_head)
    lazy = LAZY_SUPPORT_MODULES if (band, banded, strided, gluon_gather_fwd) != (None,) * 4 else \
        LAZY_SUPPORT_MODULES[:2] if documents or gluon_gather is not None else ()
    source = template.render(
        pattern_source=str(pattern.decl) if hasattr(pattern, "decl") else str(pattern),
        expr_source=str(expr),
        expr_repr=repr(expr),
        name=getattr(pattern, "name", "pattern"),
        components=components,
        fused=fused,
        gluon_gather=repr(gluon_gather),
        gluon_gather_fwd=repr(gluon_gather_fwd),
        uses_segment=uses_segment,
        layout_picture=layout_picture,
        template_version=TEMPLATE_VERSION,
        support=_support_sources(lazy),
        lazy_support=list(lazy),
        band=repr(band),
        banded=repr(banded),
        strided=repr(strided),
        block_m=block_m or 0,
        block_n=block_n or 0,
    )
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return source.replace("@@DIGEST@@", digest)


def _gather_forward_band(specs, gather, per_head):
    """(back, ahead, chunk) of the one component beside a pattern's gather component ``gather``
    (the template's GLUON_GATHER) where it is a band (chunk 0) or a band within chunks
    (`band.chunked_band_of`), the same for every head; else None."""
    from .band import band_of, chunked_band_of
    from .plan import IDENTITY

    others = [i for i in range(len(specs)) if i != gather]
    if gather is None or len(others) != 1 or specs[others[0]].kind != IDENTITY or \
            per_head[others[0]]:
        return None
    predicate = specs[others[0]].predicate
    chunked = chunked_band_of(predicate)
    if chunked is not None:
        return (*chunked[0], chunked[1])
    band = band_of(predicate)
    return None if band is None else (*band, 0)


def _layout_picture(pattern) -> str:
    """A small picture of the layout for the @generated header (segment patterns: none)."""
    try:
        lay = pattern.layout(256, block_m=16, block_n=16)
        return lay.to_string()
    except ValueError as exc:  # data-dependent patterns (segment) have no static picture
        return f"(no static picture: {str(exc).splitlines()[0]})"
