"""Triton's interpreter, made faster for the test suite without changing what it computes.

The interpreter patches `triton.language` for a kernel launch (``GridExecutor.__call__``), and
then again at every call of a device function inside it (``InterpretedFunction.__call__``), a
fresh and never restored patch of the same modules each time.  The generated kernels call small
device functions (masks, loads, ids) in their inner loops, and those repeated patches took about a
fifth of the interpreter's time (profiled on a residue-class pattern's training step).  During a
launch whose patch already covers the language modules a device function sees, the second patch
changes nothing; ``install`` skips it.  Where Triton's interpreter no longer has these names,
nothing is installed and the tests run as before.

``install`` also turns off the interpreter's integer overflow sanitizer: after every 32-bit
integer add, subtract and multiply it computed the result again in 64 bits and asserted that it
fit (the program-order test's causal step and the call-reuse tests: 30.6 -> 23.7 s).  It only
checks; the values computed are the same without it, and the GPU runs the kernels without it
(Triton's sanitizer is a debug option there): at the suite's sizes no index comes near 2^31,
and the kernels' 64-bit offsets at real sizes are checked on the GPU
(`benchmarks/gpu_check.py`).
"""
import dataclasses
import inspect
import threading


def install():
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return False
    names = ("_patch_lang", "GridExecutor", "InterpretedFunction")
    if not all(hasattr(interpreter, n) for n in names) or getattr(interpreter, "_attnlang", 0):
        return False
    original = interpreter._patch_lang
    launch = interpreter.GridExecutor.__call__
    state = threading.local()

    def languages(fn):
        return {id(v) for v in fn.__globals__.values()
                if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_lang(fn):
        active = getattr(state, "active", None)
        if active is None:  # not inside a launch: Triton's own behaviour
            return original(fn)
        if active and languages(fn) <= active[-1]:
            return None  # a device function's call: its modules are patched already
        scope = original(fn)  # the launch's own patch
        active.append(languages(fn))
        return scope

    def run_launch(self, *args, **kwargs):
        outer = getattr(state, "active", None)
        state.active = []
        try:
            return launch(self, *args, **kwargs)
        finally:
            state.active = outer

    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = run_launch
    builder = getattr(interpreter, "interpreter_builder", None)
    if builder is not None and hasattr(builder.options, "sanitize_overflow"):
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    interpreter._attnlang = 1
    return True
