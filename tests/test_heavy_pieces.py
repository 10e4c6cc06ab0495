"""The `tl` forward's heavy rows in pieces (HEAVY_PIECES, `_pieces`, `_merge_pieces`): a query
block whose row visits far more key blocks than the others (global rows) runs as several
programs of at most HEAVY_PIECES' ``blocks`` key blocks each, merged by log-sum-exp afterwards.
Outputs, log-sum-exp and gradients must be the reference's wherever the rows are cut."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import reference
from attnlang.cache import load_module
from attnlang.reference import mask as dense_mask
from budget import scaled


def _step(text, monkeypatch, piece_blocks, Lq, Lk, B=1, H=2, D=16, seed=0):
    """(pieces of each forward launch, largest error of out, lse and gradients against the
    float64 reference) of a training step of ``text``."""
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = load_module(pattern)
    for cache in ("_CALLS", "_SHAPES", "_BOUNDS", "_SEG_MEMO"):
        monkeypatch.setattr(module, cache, {})
    monkeypatch.setattr(module, "HEAVY_PIECES", {D: dict(blocks=piece_blocks, maxnreg=None)}
                        if piece_blocks else {})
    seen = []
    pieces = module._pieces

    def spy(*args):
        cut = pieces(*args)
        seen.append(None if cut is None else cut[0])
        return cut
    monkeypatch.setattr(module, "_pieces", spy)
    torch.manual_seed(seed)
    q, do = (torch.randn(B, H, Lq, D) for _ in range(2))
    k, v = (torch.randn(B, H, Lk, D) for _ in range(2))
    got = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = module.attention(*got, return_lse=True)
    out.backward(do)
    want = [t.double().requires_grad_(True) for t in (q, k, v)]
    keep = dense_mask(pattern.ir, Lq, Lk, num_heads=H)
    ref, ref_lse = reference.attention(*want, mask=keep)[:2]
    ref.backward(do.double())
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)  # rows that keep nothing: -inf
    errors = [(out.double() - ref).abs().max().item(),
              (lse.double()[finite] - ref_lse[finite]).abs().max().item()] + \
        [(a.grad.double() - b.grad).abs().max().item() for a, b in zip(got, want)]
    return seen, max(errors)


@pytest.mark.parametrize("piece_blocks", [1, 2, 5])
def test_global_rows_in_pieces_match_the_reference(monkeypatch, piece_blocks):
    """13 key blocks of 32 on the interpreter: the two blocks of global rows are heavy (13
    blocks against ~5) and come in ceil(13 / piece_blocks) pieces."""
    seen, error = _step("window(8) | global(0..40)", monkeypatch, piece_blocks, 400, 400)
    assert seen == [-(-13 // piece_blocks)]
    assert error < 1e-4


def test_rows_whole_below_two_pieces(monkeypatch):
    """Rows of fewer than two pieces stay whole (and the default HEAVY_PIECES cuts none at the
    interpreter's head dimensions: every other test of the suite runs rows whole)."""
    assert _step("window(8) | global(0..40)", monkeypatch, 7, 400, 400)[0] == [None]


@settings(max_examples=scaled(4), deadline=None)
@given(width=st.integers(0, 24), start=st.integers(0, 250), span=st.integers(1, 60),
       piece_blocks=st.integers(1, 3), Lq=st.integers(160, 300), extra=st.sampled_from([0, 37]),
       rows_only=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_pieces_on_random_global_rows(width, start, span, piece_blocks, Lq, extra, rows_only,
                                      seed):
    """Global rows (or rows alone) anywhere, lengths that are not multiples of the tiles, more
    keys than queries: whether or not the rows are cut, the step is the reference's."""
    kind = "rows" if rows_only else "global"
    text = f"window({width}) | {kind}({start}..{start + span})"
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen, error = _step(text, monkeypatch, piece_blocks, Lq, Lq + extra, H=1, seed=seed)
    assert len(seen) == 1
    assert error < 1e-4
