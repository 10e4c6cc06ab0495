"""The generated Triton kernels (in the interpreter on CPU) against the float64 reference:
output, log-sum-exp and the three gradients, for random patterns and shapes."""
import collections
import itertools
import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernel_utils import (check_against_reference, generated, pattern_of, record_host_work,
                          record_launches, shapes_of)
from strategies import bound_patterns, lengths, segments_for
from budget import scaled

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py on CPU machines)")

STRUCTURED = [
    "causal",
    "window(3, 1)",
    "causal & window(7, 0)",
    "causal & (window(5, 0) | stride(8))",
    "causal & (chunk(8) | cols(every(8, 6..8)))",
    "window(4) | global(0..3)",
    "window(16) & stride(4)",
    "causal & stride(6)",
    "random(0.3, block = 8, seed = 5)",
    "prefix(9) | causal",
    "where((q + k) mod 3 == 0)",
    "none",
    "heads(0..1) & causal | heads(1..) & window(2)",
]


def _checked_with_tiles(text, tiles, seed, tmp_path, monkeypatch):
    """(module, kernels it launched) after checking ``text`` under ATTNLANG_TILES=``tiles``
    against the reference: grouped heads, key padding (from ``seed``), 70 queries and keys
    (no tile fills them), three documents where the pattern has segments."""
    monkeypatch.setenv("ATTNLANG_TILES", tiles)
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    launched = record_launches(mod, monkeypatch)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 19) if "segment" in text else None
    kpm = torch.rand(1, 70, generator=torch.Generator().manual_seed(seed)) > 0.2
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=70, Lk=70, D=16,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)
    return mod, launched


def _expr(text):
    import attnlang

    return attnlang.parse(f"pattern x = {text}")["x"].ir


@pytest.mark.parametrize("text", STRUCTURED)
def test_structured_patterns_match_reference(text, tmp_path):
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=45, Lk=45, D=16,
                            dtype=torch.float32)


BIG = 10 ** 12  # past int32: the kernels' constants are clamped to +-2**30 (codegen.KERNEL_LIMIT)


@pytest.mark.parametrize("text, Lq, Lk", [
    ("window(2) | stride(100000000)", 9, 6),
    (f"causal & stride({BIG})", 5, 11),
    (f"window({BIG}, 1) & stride({BIG - 1}) | window(1, {BIG}) & stride(3)", 13, 9),
    (f"chunk({BIG}, 0, 0) | prefix({BIG}) & window(0) | causal & chunk(4, {BIG}, 0)", 21, 12),
    (f"rows(-{BIG}..2) | cols(5..{BIG}) | global({{3, -{BIG}, {BIG}}})", 14, 10),
    (f"cols(every({BIG}, {BIG - 3}..{BIG})) | rows(every({BIG}, {BIG - 5})) | "
     f"rows(every({BIG}, 1..4))", 17, 11),
    (f"random(0.5, block = {BIG}, seed = 3) & window(3) | heads(-{BIG}..1) & window(1)", 10, 7),
])
def test_constants_and_strides_beyond_the_lengths(text, Lq, Lk, tmp_path):
    """A stride past the lengths leaves most residue classes empty: the copied plan keeps those
    holding a query or a key (a loop over all 10**8 never ended); constants past int32 (Triton
    refused them) compare as the written values do, with negative query positions (Lq > Lk)."""
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=Lq, Lk=Lk, D=16,
                            dtype=torch.float32)


@pytest.mark.parametrize("text, Lq, Lk, heads", [
    ("causal & (window(15, 0) | stride(8))", 128, 128, (2, 1)),  # classes that fill 16x16
    ("causal & stride(6)", 50, 61, (4, 2)),  # one component; uneven classes; Lq != Lk
    ("(causal & stride(4)) - window(0)", 44, 44, (2, 2)),  # empty rows
    ("stride(3) | window(2)", 40, 33, (2, 1)),
])
def test_classes_of_one_block(text, Lq, Lk, heads, tmp_path, monkeypatch):
    """Residue classes of at most ONE_BLOCK_MAX tokens run on their own kernels, one program per
    class: the forward, and dQ, dK and dV in one backward launch instead of two; not with key
    padding (the general kernels then), both against the reference."""
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    launched = record_launches(mod, monkeypatch)
    check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq, Lk=Lk,
                            D=16, dtype=torch.float32)
    (index, (fwd_one, bwd_one)), = mod.ONE_BLOCK.items()
    fwd, dkdv, dq = mod.KERNELS[index]
    assert fwd_one in launched and bwd_one in launched
    assert not {fwd, dkdv, dq} & set(launched)
    assert mod._bwd_delta not in launched  # (the first one-block launch computes delta)
    if index:  # the backward's one-block launch after the other components' (as they come)
        last_bwd = mod.ONE_BLOCK_LAST_BWD
        monkeypatch.setattr(mod, "ONE_BLOCK_LAST_BWD", (16,))
        monkeypatch.setattr(mod, "_CALLS", {})  # (the first call's launches are kept)
        launched.clear()
        check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq,
                                Lk=Lk, D=16, dtype=torch.float32)
        assert launched.index(bwd_one) > launched.index(mod.KERNELS[0][1])
        monkeypatch.setattr(mod, "ONE_BLOCK_LAST_BWD", last_bwd)
    launched.clear()
    kpm = torch.rand(1, Lk, generator=torch.Generator().manual_seed(1)) > 0.2
    check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq, Lk=Lk,
                            D=16, dtype=torch.float32, key_padding_mask=kpm)
    assert {fwd, dkdv, dq} <= set(launched) and not {fwd_one, bwd_one} & set(launched)


@pytest.mark.parametrize("seed", [False, True])
def test_one_block_heads_down_and_partials_read_before_the_keys(seed, tmp_path, monkeypatch):
    """The one-block kernels take the heads in descending order (ONE_BLOCK_HEADS_DOWN), and at
    the head dims of PREFETCH_PARTIAL the launch that merges their partial output reads it before
    its key loop (PREFETCH 1), at those of SEED_PARTIAL as its online softmax's first state
    (PREFETCH 2): the options reach the launches, and the results are the reference's with two
    batches and grouped heads."""
    expr = _expr("causal & (window(5, 0) | stride(8))")
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "PREFETCH_PARTIAL", (16,))
    monkeypatch.setattr(mod, "SEED_PARTIAL", (16,) if seed else ())
    work = record_host_work(mod, monkeypatch)
    check_against_reference(mod.attention, expr, B=2, Hq=4, Hkv=2, Lq=61, Lk=61, D=16,
                            dtype=torch.float32)
    seen = [(launch[0], launch[3]) for _, launch in work if not isinstance(launch, str)]
    (index, ones), = mod.ONE_BLOCK.items()
    band = mod.KERNELS[1 - index][0]
    assert {kernel for kernel, _ in seen} >= set(ones) | {band}
    assert all(options["HEADS_DOWN"] for kernel, options in seen if kernel in ones)
    assert all(options["MERGE"] and options["PREFETCH"] == (2 if seed else 1)
               for kernel, options in seen if kernel is band)


@pytest.mark.parametrize("one_block", [True, False])
def test_dkdv_and_dq_in_one_shared_launch(one_block, tmp_path, monkeypatch):
    """At the head dims of SHARED_BWD a component's dK/dV and dQ run as one launch of its
    `_bwd_shared_*` kernel (even programs dK/dV's, odd ones dQ's) where its dQ launch does not
    compute delta: the band after the classes of one block, or (general kernels) the classes
    after the band, whose dQ launch computes delta and stays apart; not with grouped heads
    (the two launches' heads differ); the results are the reference's (two batches, key
    lengths not a multiple of the tiles)."""
    expr = _expr("causal & (window(5, 0) | stride(8))")
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "SHARED_BWD", (16,))
    monkeypatch.setattr(mod, "ONE_BLOCK_MAX", 64 if one_block else 0)
    launched = record_launches(mod, monkeypatch)
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=2, Lq=61, Lk=61, D=16,
                            dtype=torch.float32)
    (index, (_, bwd_one)), = mod.ONE_BLOCK.items()
    band, classes = mod.KERNELS[1 - index], mod.KERNELS[index]
    joined, apart = (band, classes) if one_block else (classes, band)
    shared = mod.SHARED[joined[1]][1]
    assert launched.count(shared) == 1 and not {joined[1], joined[2]} & set(launched)
    assert {apart[1], apart[2]} <= set(launched) or (one_block and bwd_one in launched)
    launched.clear()
    check_against_reference(mod.attention, expr, B=1, Hq=4, Hkv=2, Lq=61, Lk=61, D=16,
                            dtype=torch.float32)
    assert shared not in launched and {joined[1], joined[2]} <= set(launched)


