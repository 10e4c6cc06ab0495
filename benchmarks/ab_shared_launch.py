"""A component's dK/dV and dQ kernels in one launch (round 51's experiment, since then the
generated module's own `_bwd_shared_*` kernels at the head dims of SHARED_BWD): the module's
backward launches are recorded once with every component's dK/dV and dQ apart (SHARED_BWD
off), then replayed as they are and with each component's dK/dV and dQ launch (where its dQ
does not compute delta, which the dK/dV kernel reads) joined into one launch of a kernel made
here, whose even programs run the dK/dV kernel and odd ones the dQ kernel for the same block
index and head (both kernels with HALVES = 2): the two roles' programs for the same rows then
run side by side and read the same queries, keys, values and output gradients while they are
in L2, where the two launches each read them from memory.  (Round 51 also ran each launch with
its heads in descending order: it lost, and the kernels no longer take HEADS_DOWN.)  Each
variant's dQ, dK, dV must equal the recorded sequence's bit for bit; then every variant is
timed (CUDA events around the backward's launches, interleaved rounds, medians):

    python benchmarks/ab_shared_launch.py [--n 8192] [--dims 128,64] [--rounds 5]
        [--pattern "causal & (window(127, 0) | stride(128))"] [--classes-first]
    python benchmarks/ab_shared_launch.py --cpu --n 256 --dims 16 --pattern "causal &
        (window(7, 0) | stride(8))"     # the checks only, in Triton's interpreter
"""
import argparse
import inspect
import os
import sys

if "--cpu" in sys.argv:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton.language as tl  # noqa: E402,F401

import attnlang  # noqa: E402
from attnlang.bench import HEADS  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from ab_one_block import inputs  # noqa: E402

# cycles the GPU sleeps before each timed backward, so that the host's launches (through the
# module's `_launch`, ~30-50 µs each here) are all queued when the first one starts: GPU time
SLEEP = 400_000
_LAUNCH = ("num_warps", "num_stages", "num_ctas", "maxnreg", "launch_pdl")


def _shared_kernel(kv, dq):
    """A Triton kernel whose even programs are ``kv``'s (dK/dV) and odd ones ``dq``'s, each
    kernel's parameters prefixed a_ / b_, plus KV_N / DQ_N, each role's programs along x."""
    def params(kernel, prefix):
        return [(prefix + name, name, constexpr) for name, constexpr in _params(kernel)
                if name not in ("HALVES", "INTERLEAVE")]
    a, b = params(kv, "a_"), params(dq, "b_")
    sig = ", ".join(f"{n}: tl.constexpr" if c else n for n, _, c in a + b)

    def call(name, ps):
        args = ", ".join(f"{orig}={n}" for n, orig, _ in ps)
        return f"{name}({args}, HALVES=2)"
    src = (f"def shared({sig}, KV_N, DQ_N):\n"
           "    pid = tl.program_id(0)\n"
           "    if pid % 2 == 0:\n"
           "        if pid // 2 < KV_N:\n"
           f"            {call('KV', a)}\n"
           "    else:\n"
           "        if pid // 2 < DQ_N:\n"
           f"            {call('DQ', b)}\n")
    name = getattr(kv, "fn", kv).__name__
    return load_source(KERNEL_HEAD + src, f"shared_{name}", KV=kv, DQ=dq).shared


KERNEL_HEAD = "import triton\nimport triton.language as tl\n\n\n@triton.jit\n"


