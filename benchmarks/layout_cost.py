"""Cost of building a block layout: attnlang's ``build_layout`` vs torch's ``create_block_mask``.

For ``window(512)`` (self-attention, blocks 128x128, one head) at 2^13 .. 2^20 tokens, times
``attnlang.layout.build_layout`` and, at the sizes where it fits, FlexAttention's
``create_block_mask`` on CPU with ``_compile=False`` (which evaluates the mask_mod on every
pair).  Each measurement runs in a fresh child process, so "peak memory" is the growth of the
child's peak resident set size over its state just before the call (torch's CPU allocations are
invisible to tracemalloc); attnlang's time is the best of 5 runs (the machine may be shared),
torch's a single run.  torch is skipped once its estimated memory (about 10 bytes per
pair, measured) exceeds ~4 GB or its previous size took more than 15 s (the next would exceed 60 s).

Run from the repository root::

    python benchmarks/layout_cost.py

Writes ``benchmarks/results/layout_cost.json`` and ``layout_cost.md`` and prints the table.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SIZES = [2 ** e for e in range(13, 21)]
WINDOW, BLOCK = 512, 128
TORCH_MEMORY_LIMIT = 4 * 2 ** 30
TORCH_TIME_LIMIT = 60.0

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
which, n, w, block = {which!r}, {n}, {w}, {block}
if which == "attnlang":
    from attnlang import ir
    from attnlang.layout import build_layout
    expr = ir.Window(ir.Int(w), ir.Int(w))
    build_layout(expr, 1024)  # warm up imports and lazy initialisation
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dt = float("inf")
    for _ in range(5):  # best of 5: the machine may be shared
        t = time.perf_counter()
        lay = build_layout(expr, n, block_m=block, block_n=block)
        dt = min(dt, time.perf_counter() - t)
    out = dict(kept_blocks=lay.kept_blocks, full_blocks=lay.full_blocks,
               partial_blocks=lay.partial_blocks, layout_bytes=lay.nbytes)
else:
    from torch.nn.attention.flex_attention import create_block_mask
    def window(b, h, q, k):
        return (q - k <= w) & (k - q <= w)
    create_block_mask(window, 1, 1, 1024, 1024, device="cpu", BLOCK_SIZE=block, _compile=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    bm = create_block_mask(window, 1, 1, n, n, device="cpu", BLOCK_SIZE=block, _compile=False)
    dt = time.perf_counter() - t
    kept = int(bm.kv_num_blocks.sum()) + int(bm.full_kv_num_blocks.sum())
    out = dict(kept_blocks=kept, full_blocks=int(bm.full_kv_num_blocks.sum()))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out.update(seconds=dt, peak_bytes=max(0, peak - base) * 1024)
print(json.dumps(out))
"""


def measure(which: str, n: int, threads: int):
    code = CHILD.format(root=ROOT, threads=threads, which=which, n=n, w=WINDOW, block=BLOCK)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_bytes(n):
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def table(rows) -> str:
    lines = ["| tokens | attnlang time | attnlang peak mem | kept blocks | layout bytes "
             "| torch create_block_mask time | torch peak mem |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, t = r["attnlang"], r.get("torch")
        t_time = (f"{t['seconds']:.2f} s" if t and "seconds" in t
                  else (t or {}).get("skipped", (t or {}).get("error", "—")))
        t_mem = _fmt_bytes(t["peak_bytes"]) if t and "peak_bytes" in t else "—"
        size = f"2^{r['tokens'].bit_length() - 1} ({r['tokens']})"
        lines.append(f"| {size} | {a['seconds'] * 1e3:.2f} ms "
                     f"| {_fmt_bytes(a['peak_bytes'])} | {a['kept_blocks']} "
                     f"| {_fmt_bytes(a['layout_bytes'])} | {t_time} | {t_mem} |")
    return "\n".join(lines)


def main() -> int:
    import torch

    threads = 1  # one intra-op thread: on a shared machine, spinning thread pools distort timings
    rows, torch_ok, last_torch = [], True, 0.0
    for n in SIZES:
        row = {"tokens": n, "attnlang": measure("attnlang", n, threads)}
        if "error" in row["attnlang"]:
            print(f"attnlang failed at {n}: {row['attnlang']['error']}", file=sys.stderr)
            return 1
        estimate = 10 * n * n  # measured: ~10 bytes per pair
        if torch_ok and estimate > TORCH_MEMORY_LIMIT:
            torch_ok, reason = False, f"skipped (needs ~{estimate / 2 ** 30:.0f} GiB)"
        elif torch_ok and last_torch * 4 > TORCH_TIME_LIMIT:
            torch_ok, reason = False, f"skipped (would take > {TORCH_TIME_LIMIT:.0f} s)"
        if torch_ok:
            row["torch"] = measure("torch", n, threads)
            last_torch = row["torch"].get("seconds", float("inf"))
            if "error" in row["torch"]:
                torch_ok = False
        else:
            row["torch"] = {"skipped": reason}
        rows.append(row)
        other = row["torch"]
        other = other.get("seconds", other.get("skipped", other.get("error")))
        print(f"{n}: attnlang {row['attnlang']['seconds']:.4f} s, torch {other}", file=sys.stderr)
    meta = {"pattern": f"window({WINDOW})", "block": BLOCK, "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "layout_cost.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    md = (f"# Layout build cost: `window({WINDOW})`, blocks {BLOCK}x{BLOCK}, one head, CPU\n\n"
          f"torch {meta['torch']}, {threads} thread(s), {meta['cpus']} CPUs. Each row runs "
          f"in fresh processes (attnlang: best of 5 runs; torch: one run); peak memory is the "
          f"growth of the process's peak RSS during the call. Regenerate with "
          f"`python benchmarks/layout_cost.py`.\n\n" + table(rows) + "\n")
    with open(os.path.join(RESULTS, "layout_cost.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
