"""Gluon helpers run as Python: a Gluon function's own code with the few calls of ``gl`` the
kernels' index arithmetic makes (where, minimum, maximum, cdiv, int64, and load through a
`Pointer`) given by Python's and torch's, so that tests without a GPU check that arithmetic
itself (every division there has operands of 0 or more, where Python's floor and the GPU's
truncation agree), or (`TENSOR_GL`) a block's mask on tensors; and the band backward kernel's
writes emulated in float64 (`emulate_backward`) and its launch's query tiles checked
(`check_tiles`)."""
import types

import torch
from triton.language import constexpr
from triton.runtime.jit import JITFunction

SCALAR_GL = types.SimpleNamespace(where=lambda c, a, b: a if c else b, minimum=min, maximum=max,
                                  cdiv=lambda a, b: -(-a // b), int64=torch.int64,
                                  load=lambda pointer: pointer.read())


class Pointer:
    """A pointer into a tensor for Gluon functions run as Python: ``pointer + i`` moves it,
    ``gl.load`` reads the element there (as an int); ``pointer + offsets`` (a tensor) points at
    several, which `TENSOR_GL`'s load reads (a tensor) where ``mask`` holds, else ``other``."""

    def __init__(self, t, at=0):
        self.t, self.at = t.reshape(-1), at

    def __add__(self, i):
        return Pointer(self.t, self.at + (i if torch.is_tensor(i) else int(i)))

    def read(self, mask=None, other=None):
        if not torch.is_tensor(self.at):
            return int(self.t[self.at])
        mask = torch.ones_like(self.at, dtype=torch.bool) if mask is None else mask
        got = self.t[torch.where(mask, self.at, 0)]
        return torch.where(mask, got, torch.as_tensor(other, dtype=got.dtype))


def _either(scalar, tensor):
    """``scalar`` of two numbers, else ``tensor`` (torch's elementwise one) of their tensors."""
    return lambda a, b: (tensor(torch.as_tensor(a), torch.as_tensor(b))
                         if torch.is_tensor(a) or torch.is_tensor(b) else scalar(a, b))


# ... and a Gluon function's block arithmetic on tensors (layouts ignored), as `as_python`'s gl
TENSOR_GL = types.SimpleNamespace(
    **dict(vars(SCALAR_GL), where=lambda c, a, b: torch.where(torch.as_tensor(c), a, b),
           load=lambda pointer, mask=None, other=None: pointer.read(mask, other),
           minimum=_either(min, torch.minimum), maximum=_either(max, torch.maximum)),
    arange=lambda start, end, layout=None: torch.arange(start, end),
    SliceLayout=lambda dim, parent: None)


def as_python(jit_fn, done=None, gl=SCALAR_GL):
    """The Gluon function's own code as a Python function, ``gl`` its scalar calls (or
    `TENSOR_GL`'s) and the Gluon functions it calls made Python the same way."""
    done = {} if done is None else done
    if jit_fn not in done:
        fn = jit_fn.fn
        scope = dict(fn.__globals__, gl=gl)
        scope.update({name: value.value for name, value in fn.__globals__.items()
                      if isinstance(value, constexpr)})  # (the module's, e.g. ROWS: numbers)
        done[jit_fn] = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__)
        for name, value in fn.__globals__.items():
            if isinstance(value, JITFunction):
                scope[name] = as_python(value, done, gl)
    return done[jit_fn]


def read(desc):
    """The tensor a host descriptor reads: its base at the descriptor's shape and strides."""
    return torch.as_strided(desc.base, desc.shape, desc.strides)


def emulate_backward(a, keep):
    """What `band_backward_kernel` writes, in float64, given its arguments by name (``a``) and
    the pairs it keeps (``keep``, [Lq, Lk] bool): dK and dV, and dQ added to its float32 sums,
    from the rows kernel's terms, on the tensors its descriptors read and write."""
    q, k, v, do, dk, dv, dq = (read(a[n]) for n in (
        "q_desc", "k_desc", "v_desc", "do_desc", "dk_desc", "dv_desc", "dq_desc"))
    B, H, Lq, _ = q.shape
    terms = read(a["rows_desc"]).view(2, B, H, -1)[:, :, :, :Lq].double()
    s2 = (q.double() @ k.double().transpose(-1, -2)) * a["qk_scale"]
    p = torch.exp2(s2 - terms[0][..., None]).masked_fill(~keep, 0.0)
    dv.copy_(p.transpose(-1, -2) @ do.double())
    ds = p * (do.double() @ v.double().transpose(-1, -2) - terms[1][..., None])
    dk.copy_(ds.transpose(-1, -2) @ q.double() * a["sm_scale"])
    dq[:, :, :Lq] += (ds @ k.double() * a["sm_scale"]).float()


def check_tiles(kernel, a, options):
    """A launch of `band_backward_kernel` (``kernel``, its arguments by name ``a``, ``options``)
    reads whole query tiles of its BM: Q's, dO's and dQ's descriptors take tiles of BM rows,
    the rows' terms tiles of [2, 1, BM] from a tensor padded to whole tiles, and (BM, STAGES)
    are its module's `tile_config` for the key block and head dimension."""
    bm, D = options["BM"], options["D"]
    assert (bm, options["STAGES"]) == kernel.fn.__globals__["tile_config"](options["BN"], D)
    for name in ("q_desc", "do_desc", "dq_desc"):
        assert list(a[name].block_shape) == [1, 1, bm, D], name
    assert list(a["rows_desc"].block_shape) == [2, 1, bm]
    assert a["rows_desc"].shape[2] % bm == 0, (a["rows_desc"].shape, bm)