def test_forward_after_one_block_classes_as_a_dependent_launch(tmp_path, monkeypatch):
    """On a GPU that has them (`_pdl_ok`), at the head dims of PDL_FORWARD, the forward launch
    after the one-block classes' is a programmatic dependent one: launched so, every one of its
    programs waits for the launch before (before reading that one's partial output: the
    kernel's comment says where), every program of the one-block launch lets it start early;
    the results are the reference's.  The interpreter runs one launch after the other, so the
    GPU check (`benchmarks/gpu_check.py`) is what shows that the overlap computes the same."""
    expr = _expr("causal & (window(5, 0) | stride(8))")
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "PDL_FORWARD", (16,))
    monkeypatch.setattr(mod, "_pdl_ok", lambda t: True)
    calls = collections.Counter()  # (Triton's interpreter has neither: as on a GPU without a
    for name in ("gdc_wait", "gdc_launch_dependents"):  # dependent launch, nothing to do)
        monkeypatch.setattr(mod, name, lambda name=name, **_: calls.update([name]))
    work = record_host_work(mod, monkeypatch)
    check_against_reference(mod.attention, expr, B=2, Hq=4, Hkv=2, Lq=61, Lk=61, D=16,
                            dtype=torch.float32)
    (index, (one_forward, _)), = mod.ONE_BLOCK.items()
    band = mod.KERNELS[1 - index][0]
    ones, bands = ([launch for _, launch in work if not isinstance(launch, str)
                    and launch[0] is kernel] for kernel in (one_forward, band))
    assert ones and all(launch[3]["PDL_LAUNCH"] for launch in ones)
    assert bands and all(launch[3]["PDL_WAIT"] and launch[3]["launch_pdl"] for launch in bands)
    programs = [sum(math.prod(launch[1]) for launch in launches) for launches in (ones, bands)]
    assert calls == {"gdc_launch_dependents": programs[0], "gdc_wait": programs[1]}


@settings(max_examples=scaled(8))
@given(expr=bound_patterns(max_leaves=4, allow_segment=False), shape=lengths(max_len=40),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]), d=st.sampled_from([16, 24]),
       dtype=st.sampled_from([torch.float32, torch.float16]), one_block=st.booleans(),
       partial_16=st.booleans(), heads_down=st.booleans(), prefetch=st.sampled_from([0, 1, 2]),
       pdl=st.booleans(), shared=st.booleans())
def test_random_patterns_match_reference(tmp_path_factory, expr, shape, heads, d, dtype,
                                         one_block, partial_16, heads_down, prefetch, pdl,
                                         shared):
    """Random patterns and shapes; residue classes (at most 40 tokens here) on the kernels of
    classes of one block or (one_block False) on the general ones, their heads in either order
    (ONE_BLOCK_HEADS_DOWN); several components' partial outputs in float32 or (partial_16,
    float16 inputs) in float16, read by the launch that merges them after its key loop, before
    it (prefetch 1, PREFETCH_PARTIAL) or before it as its online softmax's first state (2,
    SEED_PARTIAL), which is a programmatic dependent launch or not (PDL_FORWARD); dK/dV and dQ
    in one launch where they can be (shared, SHARED_BWD)."""
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    Lq, Lk = shape
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mod, "_CALLS", {})  # (launches kept from an example of other settings)
        patch.setattr(mod, "ONE_BLOCK_MAX", 64 if one_block else 0)
        patch.setattr(mod, "PARTIAL_16", partial_16)
        patch.setattr(mod, "ONE_BLOCK_HEADS_DOWN", heads_down)
        patch.setattr(mod, "PREFETCH_PARTIAL", (d,) if prefetch == 1 else ())
        patch.setattr(mod, "SEED_PARTIAL", (d,) if prefetch == 2 else ())
        patch.setattr(mod, "PDL_FORWARD", (d,) if pdl else ())
        patch.setattr(mod, "SHARED_BWD", (d,) if shared else ())
        patch.setattr(mod, "_pdl_ok", lambda t: True)
        for name in ("gdc_wait", "gdc_launch_dependents"):  # (none in the interpreter)
            patch.setattr(mod, name, lambda **_: None)
        check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq,
                                Lk=Lk, D=d, dtype=dtype)


@settings(max_examples=scaled(6), deadline=None)
@given(expr=bound_patterns(max_leaves=4, allow_segment=False), shape=lengths(max_len=40),
       heads=st.sampled_from([(1, 1), (2, 1)]), d=st.sampled_from([16, 24]),
       tiles=st.sampled_from(["fwd=16x16:4:1,dkdv=16x32:4:1:t,dq=16x16:4:1",
                              "fwd=16x32:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d",
                              "fwd=16x16:4:1,dkdv=16x32:4:1:t:a,dq=16x16:4:1",
                              "fwd=16x32:4:1:r,dkdv=16x16:4:1,dq=32x16:4:1:d:r"]))
def test_random_patterns_with_the_gpu_tile_flags(tmp_path_factory, expr, shape, heads, d,
                                                 tiles):
    """Random patterns with dK/dV's scores as [keys, queries] (the GPU default at d = 128), with
    tensor-descriptor reads, with dQ added up in the dK/dV pass, and with the query blocks in
    reverse order, against the reference (residue classes on the general kernels, which the
    flags are for: at these lengths they would be classes of one block)."""
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    Lq, Lk = shape
    with pytest.MonkeyPatch.context() as patch:  # (a function-scoped fixture would be shared)
        patch.setenv("ATTNLANG_TILES", tiles)
        patch.setattr(mod, "ONE_BLOCK_MAX", 0)
        check_against_reference(mod.attention, expr, B=1, Hq=heads[0], Hkv=heads[1], Lq=Lq,
                                Lk=Lk, D=d, dtype=torch.float32)


@settings(max_examples=scaled(6))
@given(data=st.data(), shape=lengths(max_len=40))
def test_segments_and_padding(tmp_path_factory, data, shape):
    Lq, Lk = shape
    expr = _expr("causal & segment")
    segments = data.draw(segments_for(Lq, Lk))
    kpm = torch.rand(1, Lk, generator=torch.Generator().manual_seed(Lk)) > 0.3
    mod = generated(expr, tmp_path_factory.getbasetemp() / "gen")
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=2, Lq=Lq, Lk=Lk, D=16,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)


def test_dropout_is_seeded_reproducible_and_differentiable(tmp_path):
    expr = _expr("causal & window(9, 0)")
    mod = generated(expr, tmp_path)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i))
               .requires_grad_(True) for i in range(3))
    plain = mod.attention(q, k, v)
    outs = [mod.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], plain)
    other = mod.attention(q, k, v, dropout_p=0.5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(outs[0], other)
    outs[0].sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(4))", "window(3)",
                                  "causal & (chunk(8) | cols(every(8, 6..8)))"])
def test_bias_gradient_matches_reference(text, tmp_path):
    """Each pair's bias gradient comes from the one component that owns it."""
    from attnlang import reference

    expr = _expr(text)
    mod = generated(expr, tmp_path)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 2, 37, 37, generator=g, requires_grad=True)
    out = mod.attention(q, k, v, attn_bias=bias)
    out.backward(torch.ones_like(out))
    bias_ref = bias.detach().double().requires_grad_(True)
    ref, _ = reference.attention(q.double(), k.double(), v.double(),
                                 reference.mask(expr, 37, 37, num_heads=2)[None], bias=bias_ref)
    ref.backward(torch.ones_like(ref))
    assert torch.allclose(out.double(), ref, atol=1e-4)
    assert torch.allclose(bias.grad.double(), bias_ref.grad, atol=1e-4)


_ONE_PASS = ["causal & (chunk(8) | cols(every(8, 6..8)))", "window(3) | cols(every(7, 2..4))",
             "causal & (chunk(8) | cols(every(8, 6..8))) | cols(every(5, 1..2))",
             "segment & (window(3) | cols(every(7, 2..4)))"]


@pytest.mark.parametrize("text, tiles", [(text, None) for text in _ONE_PASS] + [
    (_ONE_PASS[2], "fwd=16x32:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d"),
    (_ONE_PASS[3], "fwd=16x16:4:1:r,dkdv=16x16:4:1,dq=16x32:4:1:r")])
