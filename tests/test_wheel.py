"""The built wheel carries the grammar and the templates, and an installed copy finds them."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(out)], check=True, timeout=300)
    (path,) = out.glob("attnlang-*.whl")
    return path


def test_wheel_contains_grammar_and_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "attnlang/grammar/attn.lark" in names
    parts = sorted((ROOT / "templates").glob("*.jinja"))  # the top template and its parts
    assert "attention.py.jinja" in [path.name for path in parts] and len(parts) > 1
    for path in parts:
        assert f"attnlang/templates/{path.name}" in names


def test_installed_wheel_finds_its_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    script = (
        "import attnlang, attnlang.resources as r, attnlang.codegen as c\n"
        "assert str(r.grammar_path()).startswith(%r), r.grammar_path()\n"
        "p = attnlang.parse('pattern lf(w = 4) = window(w) | global(0..2)')['lf']\n"
        "src = c.render_module(p)\n"
        "assert src.startswith('# @generated'), src[:80]\n"
        "print(p.bind(w=8))\n" % str(target))
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pattern lf = window(8) | global(0..2)"
