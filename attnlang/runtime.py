"""The runtime: patterns become callables and ``nn.Module``s that run on a chosen backend.

Backends:

* ``"triton"``: the generated module of the pattern (``codegen.render_module``, stored by
  ``cache.load_module``); needs CUDA tensors, or ``TRITON_INTERPRET=1`` on CPU.
* ``"torch"``: ``torch_backend.TorchBackend``, blocked PyTorch over the component plan (CPU users,
  and a check on the kernels).
* ``"auto"``: ``"triton"`` for CUDA tensors, ``"torch"`` otherwise.

Both run as ``torch.library`` custom ops under ``torch.compile`` (``custom_ops.attention_op``), so
a module compiles with ``torch.compile(fullgraph=True)`` (dropout with a ``generator`` argument
excepted: Dynamo cannot trace one); eager calls run the same functions without the dispatcher.
Inputs are checked by ``validate.validate``; every complaint is a ``ValueError`` naming the
argument.
"""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Dict

import torch

from .custom_ops import attention_op, compact
from .errors import AttnError
from .predicate import check_where_range
from .torch_backend import TorchBackend, uses_segments
from .validate import check_dropout, validate

BACKENDS = ("auto", "triton", "torch")
DEFAULT_TORCH_BLOCK = 64

_IMPLS: Dict[str, object] = {}
_LOCK = threading.Lock()


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        choices = ", ".join(map(repr, BACKENDS))
        raise ValueError(f"backend: got {backend!r}; expected one of {choices}")
    return backend


def _check_block(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name}: got {value!r}; expected a power of two of at least 16 (or None)")
    return value