def test_components_reading_queries_in_order_run_in_one_pass(text, tiles, tmp_path, monkeypatch):
    """Identity and gather components (every one reads the queries in order) share one forward
    and one dQ kernel, whose key loops run one after the other: equal to the reference with key
    padding, documents, grouped heads, empty rows and lengths that fill no tile; no dQ kernel per
    component and no float32 partial output -- with the default tiles, and on two of the
    patterns with tiles that read through descriptors and that take the query blocks in
    reverse order."""
    if tiles:
        monkeypatch.setenv("ATTNLANG_TILES", tiles)
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    assert mod.FUSED is not None and mod.NUM_COMPONENTS > 1
    launched = record_launches(mod, monkeypatch)
    kpm = torch.rand(2, 53, generator=torch.Generator().manual_seed(4)) > 0.3
    kpm[1, :20] = False  # rows whose window holds only padded keys: empty
    segments = torch.tensor([0] * 17 + [1] * 30 + [2] * 6) if "segment" in text else None
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=53, Lk=53, D=16,
                            dtype=torch.float32, key_padding_mask=kpm, segments=segments)
    dkdv = [f"_bwd_dkdv_{i}" for i in range(mod.NUM_COMPONENTS)]
    # the dQ pass computes delta for the dK/dV kernels, so it runs first
    assert [kernel.__name__ for kernel in launched] == ["_fwd_fused", "_bwd_dq_fused", *dkdv]
    assert not hasattr(mod, "_fwd_0") and not hasattr(mod, "_bwd_dq_0")  # none generated


@pytest.mark.parametrize("length", [64, 50])
def test_dense_mask_skips_empty_blocks_and_matches_reference(length, tmp_path):
    """A call-time dense mask restricts the visited blocks; lengths that are multiples of the tile
    (no edge masking on full blocks) and lengths that are not."""
    from attnlang import reference

    expr = _expr("causal")
    mod = generated(expr, tmp_path, block=16)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, length, 16, generator=g).requires_grad_(True) for _ in range(3))
    mask = torch.rand(2, 1, length, length, generator=g) > 0.5
    mask[:, :, :, 16:32] = False          # whole empty key blocks
    mask[0, :, 3] = False                 # a fully masked row
    out = mod.attention(q, k, v, attn_mask=mask)
    out.backward(torch.ones_like(out))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    keep = reference.mask(expr, length, length, num_heads=2)[None] & mask
    ref, _ = reference.attention(qd, kd, vd, keep)
    ref.backward(torch.ones_like(ref))
    assert torch.allclose(out.double(), ref, atol=1e-4)
    assert (out[0, :, 3] == 0).all()
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert torch.allclose(got.double(), want, atol=1e-4)


@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(16) & stride(4)"])
def test_lengths_that_fill_whole_tiles(text, tmp_path):
    """Lengths that are multiples of the tile (and of the residue classes' tiles): full blocks
    then skip every mask (NEED_MASK is off)."""
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=128, Lk=128, D=16,
                            dtype=torch.float32)


@pytest.mark.parametrize("block_m, block_n", [(16, 32), (32, 16)])
@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment"])
def test_unequal_query_and_key_tiles(text, block_m, block_n, tmp_path):
    """Every kernel role with BLOCK_M != BLOCK_N (the GPU's tiles differ per role), on a length
    that fills neither tile."""
    from attnlang.cache import load_module

    expr = _expr(text)
    mod = load_module(pattern_of(expr), block_m, block_n, tmp_path)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 19) if "segment" in text else None
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=70, Lk=70, D=16,
                            dtype=torch.float32, segments=segments)


@pytest.mark.parametrize("tiles", ["dkdv=16x32:4:1:t", "dkdv=32x16:4:1:t", "dkdv=16x16:4:1"])
@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment",
                                  "random(0.3, block = 8, seed = 5) | prefix(3)"])
def test_dkdv_with_scores_as_keys_by_queries(text, tiles, tmp_path, monkeypatch):
    """The dK/dV kernel computing its scores as [keys, queries] (":t" tiles, K·Qᵀ) equals the
    reference, with grouped heads, key padding and lengths that fill no tile."""
    monkeypatch.setenv("ATTNLANG_TILES", f"fwd=16x16:4:1,dq=16x16:4:1,{tiles}")
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 19) if "segment" in text else None
    kpm = torch.rand(1, 70, generator=torch.Generator().manual_seed(1)) > 0.2
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=70, Lk=70, D=16,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)


@pytest.mark.parametrize("tiles, d", [("fwd=16x32:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d", 16),
                                      ("fwd=32x16:4:1:d,dkdv=16x32:4:1:d,dq=16x16:4:1", 24)])
@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment",
                                  "random(0.3, block = 8, seed = 5) | global(0..3)",
                                  "causal & (chunk(16) | cols(every(16, 11..16)))",
                                  "cols(every(5, 1..3)) | stride(3)"])
def test_tiles_read_through_tensor_descriptors(text, tiles, d, tmp_path, monkeypatch):
    """The ':d' tiles (K, V, and in dK/dV Q, dO read through tensor descriptors, which clip the
    tiles at each class's length and at the head dim) equal the reference: residue classes,
    documents, gather components (their packed keys, in one pass with a chunk or beside residue
    classes), grouped heads, padding; each tile at one head dim (16, and 24: tiles wider than
    the head)."""
    monkeypatch.setenv("ATTNLANG_TILES", tiles)
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 19) if "segment" in text else None
    kpm = torch.rand(1, 70, generator=torch.Generator().manual_seed(2)) > 0.2
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=70, Lk=70, D=d,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)


@pytest.mark.parametrize("text, length, d, kernel_made", [
    ("causal & (window(5, 0) | stride(8))", 64, 16, True),  # classes of 8 rows: uneven
    ("causal & (window(5, 0) | stride(4))", 128, 16, False),  # classes of 32 rows
    ("causal & (window(5, 0) | stride(4))", 128, 24, True),  # residue tiles wider than the head
    ("causal & segment", 64, 16, False),
    ("random(0.3, block = 8, seed = 5) | global(0..3)", 64, 16, False),
    ("causal & (chunk(16) | cols(every(16, 8..16)))", 128, 16, False)])  # 64 packed keys
