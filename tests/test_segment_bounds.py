"""Document masks build their block bounds from the segment ids with one Triton kernel per call
(`_segment_bounds` in the generated module): exact for sorted ids, flagged (every block visited
with the element-wise mask) for unsorted ones, and correct end to end with per-batch ids."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import reference
from attnlang.cache import load_module

from kernel_utils import generated, pattern_of, random_inputs, record_launches, rel_err
from strategies import segment_ids
from budget import scaled

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU machines)")

DOCUMENT_PATTERNS = ["segment", "causal & segment", "window(5, 2) & segment",
                     "segment & window(0, 9)"]


def _expr(text):
    return attnlang.parse(f"pattern x = {text}")["x"].ir


def _block_truth(mask, bm, bn):
    """Per row block of a [Lq, Lk] boolean mask: (kept block ids, full block ids)."""
    lq, lk = mask.shape
    out = []
    for m in range(-(-lq // bm)):
        rows = mask[m * bm:(m + 1) * bm]
        kept, full = [], []
        for n in range(-(-lk // bn)):
            tile = rows[:, n * bn:(n + 1) * bn]
            if tile.any():
                kept.append(n)
            if tile.all():
                full.append(n)
        out.append((kept, full))
    return out


def _bounds(mod, text, role, seg_q, seg_k, lq, lk, bm, bn):
    q = torch.zeros(1, 1, lq, 16)
    k = torch.zeros(1, 1, lk, 16)
    tables = mod._segment_tables(q, k, role, seg_q[None], seg_k[None], bm, bn)
    return tables["ranges"].view(-1, 4).tolist(), _unsorted(tables["seg_flag"])[0]


def _unsorted(flag):
    """Per batch, whether `_segment_bounds` found its ids out of order: the pair's mark equals
    the launch's token."""
    pairs = flag.view(-1, 2).tolist()
    return [int(mark == token) for token, mark in pairs]


@settings(max_examples=scaled(12), deadline=None)
@given(data=st.data(), text=st.sampled_from(DOCUMENT_PATTERNS), length=st.integers(1, 70),
       blocks=st.sampled_from([(16, 16), (16, 8), (8, 16)]))
def test_bounds_are_the_exact_block_classes_for_sorted_ids(tmp_path_factory, data, text, length,
                                                           blocks):
    """Self-attention over packed documents: [lo, hi) is exactly the blocks with a kept pair and
    [full_lo, full_hi) exactly the blocks whose every pair is kept, per query and per key block."""
    expr = _expr(text)
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    ids = data.draw(segment_ids(length, sorted_runs=True))
    mask = reference.mask(expr, length, length, segments=ids)[0]
    bm, bn = blocks
    for role, truth in (("fwd", _block_truth(mask, bm, bn)),
                        ("dkdv", _block_truth(mask.t(), bn, bm))):
        rows, flag = _bounds(mod, text, role, ids, ids, length, length, bm, bn)
        assert flag == 0
        assert len(rows) == len(truth)
        for (lo, flo, fhi, hi), (kept, full) in zip(rows, truth):
            assert list(range(lo, hi)) == kept, (role, lo, hi, kept)
            assert list(range(flo, fhi)) == full, (role, flo, fhi, full)
            assert lo <= flo <= fhi <= hi


@settings(max_examples=scaled(10), deadline=None)
@given(data=st.data(), text=st.sampled_from(DOCUMENT_PATTERNS), lq=st.integers(1, 60),
       lk=st.integers(1, 60))
