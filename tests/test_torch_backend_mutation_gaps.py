"""Mutation gaps of torch_backend.py and api.py (round 65): each test names the mutant it kills.

The blocked PyTorch backend is called directly (forward and the hand-written backward) and its
out, lse and gradients are compared with the float64 reference (``reference.attention`` over
``reference.mask``).  Small, deterministic, no Hypothesis.
"""
import torch

import attnlang
from attnlang import reference, torch_backend
from attnlang.functional import as_pattern
from attnlang.predicate import mix32
from attnlang.torch_backend import TorchBackend, dropout_keep

from kernel_utils import randn

TOL = dict(atol=2e-5, rtol=2e-5)



def backend_run(text, q, k, v, do, bm, bn, seg=None, kpm=None, attn_mask=None, bias=None,
                p=0.0, seed=0, need_dbias=False):
    """The backend's ``(out, lse, dq, dk, dv, dbias)``."""
    tb = TorchBackend(as_pattern(text).ir, bm, bn)
    scale = q.shape[-1] ** -0.5
    sq, sk = (None, None) if seg is None else seg
    out, lse = tb.attention_forward(q, k, v, scale, sq, sk, kpm, attn_mask, bias, p, seed)
    grads = tb.attention_backward(do, q, k, v, out, lse, scale, sq, sk, kpm, attn_mask, bias,
                                  p, seed, need_dbias)
    return (out, lse) + tuple(grads)