def test_host_descriptors_over_every_heads_rows(text, length, d, kernel_made, tmp_path,
                                                monkeypatch):
    """Where every tile ends at its rows' end (lengths that fill whole tiles; residue classes of
    equal lengths, tiles as wide as the head) and the tensors' heads follow each other in memory,
    ':d' tiles read K, V (and in dK/dV Q, dO) through one descriptor per tensor made on the host
    over every batch's and head's rows (HOST_DESC; a residue class's rows as one column block of
    a [rows / step, step * D] view), each program starting at its own head's and class's rows:
    equal to the reference with two batches, grouped heads and key padding; a gather
    component's packed keys (`_packed`) likewise, where they fill whole tiles.  Elsewhere the
    kernels make their own, and so do they for tensors in a [B, L, H, D] layout, with the same
    results."""
    monkeypatch.setenv("ATTNLANG_TILES", "fwd=16x32:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d")
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "HOST_DESC_MIN_PROGRAMS", 0)  # GPU calls: from 2048 programs on
    seen = []

    def launch(kernel, grid, args, options, real=mod._launch):
        descs = [a for a in args if isinstance(a, mod._TensorDescriptor)]
        seen.append((kernel.__name__, options.get("DESC"), options.get("HOST_DESC"), len(descs)))
        return real(kernel, grid, args, options)
    monkeypatch.setattr(mod, "_launch", launch)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 13) if "segment" in text else None
    kpm = torch.rand(2, length, generator=torch.Generator().manual_seed(3)) > 0.2
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=length, Lk=length, D=d,
                            dtype=torch.float32, segments=segments, key_padding_mask=kpm)
    for role in ("_fwd", "_bwd_dq", "_bwd_dkdv"):  # every role read through the host's
        assert any(name.startswith(role) and host for name, _, host, _ in seen), (role, seen)
    packed = 2 * len(mod.GATHERS)  # the forward's and dQ's descriptors over packed keys
    assert all(count == ((2 if name.startswith("_bwd_dkdv") else 2 + packed) if host else 0)
               for name, _, host, count in seen), seen
    assert any(desc and not host for _, desc, host, _ in seen) == kernel_made

    # the launches' descriptors are what Triton's own constructor makes (without its checks)
    import dataclasses
    t = torch.zeros(2, 2, length, d)
    fast = mod._descriptor(t, [2 * 2 * length, d], [d, 1], [16, 32])
    slow = mod._TensorDescriptor(t, [2 * 2 * length, d], [d, 1], [16, 32])
    assert all(getattr(fast, f.name) is getattr(slow, f.name) or
               getattr(fast, f.name) == getattr(slow, f.name)
               for f in dataclasses.fields(mod._TensorDescriptor))

    # the same values in a [B, L, H, D] layout: no one descriptor covers a head's rows (one
    # batch: the heads are what the layout changes)
    q, k, v = (torch.randn(1, 2, length, d, generator=torch.Generator().manual_seed(h))
               for h in range(3))  # (two key heads: one would lie in rows either way)
    results = []
    for layout in ("rows", "heads inside"):
        leaves = [(t.clone() if layout == "rows" else t.transpose(1, 2).contiguous().transpose(1, 2))
                  .requires_grad_(True) for t in (q, k, v)]
        seen.clear()
        out = mod.attention(*leaves, segments=segments, key_padding_mask=kpm[:1])
        out.backward(torch.ones_like(out))
        assert any(host for _, _, host, _ in seen) == (layout == "rows")
        results.append([out.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("text, length, fwd", [
    ("causal & (window(5, 0) | stride(4))", 128, "16x32"),  # the classes (rows of 4 side by
    # side) merge with the band's output
    ("causal & (window(5, 0) | stride(8))", 128, "16x16")])  # the band merges with the classes'
# (one block each, first: without key padding)
@pytest.mark.parametrize("prefetch", ["seed", "merge after"])
def test_partial_output_through_the_hosts_descriptor(text, length, fwd, prefetch, tmp_path,
                                                     monkeypatch):
    """A forward launch that reads the earlier components' partial output before its key loop
    (PREFETCH: as the softmax's seed, or merged after the loop) reads it through a descriptor
    the host made over every head's rows (OP_DESC, tiles of BLOCK_M rows; a residue class's
    rows one column block of the [rows / step, step * D] view) where the launch has HOST_DESC:
    equal to the reference, with two batches, grouped heads (and key padding)."""
    monkeypatch.setenv("ATTNLANG_TILES", f"fwd={fwd}:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d")
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "HOST_DESC_MIN_PROGRAMS", 0)
    monkeypatch.setattr(mod, "SEED_PARTIAL", (16,) if prefetch == "seed" else ())
    monkeypatch.setattr(mod, "PREFETCH_PARTIAL", (16,))
    seen = []

    def launch(kernel, grid, args, options, real=mod._launch):
        if kernel.__name__.startswith("_fwd"):
            seen.append((options["MERGE"], options.get("HOST_DESC"), options.get("PREFETCH"),
                         isinstance(args[8], mod._TensorDescriptor)))
        return real(kernel, grid, args, options)
    monkeypatch.setattr(mod, "_launch", launch)
    kpm = None if fwd == "16x16" else \
        torch.rand(2, length, generator=torch.Generator().manual_seed(3)) > 0.2
    check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=length, Lk=length, D=16,
                            dtype=torch.float32, key_padding_mask=kpm)
    assert all(made == (merge and host) for merge, host, _, made in seen), seen
    assert any(made for *_, made in seen), seen  # (merging launches read it so)
    assert {p for merge, _, p, _ in seen if merge} == {2 if prefetch == "seed" else 1}


def test_launches_of_few_programs_keep_the_kernels_own_descriptors(tmp_path, monkeypatch):
    """Launches of fewer programs than HOST_DESC_MIN_PROGRAMS keep the kernel's own descriptors
    where the host's could read the tensors (their host cost would outweigh what they save)."""
    monkeypatch.setenv("ATTNLANG_TILES", "fwd=16x32:4:1:d,dkdv=32x16:4:1:t:d,dq=32x16:4:1:d")
    mod = generated(_expr("causal & (window(5, 0) | stride(8))"), tmp_path)
    seen = []

    def launch(kernel, grid, args, options, real=mod._launch):
        seen.append((options.get("DESC"), options.get("HOST_DESC")))
        return real(kernel, grid, args, options)
    monkeypatch.setattr(mod, "_launch", launch)
    q, k, v = (torch.randn(1, h, 64, 16, generator=torch.Generator().manual_seed(h))
               for h in (2, 1, 1))
    for fewest, host in ((0, True), (10 ** 6, False)):
        monkeypatch.setattr(mod, "HOST_DESC_MIN_PROGRAMS", fewest)
        monkeypatch.setattr(mod, "_CALLS", {})  # (a call's launches are kept for its geometry)
        seen.clear()
        mod.attention(*[t.clone().requires_grad_(True) for t in (q, k, v)]).sum().backward()
        assert any(desc for desc, _ in seen) and any(h for _, h in seen) == host


@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "causal & segment",
                                  "prefix(9) | causal"])
def test_query_blocks_in_reverse_order(text, tmp_path, monkeypatch):
    """':r' forward and dQ tiles start the last query blocks first, whatever the pattern's rows
    (by default only where they grow); every program still owns one query block, so the results
    equal the reference: residue classes with a band, documents, a prefix."""
    mod, _ = _checked_with_tiles(text, "fwd=16x16:4:1:r,dkdv=16x16:4:1,dq=16x32:4:1:r", 6,
                                 tmp_path, monkeypatch)
    assert mod._tiles(torch.zeros(1, 1, 8, 16), 16, "dq")[2]["REVERSED"] is True


def test_descriptors_only_where_the_tensors_allow_them(tmp_path):
    """A head dim that is not contiguous, or rows not 16-byte aligned, turn ':d' off."""
    mod = generated(_expr("causal"), tmp_path)
    q = torch.randn(1, 2, 40, 16)
    assert mod._descriptors_ok(q)
    assert not mod._descriptors_ok(q.transpose(2, 3).contiguous().transpose(2, 3))
    assert not mod._descriptors_ok(torch.randn(1, 2, 40, 18)[..., :16])  # 72-byte rows
    assert not mod._descriptors_ok(torch.randn(1, 2, 40, 17)[..., 1:])   # base off by 4 bytes
    on = dict(DESC=True, num_warps=4)
    # a gather component reads its packed keys (`_packed`), which descriptors can read
    assert mod._with_descriptors(on, dict(kind="gather"), q)["DESC"] is True
    assert mod._with_descriptors(on, dict(kind="residue"), q)["DESC"] is True
    off = q.transpose(2, 3).contiguous().transpose(2, 3)
    assert mod._with_descriptors(on, dict(kind="gather"), off)["DESC"] is False


@pytest.mark.parametrize("keys_as_rows", [False, True])
def test_dkdv_bias_and_dropout_gradients_in_both_score_orders(keys_as_rows, tmp_path, monkeypatch):
    """dK and dV under a bias and dropout are the same whichever way dK/dV lays out its scores."""
    text = "causal & (window(5, 0) | stride(4))"
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g).requires_grad_(True) for _ in range(3))
    bias = torch.randn(1, 2, 37, 37, generator=g)
    grads = []
    for tiles in ("dkdv=16x16:4:1", "dkdv=16x16:4:1:t" if keys_as_rows else "dkdv=16x32:4:1"):
        monkeypatch.setenv("ATTNLANG_TILES", f"fwd=16x16:4:1,dq=16x16:4:1,{tiles}")
        for t in (q, k, v):
            t.grad = None
        out = mod.attention(q, k, v, attn_bias=bias, dropout_p=0.3,
                            generator=torch.Generator().manual_seed(11))
        out.backward(torch.ones_like(out))
        grads.append([t.grad.clone() for t in (q, k, v)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("text", ["causal & window(20, 0)", "causal & segment"])
def test_register_cap_flag_reaches_the_launch_and_keeps_results(text, tmp_path, monkeypatch):
    """A tile's ':nR' caps its kernel at R registers per thread (Triton's maxnreg option); the
    interpreter runs such tiles against the reference like any other."""
    monkeypatch.setenv("ATTNLANG_TILES",
                       "fwd=16x16:4:1:n96,dkdv=16x16:4:1:t:n64,dq=16x16:4:2:d:n80")
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    work = record_host_work(mod, monkeypatch)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 19) if "segment" in text else None
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=70, Lk=70, D=16,
                            dtype=torch.float32, segments=segments)
    caps = [(launch[0].__name__, launch[3].get("maxnreg"))
            for _, launch in work if isinstance(launch, tuple)]
    expected = {"_fwd": 96, "_bwd_dkdv": 64, "_bwd_dq": 80}
    roles = {name: cap for name, cap in caps if not name.startswith("_segment")}
    assert len(roles) == 3 and all(cap == expected[name.rsplit("_", 1)[0]]
                                   for name, cap in roles.items()), caps
    assert mod._parse_tile("fwd", "64x64:4:2:d:j:n96")[2]["maxnreg"] == 96
    for bad in ("64x64:4:2:n300", "64x64:4:2:n96:n80", "64x64:4:2:nx", "64x64:4:2:n"):
        with pytest.raises(ValueError):
            mod._parse_tile("fwd", bad)
    monkeypatch.setenv("ATTNLANG_TILES", "fwd=64x64:4:2:n12")
    with pytest.raises(ValueError, match=r"':nR' for at most R registers"):
        mod._tiles(torch.zeros(1, 2, 8, 16), 16, "fwd")


