"""A gather component's backward on the Gluon kernel (the fixed pattern's summary columns), as far
as a machine without a GPU can check it.

Which modules have such a component (GLUON_GATHER), each key's first query (`_gather_first`,
against the component's own predicate and the dense masks), and a generated module's training
step through `_gluon_gather_backward` -- the `tl` kernels of the other components in Triton's
interpreter, `gluon_backward.gather_backward`'s kernel emulated in float64 on the tensors its
descriptors read and write (`_emulate`) -- against the dense float64 reference, with the
routing rules.  The kernel itself runs on sm_90 GPUs only: `benchmarks/gpu_check.py --gluon`
checks it there."""
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import attnlang
from attnlang.cache import load_module
from attnlang.predicate import evaluate
from attnlang.plan import decompose
from budget import scaled

gb = pytest.importorskip("attnlang.gluon_backward")
from gluon_python import check_tiles, emulate_backward  # noqa: E402
from test_gluon_strided import _check_step  # noqa: E402

FIXED = "causal & (chunk({c}) | cols(every({c}, {a}..{c})))"


def _module(text):
    return load_module(attnlang.parse(f"pattern x = {text}")["x"])


def _gather_keys(module, Lq, Lk):
    """The module's gather component's packed keys at these lengths, as its launches take them."""
    q, k = torch.zeros(1, 1, Lq, 64), torch.zeros(1, 1, Lk, 64)
    return module._prepare(q, k, "dq", None, None, None)[3][module.GLUON_GATHER]["kindex"]


def test_which_modules_have_a_gluon_gather_component():
    """A gather component run in one pass with identity ones; not a lone gather, a pattern of
    residue classes, a band, or a gather component that keeps other pairs in other heads."""
    assert _module(FIXED.format(c=128, a=112)).GLUON_GATHER == 1
    assert _module("window(4, 0) | cols(every(16, 12..16))").GLUON_GATHER == 1
    for text in ("causal & window(1023, 0)", "causal & (window(127, 0) | stride(128))",
                 "cols(every(16, 12..16))", "causal & segment",
                 "window(4, 0) | (cols(every(16, 12..16)) & heads(0..1))",
                 "window(4, 0) | (cols(every(16, 12..16)) & where(h == 0))"):
        assert _module(text).GLUON_GATHER is None, text


@settings(max_examples=scaled(30), deadline=None)
@given(st.sampled_from([4, 8, 16]), st.integers(1, 4), st.integers(1, 80), st.integers(0, 20),
       st.booleans())