def reference_run(text, q, k, v, do, seg=None, kpm=None, attn_mask=None, bias=None, p=0.0,
                  seed=0):
    """The float64 reference's ``(out, lse, dq, dk, dv, dbias)`` (dbias for a full bias)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    expr = as_pattern(text).ir
    if seg is None:
        keep = reference.mask(expr, Lq, Lk, num_heads=H).unsqueeze(0).expand(B, H, Lq, Lk)
    else:
        keep = torch.stack([reference.mask(expr, Lq, Lk, num_heads=H,
                                           segments=(seg[0][b], seg[1][b])) for b in range(B)])
    if kpm is not None:
        keep = keep & kpm.view(B, 1, 1, Lk)
    if attn_mask is not None:
        keep = keep & attn_mask
    drop = None
    if p:
        ix = [torch.arange(n).view([-1 if i == d else 1 for i in range(4)])
              for d, n in enumerate((B, H, Lq, Lk))]
        drop = dropout_keep(seed, *ix, H, p)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    b64 = None if bias is None else bias.double().contiguous().requires_grad_()
    out, lse = reference.attention(*leaves, mask=keep, bias=b64, dropout_mask=drop, dropout_p=p)
    out.backward(do.double())
    grads = [t.grad for t in leaves] + [None if b64 is None else b64.grad]
    return (out, lse) + tuple(grads)


def assert_matches(got, want, names=("out", "lse", "dq", "dk", "dv", "dbias")):
    for name, g, w in zip(names, got, want):
        if g is None or w is None:
            continue
        assert torch.allclose(g.double(), w.double(), **TOL), name


def problem(B=1, Hq=2, Hkv=2, Lq=13, Lk=13, D=8, seed=0):
    q, k, v = randn(B, Hq, Lq, D, seed=seed), randn(B, Hkv, Lk, D, seed=seed + 1), \
        randn(B, Hkv, Lk, D, seed=seed + 2)
    return q, k, v, randn(B, Hq, Lq, D, seed=seed + 3)


def test_components_merge_by_lse_with_partial_columns():
    """Mutants tb_lse_merge_max, tb_merge_wold_one, tb_block_lse_no_mx, tb_keys_full_only: a
    union of two components (a window and periodic columns) with blocks cut mid-row."""
    text = "window(3) | cols(every(23, 5..9))"
    q, k, v, do = problem(Lq=45, Lk=45)
    q = q * 3  # scores far from 0, so a block's lse without its max shows
    assert_matches(backend_run(text, q, k, v, do, 16, 16), reference_run(text, q, k, v, do))


def test_grouped_heads_sum_their_gradients_into_one_kv_head():
    """Mutant tb_kv_heads_mod (kv head ``h % Hkv`` instead of ``h // rep``): with 4 query heads
    on 2 kv heads and a head-dependent pattern, keys and gradients go to the right kv head."""
    text = "causal & (heads({0, 1}) | window(2))"
    q, k, v, do = problem(Hq=4, Hkv=2, Lq=37, Lk=37)
    assert_matches(backend_run(text, q, k, v, do, 16, 16), reference_run(text, q, k, v, do))


def test_a_head_dependent_partial_block_is_masked_per_head():
    """Mutant tb_pred_heads_zero (the partial columns evaluated at head 0 for every head)."""
    text = "heads({0}) & causal | heads({1}) & window(1)"
    q, k, v, do = problem(Hq=2, Hkv=1, Lq=37, Lk=37)
    assert_matches(backend_run(text, q, k, v, do, 16, 16), reference_run(text, q, k, v, do))


def test_key_padding_attn_mask_and_bias_with_empty_rows():
    """Mutants tb_kpm_ignored, tb_attn_mask_ignored, tb_mx_no_guard, tb_delta_zero,
    tb_delta_from_lse_rows: rows emptied by the masks give out 0, lse -inf and finite
    gradients; the others match the reference."""
    text = "causal"
    B, H, L = 2, 2, 37
    q, k, v, do = problem(B=B, Hq=H, Hkv=H, Lq=L, Lk=L)
    kpm = torch.ones(B, L, dtype=torch.bool)
    kpm[0, :3] = False  # batch 0: rows 0..2 see no key
    am = randn(B, H, L, L, seed=9) > -0.8
    bias = randn(B, H, L, L, seed=7)
    bias[1, 1, 4, :5] = float("-inf")  # an empty row by bias alone
    bias[1, 0, 6, 2] = float("-inf")
    got = backend_run(text, q, k, v, do, 16, 16, kpm=kpm, attn_mask=am, bias=bias,
                      need_dbias=True)
    want = reference_run(text, q, k, v, do, kpm=kpm, attn_mask=am, bias=bias)
    assert_matches(got, want)
    assert torch.equal(got[1][0, :, :3], torch.full((H, 3), float("-inf")))
    assert torch.equal(got[0][0, :, :3], torch.zeros(H, 3, 8))
    assert torch.isfinite(got[2]).all()


def test_bias_gradient_sums_over_broadcast_dimensions_and_blocks():
    """Mutants tb_dbias_no_accumulate, tb_dbias_bcast_ignored, tb_dbias_idx_n_ge1: a bias
    broadcast over batch and heads has a ``[1, 1, Lq, Lk]`` gradient summed over them."""
    text = "window(4) | cols({0})"
    B, H, L = 2, 2, 37
    q, k, v, do = problem(B=B, Hq=H, Hkv=1, Lq=L, Lk=L)
    base = randn(1, 1, L, L, seed=5)
    bias = base.expand(B, H, L, L)
    got = backend_run(text, q, k, v, do, 16, 16, bias=bias, need_dbias=True)
    want = reference_run(text, q, k, v, do, bias=bias)
    assert got[5].shape == (1, 1, L, L)
    assert torch.allclose(got[5].double(), want[5].sum((0, 1), keepdim=True), **TOL)
    assert_matches(got[:5], want[:5])


def test_dropout_scales_kept_probabilities_forward_and_backward():
    """Mutants tb_drop_no_rescale_fwd, tb_drop_fwd_skipped, tb_drop_pd_no_drop,
    tb_drop_dp_no_drop: dropout keep-mask and its 1/(1-p) scale in out, dq, dk and dv."""
    text = "causal | cols({1})"
    q, k, v, do = problem(B=2, Hq=2, Hkv=1, Lq=37, Lk=37)
    got = backend_run(text, q, k, v, do, 16, 16, p=0.3, seed=12345)
    assert_matches(got, reference_run(text, q, k, v, do, p=0.3, seed=12345))


def test_dropout_seed_uses_its_high_32_bits():
    """Mutant tb_drop_seed_hi_dropped: seeds differing only above bit 32 drop other pairs."""
    ix = [torch.arange(n).view([-1 if i == d else 1 for i in range(4)])
          for d, n in enumerate((1, 2, 8, 8))]
    a = dropout_keep(5, *ix, 2, 0.5)
    b = dropout_keep(5 + (1 << 32), *ix, 2, 0.5)
    assert not torch.equal(a, b)


def test_segments_for_cross_attention_use_each_sides_ids_per_batch():
    """Mutant tb_seg_sk_from_sq: query and key segment ids differ (Lq != Lk) and differ per
    batch row."""
    text = "segment & causal | segment & cols({0})"
    B, Lq, Lk = 2, 18, 27
    q, k, v, do = problem(B=B, Hq=1, Hkv=1, Lq=Lq, Lk=Lk)
    sq = torch.tensor([[0, 0, 1, 1, 2, 2] * 3, [0, 1, 1, 1, 1, 3] * 3]).sort().values
    sk = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2] * 3, [0, 0, 1, 1, 1, 3, 3, 3, 3] * 3])
    sk = sk.sort().values
    got = backend_run(text, q, k, v, do, 16, 16, seg=(sq, sk))
    assert_matches(got, reference_run(text, q, k, v, do, seg=(sq, sk)))


def test_work_cache_tells_head_counts_key_lengths_and_block_sizes_apart():
    """Mutants tb_cache_key_no_heads, tb_cache_key_no_klen: the cached work of one geometry
    must not be reused for another head count or key length."""
    torch_backend._WORK.clear()
    text = "heads({1}) | window(1)"
    for H, Lk, bn in ((1, 40, 16), (2, 40, 16), (2, 56, 16), (2, 56, 32)):
        q, k, v, do = problem(Hq=H, Hkv=H, Lq=40, Lk=Lk)
        assert_matches(backend_run(text, q, k, v, do, 16, bn)[:2],
                       reference_run(text, q, k, v, do)[:2])


def test_work_cache_keeps_the_newest_entry_even_past_its_budget(monkeypatch):
    """Mutant tb_work_evict_keep_one: one geometry over WORK_BYTES stays cached (a second call
    reuses it) instead of the cache evicting everything."""
    monkeypatch.setattr(torch_backend, "WORK_BYTES", 1)
    torch_backend._WORK.clear()
    q, k, v, do = problem(Lq=40, Lk=40)
    backend_run("causal", q, k, v, do, 16, 16)
    assert len(torch_backend._WORK) == 1


SRC = "pattern pa(w = 2) = window(w, 0) | segment & cols({0})\npattern hd = heads({1}) & causal"


def test_pattern_mask_layout_and_plan_pass_their_arguments():
    """Mutants api_mask_heads_dropped, api_layout_swap_blocks, api_plan_segments_dropped,
    api_plan_bm_default_64: ``Pattern.mask``/``layout``/``plan`` pass every argument on."""
    prog = attnlang.parse(SRC)
    p, h = prog["pa"].bind(w=1), prog["hd"]
    assert h.mask(4, 6, num_heads=2).shape == (2, 4, 6)
    assert torch.equal(h.mask(4, num_heads=2), reference.mask(h.ir, 4, 4, num_heads=2))
    assert not h.mask(4, num_heads=2)[0].any()
    lay = p.layout(64, 64, block_m=16, block_n=32, segments=torch.zeros(64, dtype=torch.long))
    assert (lay.block_m, lay.block_n) == (16, 32)
    seg = torch.arange(300) // 100
    plan_a = p.plan(300, segments=seg)
    plan_b = p.plan(300, segments=torch.zeros(300, dtype=torch.long))
    assert plan_a.describe() != plan_b.describe()
    assert "blocks 128x128" in p.plan(300, segments=seg).describe()


def test_pattern_bind_keeps_other_parameters_unbound_and_ir_is_simplified():
    """Mutants api_bind_fill_defaults, api_params_default_node, api_resolved_no_simplify:
    ``bind`` leaves the other parameters unbound, ``params`` gives plain values, ``ir`` is
    simplified."""
    prog = attnlang.parse("pattern pb(a = 3, b = 2) = window(a, b) & window(a + 1, b)")
    bound = prog["pb"].bind(a=1)
    assert bound.params == {"b": 2}
    assert prog["pb"].params == {"a": 3, "b": 2}
    assert "window(1, 2)" == str(bound.ir)



def _unmix32(x):
    """The inverse of ``mix32`` (each step is a bijection on uint32)."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * pow(0x846CA68B, -1, 1 << 32)) & m
    x ^= (x >> 15) ^ (x >> 30)
    x = (x * pow(0x7FEB352D, -1, 1 << 32)) & m
    return x ^ (x >> 16)


def test_dropout_keeps_a_pair_whose_hash_equals_the_threshold():
    """Mutant tb_drop_threshold_gt (``x > threshold``): the docs drop a pair when its hash falls
    *below* ``p * 2^32``; a seed solved backwards gives hash == threshold at (0, 0, 0, 0)."""
    x = 1 << 31  # the threshold of p = 0.5
    for _ in range(4):  # k, q, b * H + h and the seed's high word are all 0
        x = _unmix32(x)
    seed = _unmix32(x)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    h = mix32(torch.tensor(seed))
    for _ in range(4):
        h = mix32(h)
    assert int(h) == 1 << 31
    assert bool(dropout_keep(seed, zero, zero, zero, zero, 1, 0.5))


def test_pattern_module_keeps_the_requested_backend_and_options():
    """Mutant api_module_backend_torch (``Pattern.module`` always asks for "torch"): the
    default "auto" must reach the module (Triton for CUDA tensors)."""
    p = attnlang.parse("pattern cz = causal")["cz"]
    assert p.module().backend == "auto"
    layer = p.module(backend="torch", dropout=0.25)
    assert (layer.backend, layer.dropout) == ("torch", 0.25)