def test_bounds_cover_every_kept_pair_across_lengths(tmp_path_factory, data, text, lq, lk):
    """Different query and key ids and lengths (sorted): every block with a kept pair lies in
    [lo, hi) and every block called full is full."""
    expr = _expr(text)
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    seg_q = data.draw(segment_ids(lq, sorted_runs=True))
    seg_k = data.draw(segment_ids(lk, sorted_runs=True))
    mask = reference.mask(expr, lq, lk, segments=(seg_q, seg_k))[0]
    for role, truth in (("fwd", _block_truth(mask, 16, 8)), ("dkdv", _block_truth(mask.t(), 8, 16))):
        rows, flag = _bounds(mod, text, role, seg_q, seg_k, lq, lk, 16, 8)
        assert flag == 0
        for (lo, flo, fhi, hi), (kept, full) in zip(rows, truth):
            assert set(kept) <= set(range(lo, hi))
            assert set(range(flo, fhi)) <= set(full)


@pytest.mark.parametrize("ids", [[0, 0, 1, 1, 0, 0] * 6, [3] * 20 + [1] * 16, [0] * 35 + [-1]])
def test_unsorted_ids_raise_the_flag(tmp_path, ids):
    mod = generated(_expr("causal & segment"), tmp_path)
    ids = torch.tensor(ids)
    for role in ("fwd", "dkdv", "dq"):
        _, flag = _bounds(mod, "", role, ids, ids, len(ids), len(ids), 16, 16)
        assert flag == 1


def test_per_batch_ids_sorted_and_unsorted_match_reference(tmp_path):
    """Two batch rows with their own ids (one packed in order, one not): outputs, log-sum-exp and
    gradients against the float64 reference of each row."""
    for text in ("causal & segment", "window(6, 3) & segment"):
        expr = _expr(text)
        mod = generated(expr, tmp_path)
        L = 53
        seg = torch.stack([torch.tensor([0] * 7 + [1] * 30 + [2] * 16),
                           torch.tensor([1] * 20 + [0] * 20 + [1] * 13)])
        q, k, v = random_inputs(2, 2, 1, L, L, 16, torch.float32, seed=4)
        for t in (q, k, v):
            t.requires_grad_(True)
        out, lse = mod.attention(q, k, v, segments=seg, return_lse=True)
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
        out.backward(do)
        mask = torch.stack([reference.mask(expr, L, L, num_heads=2, segments=seg[b])
                            for b in range(2)])
        qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        ref_out, ref_lse = reference.attention(qd, kd, vd, mask)
        ref_out.backward(do.double())
        assert rel_err(out, ref_out) < 2e-5
        assert torch.allclose(lse.double(), ref_lse, atol=2e-4)
        for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
            assert rel_err(got, want) < 5e-5


@pytest.mark.parametrize("text, short", [("causal", False), ("all", False), ("window(256)", True),
                                         ("causal & (window(127, 0) | stride(128))", True),
                                         ("causal & segment", True)])
def test_short_row_patterns_are_recognised(tmp_path, text, short):
    """The tile rule's input: mean visited key blocks per query block at 128 x 128 tiles (4096
    tokens: causal visits 16.5, a 513-wide window about 5); document masks always count as short."""
    from attnlang.cache import load_module
    from kernel_utils import pattern_of

    mod = load_module(pattern_of(_expr(text)), None, None, tmp_path)
    blocks = mod._row_blocks(4096, 4096, 2, 128, 128, torch.device("cpu"))
    assert (blocks <= mod.SHORT_ROWS) is short


def _per_batch_reference(expr, q, k, v, seg_q, seg_k, do, key_padding_mask=None):
    Lq, Lk = q.shape[2], k.shape[2]
    mask = torch.stack([reference.mask(expr, Lq, Lk, num_heads=q.shape[1],
                                       segments=(seg_q[b], seg_k[b])) for b in range(q.shape[0])])
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out, lse = reference.attention(qd, kd, vd, mask)
    out.backward(do.double())
    return out, lse, qd.grad, kd.grad, vd.grad



def _step_matches_reference(expr, attend, q, k, v, do, seg_q, seg_k):
    """One training step -- gradients reset, ``attend(q, k, v)``, its backward with ``do`` --
    whose output and gradients equal the float64 reference of the per-batch ids."""
    for t in (q, k, v):
        t.grad = None
        t.requires_grad_(True)
    out = attend(q, k, v)
    out.backward(do)
    ref = _per_batch_reference(expr, q, k, v, seg_q, seg_k, do)
    assert rel_err(out, ref[0]) < 2e-5
    for got, want in zip((q.grad, k.grad, v.grad), ref[2:]):
        assert rel_err(got, want) < 5e-5


