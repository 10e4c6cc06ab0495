"""A list-scheduling model of a launch's tail (NOTES round 23): programs start in launch order
on the first free of P multiprocessors (one program each, as the Gluon backward and the d = 128
`tl` forward run), each taking a fixed cost per block plus a cost per tile it visits; the
launch ends when the last program does.  It prints the makespan of the launch orders that round
23 compared, against the ideal (total work / P), for

* the Gluon backward (one program per 128-key block; 64-query tiles at 3.05 µs and 3 µs per
  block, from round 22's profile: 1705 µs for 73728 tiles at 32k): causal and the benchmark's
  64 random documents (`attnlang.bench.random_documents`, seed 0), taking G heads at a time;
* the `tl` causal forward at d = 128 (one program per 128-query block, last block first; 1.86
  µs per 128 x 128 block: 8.4 MFLOP at ~600 TFLOP/s over 132 multiprocessors, plus 1 µs);
* the Gluon forward of the fixed pattern at d = 128 (NOTES round 59: 128-query tiles, each its
  packed summary columns' blocks and its chunk's, 1.4 µs a block and 7 µs a tile one program a
  tile -- fitted to round 58's 0.233 ms -- or 5 µs a tile persistent): one program a tile in
  launch order, and persistent launches whose programs take their tiles at a fixed stride
  (`for pick in range(pid, tiles, programs)`) or back and forth (`gluon_hopper.snake`), heads
  two at a time or all at once.

    python benchmarks/schedule_model.py

It models no L2: the orders that spread a launch over every head at once, which it favours,
measured slower on the GPU (results/ab_order_r23b.log).
"""
import heapq
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from attnlang.bench import random_documents  # noqa: E402

SMS = 132
TILE_US, BLOCK_US = 3.05, 3.0  # the Gluon backward: per 64 x 128 tile, per key block
FWD_BLOCK_US, FWD_PROGRAM_US = 1.86, 1.0  # the d = 128 `tl` forward: per key block, per program


def makespan(costs, programs=SMS):
    """When the last of ``costs`` (in launch order) ends, each started on the first free
    multiprocessor."""
    ends = [0.0] * programs
    for cost in costs:
        heapq.heappush(ends, heapq.heappop(ends) + cost)
    return max(ends)


def grouped(per_head, heads, group):
    """Launch order of ``per_head`` (one head's costs in its own order) over ``heads`` heads
    taken ``group`` at a time: the group's first items, then their second ones..."""
    order = []
    for first in range(0, heads, group):
        size = min(group, heads - first)
        order += [cost for cost in per_head for _ in range(size)]
    return order


def document_tiles(L, BN=128, BM=64):
    """Query tiles of each BN-key block under `causal & segment` with the benchmark's ids."""
    ids = random_documents(L, 64, "cpu", torch.Generator().manual_seed(0))
    ids = (ids[0] if ids.dim() > 1 else ids).tolist()
    end = {}
    for i, doc in enumerate(ids):
        end[doc] = i + 1
    return [-(-end[ids[min(k0 + BN, L) - 1]] // BM) - k0 // BM for k0 in range(0, L, BN)]


def fixed_tiles(L, BM=128, BN=128, period=128, width=16):
    """Key blocks of each query tile of the fixed pattern's Gluon forward, the longest first:
    the packed summary columns of the chunks before the tile's, then its own chunk's block."""
    return [-(-(width * j) // BN) + 1 for j in reversed(range(L // BM))]


def persistent(costs, programs=SMS, back_and_forth=False):
    """When the last program of a persistent launch ends: program p takes the costs p, p +
    programs, ... (launch order) -- with ``back_and_forth``, reversed in odd rounds
    (`gluon_hopper.snake`)."""
    ends = [0.0] * programs
    for i, cost in enumerate(costs):
        r, p = divmod(i, programs)
        left = min(programs, len(costs) - r * programs)
        ends[left - 1 - p if back_and_forth and r % 2 else p] += cost
    return max(ends)


def report(name, per_head, heads, groups):
    ideal = sum(per_head) * heads / SMS
    spans = "  ".join(f"G={g}: {makespan(grouped(per_head, heads, g)):.0f}" for g in groups)
    print(f"{name:44s} ideal {ideal:6.0f} us  {spans}  longest program {max(per_head):.0f}")


def main():
    for L, heads in ((8192, 32), (16384, 16), (32768, 16)):
        if L != 16384:
            causal = [BLOCK_US + TILE_US * (L // 64 - 2 * j) for j in range(L // 128)]
            report(f"Gluon backward, causal, {L // 1024}k", causal, heads, (1, 2, 4, 8))
        docs = [BLOCK_US + TILE_US * t for t in document_tiles(L)]
        report(f"Gluon backward, causal & segment, {L // 1024}k", docs, heads, (1, 2, 4, 8, 16))
    for L, heads in ((8192, 32), (32768, 16)):
        forward = [FWD_PROGRAM_US + FWD_BLOCK_US * (j + 1) for j in reversed(range(L // 128))]
        report(f"tl forward, causal, d = 128, {L // 1024}k", forward, heads, (1, 2, 4))
    for L, heads in ((8192, 32), (16384, 16), (32768, 16)):
        tiles = fixed_tiles(L)
        one = makespan(grouped([7 + 1.4 * n for n in tiles], heads, 2))
        spans = []
        for group in (2, heads):
            costs = grouped([5 + 1.4 * n for n in tiles], heads, group)
            spans.append(f"G={group}: stride {persistent(costs):.0f} back and forth "
                         f"{persistent(costs, back_and_forth=True):.0f}")
        print(f"Gluon forward, fixed pattern, d = 128, {L // 1024}k: one program a tile "
              f"{one:.0f} us; persistent " + "; ".join(spans))


if __name__ == "__main__":
    main()
