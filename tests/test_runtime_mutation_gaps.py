"""Mutation gaps of runtime.py, cache.py and functional.py (round 65): each test names the mutant
it kills and the behaviour a user sees.  Small, deterministic, torch backend where it can be."""
import os
import stat

import pytest
import torch

import attnlang
from attnlang import cache, runtime
from attnlang import functional as F
from attnlang.runtime import make_module

from kernel_utils import randn

HUGE = "q * 100000000000 * 100000000000"  # a `where` too large at any call's lengths



def dense(q, k, v, keep):
    """Plain attention with a boolean keep mask ``[H, Lq, Lk]`` (every row keeps a key)."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v


def test_auto_picks_triton_for_cuda_tensors_and_torch_otherwise():
    """Mutant rt_auto_always_torch (``choose_backend`` returns "torch" for "auto"): docs say
    "auto" is Triton for CUDA tensors; the mutant would run CUDA inputs on the slow backend."""
    assert runtime.choose_backend("auto", torch.device("cuda", 0)) == "triton"
    assert runtime.choose_backend("auto", torch.device("cpu")) == "torch"
    assert runtime.choose_backend("torch", torch.device("cuda", 0)) == "torch"


def test_a_call_without_dropout_leaves_the_global_generator_alone():
    """Mutant rt_seed_drawn_always (``dropout_p >= 0`` draws a seed): a call without dropout
    advanced the global RNG, so a user's later ``torch.rand`` changed by calling attention."""
    q = randn(1, 1, 8, 16)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    F.attention(q, q, q, "causal", backend="torch")
    make_module("causal", "torch").train()(q, q, q)  # dropout 0.0 in training mode
    assert torch.equal(torch.rand(4), expected)


def test_assigning_cache_dir_writes_the_generated_module_there(tmp_path):
    """Mutant rt_setattr_cache_dir_no_reprepare (a ``cache_dir`` assignment keeps the ops): the
    Triton module must come from (and be stored in) the newly assigned directory."""
    first, second = tmp_path / "first", tmp_path / "second"
    layer = make_module("causal & window(5, 0)", "triton", cache_dir=str(first))
    assert [p.suffix for p in first.iterdir()] == [".py"]
    layer.cache_dir = second
    assert [p.name for p in second.iterdir()] == [p.name for p in first.iterdir()]


def test_an_empty_cache_dir_variable_means_the_default(monkeypatch):
    """Mutant ca_env_empty_used: ``ATTNLANG_CACHE_DIR=""`` is "not set" (docs: "when set and not
    empty"); the mutant wrote generated modules into the current directory."""
    monkeypatch.setenv("ATTNLANG_CACHE_DIR", "")
    assert cache.cache_dir() == cache.Path(os.path.expanduser("~/.cache/attnlang"))


def test_the_cache_key_takes_torchs_major_minor_only(monkeypatch):
    """Mutant ca_torch_full_version: the key holds torch's major.minor (docs), so a patch release
    or a local build tag keeps the cached modules; the mutant missed the cache on each."""
    p = F.as_pattern("causal")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    base = cache.cache_key(p)
    monkeypatch.setattr(torch, "__version__", "2.5.3")
    assert cache.cache_key(p) == base
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert cache.cache_key(p) != base


