"""The on-disk cache of generated modules: keys, atomic writes, concurrent processes."""
import multiprocessing
import os
import stat
import sys

import pytest

import attnlang
from attnlang import cache, codegen

PATTERN_TEXT = "pattern lf(w = 4) = window(w) | global(0..2)"


def pattern(**params):
    p = attnlang.parse(PATTERN_TEXT)["lf"]
    return p.bind(**params) if params else p


def test_key_depends_on_pattern_blocks_and_versions(monkeypatch):
    base = cache.cache_key(pattern())
    assert base == cache.cache_key(pattern())                  # deterministic
    assert base == cache.cache_key(pattern(w=4))               # same canonical pattern
    assert base != cache.cache_key(pattern(w=5))
    assert base != cache.cache_key(pattern(), block_m=64)
    assert base != cache.cache_key(pattern(), block_n=64)
    monkeypatch.setattr(codegen, "TEMPLATE_VERSION", codegen.TEMPLATE_VERSION + "-next")
    assert base != cache.cache_key(pattern())
    monkeypatch.undo()
    import triton

    monkeypatch.setattr(triton, "__version__", "0.0.1")
    assert base != cache.cache_key(pattern())


def test_directory_option_environment_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNLANG_CACHE_DIR", str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(tmp_path / "opt") == tmp_path / "opt"
    monkeypatch.delenv("ATTNLANG_CACHE_DIR")
    assert cache.cache_dir() == cache.Path(os.path.expanduser("~/.cache/attnlang"))


def test_write_atomic_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "m.py"
    cache.write_atomic(target, "x = 1\n")
    cache.write_atomic(target, "x = 2\n")
    assert target.read_text() == "x = 2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.py"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_write_atomic_gives_new_files_the_umask_mode_and_keeps_a_replaced_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        fresh = tmp_path / "new.py"
        cache.write_atomic(fresh, "x = 1\n")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 less the umask, not 0o600
        kept = tmp_path / "kept.attn"
        kept.write_text("pattern a = causal\n")
        kept.chmod(0o754)
        cache.write_atomic(kept, "pattern a = causal\r\n")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o754
        assert kept.read_bytes() == b"pattern a = causal\r\n"  # written as given
    finally:
        os.umask(old)


def test_load_module_generates_once_and_imports_under_unique_names(tmp_path):
    p = pattern()
    module = cache.load_module(p, directory=tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [cache.cache_key(p) + ".py"]
    assert files[0].read_text() == codegen.render_module(p)
    assert callable(module.attention_forward) and callable(module.attention_backward)
    assert cache.load_module(p, directory=tmp_path) is module
    other = cache.load_module(pattern(w=2), directory=tmp_path)
    assert other is not module and other.__name__ != module.__name__
    assert sys.modules[module.__name__] is module
    # the same pattern from another cache directory is a module of its own, with its own
    # support package (the second took the first's name, and so its support modules)
    (tmp_path / "second").mkdir()
    again = cache.load_module(p, directory=tmp_path / "second")
    assert again is not module and again.__name__ != module.__name__
    assert sys.modules[module.__name__] is module and sys.modules[again.__name__] is again
    assert again._support.plan is not module._support.plan


def _worker(directory, queue):
    try:
        module = cache.load_module(pattern(), directory=directory)
        queue.put(("ok", module.__file__))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", repr(exc)))


def test_concurrent_processes_share_one_complete_file(tmp_path):
    # spawn, not fork: forking a process that has imported torch and triton can deadlock.
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(4)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert all(status == "ok" for status, _ in results), results
    assert len({path for _, path in results}) == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [cache.cache_key(pattern()) + ".py"]  # no temporary file left behind
    assert (tmp_path / names[0]).read_text() == codegen.render_module(pattern())


def test_concurrent_writers_never_expose_partial_files(tmp_path):
    """Readers racing many writers only ever see one of the complete texts."""
    ctx = multiprocessing.get_context("spawn")
    target = tmp_path / "race.py"
    texts = [f"# writer {i}\n" + "x" * 200_000 + "\n" for i in range(3)]
    cache.write_atomic(target, texts[0])
    procs = [ctx.Process(target=_write_many, args=(str(target), t)) for t in texts]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        seen.add(target.read_text())
    for p in procs:
        p.join()
    assert seen <= set(texts)
    assert target.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.py"]


def _write_many(path, text):
    for _ in range(200):
        cache.write_atomic(cache.Path(path), text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