def test_gather_first_names_exactly_each_keys_queries(c, width, Lq, extra, windowed):
    """Where `_gather_first` gives first queries, the component keeps exactly the pairs (q, key)
    with q >= first[key], and the whole pattern keeps them too; where it gives None, some key's
    queries are not those from its first on.  Lengths of any size, Lk >= Lq (queries at the
    bottom right)."""
    text = FIXED.format(c=c, a=c - width)
    if windowed:  # each summary column seen for c + 3 queries only: not from a first one on
        text = f"(causal & chunk({c})) | (cols(every({c}, {c - width}..{c})) & window({c + 3}, 0))"
    module = _module(text)
    Lk = Lq + extra
    keys = _gather_keys(module, Lq, Lk)
    module._FIRSTS.clear()
    first = module._gather_first(keys, Lq, Lk)
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    predicate = decompose(expr)[module.GLUON_GATHER].predicate
    rows = torch.arange(Lq)[:, None]
    keep = evaluate(predicate, rows, keys.long()[None, :], q_len=Lq, k_len=Lk)
    whole = evaluate(expr, rows, keys.long()[None, :], q_len=Lq, k_len=Lk)
    if first is None:
        assert windowed
        assert (keep[:-1] & ~keep[1:]).any()
    else:
        assert first.dtype == torch.int32
        assert torch.equal(keep, rows >= first.long()[None, :])
        assert not (keep & ~whole).any()
        if not windowed:  # the fixed pattern: a column is seen from the next chunk on
            want = torch.clamp((keys.long() // c + 1) * c - (Lk - Lq), 0, Lq)
            assert torch.equal(first.long(), want)


def _emulate(kernel, grid, args, options, extra=()):
    """`band_backward_kernel` with FIRST emulated in float64 on the tensors its descriptors read
    and write: the packed keys' dK and dV, and dQ added to its float32 sums, from the rows
    kernel's terms.  Other kernels launch as they are (the interpreter)."""
    from attnlang import gluon_hopper as gh
    if getattr(getattr(kernel, "fn", None), "__name__", "") != "band_backward_kernel":
        return gh.jit_launch(kernel, grid, args, options)
    assert options["FIRST"] and not options["SEGMENTS"] and not options["GLOBAL"]
    a = dict(zip(kernel.arg_names, args))
    check_tiles(kernel, a, options)
    emulate_backward(a, torch.arange(a["Lq"])[:, None] >= a["segk_ptr"].long()[None, :])


@pytest.mark.parametrize("pairs_tile, routes", [
    (None, {(64, 64): "pairs 1", (50, 50): "pairs 1", (50, 61): "kernels"}),
    ("16x32:4:1:t", {(64, 64): "pairs 2", (40, 40): "pairs 2", (50, 61): "kernels"}),
])
def test_a_training_step_of_the_fixed_pattern_through_the_gluon_gather_path(
        monkeypatch, pairs_tile, routes):
    """A generated fixed pattern's backward gives its summary columns to `gather_backward` (the
    kernel emulated) and the chunks to the `tl` kernels; its gradients are the reference's, at
    lengths that are and are not multiples of the tiles, Lk > Lq included.  The chunks' route
    (`_pairs_launches`): where each chunk query block meets one key block, the PAIRS kernel
    ("pairs R", R the most query blocks a key block meets: the CPU's 32x32 tile gives R = 1, a
    16x32 one R = 2, summing dK and dV over a key block's pairs; at 40 tokens the last key
    block has one pair, the other not live); elsewhere FUSED's dQ kernel and a dK/dV kernel
    ("kernels")."""
    if pairs_tile:
        monkeypatch.setenv("ATTNLANG_TILES", f"pairs={pairs_tile}")
    module = _module(FIXED.format(c=16, a=12))
    if module._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    ran, chunks = [], []
    launch = module._launch

    def emulate(kernel, grid, args, options, extra=()):
        name = getattr(getattr(kernel, "fn", None), "__name__", "")
        if name == "band_backward_kernel":
            ran.append(options["FIRST"])
            return _emulate(kernel, grid, args, options)
        if name.startswith("_bwd_pairs"):
            chunks.append(f"pairs {options['PAIRS_PER']}")
        elif name.startswith("_bwd_dkdv"):
            chunks.append("dkdv")
        elif name == "_bwd_dq_fused":
            chunks.append("dq")
        return launch(kernel, grid, args, options, extra)
    monkeypatch.setattr(module, "_launch", emulate)
    monkeypatch.setattr(module, "_gluon_gather_ok", lambda q, *rest: q.shape[2] >= 40)
    monkeypatch.setattr(module, "GLUON_GATHER_WAVES", 0)  # (4 programs on the CPU's 4 "SMs")
    monkeypatch.setattr(module, "_CALLS", {})
    expr = attnlang.parse(f"pattern x = {FIXED.format(c=16, a=12)}")["x"].ir
    for (Lq, Lk), route in routes.items():
        torch.manual_seed(Lq + Lk)
        ran.clear()
        chunks.clear()
        _check_step(module, expr, torch.randn(2, 2, Lq, 64), torch.randn(2, 2, Lk, 64),
                    torch.randn(2, 2, Lk, 64), torch.randn(2, 2, Lq, 64))
        assert ran == [True]
        assert chunks == (["dq", "dkdv"] if route == "kernels" else [route]), (Lq, Lk)


def test_the_gather_grids_head_group_comes_from_the_calls_plan(monkeypatch):
    """The heads the Gluon kernel's grid takes at a time are `gather_group`'s answer, asked once
    per call plan (kept for later calls of the same shape) with the keys' first queries, the
    query count, batches times heads, the device's multiprocessors (4 on the CPU) and the head
    dimension; the gradients are the reference's whatever it answers (here 1, not HEAD_GROUP's
    4)."""
    text = FIXED.format(c=16, a=12)
    module = _module(text)
    gluon = module._gluon_module("gluon_backward")
    if gluon is None:
        pytest.skip("this Triton has no Gluon")
    asked, groups = [], []

    def gather_group(first, Lq, BH, slots, D):
        asked.append((first.tolist(), Lq, BH, slots, D))
        return 1
    monkeypatch.setattr(gluon, "gather_group", gather_group)
    launch = module._launch

    def emulate(kernel, grid, args, options, extra=()):
        if getattr(getattr(kernel, "fn", None), "__name__", "") == "band_backward_kernel":
            groups.append(dict(zip(kernel.arg_names, args))["group"])
            return _emulate(kernel, grid, args, options)
        return launch(kernel, grid, args, options, extra)
    monkeypatch.setattr(module, "_launch", emulate)
    monkeypatch.setattr(module, "_gluon_gather_ok", lambda *args: True)
    monkeypatch.setattr(module, "GLUON_GATHER_WAVES", 0)
    monkeypatch.setattr(module, "_CALLS", {})
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    for seed in (0, 1):
        torch.manual_seed(seed)
        _check_step(module, expr, *(torch.randn(2, 2, 64, 64) for _ in range(4)))
    first = module._gather_first(_gather_keys(module, 64, 64), 64, 64)
    assert asked == [(first.tolist(), 64, 4, 4, 64)]
    assert groups == [1, 1]


def _one_key_block(chunk, length, block_m, block_n):
    """Whether every query block of `causal & chunk(chunk)` at these tiles meets one key block:
    a query q keeps the keys from its chunk's first to itself."""
    for start in range(0, length, block_m):
        last = min(start + block_m, length) - 1
        if (start - start % chunk) // block_n != last // block_n:
            return False
    return True


@settings(max_examples=scaled(5), deadline=None)
@given(chunk=st.sampled_from([8, 16, 32, 64]), length=st.integers(33, 96),
       tile=st.sampled_from([(32, 32, None), (16, 32, "16x32:4:1:t"), (32, 64, "32x64:4:1:t")]))
@example(chunk=64, length=70, tile=(32, 32, None))  # a chunk query block meets two key blocks
@example(chunk=8, length=41, tile=(16, 32, "16x32:4:1:t"))  # the last key block: one live pair
def test_the_chunks_route_and_gradients_at_random_chunks_lengths_and_tiles(chunk, length, tile):
    """Fixed patterns of random chunk sizes through the gather path at random lengths and pairs
    tiles: the chunks take the PAIRS kernel exactly where every chunk query block meets one key
    block (found here from the chunks' bounds), and the gradients are the reference's either
    way."""
    block_m, block_n, spec = tile
    text = FIXED.format(c=chunk, a=chunk - 4)
    module = _module(text)
    if module._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    with pytest.MonkeyPatch.context() as patch:
        if spec:
            patch.setenv("ATTNLANG_TILES", f"pairs={spec}")
        else:
            patch.delenv("ATTNLANG_TILES", raising=False)
        launched = _kernels_of_a_step(patch, text, lambda *args: True, (1, 2, length, 16),
                                      launch=_emulate)
    pairs = any(name.startswith("_bwd_pairs") for name in launched)
    has_columns = length > chunk - 4  # (else the `tl` backward: nothing for the Gluon kernel)
    assert pairs == (has_columns and _one_key_block(chunk, length, block_m, block_n))
    assert ("_bwd_dq_fused" in launched) == (not pairs)


@settings(max_examples=scaled(200), deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 200))
@example(64, 28, 132)  # 8k tokens, 28 heads on an H200: 16 a program (112 programs), not 14 (140)
def test_the_pairs_grid_fits_one_wave_with_the_fewest_key_blocks_a_program(n_kb, heads, slots):
    """KB_PER_PROGRAM of the chunks' PAIRS launch: its grid (ceil(n_kb / per) programs for each
    head: a program takes one head's blocks) fits one wave of the multiprocessors, with the
    fewest blocks a program that does; one program a head where nothing fits."""
    module = _module(FIXED.format(c=16, a=12))
    per = module._key_blocks_per_program(n_kb, heads, slots)

    def programs(p):
        return -(-n_kb // p) * heads
    assert 1 <= per <= n_kb
    assert programs(per) <= slots or per == n_kb
    assert per == 1 or programs(per - 1) > slots
    assert [module._key_blocks_per_program(*case, 132) for case in
            ((64, 32), (64, 28), (64, 24), (128, 16), (256, 16), (8, 200))] == \
        [16, 16, 13, 16, 32, 8]


def _kernels_of_a_step(monkeypatch, text, gather_ok, shape, launch=None, waves=0):
    """The names of the kernels one training step of ``text`` launches (its gradients checked
    against the reference), with ``gather_ok`` as the module's `_gluon_gather_ok`, ``waves`` as
    its GLUON_GATHER_WAVES (None: the module's own) and every launch through ``launch``
    (default: the module's `_launch`)."""
    module = _module(text)
    if waves is not None:
        monkeypatch.setattr(module, "GLUON_GATHER_WAVES", waves)
    launched = []
    launch = launch or module._launch

    def record(kernel, grid, args, options, extra=()):
        launched.append(getattr(getattr(kernel, "fn", None), "__name__", ""))
        return launch(kernel, grid, args, options, extra)
    monkeypatch.setattr(module, "_launch", record)
    monkeypatch.setattr(module, "_gluon_gather_ok", gather_ok)
    monkeypatch.setattr(module, "_CALLS", {})
    torch.manual_seed(0)
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    _check_step(module, expr, *(torch.randn(*shape) for _ in range(4)))
    return launched


def test_short_calls_of_the_fixed_pattern_run_the_tl_backward(monkeypatch):
    """Below the path's lengths (here 40 queries) the `tl` backward runs, and its gradients are
    the reference's."""
    launched = _kernels_of_a_step(monkeypatch, FIXED.format(c=16, a=12),
                                  lambda q, *rest: q.shape[2] >= 40, (2, 2, 24, 64))
    assert "band_backward_kernel" not in launched and "_bwd_dq_fused" in launched


@pytest.mark.parametrize("batch, heads", [(1, 2), (1, 5), (2, 3), (1, 8)])
def test_the_gather_path_takes_grids_of_gluon_gather_waves(monkeypatch, batch, heads):
    """The path runs where its grid has GLUON_GATHER_WAVES (1.5) programs a multiprocessor or
    more: on the CPU's 4, 6 programs -- here one block of packed keys a head (16 keys at 64
    tokens), so from 6 batches x heads; below, the `tl` backward.  Gradients the reference's
    either way."""
    module = _module(FIXED.format(c=16, a=12))
    if module._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    assert module.GLUON_GATHER_WAVES == 1.5 and module._sm_count(torch.device("cpu")) == 4
    assert module._gluon_module("gluon_backward").gather_programs(16, batch * heads) == \
        batch * heads
    launched = _kernels_of_a_step(monkeypatch, FIXED.format(c=16, a=12), lambda *args: True,
                                  (batch, heads, 64, 16), launch=_emulate, waves=None)
    assert ("band_backward_kernel" in launched) == (batch * heads >= 6)
    assert ("_bwd_dkdv_0" in launched) == (batch * heads < 6)


def test_calls_whose_gather_component_has_no_keys_run_the_tl_backward(monkeypatch):
    """At lengths where the component's column set has no key (columns 60..63 of every 64 at 40
    tokens), there is nothing for the Gluon kernel: the `tl` backward runs, and its gradients
    are the reference's."""
    text = "causal & (chunk(16) | cols(every(64, 60..64)))"
    assert not _gather_keys(_module(text), 40, 40).numel()
    launched = _kernels_of_a_step(monkeypatch, text, lambda *args: True, (1, 2, 40, 64))
    assert "band_backward_kernel" not in launched and "_rows_kernel" not in launched
    assert "_bwd_dq_fused" in launched


def test_which_calls_of_the_fixed_pattern_take_the_gluon_gather_path(monkeypatch):
    """From GLUON_GATHER_MIN queries up to GLUON_MAX_QUERIES, on sm_90 with 16-bit inputs, no
    dBias, dropout, masks, padding or grouped heads, and not with ATTNLANG_GLUON=0."""
    from test_gluon_band import NO_EXTRAS, _fake
    module = _module(FIXED.format(c=128, a=112))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("ATTNLANG_GLUON", raising=False)
    if module._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    ok = module._gluon_gather_ok
    for D in (64, 128):
        least = module.GLUON_GATHER_MIN[D]
        assert ok(*_fake(D=D, L=least), NO_EXTRAS, False)
        assert not ok(*_fake(D=D, L=least - 128), NO_EXTRAS, False)
        assert not ok(*_fake(D=D, L=module.GLUON_MAX_QUERIES + 128), NO_EXTRAS, False)
    assert not ok(*_fake(L=32768), NO_EXTRAS, True)  # dBias
    assert not ok(*_fake(L=32768, dtype=torch.float32), NO_EXTRAS, False)
    assert not ok(*_fake(L=32768, Hk=2), NO_EXTRAS, False)
    assert not ok(*_fake(L=32768), dict(NO_EXTRAS, HAS_DROPOUT=True), False)
    monkeypatch.setenv("ATTNLANG_GLUON", "0")
    assert not ok(*_fake(L=32768), NO_EXTRAS, False)
    assert not _module("causal & window(1023, 0)")._gluon_gather_ok(*_fake(L=32768), NO_EXTRAS,
                                                                    False)


@pytest.mark.parametrize("layout", ["rows", "heads inside", "offset"])
@pytest.mark.parametrize("d", [8, 6])
def test_packed_keys_in_runs_are_what_index_select_gives(layout, d):
    """Keys in runs at a period (`Axis.runs`: every(16, 12..16) over 64 keys) are packed from a
    strided view, and the packed keys' gradients added back through one; both equal
    `index_select` and `index_add` on tensors in any layout (rows of a head in order, heads
    inside a row, a view that starts into its storage; rows of whole int64 words, which the copy
    moves as words, and not), and keys not in such runs (61 keys: the last run cut short) keep
    `index_select`."""
    module = _module(FIXED.format(c=16, a=12))
    for Lk, expect_runs in ((64, (12, 16, 4, 4)), (61, None)):
        q = torch.zeros(2, 3, Lk, d)
        tables = module._prepare(q, q, "fwd", None, None, None)[3][module.GLUON_GATHER]
        index, runs = tables["kindex"], tables["kruns"]
        assert runs == expect_runs
        g = torch.Generator().manual_seed(Lk)
        base = torch.randn(2, Lk + 1, 3, d, generator=g).to(torch.bfloat16)
        k = {"rows": base[:, :Lk].transpose(1, 2).contiguous(),
             "heads inside": base[:, :Lk].transpose(1, 2),
             "offset": base.transpose(1, 2)[:, :, 1:]}[layout]
        v = k * 2 + 1
        kp, vp = module._packed((index, runs), k, v)
        assert kp.is_contiguous() and vp.is_contiguous()
        assert torch.equal(kp, k.index_select(2, index.long()))
        assert torch.equal(vp, v.index_select(2, index.long()))
        if runs is not None:
            grad = k.clone()
            view = module._strided_keys(grad, runs)
            view.add_(kp.view(view.shape))
            assert torch.equal(grad, k.index_add(2, index.long(), kp))