def test_write_atomic_moves_a_temporary_of_the_same_folder_into_place(tmp_path, monkeypatch):
    """Mutant ca_nonatomic_write (the text written straight onto the final name): a reader racing
    the writer could see half a module; the file must arrive by ``os.replace``."""
    moves = []
    real = os.replace
    monkeypatch.setattr(cache.os, "replace", lambda a, b: (moves.append((a, b)), real(a, b)))
    target = tmp_path / "m.py"
    cache.write_atomic(target, "x = 1\n")
    assert target.read_text() == "x = 1\n"
    assert len(moves) == 1 and os.fspath(moves[0][1]) == os.fspath(target)
    assert os.path.dirname(moves[0][0]) == str(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_write_atomic_writes_through_a_symbolic_link(tmp_path):
    """Mutant ca_no_realpath: the docstring says a link is written through and stays a link; the
    mutant replaced the link by a plain file and left its target stale."""
    real = tmp_path / "real.py"
    real.write_text("old\n")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    cache.write_atomic(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert stat.S_ISREG(os.stat(real).st_mode)


def test_an_assigned_pattern_that_uses_segments_requires_them():
    """Mutant rt_module_needs_segments_stale (``_needs_segments`` kept from the first pattern):
    after ``layer.pattern = "causal & segment"`` a call without ids must be validate's
    ``segments:`` ValueError, not an error from deep inside the backend."""
    layer = make_module("causal", "torch")
    q = randn(1, 1, 8, 16)
    layer(q, q, q)
    layer.pattern = "causal & segment"
    with pytest.raises(ValueError, match="^segments: got None"):
        layer(q, q, q)


def test_a_torch_module_generates_no_triton_module(tmp_path):
    """Mutant rt_prepare_always_triton: ``backend="torch"`` (or "auto" without CUDA) must not
    render, write and import a generated Triton module into ``cache_dir``."""
    make_module("causal & window(3, 0)", "torch", cache_dir=str(tmp_path / "t"))
    if not torch.cuda.is_available():
        make_module("causal & window(3, 0)", "auto", cache_dir=str(tmp_path / "a"))
    assert not (tmp_path / "t").exists() and not (tmp_path / "a").exists()


def test_texts_are_kept_by_their_value_not_their_identity():
    """Mutant fn_text_key_by_id (text patterns kept under ``id(text)``): a text freed after a
    call (and dropped from the parse cache, here cleared; it holds 256 texts) left its id to the
    next text, whose call then ran the earlier pattern."""
    q = randn(1, 1, 12, 16)
    for width in range(1, 9):
        text = "".join(["window(", str(width), ", 0)"])  # a fresh object each time
        out = F.attention(q, q, q, text, backend="torch")
        i = torch.arange(12)
        keep = ((i[:, None] - i[None, :]) >= 0) & ((i[:, None] - i[None, :]) <= width)
        torch.testing.assert_close(out, dense(q, q, q, keep[None]), atol=1e-5, rtol=1e-5)
        del text
        F._parse_expression.cache_clear()  # as 256 later texts would


def test_the_plan_of_a_per_head_pattern_is_kept_per_head_count():
    """Mutant tb_work_key_no_heads (the torch backend's work cache ignores the head count): the
    plan of ``heads({-1})`` at 2 heads was reused at 3, giving head 1 the last head's keys."""
    text = "heads({-1}) & all | causal"
    for heads in (2, 3):
        q = randn(1, heads, 16, 16, seed=heads)
        out = F.attention(q, q, q, text, backend="torch")
        keep = torch.ones(16, 16, dtype=torch.bool).tril().repeat(heads, 1, 1)
        keep[-1] = True
        torch.testing.assert_close(out, dense(q, q, q, keep), atol=1e-5, rtol=1e-5)


def test_a_refused_pattern_assignment_changes_nothing():
    """``layer.pattern = p`` for a pattern with an unset parameter raises (as the constructor
    does) and changes nothing.  Until round 65 ``layer.pattern`` was ``p`` afterwards while the
    calls still computed the old pattern, and ``repr(layer)`` raised the binding error."""
    layer = make_module("causal", "torch")
    q = randn(1, 1, 8, 16)
    causal = layer(q, q, q)
    unbound = attnlang.parse("pattern w(n) = window(n)")["w"]
    with pytest.raises(ValueError, match="needs parameter 'n'"):
        layer.pattern = unbound
    torch.testing.assert_close(layer(q, q, q), causal, rtol=0, atol=0)
    assert layer.pattern is not unbound
    repr(layer)


def test_a_refused_text_assignment_keeps_errors_at_the_modules_text():
    """``layer.pattern = "causal &"`` is refused and the module's text stays its own: until round
    65 the refused text was kept as the (old) pattern's source, and a later call-time error
    quoted it."""
    text = f"where({HUGE} > k)"
    layer = make_module(text, "torch")
    with pytest.raises(attnlang.AttnError):
        layer.pattern = "causal &"
    q = randn(1, 1, 4, 16)
    with pytest.raises(attnlang.AttnError) as info:
        layer(q, q, q)
    assert (info.value.line, info.value.column, info.value.source_line) == (1, 7, text)


def test_a_block_size_of_8_is_refused_by_name():
    """Mutant rt_block_min_8 (``value < 8``): block sizes are powers of two of at least 16; the
    mutant accepted 8 (smaller than a Triton dot's tile) from the functional call and modules."""
    q = randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="^block_m: got 8; expected a power of two of at least 16"):
        F.attention(q, q, q, "causal", backend="torch", block_m=8)
    with pytest.raises(ValueError, match="^block_n: got 8; expected a power of two of at least 16"):
        make_module("causal", "torch", block_n=8)


def test_block_sizes_reach_the_torch_backend_that_runs(monkeypatch):
    """Mutants rt_torch_block_n_is_m (``block_n`` replaced by ``block_m``),
    fn_prepared_default_blocks (functional prepares ops at the default blocks),
    rt_opname_digest_expr_only (one op name per pattern: the first block sizes' op is reused) and
    rt_prepared_key_no_block_m: ``block_m``/``block_n`` choose the tiles of the backend that runs
    the call (docs: they change the speed, never the result)."""
    from attnlang.torch_backend import TorchBackend

    ran = []
    real = TorchBackend.attention_forward_with_plan

    def spy(self, *args):
        ran.append((self.block_m, self.block_n))
        return real(self, *args)

    monkeypatch.setattr(TorchBackend, "attention_forward_with_plan", spy)
    q = randn(1, 1, 40, 16)
    text = "causal & window(13, 0) | global(0..1) | cols({7})"  # a pattern of this test alone
    base = F.attention(q, q, q, text, backend="torch")
    for bm, bn in ((16, 32), (32, 16), (16, 16)):
        out = F.attention(q, q, q, text, backend="torch", block_m=bm, block_n=bn)
        torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
    layer = make_module(text, "torch", block_m=32, block_n=64)
    layer(q, q, q)
    assert ran == [(64, 64), (16, 32), (32, 16), (16, 16), (32, 64)]


def test_a_generator_makes_dropout_reproducible_in_both_entry_points():
    """Mutants rt_module_generator_dropped, rt_seed_ignores_generator and fn_generator_dropped:
    dropout draws its seed from ``generator``; the mutants drew it from the global generator,
    so two calls with equally seeded generators differed."""
    q = randn(1, 2, 16, 16)
    layer = make_module("causal", "torch", dropout=0.5).train()

    def twice(call):
        return [call(torch.Generator().manual_seed(7)) for _ in range(2)]

    for one, two in (twice(lambda g: layer(q, q, q, generator=g)),
                     twice(lambda g: F.attention(q, q, q, "causal", backend="torch",
                                                 dropout_p=0.5, generator=g))):
        assert torch.equal(one, two)
    assert not torch.equal(layer(q, q, q), layer.eval()(q, q, q))


def test_argument_errors_name_the_argument():
    """Mutants rt_generator_check_off, rt_cache_dir_check_off, rt_make_module_unknown_unchecked
    and fn_as_pattern_typeerror: each bad argument is a ValueError that starts with its name
    (docs), not a TypeError from inside, or nothing at all."""
    q = randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="^generator: got str; expected a torch.Generator"):
        F.attention(q, q, q, "causal", backend="torch", generator="seed")
    with pytest.raises(ValueError, match="^cache_dir: got int 3; expected a directory path"):
        make_module("causal", "torch", cache_dir=3)
    with pytest.raises(ValueError, match="^dropout_rate: got an unknown option; expected one"):
        make_module("causal", "torch", dropout_rate=0.1)
    with pytest.raises(ValueError, match="^pattern: got int 3; expected an attnlang.Pattern"):
        F.attention(q, q, q, 3, backend="torch")


