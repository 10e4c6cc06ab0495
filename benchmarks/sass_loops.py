"""Instruction counts of a generated kernel's loops in its sm_90 SASS, without a GPU: the kernel
is compiled as a GPU call would launch it (the benchmark's shape and the tiles a GPU call would
pick, `compile_check.record_launches`), disassembled with the cuobjdump that Triton ships, and
every backward branch reported as a loop (its first and last instruction and its length).

    python benchmarks/sass_loops.py "causal & segment" 32768 64 [_fwd]

A kernel's main loops are the long ones; a count that drops after a template change is work
taken out of every iteration (round 42: the documents' partial-block loop 632 -> 599).
"""
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton

import compile_check


def sass_of(compiled):
    """[(address, instruction)] of a compiled kernel's SASS."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(compiled.asm["cubin"])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    text = subprocess.run([tool, "-sass", fh.name], capture_output=True, text=True).stdout
    os.unlink(fh.name)
    found = (re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in text.splitlines())
    return [(int(m.group(1), 16), m.group(2).strip()) for m in found if m]


def loops(instructions):
    """(first, last, length) in instruction indices of every backward branch's span."""
    index = {address: i for i, (address, _) in enumerate(instructions)}
    spans = []
    for i, (address, text) in enumerate(instructions):
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address and int(target.group(1), 16) in index:
            first = index[int(target.group(1), 16)]
            spans.append((first, i, i - first + 1))
    return spans


def main():
    text, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prefix = sys.argv[4] if len(sys.argv) > 4 else "_fwd"
    for kernel, args, options in compile_check.record_launches(text, n, d, torch.bfloat16):
        if kernel.__name__.startswith(prefix):
            compiled = compile_check.compile_launch(kernel, args, dict(options))
            instructions = sass_of(compiled)
            tile = {key: options.get(key) for key in ("num_warps", "num_stages", "DESC",
                                                      "JOIN_PARTIAL")}
            print(f"{kernel.__name__} {tile}: {len(instructions)} instructions; loops (first, "
                  f"last, length): {loops(instructions)}")
            break
    else:
        print(f"no kernel named {prefix}* in this pattern's launches")


if __name__ == "__main__":
    main()