def test_gpu_tiles_tuned_per_exact_head_dim_and_checked_defaults_elsewhere(monkeypatch):
    """On a GPU, head dims 64 and 128 get their own tuned tiles; the others keep their size
    class's default tiles (those gpu_check.py verifies at 80, 96 and 256)."""
    from attnlang.cache import load_module

    monkeypatch.delenv("ATTNLANG_TILES", raising=False)
    mod = load_module(pattern_of(_expr("causal")))

    class OnGpu:  # what _tiles reads of q, without a GPU
        device = torch.device("cuda")
        shape = (1, 2, 256, 128)

    def tile(d, role):
        bm, bn, opts = mod._tiles(OnGpu(), d, role)
        return (bm, bn, opts["num_warps"], opts["num_stages"], opts.get("KEYS_AS_ROWS"),
                opts["DESC"])

    assert tile(128, "dkdv") == (64, 64, 4, 2, False, True)
    assert tile(128, "fwd") == (128, 128, 8, 3, None, True)
    assert tile(96, "dkdv") == (64, 64, 4, 2, False, False)
    assert tile(96, "fwd") == (128, 128, 8, 3, None, False)
    assert tile(80, "dq") == (128, 64, 8, 2, None, False)
    assert tile(64, "dq") == (64, 64, 4, 3, None, True)
    assert tile(64, "fwd") == (64, 64, 4, 2, None, True)  # ':j' too (round 25)
    assert mod._tiles(OnGpu(), 64, "fwd")[2]["JOIN_PARTIAL"] is None  # (the launch decides)
    # band patterns cap it at 96 registers (TILES_BAND, round 30); the other patterns do not
    assert mod.BAND is not None and mod._tiles(OnGpu(), 64, "fwd")[2]["maxnreg"] == 96
    wide = load_module(pattern_of(_expr("window(512) | global(0..128)")))
    assert wide.BAND is None and "maxnreg" not in wide._tiles(OnGpu(), 64, "fwd")[2]
    assert "maxnreg" not in mod._tiles(OnGpu(), 128, "fwd")[2]
    assert tile(48, "dq") == (64, 64, 4, 2, None, False)
    assert tile(256, "fwd") == (64, 64, 4, 2, None, False)

    # a gather component's forward and dQ read its packed keys (round 26), through descriptors,
    # with tiles of their own (TILES_GATHER); dK/dV's loops read queries, which it reads in order
    # (round 10: 64x64:4:2:d against 32x64:4:2:t, fixed pattern at 32k, 5.22 against 5.68 ms);
    # descriptor tiles only for tensors they can read; otherwise the plain tiles of round 7
    gather = load_module(pattern_of(_expr("causal & (chunk(128) | cols(every(128, 112..128)))")))
    assert gather.HAS_GATHER and not mod.HAS_GATHER and gather.GATHERS == [1]
    bm, bn, opts = gather._tiles(OnGpu(), 128, "dkdv")
    assert (bm, bn, opts["KEYS_AS_ROWS"], opts["DESC"]) == (64, 64, False, True)
    bm, bn, opts = gather._tiles(OnGpu(), 128, "fwd")
    assert (bm, bn, opts["num_warps"], opts["num_stages"], opts["DESC"]) == (128, 64, 8, 2, True)
    assert opts["maxnreg"] == 128  # two programs per multiprocessor (round 37)
    assert gather._tiles(OnGpu(), 128, "dq")[:2] == (64, 64)
    assert gather._tiles(OnGpu(), 128, "dq")[2]["DESC"] is True
    k = torch.zeros(1, 2, 256, 128)

    class Aligned(OnGpu):
        def stride(self, dim=None):
            return (2 * 256 * 128, 256 * 128, 128, 1) if dim is None else self.stride()[dim]

        def element_size(self):
            return 2

        def data_ptr(self):
            return 1 << 20

    assert mod._tiles(Aligned(), 128, "dkdv", None, k)[2]["DESC"] is True
    assert mod._tiles(Aligned(), 128, "dkdv", None, k[..., 1:])[:2] == (32, 64)

    # short rows (mean visited key blocks at most SHORT_ROWS): the short tiles, with descriptor
    # reads only from DESC_MIN_ROWS blocks on (documents and residue classes read the plain way)
    def short(blocks, role, dim=128, flag=None, plain=False):  # plain: keys descriptors can't read
        monkeypatch.setattr(mod, "_row_blocks", lambda *args, **kw: blocks)
        monkeypatch.setattr(mod, "_GPU_TILES", {})  # kept per shape: forget them
        bm, bn, opts = mod._tiles(Aligned(), dim, role, 256, k[..., 1:] if plain else k)
        if flag is not None:
            return opts.get(flag)
        return bm, bn, opts["num_warps"], opts["num_stages"], opts.get("KEYS_AS_ROWS"), opts["DESC"]

    assert short(40.0, "dkdv") == (64, 64, 4, 2, False, True)  # not short: TILES_TUNED
    assert short(8.7, "dkdv") == (64, 64, 4, 2, False, True)  # TILES_SHORT
    assert short(8.7, "fwd") == (64, 64, 4, 3, None, True)
    assert short(1.3, "dkdv") == (64, 64, 4, 2, False, True)  # TILES_FEW (no segments)
    assert short(1.3, "dq") == (64, 32, 4, 2, None, True)  # TILES_FEW (round 48)
    assert short(1.3, "fwd") == (64, 32, 4, 3, None, True)  # TILES_FEW (round 48; 50: ':d')
    assert short(1.3, "fwd", 128, "maxnreg") == 168
    # ... at d = 64 (round 44): the forward's partial runs in one loop, dQ through descriptors;
    # the forward on 32-key blocks at 80 registers (round 47), through descriptors (round 50)
    assert short(1.3, "fwd", 64) == (64, 32, 4, 3, None, True)
    assert short(1.3, "fwd", 64, "maxnreg") == 80
    # dK/dV through descriptors at three stages (round 50); TILES_TUNED's tile where rows are
    # longer, as before
    assert short(1.3, "dkdv", 64) == (64, 64, 4, 3, False, True)
    assert short(8.7, "dkdv", 64) == (64, 64, 4, 3, False, False)
    assert short(8.7, "dkdv", 64, "JOIN_PARTIAL") is None  # ':j': per launch
    # every block of a row in the one masked loop (':o', round 49), residue classes too; dK/dV
    # too (round 50)
    for role, dim in itertools.product(("fwd", "dq", "dkdv"), (64, 128)):
        assert short(1.3, role, dim, "JOIN_PARTIAL") == 2, (role, dim)
    # without descriptors the forward keeps round 49's tiles read plainly, the others as before
    for dim, cap in ((64, 80), (128, 168)):
        assert short(1.3, "fwd", dim, plain=True) == (64, 32, 4, 3, None, False)
        assert short(1.3, "fwd", dim, "maxnreg", plain=True) == cap
        assert short(1.3, "fwd", dim, "JOIN_PARTIAL", plain=True) == 2
    assert short(1.3, "dkdv", plain=True) == (32, 64, 4, 2, True, False)
    assert short(1.3, "dkdv", 64, plain=True) == (64, 64, 4, 3, False, False)
    assert short(1.3, "dq", 64, plain=True) == (64, 64, 4, 3, None, False)
    assert short(8.7, "fwd", 128, "JOIN_PARTIAL") is None  # TILES_SHORT's ':j': per launch
    assert short(1.3, "dq", 64) == (64, 32, 4, 3, None, True)  # on 32-key blocks (round 48)
    monkeypatch.setattr(mod, "USES_SEGMENT", True)  # with segments: TILES_SHORT_PLAIN
    assert short(1.3, "dkdv") == (32, 64, 4, 2, True, False)
    assert short(1.3, "fwd") == (64, 64, 4, 3, None, False)
    assert short(0.0, "dkdv") == (32, 64, 4, 2, True, False)  # document masks
    assert short(1.3, "dkdv", 64) == (64, 64, 4, 3, False, False)  # TILES_TUNED's, as before

    # a fused pass's program visits every component's blocks of its query block: at 2048 tokens
    # the chunk's 16 diagonal blocks and the packed keys' blocks of 15 query blocks (16 i keys)
    counted = [gather._row_blocks(2048, 2048, 1, 128, 128, "cpu", fused=f) for f in (False, True)]
    total = 16 + sum(-(-16 * i // 128) for i in range(16))
    assert counted == [total / 31, total / 16]

    def gather128(blocks, role, plain=False):  # the fixed pattern's rows at 8k (5.4), 32k (17)
        monkeypatch.setattr(gather, "_row_blocks", lambda *args, **kw: blocks)
        monkeypatch.setattr(gather, "_GPU_TILES", {})
        bm, bn, opts = gather._tiles(Aligned(), 128, role, 256, k[..., 1:] if plain else k)
        return bm, bn, opts["num_warps"], opts["num_stages"], opts["DESC"]
    # the forward 128 x 64 at two stages, capped at 128 registers, short rows and long (round 55)
    assert gather128(5.4, "fwd") == (128, 64, 8, 2, True)
    assert gather._tiles(Aligned(), 128, "fwd", 256, k)[2]["maxnreg"] == 128
    # rows of fewer blocks than DESC_MIN_ROWS: without descriptors TILES_SHORT_PLAIN's forward,
    # not the strided band's (TILES_FEW_PLAIN)
    assert gather128(1.3, "fwd", plain=True) == (64, 64, 4, 3, False)
    assert gather128(17.0, "fwd") == (128, 64, 8, 2, True)
    assert gather128(5.4, "dq") == gather128(17.0, "dq") == (64, 64, 4, 2, True)

    # long rows at d = 64 (causal, full attention): 128 keys per forward step; bands keep 64,
    # and so do patterns whose rows the host cannot count (segments with a plan: infinite)
    class Aligned64(Aligned):
        shape = (1, 2, 256, 64)

        def stride(self, dim=None):
            return (2 * 256 * 64, 256 * 64, 64, 1) if dim is None else self.stride()[dim]
    k64 = torch.zeros(1, 2, 256, 64)

    def fwd64(blocks, module=mod, role="fwd"):
        monkeypatch.setattr(module, "_row_blocks", lambda *args, **kw: blocks)
        monkeypatch.setattr(module, "_GPU_TILES", {})
        bm, bn, opts = module._tiles(Aligned64(), 64, role, 256, k64)
        return bm, bn, opts["num_stages"], opts["DESC"]
    assert fwd64(64.0) == (64, 128, 3, True)  # TILES_LONG
    assert fwd64(20.0) == (64, 64, 2, True)  # TILES_TUNED (two stages since round 25)
    # round 15: the d = 64 dQ reads through descriptors, and dK/dV on long rows (TILES_LONG)
    assert fwd64(20.0, role="dq") == (64, 64, 3, True)
    assert fwd64(64.0, role="dkdv") == (64, 64, 3, True)
    assert fwd64(20.0, role="dkdv") == (64, 64, 3, False)
    # ... but short rows' dQ stays plain; a gather pattern's reads its packed keys through
    # descriptors, 32 keys per step, and its forward takes 128 queries on long rows, 64 in one
    # loop over both sides' partial blocks (':j') at two stages on short ones (round 55)
    assert fwd64(8.0, role="dq") == (64, 64, 3, False)
    assert fwd64(8.0, gather, "dq") == fwd64(40.0, gather, "dq") == (64, 32, 3, True)
    assert fwd64(float("inf")) == (64, 64, 2, True)
    # short rows: three stages (round 13)
    assert fwd64(8.0) == (64, 64, 3, False) and fwd64(1.5) == (64, 64, 3, False)
    assert fwd64(64.0, gather) == (128, 64, 3, True)
    assert fwd64(1.5, gather) == (64, 64, 2, True)
    assert gather._tiles(Aligned64(), 64, "fwd", 256, k64)[2]["JOIN_PARTIAL"] is None  # (':j')
    # document masks: 32 keys per step in the forward and in dQ (TILES_SEGMENT), the forward
    # through descriptors (round 15), and without them the same tiles read the plain way
    docs = load_module(pattern_of(_expr("causal & segment")))
    assert docs.SEG_BOUNDS
    assert fwd64(0.0, docs) == (64, 32, 3, True) and fwd64(0.0, docs, "dq") == (64, 32, 3, False)
    assert fwd64(0.0, docs, "dkdv") == (64, 64, 3, False)
    assert docs._tiles(Aligned(), 128, "dq", 256, k)[:2] == (64, 32)  # as its forward's
    assert docs._tiles(Aligned(), 128, "fwd", 256, k)[:2] == (64, 32)
    for role in ("fwd", "dq"):
        bm, bn, opts = docs._tiles(Aligned(), 128, role, 256, k[..., 1:])
        assert (bm, bn, opts["num_stages"], opts["DESC"]) == (64, 32, 3, False)

    # ... until the backward is the Gluon kernel's (GLUON_DOCS): then the d = 64 forward takes
    # 64 keys per step (TILES_SEGMENT_LONG, round 42); d = 128 and dQ keep theirs
    class Long64(Aligned64):
        shape = (1, 2, 32768, 64)

        def stride(self, dim=None):
            return (2 * 32768 * 64, 32768 * 64, 64, 1) if dim is None else self.stride()[dim]
    k_long = torch.zeros(1, 2, 32768, 64)
    assert docs.GLUON_DOCS[64] == 32768
    monkeypatch.setattr(docs, "_GPU_TILES", {})
    bm, bn, opts = docs._tiles(Long64(), 64, "fwd", 32768, k_long)
    assert (bm, bn, opts["num_stages"], opts["DESC"]) == (64, 64, 3, True)
    assert docs._tiles(Long64(), 64, "dq", 32768, k_long)[:2] == (64, 32)
    assert docs._tiles(Long64(), 64, "fwd", 32768, k_long[..., 1:])[:2] == (64, 64)  # plain

    # a row's partial blocks in one loop (':j') where round 12 measured it faster
    # (None: each launch decides, `test_default_partial_join_skips_residue_classes`)
    assert docs._tiles(Aligned(), 128, "dkdv", 256, k)[2]["JOIN_PARTIAL"] is None
    assert mod._tiles(Aligned64(), 64, "dkdv", 256, k64)[2]["JOIN_PARTIAL"] is None
    assert mod._tiles(Aligned64(), 64, "dq", 256, k64)[2]["JOIN_PARTIAL"] is False


@pytest.mark.parametrize("text, joined", [("window(8)", True), ("window(16) & stride(4)", False),
                                           ("causal & segment", True)])
def test_default_partial_join_skips_residue_classes(text, joined, monkeypatch):
    """A default ':j' tile (JOIN_PARTIAL None) joins a row's partial blocks in one loop except on
    residue-class components (round 12: the dilated pattern's dK/dV lost 14-16% with it); a ':j'
    from ATTNLANG_TILES joins them everywhere, residue classes included."""
    from attnlang.cache import load_module

    monkeypatch.delenv("ATTNLANG_TILES", raising=False)
    module = load_module(pattern_of(_expr(text)))
    q = torch.zeros(1, 2, 64, 16)
    seg = torch.tensor([[0] * 30 + [1] * 34], dtype=torch.int32) if "segment" in text else None
    _, _, options, tables = module._prepare(q, q, "dkdv", seg, seg, None)
    for asked, want in ((None, joined), (True, True), (False, False)):
        decided = module._program_order(dict(options, JOIN_PARTIAL=asked), tables[:1],
                                        keys=True)[1]
        assert decided["JOIN_PARTIAL"] is want


@pytest.mark.parametrize("value", ["dkdv=64x64:4", "dq=64x64:4:2:t", "fwd=64by64:4:2",
                                   "dkdv=64x64:4:2:x"])
def test_a_malformed_tile_override_names_the_variable(value, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLANG_TILES", value)
    expr = _expr("causal")
    mod = generated(expr, tmp_path)
    q = torch.randn(1, 1, 20, 16, requires_grad=True)
    with pytest.raises(ValueError, match=r"^ATTNLANG_TILES: got .*expected"):
        mod.attention(q, q, q).sum().backward()


def test_a_dkdv_override_known_to_be_wrong_on_a_gpu_is_refused(monkeypatch):
    """dK/dV steps of fewer than 64 queries with scores as [queries, keys] gave wrong dK on the
    GPU (rounds 6 and 7; 4e-3 to 3e-2 from other tilings): an override asking for one is an
    error there, and the same tile with ':t' is accepted."""
    from attnlang.cache import load_module

    mod = load_module(pattern_of(_expr("causal")))

    class OnGpu:
        device = torch.device("cuda")
        dtype = torch.bfloat16
        shape = (1, 2, 256, 128)

    monkeypatch.setenv("ATTNLANG_TILES", "dkdv=32x64:4:2")
    with pytest.raises(ValueError, match=r"^ATTNLANG_TILES: got 'dkdv=32x64:4:2'; expected the "
                                         r"':t' flag .* e\.g\. dkdv=32x64:4:2:t$"):
        mod._tiles(OnGpu(), 128, "dkdv")
    monkeypatch.setenv("ATTNLANG_TILES", "dkdv=32x64:4:2:t")
    assert mod._tiles(OnGpu(), 128, "dkdv")[:2] == (32, 64)
    monkeypatch.setenv("ATTNLANG_TILES", "dkdv=64x64:4:2")
    assert mod._tiles(OnGpu(), 128, "dkdv")[:2] == (64, 64)


@pytest.mark.parametrize("flag", ["j", "o", "o:r"])
@pytest.mark.parametrize("text", ["causal & window(7, 0)", "window(3, 1)", "causal & segment",
                                  "causal & (window(5, 0) | stride(8))",
                                  "causal & (chunk(8) | cols(every(8, 6..8)))"])
def test_partial_blocks_in_one_loop(text, flag, tmp_path, monkeypatch):
    """':j' tiles visit a row's partial blocks on both sides of its full ones in one loop
    ([lo, full_lo) then [full_hi, hi)) instead of two: the same blocks in the same order, so the
    results equal the reference -- bands, documents, residue classes with a band, one pass over
    a gather component -- in every role.  ':o' forward and dQ tiles (round 48) visit every block
    of a row in that one loop, full ones masked too (dK/dV's since round 49, its key blocks'
    query blocks); with ':r', the last query blocks first."""
    keys = {"j": "t:j", "o": "t:o", "o:r": "o"}[flag]  # dK/dV: ':o' transposed and not
    mod, _ = _checked_with_tiles(text, f"fwd=16x16:4:1:{flag},dkdv=16x16:4:1:{keys},"
                                 f"dq=16x32:4:1:{flag}", 8, tmp_path, monkeypatch)
    tiles = {role: mod._tiles(torch.zeros(1, 1, 8, 16), 16, role)[2]
             for role in ("fwd", "dkdv", "dq")}
    joined = 1 if flag == "j" else 2
    assert {role: t["JOIN_PARTIAL"] for role, t in tiles.items()} == \
        {"fwd": joined, "dkdv": joined, "dq": joined}
    assert tiles["dkdv"]["KEYS_AS_ROWS"] is keys.startswith("t")
    assert tiles["fwd"]["REVERSED"] is tiles["dq"]["REVERSED"] is flag.endswith(":r")


@pytest.mark.parametrize("text, reversed_, heavy", [
    ("causal", True, False), ("prefix(9) | causal", True, False),
    ("causal & (chunk(8) | cols(every(8, 6..8)))", True, False),  # one pass: components summed
    ("window(5)", False, False), ("causal & segment", False, False),
    ("window(4) | global(0..8)", False, True),
    ("window(16) & stride(4) | global(0..3)", False, True),
    ("window(3) | rows(0..8) | cols(40..60)", False, True),
    ("causal & (chunk(8) | cols(every(8, 6..8))) | rows(0..8)", False, True)])  # fused, heavy
def test_default_program_order_follows_the_rows(text, reversed_, heavy, tmp_path, monkeypatch):
    """Without ATTNLANG_TILES, forward and dQ kernels start the last query blocks first where the
    later rows visit more key blocks (causal-like); where a few blocks visit (or, for dK/dV, are
    visited by) far more blocks than the rest -- global rows and columns -- every head's heavy
    blocks run first; bands and documents keep launch order.  The results equal the reference
    either way, with grouped heads and a length that fills no tile."""
    monkeypatch.delenv("ATTNLANG_TILES", raising=False)
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    launches = []
    monkeypatch.setattr(mod, "_launch", lambda kernel, grid, args, options, real=mod._launch: (
        launches.append((kernel, args, options)), real(kernel, grid, args, options))[1])
    segments = torch.tensor([0] * 100 + [1] * 80 + [2] * 75) if "segment" in text else None
    check_against_reference(mod.attention, expr, B=1, Hq=2, Hkv=1, Lq=255, Lk=255, D=16,
                            dtype=torch.float32, segments=segments)
    ordered = [(kernel, args, options) for kernel, args, options in launches
               if "HEAVY" in options]
    reversals = {options["REVERSED"] for _, _, options in ordered if "REVERSED" in options}
    assert reversals == {reversed_}
    assert any(options["HEAVY"] for _, _, options in ordered) == heavy
    for kernel, args, options in ordered:
        if options["HEAVY"]:  # ORDER lists every program's block once, the heavy ones first
            names = list(kernel.arg_names)
            order = args[names.index("ORDER")].tolist()
            n_heavy = args[names.index("N_HEAVY")]
            assert sorted(order) == list(range(len(order))) and 0 < n_heavy <= len(order) // 4


@pytest.mark.parametrize("tiles", ["dkdv=16x32:4:1:a", "dkdv=32x16:4:1:t:a",
                                   "dkdv=16x16:4:1:t:a:d"])
@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment",
                                  "random(0.3, block = 8, seed = 5) | prefix(3)"])
def test_dq_added_up_in_the_dkdv_pass(text, tiles, tmp_path, monkeypatch):
    """':a' dK/dV tiles add each block's dS·K to a float32 dQ with atomics, and no dQ kernel
    runs: dQ (and dK, dV) equal the reference for residue classes with a band, documents and a
    gather component, with grouped heads, key padding and lengths that fill no tile."""
    mod, launched = _checked_with_tiles(text, f"fwd=16x16:4:1,dq=16x16:4:1,{tiles}", 4,
                                        tmp_path, monkeypatch)
    dq_kernels = [kernel for _, _, kernel in mod.KERNELS if kernel] + list(mod.FUSED or ())[1:]
    assert dq_kernels and not any(kernel in launched for kernel in dq_kernels)  # no dQ kernel
    assert any(kernel in launched for _, kernel, _ in mod.KERNELS)


@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment",
                                  "causal & (chunk(8) | cols(every(8, 6..8)))",
                                  "random(0.3, block = 8, seed = 5) | prefix(3)"])