def test_autocast_leaves_float64_inputs_alone():
    """Mutant rt_autocast_float64_too (every floating dtype cast): autocast leaves float64 alone
    (docs, as torch does), so float64 inputs are refused by name under autocast as without it;
    the mutant silently ran them in bfloat16."""
    q = randn(1, 1, 8, 16).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="^q: got dtype torch.float64; expected"):
            F.attention(q, q, q, "causal", backend="torch")


def test_a_triton_module_runs_its_generated_module(tmp_path, monkeypatch):
    """Mutant rt_ops_get_torch (the prepared "torch" op taken whatever the backend): a module
    built with ``backend="triton"`` ran the PyTorch backend.  The generated module's forward is
    stubbed here, so no kernel runs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    text = "causal & window(11, 0)"
    layer = make_module(text, "triton", cache_dir=str(tmp_path))
    module = cache.load_module(F.as_pattern(text), None, None, str(tmp_path))
    calls = []

    def stub(q, *rest):
        calls.append(q.shape)
        return torch.zeros_like(q), torch.zeros(q.shape[:3]), None

    monkeypatch.setattr(module, "attention_forward_with_plan", stub)
    q = randn(1, 1, 8, 16)
    assert torch.equal(layer(q, q, q), torch.zeros_like(q)) and calls == [q.shape]


def test_an_assigned_pattern_object_is_not_reported_against_the_old_text():
    """Mutant rt_setattr_text_stale (assigning a ``Pattern`` keeps the previous text): a call-time
    error of the new pattern was put in terms of the module's old text, quoting its line."""
    where = f"where({HUGE} > k)"
    layer = make_module("causal", "torch")
    layer.pattern = F.as_pattern(where)
    q = randn(1, 1, 4, 16)
    with pytest.raises(attnlang.AttnError) as info:
        layer(q, q, q)
    assert info.value.source_line == where and info.value.column == 7


