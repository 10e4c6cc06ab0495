"""Correctness of the ``attnlang.nn`` modules on the GPU (Triton kernels, backend "auto").

Three groups of cases, each forward and gradients, bf16 and fp32 (fp32 for a subset):

* ``sparse``: ``SparseAttention`` / ``attention_impl`` / ``blocksparse_attention_impl`` against a
  float64 implementation of OpenAI's Sparse Transformer masks (all / local / strided / fixed,
  causal and bidirectional, ``Lq != Lk`` for ``attention_impl``).
* ``flash``: ``FlashAttention(flash=True)`` and ``flash=False`` against float64 and each other,
  with random boolean masks (fully masked rows included), a bias with gradient and ``Lq != Lk``.
* ``local``: ``LocalAttention`` against the ``local-attention`` package run in float64 (skipped
  with a note when the package is not importable).

Every error is a relative Frobenius error against float64.  A case is ``ok`` when each error is
at most ``max(floor, 3 * baseline)``, where the baseline is the error of a plain PyTorch
computation of the same thing in the same dtype (for ``local``, the package itself, under
``torch.autocast`` where it fails on bf16 inputs, as its rotary embedding does), and the
floor is 2e-4 for fp32 and 1e-2 (outputs) / 2e-2 (gradients) for bf16.  Fully masked rows must
be exact zeros.  Cases run in priority order; once ``--budget`` seconds have passed the rest are
recorded as skipped (Triton compiles every pattern once, which dominates the run time).

    python benchmarks/gpu_nn_check.py            # CUDA, realistic sizes
    python benchmarks/gpu_nn_check.py --cpu      # CPU, small sizes, torch backend (a smoke test)

Prints one line per case and writes ``$OUT/gpu_nn_check.json`` (``OUT`` defaults to
``benchmarks/results``).  Exits 1 when a case fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from attnlang.nn import (FlashAttention, LocalAttention, SparseAttention,  # noqa: E402
                         attention_impl, blocksparse_attention_impl)

FLOOR = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (1e-2, 2e-2)}  # (outputs, gradients)
BASELINE_FACTOR = 3.0


# ------------------------------------------------------------------ shared helpers

def rel(x, ref) -> float:
    """Relative Frobenius error of ``x`` against the float64 ``ref``."""
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def masked_attention(q, k, v, keep, bias=None):
    """Masked softmax attention of ``[..., Lq, D]`` against ``[..., Lk, D]`` in the inputs'
    dtype; ``keep`` bool broadcast to the scores; rows with no kept key give zeros (with finite,
    zero gradients).  Written here from the definition, independent of attnlang."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    keep = keep.expand(scores.shape)
    alive = keep.any(-1, keepdim=True)
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(~alive, 0.0)
    return torch.matmul(torch.softmax(scores, -1) * alive, v)


def seed_of(*key) -> int:
    """A seed fixed by ``key`` (``hash`` of strings changes between processes)."""
    return zlib.crc32(repr(key).encode())


def leaves(tensors, dtype=None):
    """Fresh leaf copies that require gradients (optionally cast to ``dtype``)."""
    return [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in tensors]


def forward_backward(fn, inputs, grad_out):
    """``fn(*inputs)`` and the gradients of ``(out * grad_out).sum()`` for every input."""
    out = fn(*inputs)
    grads = torch.autograd.grad((out * grad_out.to(out.dtype)).sum(), inputs)
    return out.detach(), [g.detach() for g in grads]


def compare(names, got, truth, base, dtype):
    """Errors of ``got`` (and of the baseline ``base``) against ``truth``; whether all pass."""
    errors, baseline, ok = {}, {}, True
    for i, name in enumerate(names):
        floor = FLOOR[dtype][0 if i == 0 else 1]
        e = rel(got[i], truth[i])
        errors[name] = e
        limit = floor
        if base is not None:
            baseline[name] = b = rel(base[i], truth[i])
            limit = max(floor, BASELINE_FACTOR * b)
        finite = bool(torch.isfinite(got[i]).all())
        ok &= finite and e <= limit
    return errors, baseline, ok