def _count_preparations(mod, monkeypatch):
    """The calls of ``mod`` that prepare their forward's launches from now on (one entry each),
    with no launches kept as templates of their shape yet."""
    prepared = []
    monkeypatch.setattr(mod, "_forward_launches", lambda *a, real=mod._forward_launches: (
        prepared.append(1), real(*a))[1])
    monkeypatch.setattr(mod, "_SHAPES", {})
    return prepared

@settings(max_examples=scaled(8), deadline=None)
@given(data=st.data(), text=st.sampled_from(DOCUMENT_PATTERNS), lq=st.integers(1, 50),
       lk=st.integers(1, 50), padded=st.booleans())
def test_document_patterns_with_per_batch_ids_match_reference(tmp_path_factory, data, text, lq,
                                                              lk, padded):
    """Two batch rows, each with its own query and key ids (sorted or not), any lengths, with and
    without a key padding mask: output, log-sum-exp and gradients against float64."""
    expr = _expr(text)
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    seg_q = torch.stack([data.draw(segment_ids(lq)) for _ in range(2)])
    seg_k = torch.stack([data.draw(segment_ids(lk)) for _ in range(2)])
    kpm = (torch.rand(2, lk, generator=torch.Generator().manual_seed(lk)) > 0.3) if padded else None
    q, k, v = random_inputs(2, 2, 1, lq, lk, 16, torch.float32, seed=lq * 100 + lk)
    for t in (q, k, v):
        t.requires_grad_(True)
    out, lse = mod.attention(q, k, v, segments=(seg_q, seg_k), key_padding_mask=kpm,
                             return_lse=True)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(do)
    ref_out, ref_lse, dq, dk, dv = _per_batch_reference(expr, q, k, v, seg_q, seg_k, do, kpm)
    assert rel_err(out, ref_out) < 2e-5
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty)
    assert torch.allclose(lse[~empty].double(), ref_lse[~empty], atol=2e-4)
    assert (out.detach()[empty] == 0).all()
    for got, want in ((q.grad, dq), (k.grad, dk), (v.grad, dv)):
        if want.norm() > 1e-3:
            assert rel_err(got, want) < 5e-5
        else:
            assert got.abs().max() < 1e-3