def test_dq_kernel_computes_delta_itself(text, tmp_path, monkeypatch):
    """The first dQ launch computes delta = rowsum(dO * O) itself and runs before every dK/dV
    launch, and no delta kernel runs: the gradients equal the reference for residue classes with
    a band, documents, one pass over a gather component, and a random pattern with a prefix,
    with grouped heads, key padding and lengths that fill no tile."""
    mod, launched = _checked_with_tiles(text, "fwd=16x16:4:1,dkdv=16x16:4:1:t,dq=16x32:4:1",
                                        7, tmp_path, monkeypatch)
    assert mod._bwd_delta not in launched
    first_dq = (mod.FUSED or [None, mod.KERNELS[0][2]])[1]
    dkdv = [kernel for _, kernel, _ in mod.KERNELS]
    assert launched.index(first_dq) < min(launched.index(kernel) for kernel in dkdv)


def test_dq_added_up_in_the_dkdv_pass_under_bias_and_dropout(tmp_path, monkeypatch):
    """With dropout the atomic dQ equals the dQ kernel's; a bias that needs its gradient takes the
    dQ kernel (only it writes dBias), and every gradient is the same either way."""
    expr = _expr("causal & (window(5, 0) | stride(4))")
    mod = generated(expr, tmp_path)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g).requires_grad_(True) for _ in range(3))
    bias = torch.randn(1, 2, 37, 37, generator=g)
    for bias_grad in (False, True):
        grads = []
        for tiles in ("dq=16x16:4:1,dkdv=16x16:4:1:t", "dq=16x16:4:1,dkdv=16x16:4:1:t:a"):
            monkeypatch.setenv("ATTNLANG_TILES", f"fwd=16x16:4:1,{tiles}")
            b = bias.clone().requires_grad_(bias_grad)
            for t in (q, k, v):
                t.grad = None
            out = mod.attention(q, k, v, attn_bias=b, dropout_p=0.3,
                                generator=torch.Generator().manual_seed(11))
            out.backward(torch.ones_like(out))
            grads.append([t.grad.clone() for t in (q, k, v)] + ([b.grad] if bias_grad else []))
        for other in grads[1:]:
            for x, y in zip(grads[0], other):
                assert torch.allclose(x, y, atol=1e-5)


