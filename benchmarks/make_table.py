"""Regenerate the benchmark table, and how many of its rows meet each of the issue's targets, from
benchmarks/results/latest.json: writes benchmarks/results/latest.md and the README section
between the bench markers.

    python benchmarks/make_table.py
"""
import json
import re
from pathlib import Path

from attnlang.bench import markdown_table, target_summary

ROOT = Path(__file__).resolve().parents[1]


def section(records) -> str:
    """The README's benchmark section (between the markers) for these records."""
    runs = {}
    for r in records:  # one line per run when results of several runs are merged
        runs.setdefault(r.get("run"), f"{r['device']} (torch {r['torch']}, Triton {r['triton']})")
    if len(runs) == 1:
        where = f"on {next(iter(runs.values()))}"
    else:
        where = "on " + "; ".join(f"{run}: {dev}" for run, dev in runs.items()) + \
            " (ratios compare numbers of one run only)"
    return (f"Useful TFLOP/s {where}, bf16, 16 heads, 16k tokens per batch; "
            f"generated from `benchmarks/results/latest.json` by `python benchmarks/make_table.py`."
            f"\n\n{markdown_table(records)}\n\nThe issue's targets on these results "
            f"(long context is measured apart: `python -m attnlang.bench --long`):\n\n"
            f"{target_summary(records)}\n")


def main():
    records = json.loads((ROOT / "benchmarks/results/latest.json").read_text())
    table = section(records)
    (ROOT / "benchmarks/results/latest.md").write_text(table)
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)",
                 lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    readme.write_text(new)
    print(table)


if __name__ == "__main__":
    main()
