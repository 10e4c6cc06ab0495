"""Which backward the fixed pattern's training step takes on the GPU at several batches x heads:
the Gluon gather path from GLUON_GATHER_WAVES (1.5) programs a multiprocessor
(`gluon_backward.gather_programs`: one a block of 128 packed keys a head), the `tl` backward
below (docs/runtime.md, "A gather component's keys").

    python benchmarks/gather_route.py     # results/route_r56d.log
"""
import torch

from ab_gluon_stages import training_case

FIXED = "causal & (chunk(128) | cols(every(128, 112..128)))"
CASES = [(8192, 128, 1, 8), (8192, 128, 1, 16), (8192, 128, 2, 16), (16384, 128, 1, 8),
         (16384, 128, 1, 16), (32768, 128, 1, 8), (16384, 64, 1, 16)]  # n, d, B, H


def main():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for n, d, B, H in CASES:
        gen, gb, step, _, _ = training_case(FIXED, n, d, B, H)
        inner, ran = gen._gluon_gather_backward, []
        gen._gluon_gather_backward = lambda *args: ran.append(1) or inner(*args)
        gen._CALLS.clear()
        step()
        torch.cuda.synchronize()
        gen._gluon_gather_backward = inner
        programs = gb.gather_programs(n // 8, B * H)  # (16 packed keys of every 128)
        print(f"n={n} d={d} B={B} H={H}: {programs} programs on {sms} SMs "
              f"({programs / sms:.2f} waves) -> {'gather path' if ran else 'tl backward'}",
              flush=True)


if __name__ == "__main__":
    main()