# ------------------------------------------------------------------ (a) SparseAttention

def openai_keep(lq, lk, mode, ctx, causal, c, device):
    """OpenAI's ``get_attn_mask`` (bottom-right aligned), the paper's fixed pattern and the
    bidirectional variants, as a ``[Lq, Lk]`` bool matrix."""
    i = torch.arange(lq, device=device).view(lq, 1) + (lk - lq)
    j = torch.arange(lk, device=device).view(1, lk)
    if mode == "all":
        keep = torch.ones(lq, lk, dtype=torch.bool, device=device)
    elif mode == "local":
        keep = (i - j).abs() < ctx
    elif mode == "strided":
        keep = (i - j) % ctx == 0
    else:
        keep = (i // ctx == j // ctx) | (j % ctx >= ctx - c)
    return keep & (j <= i) if causal else keep


def sparse_reference(q, k, v, heads, keep):
    """Split heads like the reference, masked attention, merge heads (in the inputs' dtype)."""
    b, lq, e = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, e // heads).transpose(1, 2)
    out = masked_attention(split(q), split(k), split(v), keep)
    return out.transpose(1, 2).reshape(b, lq, e)


def sparse_case(api, mode, ctx, causal, dtype, size, device, blocksize=32, summary=None):
    b, length, heads, d = size["B"], size["L"], size["heads"], size["D"]
    lq = size["Lq"] if api == "attention_impl" else length
    gen = torch.Generator(device="cpu").manual_seed(seed_of(api, mode, ctx, causal))
    e = heads * d
    q = torch.randn(b, lq, e, generator=gen)
    k, v = (torch.randn(b, length, e, generator=gen) for _ in range(2))
    g = torch.randn(b, lq, e, generator=gen).to(device)
    q, k, v = (t.to(device) for t in (q, k, v))
    c = (summary or max(1, ctx // 16)) if mode == "fixed" else None
    keep = openai_keep(lq, length, mode, ctx, causal, c, device)
    extra = dict(causal=causal, summary_size=summary) if mode == "fixed" else dict(causal=causal)
    if api == "SparseAttention":
        module = SparseAttention(heads, mode, ctx, blocksize, **extra)
        fn = lambda q_, k_, v_: module(q_, k_, v_)
    elif api == "blocksparse_attention_impl":
        fn = lambda q_, k_, v_: blocksparse_attention_impl(q_, k_, v_, heads, mode, ctx,
                                                           blocksize, **extra)
    else:
        fn = lambda q_, k_, v_: attention_impl(q_, k_, v_, heads, mode, ctx, **extra)
    got_out, got_grads = forward_backward(fn, leaves((q, k, v), dtype), g)
    ref = lambda q_, k_, v_: sparse_reference(q_, k_, v_, heads, keep)
    t_out, t_grads = forward_backward(ref, leaves((q, k, v), torch.float64), g)
    b_out, b_grads = forward_backward(ref, leaves((q, k, v), dtype), g)
    errors, baseline, ok = compare(["out", "dq", "dk", "dv"], [got_out, *got_grads],
                                   [t_out, *t_grads], [b_out, *b_grads], dtype)
    empty = ~keep.any(-1)
    if bool(empty.any()):
        ok &= bool((got_out[:, empty] == 0).all())
    name = (f"{api} mode={mode} ctx={ctx} causal={causal} Lq={lq} Lk={length}"
            + (f" blocksize={blocksize}" if api != "attention_impl" else ""))
    return name, errors, baseline, ok, None


# ------------------------------------------------------------------ (b) FlashAttention

def flash_case(causal, mask_kind, use_bias, lq, lk, dtype, size, device):
    b, h, d = size["B"], size["H"], size["D"]
    gen = torch.Generator(device="cpu").manual_seed(seed_of(causal, mask_kind, lq, lk))
    q = torch.randn(b, h, lq, d, generator=gen)
    k, v = (torch.randn(b, h, lk, d, generator=gen) for _ in range(2))
    g = torch.randn(b, h, lq, d, generator=gen)
    if mask_kind == "full":
        mask = torch.rand(b, h, lq, lk, generator=gen) < 0.5
    elif mask_kind == "key+query":  # key padding and query rows, broadcast
        mask = (torch.rand(b, 1, 1, lk, generator=gen) < 0.8) & \
            (torch.rand(1, 1, lq, 1, generator=gen) < 0.9)
    else:
        mask = None
    if mask is not None:  # some rows with no key at all
        rows = torch.randperm(lq, generator=gen)[: max(1, lq // 20)]
        mask = mask.expand(b, h, lq, lk).clone()
        mask[:, :, rows, :] = False
    bias = torch.randn(1, h, lq, lk, generator=gen) if use_bias else None
    q, k, v, g = (t.to(device) for t in (q, k, v, g))
    mask = None if mask is None else mask.to(device)
    tensors = [q, k, v] + ([bias.to(device)] if use_bias else [])
    i = torch.arange(lq, device=device).view(lq, 1) + (lk - lq)
    keep = (torch.arange(lk, device=device).view(1, lk) <= i) if causal else \
        torch.ones(lq, lk, dtype=torch.bool, device=device)
    keep = keep.view(1, 1, lq, lk) & (mask if mask is not None else True)

    def module_fn(flash):
        module = FlashAttention(causal=causal, dropout=0.0, flash=flash).eval()
        return lambda *t: module(t[0], t[1], t[2], mask=mask,
                                 attn_bias=t[3] if use_bias else None)

    names = ["out", "dq", "dk", "dv"] + (["dbias"] if use_bias else [])
    f_out, f_grads = forward_backward(module_fn(True), leaves(tensors, dtype), g)
    p_out, p_grads = forward_backward(module_fn(False), leaves(tensors, dtype), g)
    ref = lambda *t: masked_attention(t[0], t[1], t[2], keep, t[3] if use_bias else None)
    t_out, t_grads = forward_backward(ref, leaves(tensors, torch.float64), g)
    b_out, b_grads = forward_backward(ref, leaves(tensors, dtype), g)
    truth, base = [t_out, *t_grads], [b_out, *b_grads]
    errors, baseline, ok = compare(names, [f_out, *f_grads], truth, base, dtype)
    errors_plain, _, ok_plain = compare(names, [p_out, *p_grads], truth, base, dtype)
    errors.update({f"{n}[flash=False]": e for n, e in errors_plain.items()})
    pair = rel(f_out, p_out.double())
    errors["out[flash=True vs False]"] = pair
    ok = ok and ok_plain and pair <= 2 * FLOOR[dtype][0]
    empty = ~keep.expand(b, h, lq, lk).any(-1)
    if bool(empty.any()):
        ok &= bool((f_out[empty] == 0).all()) and bool((p_out[empty] == 0).all())
    name = (f"FlashAttention causal={causal} mask={mask_kind} bias={use_bias} Lq={lq} Lk={lk} "
            f"empty_rows={int(empty[0, 0].sum())}")
    return name, errors, baseline, ok, None


# ------------------------------------------------------------------ (c) LocalAttention

def local_package():
    try:
        from local_attention import LocalAttention as PackageLocalAttention
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, f"{type(exc).__name__}: {exc}"
    return PackageLocalAttention, None


def local_alive(n, n_pad, w, causal, lb, lf, exact, key_ok):
    """``[rows, n]`` bool: whether the package leaves query ``i`` a key (vectorised from its
    masking rules; ``key_ok`` ``[rows, n_pad]``).  Other rows are the package's documented
    mistake (a mean of the values) and are compared only for our zeros."""
    i = torch.arange(n_pad, device=key_ok.device).view(n_pad, 1)
    j = torch.arange(n_pad, device=key_ok.device).view(1, n_pad)
    diff = i // w - j // w
    keep = (diff >= -lf) & (diff <= lb)
    if causal:
        keep &= j <= i
        if exact:
            keep &= i - j <= w * lb
    elif exact:
        keep &= (i - j >= -w * lf) & (i - j <= w * lb)
    alive = (keep.unsqueeze(0) & key_ok.unsqueeze(1)).any(-1)
    return alive[:, :n]


def local_case(cfg, dtype, size, device, package):
    w, causal = cfg["w"], cfg["causal"]
    lb, lf = cfg.get("lb", 1), (0 if causal else cfg.get("lf", 1))
    lead, n, d = cfg["lead"], cfg["n"], size["D"]
    gen = torch.Generator(device="cpu").manual_seed(seed_of(sorted(cfg.items())))
    q, k, v = (torch.randn(*lead, n, d, generator=gen) for _ in range(3))
    g = torch.randn(*lead, n, d, generator=gen)
    batch = lead[0]
    mask = torch.rand(batch, n, generator=gen) < 0.85 if cfg.get("masked") else None
    heads = lead[-1] if len(lead) == 2 else 1
    bias = (torch.randn(heads, w, (lb + lf + 1) * w, generator=gen)
            if cfg.get("bias") else None)
    q, k, v, g = (t.to(device) for t in (q, k, v, g))
    mask = None if mask is None else mask.to(device)
    kwargs = dict(window_size=w, causal=causal, look_backward=lb, look_forward=lf, dropout=0.0,
                  shared_qk=cfg.get("shared_qk", False), dim=d if cfg.get("rotary") else None,
                  autopad=cfg.get("autopad", False), exact_windowsize=cfg.get("exact", False),
                  use_xpos=cfg.get("xpos", False))
    ours = LocalAttention(**kwargs).to(device).eval()
    theirs = package(**kwargs).to(device).eval()
    theirs64 = package(**kwargs).to(device).double().eval()
    n_pad = -(-n // w) * w
    their_mask = mask  # the package ignores autopad padding only when given a mask
    if mask is None and kwargs["autopad"] and n_pad > n and not causal:
        their_mask = torch.ones(batch, n, dtype=torch.bool, device=device)
    tensors = [q, k, v] + ([bias.to(device)] if bias is not None else [])
    names = ["out", "dq", "dk", "dv"] + (["dbias"] if bias is not None else [])

    def call(module, m):
        return lambda *t: module(t[0], t[1], t[2], mask=m,
                                 attn_bias=t[3] if bias is not None else None)

    key_ok = torch.ones(batch, n_pad, dtype=torch.bool, device=device)
    key_ok[:, n:] = False
    if mask is not None:
        key_ok[:, :n] = mask
    alive = local_alive(n, n_pad, w, causal, lb, lf, kwargs["exact_windowsize"], key_ok)
    alive = alive.reshape(batch, *([1] * (len(lead) - 1)), n, 1).expand(*lead, n, 1)
    g = g * alive  # gradients only through rows where the package is right
    o_out, o_grads = forward_backward(call(ours, mask), leaves(tensors, dtype), g)
    note = None
    try:
        p_out, p_grads = forward_backward(call(theirs, their_mask), leaves(tensors, dtype), g)
    except RuntimeError as exc:  # its rotary embedding mixes float32 into bf16 matmuls
        note = (f"package fails on {str(dtype).replace('torch.', '')} inputs "
                f"({str(exc).splitlines()[0]}); baseline: the package under autocast")
        package_fn = call(theirs, their_mask)

        def autocast_fn(*t):
            with torch.autocast(device.type, dtype=dtype):
                return package_fn(*(x.float() for x in t))

        p_out, p_grads = forward_backward(autocast_fn, leaves(tensors, dtype), g)
    base = [p_out * alive.to(p_out.dtype), *p_grads]
    t_out, t_grads = forward_backward(call(theirs64, their_mask),
                                      leaves(tensors, torch.float64), g)
    errors, baseline, ok = compare(names, [o_out * alive.to(o_out.dtype), *o_grads],
                                   [t_out * alive, *t_grads], base, dtype)
    dead = ~alive.expand_as(o_out)
    if bool(dead.any()):
        ok &= bool((o_out[dead] == 0).all())
    desc = " ".join(f"{key}={val}" for key, val in cfg.items() if key not in ("lead", "n"))
    name = f"LocalAttention {desc} lead={tuple(lead)} n={n} dead_rows={int((~alive).sum())}"
    return name, errors, baseline, ok, note


# ------------------------------------------------------------------ the plan

def build_cases(cpu: bool):
    """``(group, dtype, thunk-args)`` in priority order."""
    if cpu:
        sp = dict(B=2, L=96, Lq=70, heads=2, D=16)
        fl = dict(B=2, H=2, D=16)
        lo = dict(D=16)
        ctx = dict(local=8, strided=5, fixed=16)
        fl_lengths = [(60, 90), (96, 64), (40, 40)]
        ln = dict(n=96, w=8, n_odd=90, lead=(2, 2))
    else:
        sp = dict(B=2, L=2048, Lq=1500, heads=4, D=64)
        fl = dict(B=2, H=4, D=64)
        lo = dict(D=64)
        ctx = dict(local=128, strided=32, fixed=128)
        fl_lengths = [(1000, 1500), (1024, 512), (700, 700)]
        ln = dict(n=2048, w=128, n_odd=2000, lead=(2, 4))
    cases = []
    bf16 = torch.bfloat16
    main = bf16 if not cpu else torch.float32
    other = torch.float32 if not cpu else bf16
    # (a) sparse: every mode causal in the main dtype, then bidirectional, then the rest
    for mode in ("all", "local", "strided", "fixed"):
        cases.append(("sparse", main, ("SparseAttention", mode, ctx.get(mode, 0), True, 32)))
    cases.append(("flash", main, (True, "full", True) + fl_lengths[0]))
    w, n = ln["w"], ln["n"]
    local_cfgs = [
        dict(w=w, causal=True, rotary=True, lead=ln["lead"], n=n),
        dict(w=w // 2, causal=False, lb=1, lf=1, rotary=True, masked=True, lead=ln["lead"], n=n),
        dict(w=w, causal=True, exact=True, rotary=True, xpos=True, lead=ln["lead"], n=n),
        dict(w=w // 2, causal=False, autopad=True, masked=True, lead=(ln["lead"][0],),
             n=ln["n_odd"]),
        dict(w=w // 4, causal=False, lb=2, lf=0, shared_qk=True, lead=ln["lead"], n=n),
        dict(w=w // 4, causal=True, bias=True, rotary=True, masked=True, lead=ln["lead"],
             n=n // 2),
        dict(w=w // 2, causal=False, autopad=True, lead=(ln["lead"][0],), n=ln["n_odd"]),
    ]
    cases.append(("local", main, local_cfgs[0]))
    for mode in ("all", "local", "strided", "fixed"):
        cases.append(("sparse", main, ("blocksparse_attention_impl", mode, ctx.get(mode, 0),
                                       False, 64)))
    cases.append(("flash", main, (False, "key+query", False) + fl_lengths[1]))
    cases.append(("flash", main, (True, "none", True) + fl_lengths[1]))  # Lq > Lk: empty rows
    cases.append(("flash", main, (False, "full", True) + fl_lengths[2]))
    for cfg in local_cfgs[1:]:
        cases.append(("local", main, cfg))
    cases.append(("sparse", main, ("attention_impl", "fixed", ctx["fixed"], True, None)))
    cases.append(("sparse", main, ("attention_impl", "strided", ctx["strided"], True, None)))
    cases.append(("sparse", main, ("SparseAttention", "local", ctx["local"], True, 16)))
    # the other dtype, a subset
    cases.append(("sparse", other, ("SparseAttention", "fixed", ctx["fixed"], True, 32)))
    cases.append(("sparse", other, ("attention_impl", "local", ctx["local"], False, None)))
    cases.append(("flash", other, (True, "full", True) + fl_lengths[0]))
    cases.append(("flash", other, (False, "key+query", False) + fl_lengths[1]))
    cases.append(("local", other, local_cfgs[1]))
    cases.append(("local", other, local_cfgs[5]))
    sizes = dict(sparse=sp, flash=fl, local=lo)
    return cases, sizes


def run_one(group, dtype, args, size, device, package):
    if group == "sparse":
        api, mode, ctx, causal, blocksize = args
        return sparse_case(api, mode, ctx, causal, dtype, size, device, blocksize or 32)
    if group == "flash":
        causal, mask_kind, use_bias, lq, lk = args
        return flash_case(causal, mask_kind, use_bias, lq, lk, dtype, size, device)
    return local_case(args, dtype, size, device, package)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true",
                        help="run on the CPU with small sizes (torch backend)")
    parser.add_argument("--budget", type=float, default=200.0,
                        help="seconds after which the remaining cases are skipped (default 200)")
    parser.add_argument("--out", default=os.environ.get("OUT") or
                        os.path.join(ROOT, "benchmarks", "results"),
                        help="directory for gpu_nn_check.json (default $OUT or "
                             "benchmarks/results)")
    args = parser.parse_args(argv)
    if args.cpu:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --cpu for the small CPU run")
        device = torch.device("cuda")
    torch.manual_seed(0)
    package, why = local_package()
    if package is None:
        print(f"note: local-attention is not importable ({why}); LocalAttention cases skipped")
    cases, sizes = build_cases(args.cpu)
    start = time.time()
    results, failures = [], 0
    for group, dtype, case_args in cases:
        dname = str(dtype).replace("torch.", "")
        entry = dict(group=group, dtype=dname)
        if group == "local" and package is None:
            entry.update(status="skipped", note="local-attention not importable",
                         name=f"LocalAttention {case_args}")
            print(f"[{group:6s}] {dname:8s} SKIP (local-attention not importable)")
            results.append(entry)
            continue
        if time.time() - start > args.budget:
            entry.update(status="skipped", note="time budget", name=str(case_args))
            print(f"[{group:6s}] {dname:8s} SKIP (time budget) {case_args}")
            results.append(entry)
            continue
        t0 = time.time()
        try:
            name, errors, baseline, ok, note = run_one(group, dtype, case_args, sizes[group],
                                                       device, package)
            entry.update(name=name, errors=errors, baseline=baseline,
                         status="ok" if ok else "FAIL")
            if note:
                entry["note"] = note
        except Exception as exc:  # noqa: BLE001 - report and go on with the other cases
            ok = False
            entry.update(name=str(case_args), status="FAIL", error=f"{type(exc).__name__}: "
                         f"{exc}", traceback=traceback.format_exc(limit=6))
            name, errors = str(case_args), {}
        if device.type == "cuda":
            torch.cuda.synchronize()
        entry["seconds"] = round(time.time() - t0, 3)
        failures += not ok
        shown = " ".join(f"{k}={v:.1e}" + (f"(base {entry['baseline'][k]:.1e})"
                                           if k in entry.get("baseline", {}) else "")
                         for k, v in errors.items())
        print(f"[{group:6s}] {dname:8s} {entry['status']:4s} {entry['seconds']:6.1f}s {name}: "
              f"{shown}" + (f" ERROR {entry['error']}" if "error" in entry else "")
              + (f" [note: {entry['note']}]" if "note" in entry else ""), flush=True)
        results.append(entry)
    total = time.time() - start
    summary = dict(cases=len(results), ok=sum(r["status"] == "ok" for r in results),
                   failed=failures, skipped=sum(r["status"] == "skipped" for r in results),
                   seconds=round(total, 1))
    report = dict(device=(torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"),
                  mode="cpu" if args.cpu else "cuda", torch=torch.__version__,
                  python=platform.python_version(), floors={str(k).replace("torch.", ""): v
                                                            for k, v in FLOOR.items()},
                  baseline_factor=BASELINE_FACTOR, summary=summary, results=results)
    try:
        import triton

        report["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        report["triton"] = None
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_nn_check.json")
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"{summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped in "
          f"{total:.0f}s; wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
