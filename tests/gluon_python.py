"""Gluon helpers run as Python: a Gluon function's own code with the few calls of ``gl`` the
kernels' index arithmetic makes (where, minimum, maximum, cdiv, int64) given by Python's and
torch's, so that tests without a GPU check that arithmetic itself (every division there has
operands of 0 or more, where Python's floor and the GPU's truncation agree)."""
import types

import torch
from triton.runtime.jit import JITFunction

SCALAR_GL = types.SimpleNamespace(where=lambda c, a, b: a if c else b, minimum=min, maximum=max,
                                  cdiv=lambda a, b: -(-a // b), int64=torch.int64)


def as_python(jit_fn, done=None):
    """The Gluon function's own code as a Python function, ``gl`` its scalar calls and the
    Gluon functions it calls made Python the same way."""
    done = {} if done is None else done
    if jit_fn not in done:
        fn = jit_fn.fn
        scope = dict(fn.__globals__, gl=SCALAR_GL)
        done[jit_fn] = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__)
        for name, value in fn.__globals__.items():
            if isinstance(value, JITFunction):
                scope[name] = as_python(value, done)
    return done[jit_fn]
