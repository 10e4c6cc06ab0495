"""LocalAttention against the ``local-attention`` package (1.11.2, a test dependency) over
random configurations: forward outputs and gradients, with dropout 0.

Where the package is wrong we compare against what it computes when used correctly and check
our own behaviour directly: rows with no key left (the package returns a mean of the
look-around values; we return zeros), and autopad without a mask in the non-causal case (the
package attends to the padding; we never do, which is what the package computes when given an
all-True mask).
"""
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from local_attention import LocalAttention as PackageLocalAttention

from attnlang.nn import LocalAttention
from attnlang.nn.local import local_pattern


def package_row_has_keys(n_pad, w, ws, causal, lb, lf, exact, shared_qk, key_ok):
    """[rows, n_pad] bool: whether the package leaves query i at least one key (brute force
    over its masking rules; ``key_ok`` [rows, n_pad] is the padded key padding mask)."""
    rows = key_ok.shape[0]
    out = torch.zeros(rows, n_pad, dtype=torch.bool)
    for i in range(n_pad):
        for j in range(n_pad):
            if not (-lf <= i // w - j // w <= lb):
                continue
            if causal and (j > i or (exact and i > j + ws * lb)):
                continue
            if not causal and exact and not (-ws * lf <= i - j <= ws * lb):
                continue
            out[:, i] |= key_ok[:, j]
    return out


CONFIG = st.fixed_dictionaries({
    "w": st.integers(1, 5), "buckets": st.integers(1, 4), "causal": st.booleans(),
    "lb": st.integers(0, 2), "lf": st.integers(0, 2), "exact": st.booleans(),
    "rotary": st.booleans(), "xpos": st.booleans(), "shared_qk": st.booleans(),
    "autopad": st.booleans(), "cut": st.integers(0, 4), "masked": st.booleans(),
    "lead": st.sampled_from([(2,), (1, 2), (2, 2), (3,)]), "d": st.sampled_from([8, 16]),
    "bias": st.booleans(), "scale": st.sampled_from([None, 0.3]), "seed": st.integers(0, 999),
})


@settings(deadline=None)
@given(cfg=CONFIG)
def test_matches_local_attention_package(cfg):
    w, causal, d, lead = cfg["w"], cfg["causal"], cfg["d"], cfg["lead"]
    lb, lf = cfg["lb"], 0 if causal else cfg["lf"]
    xpos = cfg["xpos"] and cfg["rotary"]
    assume(not (xpos and w < 2))  # the package's default xpos scale base, w // 2, is 0
    n = cfg["buckets"] * w
    if cfg["autopad"]:
        n = max(1, n - cfg["cut"] % w) if w > 1 else n
    gen = torch.Generator().manual_seed(cfg["seed"])
    q, k, v = (torch.randn(*lead, n, d, generator=gen, requires_grad=True) for _ in range(3))
    batch = lead[0]
    mask = torch.rand(batch, n, generator=gen) < 0.7 if cfg["masked"] else None
    heads = lead[-1] if len(lead) == 2 else 1
    span = (lb + lf + 1) * w
    bias = (torch.randn(heads, w, span, generator=gen, requires_grad=True)
            if cfg["bias"] else None)
    kwargs = dict(window_size=w, causal=causal, look_backward=lb, look_forward=lf, dropout=0.0,
                  shared_qk=cfg["shared_qk"], dim=d if cfg["rotary"] else None,
                  autopad=cfg["autopad"], exact_windowsize=cfg["exact"], scale=cfg["scale"],
                  use_xpos=xpos)
    ours = LocalAttention(**kwargs)
    theirs = PackageLocalAttention(**kwargs)
    # The package is right about autopad padding only when it is given a mask.
    their_mask = mask
    n_pad = -(-n // w) * w
    if mask is None and cfg["autopad"] and n_pad > n and not causal:
        their_mask = torch.ones(batch, n, dtype=torch.bool)
    out = ours(q, k, v, mask=mask, attn_bias=bias)
    expected = theirs(q, k, v, mask=their_mask, attn_bias=bias)
    assert out.shape == q.shape and not out.isnan().any()

    key_ok = torch.ones(batch, n_pad, dtype=torch.bool)
    key_ok[:, n:] = False
    if mask is not None:
        key_ok[:, :n] = mask
    alive = package_row_has_keys(n_pad, w, w, causal, lb, lf, cfg["exact"], cfg["shared_qk"],
                                 key_ok)[:, :n]
    alive = alive.reshape(batch, *([1] * (len(lead) - 1)), n, 1).expand(*lead, n, 1)
    torch.testing.assert_close(out * alive, expected * alive, atol=5e-5, rtol=1e-4)
    assert (out.masked_select(~alive) == 0).all()  # empty rows: zeros, not a mean

    g = torch.randn(out.shape, generator=gen) * alive
    inputs = (q, k, v) + ((bias,) if bias is not None else ())
    got = torch.autograd.grad((out * g).sum(), inputs)
    want = torch.autograd.grad((expected * g).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_seed_example_matches_package():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 100, 32) for _ in range(3))
    ours = LocalAttention(window_size=5, causal=True, dim=32).eval()
    theirs = PackageLocalAttention(window_size=5, causal=True, dim=32).eval()
    torch.testing.assert_close(ours(q, k, v), theirs(q, k, v), atol=2e-5, rtol=1e-4)


def test_xpos_long_sequence_and_window_override():
    """xpos over many buckets (several kernel calls) and the forward ``window_size`` override
    (xpos only); the exact window keeps the module's window size, as in the package."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 400, 16) for _ in range(3))
    for kw in (dict(), dict(exact_windowsize=True, causal=True)):
        args = dict(window_size=8, dim=16, use_xpos=True, dropout=0.0, **kw)
        ours, theirs = LocalAttention(**args), PackageLocalAttention(**args)
        torch.testing.assert_close(ours(q, k, v), theirs(q, k, v), atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(ours(q, k, v, window_size=16),
                                   theirs(q, k, v, window_size=16), atol=5e-5, rtol=1e-4)


def test_shared_qk_self_only_rows_use_their_own_value():
    """A query whose only unmasked key is itself attends to itself (the package's fallback)."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 8, 16) for _ in range(3))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 5] = True
    args = dict(window_size=2, causal=False, shared_qk=True, dropout=0.0)
    out = LocalAttention(**args)(q, k, v, mask=mask)
    expected = PackageLocalAttention(**args)(q, k, v, mask=mask)
    torch.testing.assert_close(out[0, 5], v[0, 5])
    torch.testing.assert_close(out[0, 2:8], expected[0, 2:8])  # every one of these sees key 5
    assert (out[0, :2] == 0).all()  # no key left at all: zeros (the package: a mean)
    assert not (expected[0, :2] == 0).all()


def test_autopad_padding_is_never_attended():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 10, 16) for _ in range(3))
    args = dict(window_size=4, causal=False, autopad=True, dropout=0.0, dim=16)
    out = LocalAttention(**args)(q, k, v)
    # Equal to the package given an all-True mask (which excludes the padding) ...
    full = torch.ones(2, 10, dtype=torch.bool)
    torch.testing.assert_close(out, PackageLocalAttention(**args)(q, k, v, mask=full),
                               atol=2e-5, rtol=1e-4)
    # ... and different from the package without one (it attends to the zero padding).
    assert not torch.allclose(out, PackageLocalAttention(**args)(q, k, v), atol=1e-3)


