"""The forward's one-block classes and its band in one launch, the band's programs trailing by
LAG heads (round 52's experiment).  The strided pattern's forward is two launches: the
one-block classes (`_fwd_one_*`, bound by memory: ~66 µs at 8k, d = 128) and then the band
(`_fwd_*`, bound by its tiles' latency: ~116 µs), which reads the classes' partial output.  One
after the other, nothing of the first overlaps the second but its tail (PDL_FORWARD).  Here one
launch of a kernel made in this script holds both: program (x, y) with x < NC runs class x of
head y and then counts itself in a per-head counter (a barrier, then a release add); one with
x >= NC runs the band's query block x - NC of head y - LAG once that head's counter holds all
NC classes (acquire), and counts itself too; the head's last band program sets the counter
back to 0, so it is zero between calls.  Programs start in the order of their linear index
(x + y * width), so a band program waits only on classes whose programs started before it
(LAG >= 0: no deadlock), and with LAG >= 1 they have usually ended: each multiprocessor then
runs memory-bound class programs beside latency-bound band programs.  The band kernel is the
generated module's own, its source patched here to take its program ids offset (JOIN_X0,
JOIN_Y0); outputs and log-sum-exp must equal the module's bit for bit, then every variant is
timed (GPU time of the forward's launches, CUDA events after a sleep, interleaved rounds).
Round 47 had tried the same with tickets (NOTES round 47 item 5); this form is bit for bit the
two launches' and lost too (NOTES round 52: 8k d = 128 182 -> 198 µs at lag 1):

    python benchmarks/ab_joined_forward.py [--n 8192] [--dims 128,64] [--lags 1,2,4]
    python benchmarks/ab_joined_forward.py --cpu --n 512 --dims 16 --pattern "causal &
        (window(7, 0) | stride(8))"     # the checks only, in Triton's interpreter
"""
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from ab_shared_launch import (KERNEL_HEAD, _LAUNCH, _bound, _name, _params,  # noqa: E402
                              check, each_head_dim, function_span, load_source, parser,
                              recorded, report)

_OFFSET = ("    pid = tl.program_id(0)\n    bh = tl.program_id(1)\n",
           "    pid = tl.program_id(0) - JOIN_X0\n    bh = tl.program_id(1) - JOIN_Y0\n")


def _patched(gen, band):
    """The generated module's source executed again with kernel ``band`` (`_fwd_<i>`) taking
    JOIN_X0 / JOIN_Y0 (constexprs, default 0) off its program ids."""
    with open(gen.__file__) as f:
        src = f.read()
    start, end = function_span(src, band)
    body = src[start:end]
    sig_end = body.index("\n):\n")
    assert _OFFSET[0] in body, "the band kernel's program ids moved"
    body = (body[:sig_end] + " JOIN_X0: tl.constexpr = 0, JOIN_Y0: tl.constexpr = 0,"
            + body[sig_end:]).replace(_OFFSET[0], _OFFSET[1], 1)
    return load_source(src[:start] + body + src[end:], f"joined_module_{os.getpid()}")


def _joined_kernel(one, band):
    """A Triton kernel running ``one``'s programs (x < NC, y < BH) and ``band``'s (x >= NC,
    y >= LAG), the two kernels' parameters prefixed a_ / b_ (see the module's docstring)."""
    skip = ("PDL_LAUNCH", "PDL_WAIT", "JOIN_X0", "JOIN_Y0", "INTERLEAVE")
    a = [("a_" + n, n, c) for n, c in _params(one) if n not in skip]
    b = [("b_" + n, n, c) for n, c in _params(band) if n not in skip]
    sig = ", ".join(f"{n}: tl.constexpr" if c else n for n, _, c in a + b)

    def call(name, ps, extra):
        return f"{name}({', '.join(f'{orig}={n}' for n, orig, _ in ps)}, {extra})"
    src = (f"def joined({sig}, CNT, NC: tl.constexpr, NB: tl.constexpr, BH: tl.constexpr,\n"
           "           LAG: tl.constexpr):\n"
           "    x = tl.program_id(0)\n"
           "    y = tl.program_id(1)\n"
           "    if x < NC:\n"
           "        if y < BH:\n"
           f"            {call('ONE', a, 'PDL_LAUNCH=False')}\n"
           "            tl.debug_barrier()  # every thread's stores before the count\n"
           "            tl.atomic_add(CNT + y, 1, sem='release')\n"
           "    else:\n"
           "        if y >= LAG:\n"
           "            bh = y - LAG\n"
           "            n = tl.atomic_add(CNT + bh, 0, sem='acquire')\n"
           "            while n < NC:\n"
           "                n = tl.atomic_add(CNT + bh, 0, sem='acquire')\n"
           "            tl.debug_barrier()\n"
           f"            {call('BAND', b, 'PDL_WAIT=False, JOIN_X0=NC, JOIN_Y0=LAG')}\n"
           "            if tl.atomic_add(CNT + bh, 1, sem='relaxed') == NC + NB - 1:\n"
           "                tl.atomic_xchg(CNT + bh, 0, sem='relaxed')  # the head's last\n")
    return load_source(KERNEL_HEAD + src, f"joined_{_name(band)}", ONE=one, BAND=band).joined


