"""The CLI under bad usage: every mistake is one error line naming the file or the option (never
a traceback), options are checked before anything is printed, and files keep their metadata."""
import os
import stat
import types

import pytest

from attnlang.cli import _run, main

SOURCE = ("pattern lf(w = 8) = window(w) | global(0..4)\n"
          "pattern docs = causal & segment\n")


@pytest.fixture
def attn_file(tmp_path):
    path = tmp_path / "p.attn"
    path.write_text(SOURCE)
    return path


def cli(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_running_out_of_memory_without_a_message_is_an_error(capsys):
    """`MemoryError()` has no text, and a failed C++ allocation says `std::bad_alloc`."""
    args = types.SimpleNamespace(file="p.attn")
    for exc in (MemoryError(), RuntimeError("std::bad_alloc")):
        def run(_args, exc=exc):
            raise exc
        assert _run(types.SimpleNamespace(run=run), args) == 1
        assert capsys.readouterr().err.startswith("p.attn: error: out of memory")


def test_compile_reports_unreadable_files_as_check_does(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_bytes(b"\xff\xfe")
    big = tmp_path / "big.attn"
    big.write_text("pattern a = causal\n" + "#\n" * 600_000)
    for path, message in ((tmp_path / "missing.attn", "no such file"),
                          (tmp_path, "is a directory, not an .attn file"),
                          (bad, "file is not UTF-8 text (byte 0)"),
                          (big, "file is too large")):
        code, out, err = cli(capsys, "compile", path, "--emit", "ir")
        assert code == 1 and out == ""
        assert err.startswith(f"{path}: error: {message}"), err


def test_compile_into_a_file_says_so(attn_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = cli(capsys, "compile", attn_file, "-o", blocker, "--pattern", "lf")
    assert code == 1 and out == ""
    assert err == f"{attn_file}: error: -o: got {str(blocker)!r}, which is a file; expected a " \
                  f"folder (made if missing)\n"


def test_compiled_modules_get_the_umasks_permissions(attn_file, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = cli(capsys, "compile", attn_file, "-o", tmp_path / "gen", "--pattern",
                           "lf")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "gen" / "lf.py").stat().st_mode) == 0o644


@pytest.mark.parametrize("command", ["show", "compile"])
def test_an_empty_pattern_name_is_not_every_pattern(attn_file, capsys, command):
    code, out, err = cli(capsys, command, attn_file, "--pattern", "", "--emit", "ir") \
        if command == "compile" else cli(capsys, command, attn_file, "--pattern", "")
    assert code == 1 and out == ""
    assert "--pattern: no pattern named '' (this file declares: lf, docs)" in err


@pytest.mark.parametrize("argv, message", [
    (["show", "--kv-len", "0"], "--kv-len: got 0; expected a positive integer up to 512"),
    (["show", "--layout-len", "0"], "--layout-len: got 0; expected a positive integer"),
    (["show", "--heads", str(2 ** 62)], "--heads: got 4611686018427387904; expected a positive "
                                        "integer up to 1024"),
    (["show", "--block", str(2 ** 62)], "--block: got 4611686018427387904; expected a power of "
                                        "two >= 16 (up to 65536)"),
    (["compile", "--emit", "plan", "--heads", str(2 ** 31)], "--heads: got 2147483648"),
    (["compile", "--emit", "plan", "--block-m", str(2 ** 62)], "--block-m: got 461168601842"),
    (["show", "--lengths", "a"], "--lengths: got 'a'; expected positive integers"),
    (["show", "--png", ""], "--png: got ''; expected the name of a file ending in .png"),
    (["show", "--png", "out.txt"], "--png: got 'out.txt'; expected the name of a file ending"),
    (["compile", "--emit", "plan", "--pattern", "docs"],
     "--emit plan: pattern 'docs' uses segment"),
])
def test_bad_options_are_reported_before_anything_is_printed(attn_file, capsys, argv, message):
    command, *rest = argv
    if command == "show" and "--png" not in rest:
        rest += ["--pattern", "lf"]
    code, out, err = cli(capsys, command, attn_file, *rest)
    assert code == 1 and out == "", out
    assert message in err


def test_a_png_that_is_a_folder_is_refused(attn_file, tmp_path, capsys):
    folder = tmp_path / "pics.png"
    folder.mkdir()
    code, out, err = cli(capsys, "show", attn_file, "--pattern", "lf", "--png", folder)
    assert code == 1 and out == "" and "--png: got" in err


def test_emit_ast_names_the_file_not_its_text_at_each_span(attn_file, capsys):
    code, out, err = cli(capsys, "compile", attn_file, "--emit", "ast")
    assert code == 0, err
    assert out.startswith("Module(decls=(Decl(name='lf', params=(ParamDef(name='w', default=")
    assert "span=Span(source=Source(filename=" in out and "line=1, column=1" in out
    assert "text=" not in out and repr(SOURCE) not in out


def test_fmt_write_keeps_permissions_and_links(tmp_path, capsys):
    target = tmp_path / "messy.attn"
    target.write_text("pattern  a=causal\n")
    target.chmod(0o664)
    link = tmp_path / "link.attn"
    link.symlink_to(target.name)
    code, _, err = cli(capsys, "fmt", "--write", link)
    assert code == 0, err
    assert link.is_symlink() and target.read_text() == "pattern a = causal\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o664


def test_fmt_write_that_cannot_write_is_an_error(tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    messy = tmp_path / "messy.attn"
    messy.write_text("pattern  a=causal\n")
    clean = tmp_path / "clean.attn"
    clean.write_text("pattern a = causal\n")
    code, _, err = cli(capsys, "fmt", "--write", messy, clean)
    assert code == 1
    assert err == f"{messy}: error: cannot rewrite the file (Permission denied)\n"


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "abc"], "--lengths: got 'abc'; expected integers >= 1 separated by commas"),
    (["--dims", "8"], "--dims: got '8'; expected integers from 16 to 256 separated by commas"),
    (["--modes", "zz"], "--modes: got 'zz'; expected fwd or fwd+bwd"),
    (["--rounds", "0"], "--rounds: got 0; expected a positive integer"),
    (["-o", "{tmp}/missing/r.json"], "-o: got '{tmp}/missing/r.json'; expected a file name"),
])
def test_bench_options_are_checked_before_the_benchmark(tmp_path, capsys, argv, message):
    """Checked before the GPU is even looked for (a bad `-o` showed only at the end)."""
    code, out, err = cli(capsys, "bench", *(a.format(tmp=tmp_path) for a in argv))
    assert code == 1
    assert err.startswith(f"attnlang bench: error: {message.format(tmp=tmp_path)}"), err
    assert "GPU" not in err