def test_bounds_are_kept_for_the_same_ids_and_rebuilt_when_they_change(tmp_path, monkeypatch):
    """The bounds of one id tensor serve the calls after it (the next layer's forward, the
    backward's dQ, one order flag for dK/dV) and are built again after any in-place change of the
    ids -- to new documents, or out of order -- with the results of the float64 reference."""
    expr = _expr("causal & segment")
    mod = generated(expr, tmp_path)
    launched = record_launches(mod, monkeypatch)
    L = 45
    ids = torch.tensor([[0] * 12 + [1] * 20 + [2] * 13], dtype=torch.int32)
    q, k, v = random_inputs(1, 2, 2, L, L, 16, torch.float32, seed=3)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))

    def call():
        launched.clear()
        out, lse = mod.attention_forward(q, k, v, 0.25, ids, ids, None, None, None, 0.0, 0)
        grads = mod.attention_backward(do, q, k, v, out, lse, 0.25, ids, ids, None, None, None,
                                       0.0, 0, False)[:3]
        ref = _per_batch_reference(expr, q, k, v, ids, ids, do)  # its scale: 1/sqrt(16)
        assert rel_err(out, ref[0]) < 2e-5
        for got, want in zip(grads, ref[2:]):
            assert rel_err(got, want) < 5e-5
        return launched.count(mod._segment_bounds)

    assert call() == 2  # the queries' bounds (forward, then dQ) and the keys' (dK/dV)
    assert call() == 0  # the same tensor, unchanged
    ids[0, 20:] += 1  # in place: a fourth document
    assert call() == 2
    ids[0, :3] = 7  # in place: out of order, so every block is visited with the mask
    assert call() == 2
    kept = mod._segment_tables(q, k, "fwd", ids, ids, 16, 16, mod._memo_origin(ids, ids))
    assert _unsorted(kept["seg_flag"]) == [1]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_bounds_are_kept_across_validated_calls_with_the_same_ids(dtype, tmp_path, monkeypatch):
    """Through the validating entry (``attention``, as the nn.Modules call it), which passes the
    kernels fresh views -- or, for int64 ids, an int32 copy -- of the caller's tensor: a second
    call with the same 1-D ids (the next layer) builds no bounds and does not check int64 ids'
    range again; a different slice of the same tensor, or an in-place change, builds them again;
    every call equals the float64 reference."""
    expr = _expr("causal & segment")
    mod = generated(expr, tmp_path)
    launched, checked = record_launches(mod, monkeypatch), []
    real_aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t: (checked.append(1), real_aminmax(t))[1])
    L = 40
    ids = torch.tensor([0] * 9 + [1] * 17 + [2] * 14 + [3] * 6, dtype=dtype)
    q, k, v = random_inputs(1, 2, 2, L, L, 16, torch.float32, seed=4)

    def call(seg):
        launched.clear()
        checked.clear()
        out = mod.attention(q, k, v, segments=seg)
        ref = _per_batch_reference(expr, q, k, v, seg[None].to(torch.int32),
                                   seg[None].to(torch.int32), torch.zeros_like(q))
        assert rel_err(out, ref[0]) < 2e-5
        return launched.count(mod._segment_bounds), len(checked)

    int64 = dtype == torch.int64
    assert call(ids[:L]) == (1, int64)
    assert call(ids[:L]) == (0, 0)  # the same ids: a new view of the same tensor
    assert call(ids[6:]) == (1, int64)  # another slice: other ids
    assert call(ids[6:]) == (0, 0)
    ids[10:12] = 5  # in place: a new document inside the second one
    assert call(ids[6:]) == (1, int64)


def test_the_nn_module_builds_bounds_once_for_the_same_ids(tmp_path, monkeypatch):
    """Through `Pattern.module` (PatternAttention: validation, then the eager autograd path of
    the custom op), as a model's layers and the benchmark call it: a second training step with the
    same ids builds no bounds; its outputs and gradients equal the float64 reference."""
    expr = _expr("causal & segment")
    layer = pattern_of(expr).module(backend="triton", block_m=16, block_n=16, cache_dir=tmp_path)
    mod = load_module(pattern_of(expr), 16, 16, tmp_path)
    launched = record_launches(mod, monkeypatch)
    ids = torch.tensor([0] * 13 + [1] * 8 + [2] * 14)
    q, k, v = random_inputs(1, 2, 2, 35, 35, 16, torch.float32, seed=8)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))
    ref = _per_batch_reference(expr, q, k, v, ids[None].to(torch.int32), ids[None].to(torch.int32),
                               do)
    for built in (1, 0):
        launched.clear()
        for t in (q, k, v):
            t.grad = None
            t.requires_grad_(True)
        out = layer(q, k, v, segments=ids)
        out.backward(do)
        assert launched.count(mod._segment_bounds) == built
        assert rel_err(out, ref[0]) < 2e-5
        for got, want in zip((q.grad, k.grad, v.grad), ref[2:]):
            assert rel_err(got, want) < 5e-5


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_ids_made_in_inference_mode_work_and_are_not_kept(dtype, tmp_path, monkeypatch):
    """Ids created under torch.inference_mode have no version counter, so nothing is kept for
    them: every call, inside inference mode or outside it, builds its bounds and equals the
    float64 reference (they used to fail on reading the version counter)."""
    expr = _expr("causal & segment")
    mod = generated(expr, tmp_path)
    launched = record_launches(mod, monkeypatch)
    q, k, v = random_inputs(1, 2, 2, 30, 30, 16, torch.float32, seed=6)
    with torch.inference_mode():
        ids = torch.tensor([0] * 11 + [1] * 19, dtype=dtype)
    ref = _per_batch_reference(expr, q, k, v, ids[None].to(torch.int32),
                               ids[None].to(torch.int32), torch.zeros_like(q))[0]
    for inference in (True, True, False):
        launched.clear()
        with torch.inference_mode(inference):
            out = mod.attention(q, k, v, segments=ids)
        assert rel_err(out, ref) < 2e-5
        assert launched.count(mod._segment_bounds) == 1


