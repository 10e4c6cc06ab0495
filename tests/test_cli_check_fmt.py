"""`attnlang check` and `attnlang fmt` through the real entry point, and the formatter."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnlang.checker import check_source
from attnlang.errors import AttnError
from attnlang.formatter import format_source

ROOT = str(Path(__file__).resolve().parents[1])  # the checkout these tests belong to
GOOD = ("# Longformer\n"
        "pattern longformer(w = 256, g = 16) = window(w) | global(0..g)  # sliding + global\n"
        "\n"
        "pattern lf2 = longformer(w = 64) & causal\n")


def attnlang(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "attnlang", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def files(tmp_path):
    def make(name, content):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path
    return make


# ---------------------------------------------------------------- check


def test_check_good_file(files):
    path = files("good.attn", GOOD)
    result = attnlang("check", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok: 2 patterns\n"
    assert result.stderr == ""
    quiet = attnlang("check", "--quiet", path)
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_check_reports_every_file(files):
    good = files("good.attn", GOOD)
    bad1 = files("bad1.attn", "pattern a = stride(0)\n")
    bad2 = files("bad2.attn", "pattern b = window(3\n")
    result = attnlang("check", bad1, good, bad2)
    assert result.returncode == 1
    assert f"{good}: ok: 2 patterns" in result.stdout
    err = result.stderr
    assert f"{bad1}:1:20: error: stride must be at least 1, got 0\n" in err
    assert "    pattern a = stride(0)\n" in err
    assert f"{bad2}:1:21: error: expected ',' or ')' to close the '(' at 1:19" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name,content,message", [
    ("empty.attn", "", ":1:1: error: no pattern declarations"),
    ("binary.attn", bytes(range(256)) * 4, ": error: file is not UTF-8 text"),
    ("nul.attn", b"pattern a = all\x00\x01", ":1:16: error: the file contains a NUL byte"),
    ("deep.attn", "pattern a = " + "(" * 10000 + "all" + ")" * 10000,
     ":1:113: error: brackets are nested too deeply"),
    ("chain.attn", "pattern a = " + " | ".join(["all"] * 100000),
     "error: expression is nested too deeply"),
    ("huge.attn", "pattern a = window(" + "9" * 5000 + ")",
     ":1:20: error: integer literal is too large"),
], ids=lambda value: value if isinstance(value, str) and value.endswith(".attn") else "")
def test_check_bad_inputs(files, name, content, message):
    path = files(name, content)
    start = time.monotonic()
    result = attnlang("check", path)
    assert time.monotonic() - start < 10
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}")
    assert message in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr


def test_check_missing_file_directory_and_big_file(files, tmp_path):
    big = files("big.attn", "#" * (10 * 1024 * 1024))
    result = attnlang("check", tmp_path / "missing.attn", tmp_path, big)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [f"{tmp_path / 'missing.attn'}: error: no such file",
                     f"{tmp_path}: error: is a directory, not an .attn file",
                     f"{big}: error: file is too large (10485760 bytes; attnlang reads files "
                     f"up to 1048576 bytes)"]


def test_check_is_fast_and_never_imports_torch(files):
    path = files("good.attn", GOOD)
    code = ("import sys, time\n"
            "from attnlang.cli import main\n"
            f"rc = main(['check', {str(path)!r}])\n"
            "assert rc == 0, rc\n"
            "heavy = [m for m in ('torch', 'triton', 'jinja2') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    start = time.monotonic()
    timed = attnlang("check", path)
    assert timed.returncode == 0
    assert time.monotonic() - start < 1.5


def test_a_reader_that_closes_early_gets_no_traceback(files):
    """`attnlang check ... | head -1`: the reader closes the pipe before attnlang writes; attnlang
    stops quietly with 141 (128 + SIGPIPE), as Unix tools do, instead of a BrokenPipeError
    traceback from its print or from the interpreter's last flush."""
    paths = [files(f"good{i}.attn", GOOD) for i in range(20)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "attnlang", "check", *map(str, paths)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started: every write fails
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_the_python_apis_errors_and_running_out_of_memory_are_errors_not_tracebacks(capsys):
    """A command whose work raises the Python API's ValueError (which names the argument and
    what it accepts) or runs out of memory prints one error line and returns 1; other
    RuntimeErrors are bugs and propagate."""
    import types

    from attnlang.cli import _run

    def command(exc):
        def run(args):
            raise exc
        return types.SimpleNamespace(run=run)
    args = types.SimpleNamespace(file="p.attn")
    assert _run(command(ValueError("q_len: got 0; expected an integer >= 1")), args) == 1
    assert capsys.readouterr().err == "p.attn: error: q_len: got 0; expected an integer >= 1\n"
    assert _run(command(RuntimeError("DefaultCPUAllocator: can't allocate memory")), args) == 1
    assert capsys.readouterr().err.startswith("p.attn: error: out of memory (DefaultCPUAllocator")
    with pytest.raises(RuntimeError, match="a bug"):
        _run(command(RuntimeError("a bug")), args)


# ---------------------------------------------------------------- fmt


MESSY = ("\n\n# header comment\n"
         "pattern   longformer( w=256,g = 16 )=window( w )|global((0..g))   # eol\n"
         "\n\n\n"
         "pattern lf2() = longformer(w = 64) & (causal)\n"
         "   # indented comment\n"
         "pattern x = # inside\n"
         "   where(((q+k)%2==0) and not (d // 2 < 3))\n"
         "   | rows(-4.. | {1,2}) - ~(causal - all)  # tail\n"
         "# end\n\n")
CANONICAL = ("# header comment\n"
             "pattern longformer(w = 256, g = 16) = window(w) | global(0..g)  # eol\n"
             "\n"
             "pattern lf2 = longformer(w = 64) & causal\n"
             "# indented comment\n"
             "# inside\n"
             "pattern x = where((q + k) mod 2 == 0 and not d div 2 < 3) | rows(-4.. | {1, 2}) "
             "- ~(causal - all)  # tail\n"
             "# end\n")


def test_format_source_keeps_references_and_comments():
    assert format_source(MESSY) == CANONICAL
    assert format_source(CANONICAL) == CANONICAL
    assert check_source(CANONICAL) == check_source(MESSY)


def test_format_keeps_arguments_as_written():
    text = "pattern a = window(back = 8, ahead = 8) | random(0.5, 64, seed = 1)\n"
    assert format_source(text) == text


def test_format_minimal_parentheses():
    text = "pattern a = (all | none) & ~(causal) - (segment - all) | ((all))\n"
    assert format_source(text) == "pattern a = (all | none) & ~causal - (segment - all) | all\n"


def test_format_refuses_programs_with_errors():
    with pytest.raises(AttnError, match="stride must be at least 1"):
        format_source("pattern a = stride(0)\n")


def test_fmt_prints_canonical_text(files):
    path = files("messy.attn", MESSY)
    result = attnlang("fmt", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == CANONICAL


def test_fmt_check_and_write(files):
    messy = files("messy.attn", MESSY)
    clean = files("clean.attn", CANONICAL)
    result = attnlang("fmt", "--check", clean, messy)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"{messy}: not in canonical form (run 'attnlang fmt --write "
                             f"{messy}')\n")
    assert attnlang("fmt", "--check", clean).returncode == 0
    assert attnlang("fmt", "--write", messy).returncode == 0
    assert messy.read_text() == CANONICAL
    assert attnlang("fmt", "--check", messy).returncode == 0


def test_fmt_bad_input(files):
    bad = files("bad.attn", "pattern a = causal and all\n")
    result = attnlang("fmt", bad)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:1:20: error: 'and' is only allowed inside where")
    assert result.stdout == ""


def test_format_wraps_long_union_chains():
    text = ("pattern a(w = 4) = " + " | ".join(f"window({i}) & heads({{{i}}})" for i in range(8))
            + " | (causal | all)  # end\n")
    expected = ("pattern a(w = 4) = window(0) & heads({0}) | window(1) & heads({1}) "
                "| window(2) & heads({2})\n"
                "    | window(3) & heads({3}) | window(4) & heads({4}) | window(5) & heads({5})\n"
                "    | window(6) & heads({6}) | window(7) & heads({7}) | (causal | all)  # end\n")
    assert format_source(text) == expected
    assert format_source(expected) == expected
    assert check_source(expected) == check_source(text)
    short = "pattern b = window(1) | window(2)\n"
    assert format_source(short.replace(" | ", "\n  | ")) == short