def _launch_signature(call):
    """A recorded launch with its tensors replaced by their dtype, shape and strides."""
    kernel, grid, args, options = call
    return kernel.__name__, tuple(grid), shapes_of(args), options


_ATOMIC = "fwd=16x16:4:1,dq=16x16:4:1,dkdv=16x32:4:1:a"


@pytest.mark.parametrize("text, tiles, bias_grad, entry", [
    ("causal & (window(5, 0) | stride(8))", None, False, "module"),
    ("window(9) & segment", None, True, "module"),
    ("window(9) & segment", None, False, "generated"),
    ("causal & (chunk(8) | cols(every(8, 6..8)))", None, True, "generated"),
    ("random(0.3, block = 8, seed = 5) | prefix(3)", _ATOMIC, False, "module"),
    ("random(0.3, block = 8, seed = 5) | prefix(3)", _ATOMIC, True, "generated"),
])
def test_the_autograd_backward_runs_the_plan_its_forward_prepared(text, tiles, bias_grad, entry,
                                                                  tmp_path, monkeypatch):
    """Through autograd the forward prepares its backward's launches (`_BackwardPlan`), so the
    backward, on autograd's device thread on a GPU, chooses no tiles and builds no tables or
    shared arguments: it launches what `attention_backward` called without a plan launches, in
    the same order, with the same grids, arguments and options, and the gradients are the
    same (residue classes with a band, documents, one pass over a gather component, ':a' dQ;
    with dropout, and a bias with and without its gradient, which decides ':a').  Both autograd
    entries: the generated module's own `attention` and `Pattern.module` (the custom op's eager
    path)."""
    if tiles:
        monkeypatch.setenv("ATTNLANG_TILES", tiles)
    mod = generated(_expr(text), tmp_path)
    phase = []
    calls = record_host_work(mod, monkeypatch, lambda: phase[-1] if phase else "fwd")
    real_backward = mod.attention_backward

    def backward(*args):
        phase.append("bwd")
        try:
            return real_backward(*args)
        finally:
            phase.pop()
    monkeypatch.setattr(mod, "attention_backward", backward)
    g = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g).requires_grad_(True) for _ in range(3))
    bias = torch.randn(1, 2, 37, 37, generator=g).requires_grad_(bias_grad)
    seg = torch.tensor([0] * 11 + [1] * 20 + [2] * 6) if "segment" in text else None
    call = mod.attention if entry == "generated" else pattern_of(_expr(text)).module(
        backend="triton", block_m=16, block_n=16, cache_dir=tmp_path, dropout=0.2)
    kwargs = dict(dropout_p=0.2) if entry == "generated" else {}
    out, lse = call(q, k, v, segments=seg, attn_bias=bias, return_lse=True,
                    generator=torch.Generator().manual_seed(3), **kwargs)
    do = torch.randn(out.shape, generator=g)
    out.backward(do)
    planned = [call for where, call in calls if where == "bwd"]
    assert planned and all(not isinstance(call, str) for call in planned)  # launches only
    assert any(call == "_prepare" for where, call in calls if where == "fwd")
    # the same backward without a plan, from the tensors autograd saved
    seed = next(call[2][-1] for _, call in calls
                if not isinstance(call, str) and call[0].__name__.startswith("_fwd"))
    calls.clear()
    from attnlang import validate  # the module's own copy keeps its own int32 ids
    validator = mod._validate if entry == "generated" else validate
    v_ = validator.validate(q, k, v, segments=seg, attn_bias=bias, dropout_p=0.2,
                            needs_segments=mod.USES_SEGMENT)
    grads = real_backward(do, v_.q.detach(), v_.k.detach(), v_.v.detach(), out.detach(), lse,
                          v_.scale, v_.seg_q, v_.seg_k, None, None, v_.attn_bias.detach(), 0.2,
                          seed, bias_grad)
    unplanned = [call for _, call in calls if not isinstance(call, str)]
    assert [_launch_signature(c) for c in unplanned] == [_launch_signature(c) for c in planned]
    for got, want in zip((q.grad, k.grad, v.grad), grads[:3]):
        assert torch.equal(got, want)
    if bias_grad:
        assert torch.equal(bias.grad, grads[3].sum(0, keepdim=True))