class RecordedForward:
    """The forward's launches of one call, recorded through the module's `_launch`; ``grads``
    (as `check` calls them): the call's output and log-sum-exp."""

    def __init__(self, gen, mod, q, k, v):
        self.gen = gen
        gen._CALLS.clear()
        result = []
        self.launches = recorded(gen, lambda: result.extend(mod(q, k, v, return_lse=True)))
        self.grads = result  # [out, lse]
        self.counters = torch.zeros(q.shape[0] * q.shape[1], dtype=torch.int32, device=q.device)

    def names(self):
        return [_name(k) for k, _, _, _ in self.launches]

    def variant(self):
        return list(self.launches)

    def joined(self, patched, lag):
        """The two recorded launches as one (``patched``: `_patched`'s module)."""
        (one, g1, a1, o1), (band, g2, a2, o2) = self.launches
        assert _name(one).startswith("_fwd_one_") and g1[1] == g2[1], (self.names(), g1, g2)
        a, b = _bound(one, a1, o1), _bound(band, a2, o2)
        a["HEADS_DOWN"] = False  # (classes in head order: each head's before its band's)
        assert not b["HEAVY"] and not b["PIECES"] \
            and b.get("INTERLEAVE", 1) == 1, "heavy rows, pieces: not joined"
        kernel = _joined_kernel(getattr(patched, _name(one)), getattr(patched, _name(band)))
        skip = ("PDL_LAUNCH", "PDL_WAIT", "JOIN_X0", "JOIN_Y0", "INTERLEAVE")
        args = [a[n] for n, _ in _params(one) if n not in skip]
        args += [b[n] for n, _ in _params(getattr(patched, _name(band))) if n not in skip]
        args += [self.counters, g1[0], g2[0], g1[1], lag]
        options = {n: o2[n] for n in _LAUNCH if n in o2 and n != "launch_pdl"}
        for n in _LAUNCH:
            if o1.get(n) != o2.get(n):
                print(f"   (joined lag {lag}: {n} {o1.get(n)} / {o2.get(n)} -> "
                      f"{options.get(n)})")
        return [(kernel, (g1[0] + g2[0], g1[1] + lag), tuple(args), options)]

    def run(self, launches):
        for kernel, grid, args, options in launches:
            self.gen._launch(kernel, grid, args, options)


def main():
    options = parser()
    options.add_argument("--lags", default="1,2,4")
    args = options.parse_args()
    for mod, gen, q, k, v, _ in each_head_dim(args):
        rec = RecordedForward(gen, mod, q, k, v)
        print("   recorded: " + ", ".join(rec.names()))
        for kernel, grid, _, opts in rec.launches:
            print(f"     {_name(kernel)} grid {grid} "
                  + " ".join(f"{n}={opts[n]}" for n in _LAUNCH if n in opts))
        patched = _patched(gen, _name(rec.launches[1][0]))
        variants = {"as is": (rec, rec.variant())}
        for lag in (int(x) for x in args.lags.split(",")):
            variants[f"joined, lag {lag}"] = (rec, rec.joined(patched, lag))
        check(variants, 24)
        after = rec.counters.tolist()
        assert not any(after), f"counters not back to 0: {after}"
        if args.cpu:
            continue
        report(variants, args.rounds, "forward", 24)


if __name__ == "__main__":
    main()
