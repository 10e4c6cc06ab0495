"""Summarise one kernel's per-instruction export from Nsight Compute (see ncu_step.py):

    ncu --import band64.ncu-rep --page source --csv --print-source sass > band64.sass.csv
    python benchmarks/ncu_sass_summary.py band64.sass.csv [--hot 30]

Prints the warp-stall samples by reason, the executed instructions by opcode, the code's
regions (runs of instructions executed equally often: a loop body, a prologue) with their share
of the samples, and the instructions with the most samples and their main stall reasons.
"""
import argparse
import collections
import csv


def opcode(source):
    words = source.split()
    if not words:
        return "?"
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--hot", type=int, default=30)
    args = parser.parse_args()
    with open(args.csv) as handle:
        rows = list(csv.reader(handle))
    head = next(r for r in rows if "Source" in r and "Address" in r)
    data = [dict(zip(head, r)) for r in rows[rows.index(head) + 1:] if len(r) == len(head)]
    stalls = [h for h in head if h.startswith("stall_") and "Not Issued" not in h]
    samples = [int(r["Warp Stall Sampling (All Samples)"] or 0) for r in data]
    executed = [int(r["Instructions Executed"] or 0) for r in data]
    total = sum(samples) or 1
    by_reason = collections.Counter()
    for r in data:
        for s in stalls:
            by_reason[s[6:]] += int(r[s] or 0)
    print(f"{len(data)} instructions, {total} samples; by stall reason:")
    for reason, n in by_reason.most_common(10):
        print(f"  {reason:20s} {n:8d} {100 * n / total:5.1f}%")
    ops = collections.Counter()
    for r, n in zip(data, executed):
        ops[opcode(r["Source"]).split(".")[0]] += n
    print(f"executed (warp instructions) {sum(ops.values())}; by opcode:")
    for op, n in ops.most_common(16):
        print(f"  {op:12s} {n:12d}")
    print("regions (instructions executed equally often), with at least 1% of the samples:")
    start = 0
    for i in range(1, len(data) + 1):
        if i == len(data) or executed[i] != executed[start]:
            share = sum(samples[start:i]) / total
            if share >= 0.01:
                print(f"  {start:5d}-{i - 1:5d} executed {executed[start]:9d}  {100 * share:5.1f}%"
                      f"  from {data[start]['Source'].strip()[:48]}")
            start = i
    print(f"the {args.hot} instructions with the most samples:")
    for i in sorted(range(len(data)), key=lambda i: -samples[i])[:args.hot]:
        top = sorted(((int(data[i][s] or 0), s[6:]) for s in stalls), reverse=True)[:2]
        print(f"  {i:5d} {samples[i]:6d} {data[i]['Source'].strip()[:58]:58s} "
              + ", ".join(f"{name} {n}" for n, name in top))


if __name__ == "__main__":
    main()