def test_call_time_errors_of_an_as_pattern_object_are_at_the_texts_line():
    """``functional.as_pattern(text)`` returns a Pattern parsed as ``pattern _ =\\n`` + text; a
    `where` too large for a call's lengths is reported at ``<pattern>:1:7`` of a one-line text,
    as for the same text passed as a string (docs/runtime.md).  Until round 65 such a Pattern
    carried no text to the call, and the error was at the hidden wrapper's ``<pattern>:2:7``."""
    where = f"where({HUGE} > k)"
    q = randn(1, 1, 4, 16)
    with pytest.raises(attnlang.AttnError) as info:
        F.attention(q, q, q, F.as_pattern(where), backend="torch")
    assert (info.value.filename, info.value.line, info.value.column) == ("<pattern>", 1, 7)


def test_a_text_that_goes_on_with_a_declaration_is_refused():
    """Mutant fn_decl_after_allowed (``len(program) > 2``): a text followed by one declaration of
    its own is an error (docs); the mutant ran the first expression and ignored the rest."""
    q = randn(1, 1, 8, 16)
    with pytest.raises(attnlang.AttnError, match="found a declaration after it") as info:
        F.attention(q, q, q, "causal\npattern b = all", backend="torch")
    assert (info.value.line, info.value.source_line) == (2, "pattern b = all")


def test_an_expressions_error_echoes_the_lexers_line_after_a_form_feed():
    """A text given as one expression echoes the line the lexer counted (``\\n`` alone ends one):
    until round 65 ``functional.in_text`` took the text's lines with ``str.splitlines``, which
    also breaks at ``\\f``, and echoed ``two`` for an error on the line after it."""
    q = randn(1, 1, 4, 16)
    with pytest.raises(attnlang.AttnError) as info:
        F.attention(q, q, q, "# one\ftwo\nstride(0)", backend="torch")
    assert (info.value.filename, info.value.line, info.value.source_line) == \
        ("<pattern>", 2, "stride(0)")
