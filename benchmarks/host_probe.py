"""The GPU machine's host speed, before a benchmark run: µs per tiny CUDA launch (not waited for)
and ms of a pure-Python loop of a million additions, medians of five.  Rows bound by the host
(NOTES rounds 15-17, 43-44, 56) move with it; in round 56 the launch figure did not tell hosts
apart (6.8-9.5 µs against 7.3) but the loop did (125-142 ms on a host that ran late, 72.5 on
round56c's).

    python benchmarks/host_probe.py
"""
import statistics
import time

import torch


def main():
    x = torch.zeros(1, device="cuda")
    for _ in range(2000):
        x.add_(1)
    torch.cuda.synchronize()
    launch, loop = [], []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(5000):
            x.add_(1)
        launch.append((time.perf_counter() - start) / 5000 * 1e6)
        torch.cuda.synchronize()
    for _ in range(5):
        start, total = time.perf_counter(), 0
        for i in range(1000000):
            total += i
        loop.append((time.perf_counter() - start) * 1e3)
    print(f"host probe: {statistics.median(launch):.2f} us a launch, "
          f"python loop {statistics.median(loop):.1f} ms")


if __name__ == "__main__":
    main()