def choose_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on ``device``."""
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend: got 'triton' for tensors on {device}; expected CUDA tensors "
                         "(or set TRITON_INTERPRET=1 to run the kernels in the interpreter), or "
                         "backend='torch'")
    return backend


def _op(pattern, backend: str, block_m, block_n, cache_dir):
    """The custom-op callable of ``pattern`` on a concrete backend (made once per process)."""
    expr = pattern.ir
    key = f"{backend}|{block_m}|{block_n}|{cache_dir}|{expr}"
    hit = _IMPLS.get(key)  # lock-free read (torch.compile traces this path)
    if hit is not None:
        return hit
    return _make_op(pattern, expr, key, backend, block_m, block_n, cache_dir)


def _make_op(pattern, expr, key, backend, block_m, block_n, cache_dir):
    if backend == "torch":
        impl = TorchBackend(expr, block_m or DEFAULT_TORCH_BLOCK, block_n or DEFAULT_TORCH_BLOCK)
    else:
        from .cache import load_module

        impl = load_module(pattern, block_m, block_n, cache_dir)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    op = attention_op(f"{backend}_{digest}", impl)
    with _LOCK:
        _IMPLS.setdefault(key, op)
        return _IMPLS[key]


def prepare_ops(pattern, backend, block_m=None, block_n=None, cache_dir=None):
    """``{backend name: op}`` for the backends a call with ``backend`` may pick (the triton
    op only where it can run: ``backend="triton"``, or ``"auto"`` with CUDA available), made
    now so that a later ``torch.compile`` trace finds them without tracing the lookup."""
    ops = {"torch": _op(pattern, "torch", block_m, block_n, cache_dir)}
    if backend == "triton" or (backend == "auto" and torch.cuda.is_available()):
        ops["triton"] = _op(pattern, "triton", block_m, block_n, cache_dir)
    return ops


_PREPARED: dict = {}


def prepared(key, make, block_m=None, block_n=None):
    """``(pattern, ops, needs_segments)`` for a pattern given as text or as a ``Pattern`` object,
    made once per process by ``make()`` (the caller's parse of it, or the object) and kept under
    ``(key, block_m, block_n)``, at most 1024 entries.  The lookup
    is a plain dict read keyed by strings and ints, which ``torch.compile`` traces without graph
    breaks once an eager call has made the entry (parsing and making ops are not traceable).
    An entry holds its pattern, so a key made of the pattern's ``id`` is not reused while it
    lives."""
    full_key = (key, block_m, block_n)
    hit = _PREPARED.get(full_key)
    if hit is None:
        if len(_PREPARED) >= 1024:  # (new Pattern objects every call): start again, never grow
            _PREPARED.clear()
        pattern = make()
        made = (pattern, prepare_ops(pattern, "auto", block_m, block_n),
                uses_segments(pattern.ir))
        hit = _PREPARED.setdefault(full_key, made)
    return hit


_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_inputs(q, k, v):
    """Under ``torch.autocast`` for ``q``'s device, ``q``/``k``/``v`` in the autocast dtype, as
    ``F.scaled_dot_product_attention`` takes them (float64 is left alone, as autocast does)."""
    if not isinstance(q, torch.Tensor) or q.is_meta \
            or not torch.is_autocast_enabled(q.device.type):
        return q, k, v  # (no autocast on the meta device: validate names the argument)
    dtype = torch.get_autocast_dtype(q.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_CASTS
                 and t.device == q.device else t for t in (q, k, v))


def run(pattern, q, k, v, *, segments=None, key_padding_mask=None, attn_mask=None,
        attn_bias=None, scale=None, dropout_p=0.0, generator=None, return_lse=False,
        backend="auto", block_m=None, block_n=None, cache_dir=None, ops=None,
        needs_segments=None, text=None):
    """Attention of ``pattern`` (an ``attnlang.Pattern``): validate, pick the backend, run.

    ``ops``: optional ``{backend name: op}`` made beforehand (``PatternAttention`` passes its
    own, so that ``torch.compile`` finds the op without tracing the lookup);
    under ``torch.autocast`` ``q``, ``k`` and ``v`` are cast to the autocast dtype first (as
    ``F.scaled_dot_product_attention`` does), so ``out`` comes back in that dtype;
    ``needs_segments``: whether the pattern uses ``segment``, if already known (walking the
    pattern on every call costs tens of microseconds of host time); ``text``: the source the
    pattern was parsed from as one expression, if it was (its errors are reported in terms of
    that text: `functional.in_text`).
    """
    check_backend(backend)
    q, k, v = _autocast_inputs(q, k, v)
    if needs_segments is None:
        needs_segments = uses_segments(pattern.ir)
    args = validate(q, k, v, segments=segments, key_padding_mask=key_padding_mask,
                    attn_mask=attn_mask, attn_bias=attn_bias, scale=scale, dropout_p=dropout_p,
                    needs_segments=needs_segments)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: got {type(generator).__name__}; expected a torch.Generator "
                         "or None")
    name = choose_backend(backend, args.q.device)
    op = ops.get(name) if ops else None
    if op is None:
        op = _op(pattern, name, block_m, block_n, cache_dir)
    seed = 0
    if args.dropout_p > 0:
        device = generator.device if generator is not None else "cpu"
        seed = torch.randint(0, 2 ** 62, (1,), generator=generator, device=device)
        # traced, the op takes the tensor (no graph break, no recompile per seed: custom_ops)
        seed = seed if torch.compiler.is_compiling() else int(seed.item())
    attn_mask = compact(args.attn_mask)
    # The bias compact too: a bias the caller expanded (stride 0, size > 1) enters autograd in
    # the shape its gradient comes back in (the backward reduces it to the broadcast shape).
    try:
        out, lse = op(args.q, args.k, args.v, args.scale, args.seg_q, args.seg_k,
                      args.key_padding_mask, attn_mask, compact(args.attn_bias4),
                      args.dropout_p, seed)
    except ValueError as failure:
        error = _at_the_source(failure, pattern, args, text)
        if error is failure:
            raise
        raise error from None
    return (out, lse) if return_lse else out


def _at_the_source(failure, pattern, args, text):
    """The error to report for a call whose op failed with ``failure``.  A generated module
    plans from the pattern's text without its positions: a `where` too large for these lengths
    is found again here, at the user's expression; and an error about a pattern given as one
    expression's ``text`` is put in terms of that text."""
    try:
        check_where_range(pattern.ir, args.q.shape[2], args.k.shape[2], args.q.shape[1])
    except AttnError as where:
        failure = where
    if isinstance(failure, AttnError):
        from .functional import expression_text, in_text

        text = text if text is not None else expression_text(pattern)
        if text is not None:
            return in_text(failure, text)
    return failure


def _check_cache_dir(cache_dir):
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir: got {type(cache_dir).__name__} {cache_dir!r}; expected a "
                         "directory path (str or os.PathLike) or None")
    return cache_dir


