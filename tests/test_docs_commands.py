"""The docs show real output of real commands: every fenced block of the README and docs/ that
starts with ``$ COMMAND`` is run (``attnlang`` as ``python -m attnlang``, ``python`` as this
interpreter) in a scratch folder that sees the repository's ``examples/``, and its output must
be the block's lines below the command, where a line ``...`` stands for any lines (none too)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shown_commands():
    """(doc, line number, command, expected output lines) of every ``$`` block."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() != "```" or i + 1 >= len(lines) or not lines[i + 1].startswith("$ "):
                continue
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
            found.append((doc.relative_to(ROOT).as_posix(), i + 2, lines[i + 1][2:],
                          lines[i + 2:end]))
    return found


def output_pattern(expected):
    """A regex for the whole output: the lines as written, ``...`` for any run of lines."""
    parts = [r"(?:.*\n)*?" if line == "..." else re.escape(line) + r"\n" for line in expected]
    return re.compile("".join(parts))


def as_run(command):
    """The command with ``attnlang`` and ``python`` spelled as this interpreter runs them."""
    python = shlex.quote(sys.executable)
    command = re.sub(r"(^|&& |\| )attnlang ", rf"\g<1>{python} -m attnlang ", command)
    return re.sub(r"(^|&& |\| )python ", rf"\g<1>{python} ", command)


COMMANDS = shown_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 4 and any(doc == "README.md" for doc, *_ in COMMANDS)


@pytest.mark.parametrize("doc, line, command, expected", COMMANDS,
                         ids=[f"{doc}:{line}" for doc, line, *_ in COMMANDS])
def test_a_shown_command_prints_what_the_docs_show(doc, line, command, expected, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    result = subprocess.run(as_run(command), shell=True, cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    output = result.stdout if result.stdout.endswith("\n") else result.stdout + "\n"
    assert output_pattern(expected).fullmatch(output), (
        f"{doc}:{line}: `{command}` printed:\n{output}\nthe docs show:\n" + "\n".join(expected))


def test_the_readmes_python_tour_runs_and_prints_what_its_comments_say(tmp_path, monkeypatch):
    """The README's Python block runs as written (from the repository's root, on the CPU), and
    each ``print(...)  # TEXT`` line prints TEXT."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    claims = re.findall(r"^print\((.+?)\)\s+# (.+)$", block, re.MULTILINE)
    assert claims, "the tour prints something"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ATTNLANG_CACHE_DIR", str(tmp_path))
    names = {}
    exec(compile(block, "README.md", "exec"), names)  # noqa: S102 - the docs' own code
    assert names["out"].shape == names["q"].shape
    for expression, printed in claims:
        assert str(eval(expression, names)) == printed  # noqa: S307