@pytest.mark.parametrize("text", ["causal & segment", "window(5, 2) & segment"])
def test_a_forward_that_needs_gradients_builds_the_backwards_bounds_too(text, tmp_path,
                                                                        monkeypatch):
    """Through autograd, a forward whose inputs need gradients builds the query blocks' and the
    key blocks' bounds in one launch, so its backward (which runs on autograd's own thread on a
    GPU) launches none; with lengths that differ (the keys' bounds have their own band offsets)
    and a tile that fills no block, the gradients equal the float64 reference.  A forward without
    gradients builds only its own."""
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    launched = record_launches(mod, monkeypatch)
    Lq, Lk = 37, 45
    seg_q = torch.tensor([[0] * 10 + [1] * 20 + [2] * 7, [0] * 37], dtype=torch.int32)
    seg_k = torch.tensor([[0] * 12 + [1] * 20 + [2] * 13, [0] * 30 + [1] * 15], dtype=torch.int32)
    q, k, v = random_inputs(2, 2, 1, Lq, Lk, 16, torch.float32, seed=9)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        mod.attention(q, k, v, segments=(seg_q, seg_k))
    assert launched.count(mod._segment_bounds) == 1
    launched.clear()
    for t in (q, k, v):
        t.requires_grad_(True)
    mod.attention(q, k, v, segments=(seg_q, seg_k)).backward(do)
    assert launched.count(mod._segment_bounds) == 1
    assert launched.index(mod._segment_bounds) < len(launched) // 2  # in the forward
    ref = _per_batch_reference(expr, q, k, v, seg_q, seg_k, do)
    for got, want in zip((q.grad, k.grad, v.grad), ref[2:]):
        assert rel_err(got, want) < 5e-5


@pytest.mark.parametrize("fill", ["token", "other"])
def test_the_order_flag_needs_no_zeroed_memory(fill, tmp_path, monkeypatch):
    """`_segment_bounds` writes its flag pairs into memory it does not zero: whatever that memory
    held before, out-of-order ids are flagged; sorted ids are flagged only where the old memory
    happened to hold this launch's token (then every block is visited with the mask, slower but
    equal to the float64 reference); any other old value reads as sorted."""
    expr = _expr("causal & segment")
    mod = generated(expr, tmp_path)
    token = 0x40000003 + 16 * 77
    old = token if fill == "token" else token - 16  # the previous launch's token, say
    monkeypatch.setattr(mod, "_token", lambda: token)
    real_empty = torch.empty

    def stale_empty(*size, dtype=None, **kw):
        t = real_empty(*size, dtype=dtype, **kw)
        return t.fill_(old) if dtype == torch.int32 else t
    L = 40
    q, k, v = random_inputs(2, 2, 2, L, L, 16, torch.float32, seed=12)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(13))
    seg = torch.tensor([[0] * 9 + [1] * 17 + [2] * 14, [4] * 20 + [1] * 20], dtype=torch.int32)
    monkeypatch.setattr(torch, "empty", stale_empty)
    tables = mod._segment_tables(q, k, "fwd", seg, seg, 16, 16)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert _unsorted(tables["seg_flag"]) == [int(fill == "token"), 1]
    for t in (q, k, v):
        t.requires_grad_(True)
    monkeypatch.setattr(torch, "empty", stale_empty)
    out = mod.attention(q, k, v, segments=seg)
    out.backward(do)
    monkeypatch.setattr(torch, "empty", real_empty)
    ref = _per_batch_reference(expr, q, k, v, seg, seg, do)
    assert rel_err(out, ref[0]) < 2e-5
    for got, want in zip((q.grad, k.grad, v.grad), ref[2:]):
        assert rel_err(got, want) < 5e-5