# PatternAttention's settings: how each is checked when set
_SETTINGS = {"pattern": lambda p: p, "backend": check_backend,
             "dropout": lambda p: check_dropout("dropout", p),
             "block_m": lambda b: _check_block("block_m", b),
             "block_n": lambda b: _check_block("block_n", b), "cache_dir": _check_cache_dir}


class PatternAttention(torch.nn.Module):
    """Sparse attention of one pattern: ``forward(q, k, v, *, segments=None, ...)``.

    ``q`` is ``[B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]``; returns ``out`` (and ``lse``
    ``[B, Hq, Lq]`` float32 with ``return_lse=True``).  ``dropout`` applies in training mode only.
    """

    def __init__(self, pattern, backend="auto", *, dropout=0.0, block_m=None, block_n=None,
                 cache_dir=None):
        super().__init__()
        self.pattern = pattern
        self.backend = backend
        self.dropout = dropout
        self.block_m = block_m
        self.block_n = block_n
        self.cache_dir = cache_dir
        # Resolve now: a missing parameter is reported at construction, and the ops exist
        # before any torch.compile trace reaches ``forward``.
        self._prepare()

    def __setattr__(self, name, value):
        """The settings are checked when set, and the ops made again when one that makes them
        changes after construction (assigning ``pattern`` was silently ignored before)."""
        check = _SETTINGS.get(name)
        if check is None:
            return super().__setattr__(name, value)
        text = None
        if name == "pattern":
            from .functional import as_pattern

            text = value if isinstance(value, str) else None
            value = as_pattern(value)
        value = check(value)
        kept = {key: self.__dict__[key] for key in (name, "_ops", "_needs_segments", "_text")
                if key in self.__dict__}
        super().__setattr__(name, value)
        if name == "pattern":  # the text, for errors' positions in it (`functional.in_text`)
            super().__setattr__("_text", text)
        if name != "dropout" and "_ops" in kept:  # after construction: the ops made again, and
            try:  # a setting they refuse (a pattern with a parameter unset) changes nothing
                self._prepare()
            except BaseException:
                self.__dict__.update(kept)
                raise
        return None

    def _prepare(self):
        self._ops = prepare_ops(self.pattern, self.backend, self.block_m, self.block_n,
                                self.cache_dir)
        self._needs_segments = uses_segments(self.pattern.ir)

    def __getstate__(self):
        # the ops are process-local callables (closures over registered custom ops): pickle,
        # torch.save and copy.deepcopy carry the settings and make them again on loading
        state = dict(super().__getstate__())
        state.pop("_ops", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._prepare()

    def extra_repr(self) -> str:
        return f"pattern='{self.pattern.ir}', backend={self.backend!r}, dropout={self.dropout}"

    def forward(self, q, k, v, *, segments=None, key_padding_mask=None, attn_mask=None,
                attn_bias=None, scale=None, return_lse=False, generator=None):
        return run(self.pattern, q, k, v, segments=segments, key_padding_mask=key_padding_mask,
                   attn_mask=attn_mask, attn_bias=attn_bias, scale=scale,
                   dropout_p=self.dropout if self.training else 0.0, generator=generator,
                   return_lse=return_lse, backend=self.backend, block_m=self.block_m,
                   block_n=self.block_n, cache_dir=self.cache_dir, ops=self._ops,
                   needs_segments=self._needs_segments, text=self._text)


def make_module(pattern, backend="auto", **options) -> PatternAttention:
    """An ``nn.Module`` for ``pattern`` (a ``Pattern`` or the source of one pattern expression).

    Options: ``dropout=0.0``, ``block_m``, ``block_n`` (None: the backend's default),
    ``cache_dir`` (generated modules; default ``$ATTNLANG_CACHE_DIR`` or ``~/.cache/attnlang``).
    """
    known = {"dropout", "block_m", "block_n", "cache_dir"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: got an unknown option; expected one of "
                         f"{', '.join(sorted(known))}")
    return PatternAttention(pattern, backend, **options)