def load_source(src, name, **names):
    """Python source ``src`` written to $OUT (or /tmp) as ``name``.py and imported as module
    ``name`` (registered in sys.modules first: a generated module's support modules import as
    its submodules), with ``names`` set in it before it runs (the kernels its own call)."""
    import importlib.util
    path = os.path.join(os.environ.get("OUT", "/tmp"), name + ".py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    for key, value in names.items():
        setattr(module, key, value)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def function_span(src, name):
    """(start, end) of top-level Triton function ``name``'s text in module source ``src`` (up
    to the next `@triton.jit`)."""
    start = src.index(f"\ndef {name}(")
    return start, src.index("\n@triton.jit", start)


def _name(kernel):
    return getattr(kernel, "fn", kernel).__name__


def _params(kernel):
    """[(name, is constexpr)] of a Triton kernel's parameters (compiled or interpreted)."""
    fn = getattr(kernel, "fn", kernel)
    return [(name, p.annotation is tl.constexpr or "constexpr" in str(p.annotation))
            for name, p in inspect.signature(fn).parameters.items()]


def _bound(kernel, args, options):
    """{parameter name: value} of a recorded launch (positional args, then options)."""
    names = kernel.arg_names
    out = dict(zip(names, args))
    for name in names[len(args):]:
        if name in options:
            out[name] = options[name]
    return out


class Recorded:
    """The backward's launches of one call, recorded through the module's `_launch`."""

    def __init__(self, gen, mod, q, k, v, do, shared=False):
        """``shared``: with the module's own shared launches (SHARED_BWD as it is), else with
        every dK/dV and dQ launch apart."""
        self.gen = gen
        gen._CALLS.clear()
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = mod(qg, kg, vg)
        was = gen.SHARED_BWD
        gen.SHARED_BWD = was if shared else ()
        try:
            self.launches = recorded(gen, lambda: out.backward(do))
        finally:
            gen.SHARED_BWD = was
        found = {}
        for kernel, grid, args, options in self.launches:
            bound = _bound(kernel, args, options)
            for name in ("DQ", "DK", "DV"):
                if isinstance(bound.get(name), torch.Tensor) and bound[name].dim() == 4:
                    found[name] = bound[name]
        self.grads = [found[name] for name in ("DQ", "DK", "DV")]

    def names(self):
        return [_name(k) for k, _, _, _ in self.launches]

    def variant(self, joined=False):
        """[(kernel, grid, args, options)] of a variant of the recorded sequence."""
        out = []
        skip = set()
        for i, (kernel, grid, args, options) in enumerate(self.launches):
            if i in skip:
                continue
            name = _name(kernel)
            if name.startswith("_bwd_dkdv_") and joined:
                index = name[len("_bwd_dkdv_"):]
                j = next((j for j, launch in enumerate(self.launches)
                          if _name(launch[0]) == f"_bwd_dq_{index}"), None)
                if j is not None:
                    dq_kernel, _, dq_args, dq_options = self.launches[j]
                    if not _bound(dq_kernel, dq_args, dq_options).get("OWN_DELTA"):
                        out.append(self._joined(self.launches[i], self.launches[j]))
                        skip.add(j)
                        continue
            out.append((kernel, grid, args, options))
        return out

    def _joined(self, kvl, dql):
        kv, dq = kvl[0], dql[0]
        a, b = _bound(kv, kvl[2], kvl[3]), _bound(dq, dql[2], dql[3])
        # (heads in turns and heavy rows first map program ids by the grid's width: off here --
        # INTERLEAVE is not passed on, so the dQ kernel takes its default, 1)
        if b.get("INTERLEAVE", 1) > 1:
            print(f"   (joined: {_name(dq)}'s INTERLEAVE {b['INTERLEAVE']} -> 1)")
        assert not a["HEAVY"] and not b["HEAVY"], "heavy rows first: not joined"
        for name in _LAUNCH:
            if kvl[3].get(name) != dql[3].get(name):
                print(f"   (joined: {name} {kvl[3].get(name)} / {dql[3].get(name)}: dK/dV's)")
        shared = _shared_kernel(kv, dq)
        assert kvl[1][1] == dql[1][1], (kvl[1], dql[1])
        grid = (2 * max(kvl[1][0], dql[1][0]), kvl[1][1])
        args = [a[n] for n, _ in _params(kv) if n not in ("HALVES", "INTERLEAVE")]
        args += [b[n] for n, _ in _params(dq) if n not in ("HALVES", "INTERLEAVE")]
        args += [kvl[1][0], dql[1][0]]
        options = {n: kvl[3][n] for n in _LAUNCH if n in kvl[3]}
        return shared, grid, tuple(args), options

    def run(self, launches):
        for kernel, grid, args, options in launches:
            self.gen._launch(kernel, grid, args, options)


def recorded(gen, call):
    """[(kernel, grid, args, options)] of the launches ``call()`` makes through module ``gen``'s
    `_launch` (made as well)."""
    launches = []
    real = gen._launch

    def record(kernel, grid, args, options, extra=()):
        launches.append((kernel, tuple(grid), tuple(args), dict(options)))
        return real(kernel, grid, args, options, extra)
    gen._launch = record
    try:
        call()
    finally:
        gen._launch = real
    return launches


def report(variants, rounds, what, width):
    """Time ``variants`` (`time_launches`) and print each one's median per round."""
    print(f"   µs of the {what}'s launches (median per round, rounds interleaved):")
    for name, ts in time_launches(variants, rounds).items():
        print(f"   {name:{width}s} " + " ".join(f"{t:7.1f}" for t in ts) +
              f"   median {sorted(ts)[len(ts) // 2]:7.1f}")


def parser():
    """The options of the scripts that replay a module's recorded backward."""
    out = argparse.ArgumentParser()
    out.add_argument("--n", type=int, default=8192)
    out.add_argument("--dims", default="128,64")
    out.add_argument("--rounds", type=int, default=5)
    out.add_argument("--pattern", default="causal & (window(127, 0) | stride(128))")
    out.add_argument("--cpu", action="store_true",
                     help="the checks only, in Triton's interpreter (small --n)")
    return out


def each_head_dim(args):
    """(the pattern's module, its generated module, Q, K, V, dO) for each of ``args.dims``, the
    header printed."""
    pattern = attnlang.parse(f"pattern x = {args.pattern}")["x"]
    mod = pattern.module(backend="triton")
    gen = load_module(pattern)
    for d in (int(x) for x in args.dims.split(",")):
        batch, (q, k, v, do) = inputs(args.n, d, args.cpu)
        print(f"== {args.pattern}  n = {args.n}, d = {d}, {batch} x {HEADS} heads")
        yield mod, gen, q, k, v, do


def main():
    options = parser()
    options.add_argument("--classes-first", action="store_true",
                         help="one-block classes' backward first at every head dim")
    args = options.parse_args()
    for mod, gen, q, k, v, do in each_head_dim(args):
        recs = {"as is": Recorded(gen, mod, q, k, v, do)}
        if args.classes_first:
            saved = gen.ONE_BLOCK_LAST_BWD
            gen.ONE_BLOCK_LAST_BWD = ()
            recs["classes first"] = Recorded(gen, mod, q, k, v, do)
            gen.ONE_BLOCK_LAST_BWD = saved
        variants = {}
        for rname, rec in recs.items():
            print(f"   {rname}: " + ", ".join(rec.names()))
            variants[rname] = (rec, rec.variant())
            variants[rname + ", joined"] = (rec, rec.variant(joined=True))
        check(variants)
        if args.cpu:
            continue
        report(variants, args.rounds, "backward", 34)


def check(variants, width=34, relative=False):
    """Run each variant ({name: (its Recorded, its launches)}) on gradients filled with NaN and
    print whether its dQ, dK, dV equal its recording's first variant's bit for bit; exits where
    one differs by 1e-2 or more (with ``relative``, of the largest magnitude of that tensor:
    variants that sum in another order)."""
    want = {}
    for name, (rec, launches) in variants.items():
        for t in rec.grads:
            t.fill_(float("nan"))
        rec.run(launches)
        got = [t.clone() for t in rec.grads]
        base = want.setdefault(id(rec), got)  # each recording's own sequence first
        same = all(torch.equal(a, b) for a, b in zip(got, base))
        worst = max((a.float() - b.float()).abs().max().item()
                    / (b.float().abs().max().item() if relative else 1.0)
                    for a, b in zip(got, base))
        kind = " relative" if relative else ""
        print(f"   {name:{width}s} {len(launches)} launches, "
              f"{'bit for bit' if same else f'DIFFERS (max {worst:.2e}{kind})'}")
        if not same and not worst < 1e-2:
            raise SystemExit("a variant's gradients differ")


def time_launches(variants, rounds):
    """{name: [the median µs of each round]}: each variant's launches timed with CUDA events
    after SLEEP cycles of the GPU's (so that the host's launches are queued: GPU time), 60 a
    round, the variants' rounds interleaved."""
    times = {name: [] for name in variants}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for rec, launches in variants.values():
        for _ in range(5):
            rec.run(launches)
    for _ in range(rounds):
        for name, (rec, launches) in variants.items():
            ts = []
            for _ in range(60):
                torch.cuda._sleep(SLEEP)  # the GPU ahead of the host's launches
                start.record()
                rec.run(launches)
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end) * 1000)
            times[name].append(sorted(ts)[len(ts) // 2])
    return times


if __name__ == "__main__":
    main()