@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "window(9) & segment",
                                  "causal & (chunk(8) | cols(every(8, 6..8)))"])
def test_a_call_reuses_the_launches_prepared_for_its_geometry(text, tmp_path, monkeypatch):
    """A call whose geometry (shapes, dtype, device, scale, seed, gradients, tiles) and ids are
    those of an earlier call launches what that call prepared: no tiles, tables or argument
    lists, the same launches, the same results.  A new scale, a key padding mask or dropout
    prepare the call again, and an in-place change of the ids builds their bounds again (residue
    classes with a band, documents, one pass over a gather component)."""
    mod = generated(_expr(text), tmp_path)
    work = record_host_work(mod, monkeypatch)
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 1, 37, 16, generator=g).requires_grad_(True) for _ in range(3))
    do = torch.randn(q.shape, generator=g)
    seg = torch.tensor([0] * 11 + [1] * 20 + [2] * 6) if "segment" in text else None

    def step(**kwargs):
        work.clear()
        for t in (q, k, v):
            t.grad = None
        out = mod.attention(q, k, v, segments=seg, **kwargs)
        out.backward(do)
        calls = [c for _, c in work]
        prepared = [c for c in calls if isinstance(c, str)]
        return out, [t.grad for t in (q, k, v)], prepared, [
            _launch_signature(c) for c in calls if not isinstance(c, str)]

    first = step()
    again = step()
    assert first[2] and not again[2]  # prepared once
    # the same launches, but for the documents' bounds, built once and kept
    assert again[3] == [c for c in first[3] if c[0] != "_segment_bounds"]
    for x, y in zip([first[0], *first[1]], [again[0], *again[1]]):
        assert torch.equal(x, y)
    assert step(scale=0.3)[2]
    if seg is not None:
        seg[-3:] = 3  # in place: a new document at the end
        changed = step()
        # new ids: their bounds are built again (the launches themselves are the earlier call's
        # with the new bounds swapped in, `_rebound`)
        assert any(c[0] == "_segment_bounds" for c in changed[3])
        from attnlang import reference
        keep = reference.mask(_expr(text), 37, 37, num_heads=1, segments=seg)
        ref, _ = reference.attention(q.detach().double(), k.detach().double(),
                                     v.detach().double(), keep[None])
        assert torch.allclose(changed[0].double(), ref, atol=1e-4)
    pad = torch.ones(1, 37, dtype=torch.bool)
    pad[0, 30:] = False
    assert step(key_padding_mask=pad)[2] and step(key_padding_mask=pad)[2]
    assert step(dropout_p=0.1)[2] and step(dropout_p=0.1)[2]


@pytest.mark.parametrize("tiles", ["fwd=16x16:4:1,dkdv=16x16:4:1:t,dq=16x32:4:1",
                                   "fwd=16x16:4:1:d,dkdv=16x16:4:1:t:d,dq=16x32:4:1:d"])
@pytest.mark.parametrize("text", ["causal & (window(5, 0) | stride(8))", "causal & segment"])
def test_kept_launches_take_their_prepared_options(text, tiles, tmp_path, monkeypatch):
    """What a call's tensors decide (descriptors, dQ's atomics) is what its launches were
    prepared with, so every launch of a kept call passes its prepared options themselves (the
    direct launches' fast path, `_launch_prepared`), with tiles that read through descriptors
    and without them, in launches of any size -- and the gradients are the reference's."""
    monkeypatch.setenv("ATTNLANG_TILES", tiles)
    expr = _expr(text)
    mod = generated(expr, tmp_path)
    monkeypatch.setattr(mod, "HOST_DESC_MIN_PROGRAMS", 0)
    seen = []

    def launch(p, head, options, real=mod._launch_prepared):
        seen.append((p.kernel.__name__, options is p.options))
        return real(p, head, options)
    monkeypatch.setattr(mod, "_launch_prepared", launch)
    segments = torch.tensor([0] * 20 + [1] * 31 + [2] * 13) if "segment" in text else None
    for _ in range(2):
        seen.clear()
        check_against_reference(mod.attention, expr, B=2, Hq=2, Hkv=1, Lq=64, Lk=64, D=16,
                                dtype=torch.float32, segments=segments)
    assert {name for name, _ in seen} >= {"_bwd_dkdv_0", "_fwd_0"}
    assert all(same for _, same in seen), seen
