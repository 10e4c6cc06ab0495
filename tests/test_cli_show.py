"""``attnlang show`` through the real entry point (``python -m attnlang show ...``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """\
pattern longformer(w = 4, g = 2) = window(w) | global(0..g)
pattern mixed(s = 4) = causal & (heads(0..2) & window(s - 1, 0) | heads(2..4) & stride(s))
pattern docs = segment & causal
pattern needs(w) = window(w)
"""


def attnlang(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "attnlang", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "p.attn"
    path.write_text(PROGRAM)
    return path


def test_show_one_pattern(program):
    out = attnlang("show", str(program), "--pattern", "longformer", "--len", "12", "--block",
                   "16", "--layout-len", "64", "--lengths", "256,1024")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "pattern longformer = window(4) | global(0..2)" in text
    mask_lines = text.split("(█ kept, · masked):\n")[1].splitlines()[:12]
    assert mask_lines[0] == "█" * 12  # global row
    assert mask_lines[6] == "███████████·"  # q = 6: globals 0, 1 and the window 2..10
    assert mask_lines[11] == "██·····█████"
    layout = text.split("(█ full, ░ partial, · skipped):\n")[1].splitlines()[:4]
    assert layout == ["░░░░", "░░░·", "░░░░", "░·░░"]
    assert "Lq=256 Lk=256" in text and "Lq=1024 Lk=1024" in text
    assert "FLOPs saved" in text and "empty rows 0" in text and "future keys yes" in text


def test_show_heads_set_and_segments(program):
    out = attnlang("show", str(program), "--pattern", "mixed", "--set", "s=3", "--heads",
                   "4", "--len", "8", "--block", "16", "--layout-len", "32", "--lengths", "128")
    assert out.returncode == 0, out.stderr
    assert "window(2, 0)" in out.stdout and "stride(3)" in out.stdout
    assert "heads 0, 1 (█ kept" in out.stdout and "heads 2, 3 (█ kept" in out.stdout
    assert "future keys no" in out.stdout
    out = attnlang("show", str(program), "--pattern", "docs", "--len", "8", "--block", "16",
                   "--lengths", "64")
    assert out.returncode == 0, out.stderr
    assert "synthetic layout of 4 equal documents" in out.stdout
    mask = out.stdout.split("(█ kept, · masked):\n")[1].splitlines()[:8]
    assert mask[2] == "··█·····" and mask[3] == "··██····"


def test_show_errors(program, tmp_path, capsys):
    """Bad arguments end in one line naming them, exit status 1, no traceback -- through the
    real entry point once, then (the same code after the interpreter's start-up) in-process."""
    out = attnlang("show", str(program), "--pattern", "needs", "--lengths", "64")
    assert out.returncode == 1 and "w" in out.stderr and "Traceback" not in out.stderr
    from attnlang.cli import main

    def show(*args):
        code = main(["show", *args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)
    out = show(str(program), "--pattern", "longformer", "--block", "48")
    assert out.returncode == 1 and "--block" in out.stderr and "Traceback" not in out.stderr
    out = show(str(tmp_path / "missing.attn"))
    assert out.returncode == 1 and "no such file" in out.stderr
    out = show(str(program), "--set", "zz=1")
    assert out.returncode == 1 and "zz" in out.stderr
    out = show(str(program), "--pattern", "longformer", "--len", "100000")
    assert out.returncode == 1 and "Traceback" not in out.stderr and not out.stdout
    assert "--len: got 100000; expected a positive integer up to 512" in out.stderr
    out = show(str(program), "--pattern", "longformer", "--layout-len", "10000000")
    assert out.returncode == 1 and "Traceback" not in out.stderr and not out.stdout
    assert "--layout-len: got 10000000; expected a positive integer up to 65536" in out.stderr
    out = show(str(program), "--pattern", "nope")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--pattern: no pattern named 'nope' (this file declares: " in out.stderr


def test_png(program, tmp_path):
    target = tmp_path / "out.png"
    out = attnlang("show", str(program), "--pattern", "longformer", "--len", "16", "--block",
                   "16", "--lengths", "64", "--png", str(target))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert out.returncode == 1 and "matplotlib" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_lengths_skip_a_layout_of_too_many_random_cells(tmp_path):
    """random(0.5, block = 1) decides its layout cell by cell: 10^9 cells at 32k took minutes,
    so the default lengths past 2^24 cells say so instead; --lengths asks for any length."""
    path = tmp_path / "r.attn"
    path.write_text("pattern r = random(0.5, block = 1)\n")
    out = attnlang("show", str(path), "--len", "8")
    assert out.returncode == 0, out.stderr
    assert "Lq=1024 Lk=1024 H=1 blocks 128x128" in out.stdout
    for n in (8192, 32768, 131072):
        assert f"Lq={n} Lk={n}: not analysed by default: random() decides the layout" in out.stdout
    asked = attnlang("show", str(path), "--len", "8", "--lengths", "300")
    assert asked.returncode == 0 and "Lq=300 Lk=300 H=1 blocks 128x128" in asked.stdout