@settings(max_examples=scaled(4), deadline=None)
@given(data=st.data(), text=st.sampled_from(DOCUMENT_PATTERNS), length=st.integers(17, 48))
def test_new_ids_take_the_launches_of_an_earlier_call_of_their_shape(tmp_path_factory, data, text,
                                                                     length):
    """Training steps whose ids are a new tensor every step (new documents: sorted, unsorted,
    one row for the batch or one per batch row): after the first step of each ids shape, a step
    prepares no launches (`_rebound` swaps the ids, bounds and flag into the first step's) but
    still builds its bounds; every step's output and gradients equal the float64 reference, so
    no step reads another's ids or bounds."""
    expr = _expr(text)
    tmp = tmp_path_factory.getbasetemp() / "gen"
    layer = pattern_of(expr).module(backend="triton", block_m=16, block_n=16, cache_dir=tmp)
    mod = load_module(pattern_of(expr), 16, 16, tmp)
    monkeypatch = pytest.MonkeyPatch()
    launched = record_launches(mod, monkeypatch)
    prepared = _count_preparations(mod, monkeypatch)
    q, k, v = random_inputs(2, 1, 1, length, length, 16, torch.float32, seed=length)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(length))
    seen = set()
    try:
        for step in range(4):
            rows = data.draw(st.sampled_from([1, 2]), label="rows")
            seg = torch.stack([data.draw(segment_ids(length, sorted_runs=data.draw(
                st.booleans(), label="sorted"))) for _ in range(rows)])
            launched.clear()
            prepared.clear()
            full = seg.expand(2, length).to(torch.int32)
            _step_matches_reference(expr, lambda q, k, v: layer(
                q, k, v, segments=seg if rows == 2 else seg[0]), q, k, v, do, full, full)
            assert len(prepared) == (rows not in seen)
            assert launched.count(mod._segment_bounds) >= 1
            seen.add(rows)
    finally:
        monkeypatch.undo()


def test_ids_that_specialise_otherwise_prepare_their_own_launches(tmp_path, monkeypatch):
    """Ids whose address is not 16-byte aligned where the first call's was: the compiled kernels
    assumed alignment, so the call prepares its own launches instead of taking the first's."""
    expr = _expr("causal & segment")
    mod = generated(expr, tmp_path)
    prepared = _count_preparations(mod, monkeypatch)
    L = 40
    q, k, v = random_inputs(1, 2, 2, L, L, 16, torch.float32, seed=21)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(22))
    base = torch.tensor([0] * 3 + [0] * 10 + [1] * 20 + [2] * 10, dtype=torch.int32)
    for ids, prepares in ((base[:L].clone(), 1), (base[3:].clone(), 0), (base[1:L + 1], 1)):
        assert (ids.data_ptr() % 16 == 0) == (ids._base is None)  # the view: 4 bytes in
        prepared.clear()
        _step_matches_reference(expr, lambda q, k, v: mod.attention(q, k, v, segments=ids),
                                q, k, v, do, ids[None], ids[None])
        assert len(prepared) == prepares


