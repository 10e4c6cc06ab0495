"""The fixed pattern's gather keys packed from strided views (`Axis.runs`, round 35) against
`index_select`, on the GPU: the packing of K and V and one gradient's scatter at 32k tokens,
d = 128, alone; then the fixed pattern's forward and training step at 8k and 32k, d = 128 and
64, with each variant set on the generated module (its tables built again without runs for
"index"), three interleaved rounds on the same inputs, `do_bench` medians, gradients compared.

    python benchmarks/ab_pack.py
"""
import sys, torch
sys.path.insert(0, "benchmarks")
from triton.testing import do_bench
import attnlang
from attnlang.cache import load_module
from head_order import _inputs
from gluon_bwd import max_rel

TEXT = "causal & (chunk(128) | cols(every(128, 112..128)))"
pattern = attnlang.parse(f"pattern x = {TEXT}")["x"]
mod = pattern.module(backend="triton")
gen = load_module(pattern)
Axis = gen._support.layout.Axis
new_runs = Axis.runs

def set_variant(name):
    Axis.runs = new_runs if name == "runs" else (lambda self: None)
    for cache in ("_CALLS", "_SHAPES", "_SEG_MEMO", "_TABLES"):
        getattr(gen, cache).clear()

# packing alone, 32k d=128
k = torch.randn(1, 16, 32768, 128, device="cuda", dtype=torch.bfloat16)
idx = torch.arange(32768, device="cuda").view(-1, 128)[:, 112:].flatten()
runs = (112, 128, 16, 256)
assert torch.equal(gen._packed((idx, runs), k, k)[0], k.index_select(2, idx))
t_new = do_bench(lambda: gen._packed((idx, runs), k, k), warmup=25, rep=200)
t_old = do_bench(lambda: gen._packed((idx, None), k, k), warmup=25, rep=200)
dkp = torch.randn(1, 16, 4096, 128, device="cuda", dtype=torch.bfloat16)
def scat_new():
    view = gen._strided_keys(k, runs); view.add_(dkp.view(view.shape))
def scat_old():
    k.index_copy_(2, idx, k.index_select(2, idx).add_(dkp))
s_new = do_bench(scat_new, warmup=25, rep=200)
s_old = do_bench(scat_old, warmup=25, rep=200)
print(f"pack K,V 32k d=128: runs {t_new*1e3:.1f} us, index_select {t_old*1e3:.1f} us; "
      f"scatter one: runs {s_new*1e3:.1f} us, index {s_old*1e3:.1f} us", flush=True)

for D in (128, 64):
    for L in (32768, 8192):
        B = max(1, 16384 // L)
        q, k, v, do, leaves = _inputs(B, 16, L, D)
        times = {"runs": {"fwd": [], "step": []}, "index": {"fwd": [], "step": []}}
        grads = {}
        for rnd in range(3):
            for name in (("runs", "index") if rnd % 2 == 0 else ("index", "runs")):
                set_variant(name)
                for t in leaves:
                    t.grad = None
                mod(*leaves).backward(do)
                grads[name] = [t.grad.clone() for t in leaves]
                times[name]["fwd"].append(do_bench(lambda: mod(q, k, v), warmup=25, rep=150))
                def step():
                    mod(*leaves).backward(do)
                times[name]["step"].append(do_bench(step, warmup=25, rep=150, grad_to_none=leaves))
        err = max(max_rel(a, b) for a, b in zip(grads["runs"], grads["index"]))
        med = {n: {m: sorted(x)[1] for m, x in d.items()} for n, d in times.items()}
        print(f"L={L} D={D}: fwd runs {med['runs']['fwd']:.4f} index {med['index']['fwd']:.4f} "
              f"({med['index']['fwd'] / med['runs']['fwd']:.3f}x); step runs "
              f"{med['runs']['step']:.4f} index {med['index']['step']:.4f} "
              f"({med['index']['step'] / med['runs']['step']:.3f}x); grads max rel {err:.2e}",
              flush=True)
set_variant("runs")
