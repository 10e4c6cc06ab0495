"""``attnlang compile``: modules written, summary printed, --emit stages, errors, and a generated
module that runs in a fresh interpreter where attnlang cannot be imported."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import attnlang
from attnlang import reference
from attnlang.cli import main

SOURCE = textwrap.dedent("""\
    # two patterns
    pattern lf(w = 8) = window(w) | global(0..4)
    pattern strided(s = 8) = causal & (window(s - 1, 0) | stride(s))
""")


@pytest.fixture
def attn_file(tmp_path):
    path = tmp_path / "patterns.attn"
    path.write_text(SOURCE)
    return path


def compile_(capsys, *argv):
    code = main(["compile", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_one_module_per_pattern_and_a_summary(attn_file, tmp_path, capsys):
    out_dir = tmp_path / "gen"
    code, out, err = compile_(capsys, attn_file, "-o", out_dir, "--set", "w=4")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["lf.py", "strided.py"]
    assert "pattern lf = window(4) | global(0..4)" in out
    assert "pattern strided = causal & (window(7, 0) | stride(8))" in out
    assert "density" in out and "FLOPs saved" in out and "L=  4096" in out
    assert "░" in out  # the layout picture
    assert f"wrote {os.path.normpath(str(out_dir / 'lf.py'))}" in out
    from attnlang.codegen import render_module

    program = attnlang.parse(SOURCE)
    assert (out_dir / "lf.py").read_text() == render_module(program["lf"].bind(w=4))


def test_density_numbers_agree_with_the_plan(attn_file, tmp_path, capsys):
    code, out, _ = compile_(capsys, attn_file, "--pattern", "strided", "-o", tmp_path)
    assert code == 0 and not (tmp_path / "lf.py").exists()
    plan = attnlang.parse(SOURCE)["strided"].plan(1024)
    density = 100 * plan.kept_pairs / 1024 ** 2
    assert f"L=  1024: density {density:6.2f}%" in out


@pytest.mark.parametrize("stage, needle", [
    ("ast", "Module("), ("ir", "pattern lf = window(8) | global(0..4)"),
    ("plan", "plan for causal & (window(7, 0) | stride(8)) at Lq=1024"),
    ("layout", "░"), ("triton", "def attention_forward("),
])
def test_emit_prints_the_stage_and_writes_nothing(attn_file, tmp_path, capsys, stage, needle):
    code, out, err = compile_(capsys, attn_file, "--emit", stage, "-o", tmp_path / "none")
    assert code == 0, err
    assert needle in out
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("argv, message", [
    (["--pattern", "nope"], "--pattern: no pattern named 'nope' (this file declares: lf, strided)"),
    (["--set", "zz=1"], "--set: no selected pattern has a parameter named 'zz'"),
    (["--set", "w"], "--set: got 'w'; expected NAME=VALUE"),
    (["--set", "w=abc"], "--set: got 'w=abc'"),
    (["--emit", "plan", "--length", "-5"], "--length: got -5; expected a positive integer"),
    (["--heads", "0"], "--heads: got 0; expected a positive integer"),
    (["--block-m", "7"], "--block-m: got 7; expected a power of two >= 16"),
    (["--block-n", "48"], "--block-n: got 48; expected a power of two >= 16"),
])
def test_errors_are_reported_without_traceback(attn_file, capsys, argv, message):
    code, out, err = compile_(capsys, attn_file, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_an_output_directory_that_cannot_be_made_is_an_error(attn_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = compile_(capsys, attn_file, "-o", blocker / "gen")
    assert code == 1 and "Traceback" not in err
    assert f"{attn_file}: error: -o: cannot write {blocker / 'gen' / 'lf.py'} (Not a directory)" \
        in err


def test_syntax_error_points_at_the_source(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("pattern x = window(3) |\n")
    code, _, err = compile_(capsys, bad)
    assert code == 1 and f"{bad}:1:" in err and "^" in err


RUNNER = textwrap.dedent("""
    import importlib.abc, importlib.util, sys

    class _NoAttnlang(importlib.abc.MetaPathFinder):
        # attnlang may be installed in this environment (CI installs it): hide it, so the
        # generated module must run on torch and triton alone
        def find_spec(self, name, path=None, target=None):
            if name == "attnlang" or name.startswith("attnlang."):
                raise ImportError("attnlang is hidden in this test")
            return None

    sys.meta_path.insert(0, _NoAttnlang())
    import torch
    try:
        import attnlang
    except ImportError:
        pass
    else:
        raise SystemExit("attnlang must not be importable here")
    spec = importlib.util.spec_from_file_location("generated_lf", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
    out, lse = module.attention(q, k, v, return_lse=True)
    out.backward(torch.ones_like(out))
    torch.save({"q": q.detach(), "k": k.detach(), "v": v.detach(), "out": out.detach(),
                "lse": lse.detach(), "dq": q.grad}, sys.argv[2])
    layer = module.Attention()
    assert torch.allclose(layer(q, k, v), out)
    # its own checks name the argument (they were Triton's or torch's errors)
    import os
    for call, message in ((lambda: module.Attention(dropout=2), "dropout: got 2;"),
                          (lambda: module.attention(q, k, v, generator=3), "generator: got int"),
                          (lambda: (os.environ.update(TRITON_INTERPRET="0"),
                                    module.attention(q, k, v)), "q: got tensors on cpu")):
        try:
            call()
        except ValueError as exc:
            assert str(exc).startswith(message), exc
        else:
            raise SystemExit(f"no error: {message}")
    print("OK")
""")


def test_generated_module_runs_without_attnlang(attn_file, tmp_path, capsys):
    out_dir = tmp_path / "gen"
    assert compile_(capsys, attn_file, "-o", out_dir, "--pattern", "lf")[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, "-I", "runner.py", str(out_dir / "lf.py"),
                             str(tmp_path / "result.pt")], cwd=str(elsewhere), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    got = torch.load(tmp_path / "result.pt")
    q, k, v = (got[n].requires_grad_() for n in "qkv")
    expr = attnlang.parse(SOURCE)["lf"].ir
    want_out, want_lse = reference.attention(q, k, v, reference.mask(expr, 20, num_heads=2))
    torch.testing.assert_close(got["out"].double(), want_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["lse"].double(), want_lse, atol=1e-4, rtol=1e-4)
    want_out.backward(torch.ones_like(want_out))
    torch.testing.assert_close(got["dq"].double(), q.grad.double(), atol=1e-4, rtol=1e-4)


def test_the_summary_skips_lengths_whose_random_layout_is_decided_cell_by_cell(tmp_path, capsys):
    """random(0.5, block = 1) at 16k tokens: 2.7e8 cells decided one by one took ~20 s of the
    summary; such lengths are named and skipped, as `show`'s default lengths are."""
    path = tmp_path / "r.attn"
    path.write_text("pattern r = random(0.5, block = 1)\n")
    code, out, err = compile_(capsys, path, "-o", tmp_path / "out")
    assert code == 0, err
    assert "L=  1024: density" in out
    assert "L= 16384: not summarised: random() decides the layout cell by cell, 268468225 cells" \
        in out
    assert (tmp_path / "out" / "r.py").exists()