def test_new_query_and_key_ids_of_other_lengths_take_the_earlier_launches(tmp_path, monkeypatch):
    """Cross-attention with per-side ids (queries and keys of other lengths, one row per batch
    row): a second step with new ids of the same shapes prepares no launches and both steps equal
    the float64 reference -- each side's ids and bounds (the keys' own band offsets) swapped."""
    expr = _expr("window(5, 2) & segment")
    mod = generated(expr, tmp_path)
    prepared = _count_preparations(mod, monkeypatch)
    Lq, Lk = 37, 45
    q, k, v = random_inputs(2, 2, 1, Lq, Lk, 16, torch.float32, seed=31)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(32))
    steps = [
        (torch.tensor([[0] * 10 + [1] * 20 + [2] * 7, [0] * 37], dtype=torch.int32),
         torch.tensor([[0] * 12 + [1] * 20 + [2] * 13, [0] * 30 + [1] * 15], dtype=torch.int32)),
        (torch.tensor([[0] * 30 + [1] * 7, [3] * 20 + [1] * 17], dtype=torch.int32),
         torch.tensor([[0] * 40 + [1] * 5, [1] * 25 + [3] * 20], dtype=torch.int32)),
    ]
    for index, (seg_q, seg_k) in enumerate(steps):
        prepared.clear()
        _step_matches_reference(expr, lambda q, k, v: mod.attention(q, k, v,
                                                                    segments=(seg_q, seg_k)),
                                q, k, v, do, seg_q, seg_k)
        assert len(prepared) == (index == 0)


@pytest.mark.parametrize("scenario", ["grad, then no_grad", "key_padding_mask"])
def test_ids_of_another_length_between_two_calls_keep_the_order_flag(scenario, tmp_path):
    """A call's bounds are kept per lengths and tile, the ids' order flag per batch count: ids of
    another length in between replaced the flag, and the first ids' next call that prepared
    again (a new call key: no gradients, or a padding mask, never kept) found its bounds but no
    flag and launched with SEG_FLAG None (found by an audit)."""
    def ids(length):
        s = torch.zeros(length, dtype=torch.int32)
        s[length // 3:] = 1
        s[2 * length // 3:] = 2
        return s

    layer = attnlang.parse("pattern x = causal & segment")["x"].module(
        backend="triton", cache_dir=tmp_path)
    ids_a, ids_b = ids(32), ids(48)
    qa, ka, va = random_inputs(1, 1, 1, 32, 32, 16, torch.float32, seed=1)
    qb, kb, vb = random_inputs(1, 1, 1, 48, 48, 16, torch.float32, seed=2)
    kpm = torch.ones(1, 32, dtype=torch.bool) if scenario == "key_padding_mask" else None
    if kpm is None:
        layer(qa.clone().requires_grad_(), ka, va, segments=ids_a).sum().backward()
    else:
        layer(qa, ka, va, segments=ids_a, key_padding_mask=kpm)
    layer(qb, kb, vb, segments=ids_b)
    with torch.no_grad():
        out = layer(qa, ka, va, segments=ids_a, key_padding_mask=kpm)
    keep = reference.mask(_expr("causal & segment"), 32, 32, segments=ids_a)
    want = reference.attention(qa.double(), ka.double(), va.double(), keep)[0]
    assert rel_err(out, want) < 1e-4


def test_the_launches_kept_per_shape_do_not_keep_the_callers_ids(tmp_path):
    """The launches kept as the template of a shape's calls held the first call's ids, and
    through a view the whole storage it views (a batch buffer, say), for good: the template
    now takes copies, so only the last call's ids (the memo of the call) stay alive."""
    import gc
    import weakref

    layer = attnlang.parse("pattern x = causal & segment")["x"].module(
        backend="triton", cache_dir=tmp_path)
    buffers = []
    for step in range(3):
        buffer = torch.zeros(2, 4096, dtype=torch.int32)
        buffer[0, :32] = torch.tensor([0] * 10 + [1] * 12 + [2] * 10, dtype=torch.int32)
        q, k, v = (t.requires_grad_() for t in random_inputs(1, 1, 1, 32, 32, 16,
                                                             torch.float32, seed=step))
        layer(q, k, v, segments=buffer[0, :32]).sum().backward()
        buffers.append(weakref.ref(buffer))
        del buffer
    gc.collect()
    assert [ref() is None for ref in buffers] == [True, True, False]