def test_patterns():
    assert local_pattern(8, True, 1, 0) == "causal & chunk(8, 1, 0)"
    assert local_pattern(8, False, 2, 1) == "chunk(8, 2, 1)"
    assert local_pattern(8, False, 2, 1, exact_window=8) == "window(16, 8)"
    assert local_pattern(8, True, 1, 0, exact_window=8) == "window(8, 0)"
    assert local_pattern(4, True, 1, 0, exact_window=8) == "causal & chunk(4, 1, 0) & window(8, 0)"
    assert local_pattern(8, False, 1, 1, shared_qk=True) == "(chunk(8, 1, 1)) & ~window(0)"


def test_dropout_only_in_training():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 16, 16) for _ in range(3))
    m = LocalAttention(window_size=4, dropout=0.5)
    m.eval()
    ref = m(q, k, v)
    torch.testing.assert_close(m(q, k, v), ref)
    m.train()
    assert not torch.allclose(m(q, k, v), ref)


@pytest.mark.parametrize("make, call, message", [
    (lambda: LocalAttention(4, causal=True, look_forward=1), None, "look_forward: got 1"),
    (lambda: LocalAttention(0), None, "window_size: got 0"),
    (lambda: LocalAttention(4), lambda m: m(*(torch.randn(1, 10, 16),) * 3),
     "multiple of window_size"),
    (lambda: LocalAttention(4), lambda m: m(*(torch.randn(1, 8, 16),) * 3, window_size=2),
     "window_size: got 2"),
    (lambda: LocalAttention(4), lambda m: m(*(torch.randn(1, 8, 16),) * 3,
                                            mask=torch.ones(1, 8)), "mask: got a torch.float32"),
    (lambda: LocalAttention(4), lambda m: m(*(torch.randn(1, 8, 16),) * 3,
                                            attn_bias=torch.ones(1, 4, 4)), "attn_bias: got"),
    (lambda: LocalAttention(4, dim=8), lambda m: m(*(torch.randn(1, 8, 16),) * 3), "dim: got 8"),
])
def test_errors_name_the_argument(make, call, message):
    with pytest.raises(ValueError, match=message):
        module = make()
        call(module)


def test_half_keeps_the_rotary_frequencies_in_float32():
    """``.half()`` moved ``inv_freq`` to float16, whose frequencies drift the angles of long
    sequences (4k tokens: about 5x the error of float32 frequencies); it stays float32 (float64
    under ``.double()``), and state dicts still load."""
    m = LocalAttention(window_size=64, causal=True, dim=32, use_rotary_pos_emb=True)
    want = m.rel_pos.inv_freq.clone()
    m.half()
    assert m.rel_pos.inv_freq.dtype == torch.float32
    assert torch.equal(m.rel_pos.inv_freq, want)
    m.double()
    assert m.rel_pos.inv_freq.dtype == torch.float64
    m.float().load_state_dict({"rel_pos.inv_freq": want * 2})
    assert torch.equal(m.rel_pos.inv_freq, want * 2)
