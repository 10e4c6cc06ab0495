"""The on-disk cache of generated modules (the one piece of global mutable state).

A generated module is a pure function of (canonical pattern, block sizes, template version,
Triton version, torch major.minor), so its file is named by the sha256 of those: a new Triton or
template version simply misses the cache.  The directory is ``cache_dir`` if given, else
``$ATTNLANG_CACHE_DIR``, else ``~/.cache/attnlang``.

Writes are atomic and safe with concurrent processes: the source goes to a temporary file in the
same directory, then ``os.replace`` moves it onto its final name (atomic on POSIX and Windows).
Two processes racing write identical bytes, and a reader never sees a half-written file.
Modules are imported from their path under a unique module name, so two patterns (or two cache
directories) never collide in ``sys.modules``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional

import torch

_LOADED: Dict[str, object] = {}
_LOCK = threading.Lock()


def cache_dir(path=None) -> Path:
    """The cache directory: ``path``, ``$ATTNLANG_CACHE_DIR`` or ``~/.cache/attnlang``."""
    if path is None:
        path = os.environ.get("ATTNLANG_CACHE_DIR") or os.path.join("~", ".cache", "attnlang")
    return Path(os.path.expanduser(os.fspath(path)))


def _versions() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # the torch backend never needs a generated module
        triton_version = "none"
    torch_mm = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"triton={triton_version};torch={torch_mm}"


def cache_key(pattern, block_m=None, block_n=None) -> str:
    """sha256 (hex) of the canonical pattern, block sizes and tool versions."""
    from .codegen import TEMPLATE_VERSION

    canonical = str(pattern.ir) if hasattr(pattern, "ir") else str(pattern)
    text = "\n".join([f"pattern={canonical}", f"block_m={block_m}", f"block_n={block_n}",
                      f"template={TEMPLATE_VERSION}", _versions()])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + os.replace),
    as it is (no newline translation).  The file keeps the mode of the file it replaces, and a new
    one gets the mode ``open`` would give it (0o666 less the umask), not the temporary's 0o600;
    a symbolic link is written through (the link stays a link)."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def import_path(path: Path, name: Optional[str] = None):
    """Import a Python file under a unique module name (registered in ``sys.modules``)."""
    path = Path(path).resolve()
    if name is None:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        name = f"attnlang_generated_{digest}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Triton's @jit reads the source through the module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def module_path(pattern, block_m=None, block_n=None, directory=None) -> Path:
    """Where the generated module of ``pattern`` lives (whether or not it exists yet)."""
    return cache_dir(directory) / f"{cache_key(pattern, block_m, block_n)}.py"


def load_module(pattern, block_m=None, block_n=None, directory=None):
    """The generated module of ``pattern``: from memory, from disk, or generated and stored."""
    path = module_path(pattern, block_m, block_n, directory)
    key = str(path)
    with _LOCK:
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
        if not path.exists():
            from .codegen import render_module

            write_atomic(path, render_module(pattern, block_m=block_m, block_n=block_n))
        # named by the module's key and its folder: two cache directories never share a name
        folder = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:8]
        module = import_path(path, f"attnlang_generated_{path.stem[:24]}_{folder}")
        _LOADED[key] = module
        return module
