"""The benchmark table (README) from result records: ratios within one run, the layout-cost
section for document masks, the targets' summary."""
from attnlang.bench import markdown_table


def _rec(pattern, mode, impl, ms, tflops, run="r1", n=8192, d=128):
    return dict(pattern=pattern, n=n, d=d, mode=mode, impl=impl, ms=ms, tflops=tflops,
                device="GPU", torch="t", triton="x", run=run)


def test_ratios_compare_one_run_and_layout_cost_is_a_share_of_the_forward():
    records = [
        _rec("causal", "fwd", "attnlang", 1.0, 500.0), _rec("causal", "fwd", "flex", 1.25, 400.0),
        _rec("causal", "fwd", "sdpa-causal", 0.8, 625.0),
        _rec("causal", "fwd", "attnlang", 1.0, 100.0, run="r2"),
        _rec("all", "fwd", "attnlang", 1.0, 550.0), _rec("all", "fwd", "sdpa", 0.9, 625.0),
        _rec("causal & segment", "fwd", "attnlang", 0.2, 80.0),
        _rec("causal & segment", "layout", "attnlang-layout", 0.006, 0.0),
        _rec("causal & segment", "layout", "attnlang-layout-host", 0.010, 0.0),
        _rec("causal & segment", "layout", "attnlang-layout-step", 0.004, 0.0),
    ]
    table = markdown_table(records)
    lines = table.splitlines()
    assert "| `causal` | 8k | 128 | fwd | 500 | 400 | 625 | 1.25× | 0.80× | r1 |" in lines
    # the r2 row has no FlexAttention or SDPA of its own run: no ratio borrowed from r1
    assert "| `causal` | 8k | 128 | fwd | 100 | — | — | — | — | r2 |" in lines
    assert "| `all` | 8k | 128 | fwd | 550 | — | 625 | — | 0.88× | r1 |" in lines  # full SDPA
    assert "| `causal & segment` | 8k | 128 | 6 | 10 | 4 | 200 | 3.0% | 5.0% | 2.0% |" in lines
    assert not any("layout |" in line and "attnlang-layout" in line for line in lines)


def test_timing_rounds_interleave_implementations_and_drop_failures():
    """Each round times every entry once, in order and (odd rounds) in reverse; an entry that
    raises is logged and not timed again; the rounds' medians are all returned (the benchmark
    keeps the least)."""
    from attnlang.bench import time_in_rounds

    calls = []
    slow = {1}  # the host was slow during the second call of the run, whoever was timed then

    def fake_do_bench(fn, warmup, rep, grad_to_none, return_mode):
        assert return_mode == "median" and rep == 50
        calls.append(fn())
        if fn() == "broken":
            raise RuntimeError("out of resources\nmore")
        return 10.0 if len(calls) - 1 in slow else {"a": 1.0, "b": 2.0}[fn()]

    logged = []
    benches = {("a", "fwd"): (lambda: "a", None), ("b", "fwd"): (lambda: "b", None),
               ("c", "fwd"): (lambda: "broken", None)}
    times = time_in_rounds(benches, 3, 25, 150, fake_do_bench, logged.append)
    assert calls == ["a", "b", "broken", "b", "a", "a", "b"]
    assert times == {("a", "fwd"): [1.0, 1.0, 1.0], ("b", "fwd"): [10.0, 2.0, 2.0]}
    assert logged == ["!! ('c', 'fwd'): RuntimeError: out of resources"]
    assert min(times[("b", "fwd")]) == 2.0


def test_target_summary_counts_rows_per_target_within_one_run():
    """Each target counts the rows it applies to and names the one furthest from it: FlexAttention
    ratios split between the 10x patterns and the rest, `all` against SDPA's full attention and
    causal against SDPA-causal, the others' share of SDPA-causal's useful TFLOP/s, and the
    layout's share of the forward at 32k only (its GPU time and what a step pays for it)."""
    from attnlang.bench import target_summary

    strided = "causal & (window(127, 0) | stride(128))"
    records = [
        _rec("causal", "fwd", "attnlang", 1.0, 500.0), _rec("causal", "fwd", "flex", 1.3, 380.0),
        _rec("causal", "fwd", "sdpa-causal", 0.9, 520.0),
        _rec("all", "fwd", "attnlang", 1.0, 550.0), _rec("all", "fwd", "sdpa", 0.9, 625.0),
        _rec(strided, "fwd", "attnlang", 1.0, 60.0), _rec(strided, "fwd", "flex", 5.0, 12.0),
        _rec("window(512)", "fwd", "attnlang", 1.0, 370.0),
        _rec("window(512)", "fwd", "flex", 1.2, 300.0),
        _rec("window(512)", "fwd", "attnlang", 1.0, 999.0, run="r2"),  # no run-r2 competitor
        _rec("causal & segment", "fwd", "attnlang", 0.5, 200.0, n=32768),
        _rec("causal & segment", "layout", "attnlang-layout", 0.01, 0.0, n=32768),
        _rec("causal & segment", "layout", "attnlang-layout-host", 0.04, 0.0, n=32768),
        _rec("causal & segment", "layout", "attnlang-layout-step", 0.03, 0.0, n=32768),
    ]
    lines = target_summary(records).splitlines()
    assert lines[2] == ("| ≥ 1.25× FlexAttention, every pattern | 1 of 2 | `window(512)` 8k "
                        "d=128 fwd: 1.23× |")
    assert lines[3] == ("| ≥ 10× FlexAttention: strided, fixed, dilated | 0 of 1 | `causal & "
                        "(window(127, 0) \\| stride(128))` 8k d=128 fwd: 5.00× |")
    assert lines[4] == ("| ≥ 0.95× SDPA on `all` and `causal` | 1 of 2 | `all` 8k d=128 fwd: "
                        "0.88× |")
    assert lines[5].startswith("| ≥ 70% of SDPA-causal's useful TFLOP/s, every pattern | 2 of 3 |")
    # the layout counts its GPU time and what a step pays for it, not its host time alone ...
    assert lines[6] == ("| per-call layout ≤ 5% of the forward at 32k (GPU, in a step) | 1 of 2 "
                        "| `causal & segment` 32k d=128 layout step: 6.0% |")
    # ... which stands in for the step where results have no step record (before round 18)
    older = [r for r in records if r["impl"] != "attnlang-layout-step"]
    assert target_summary(older).splitlines()[6] == (
        "| per-call layout ≤ 5% of the forward at 32k (GPU, host) | 1 of 2 | `causal & segment` "
        "32k d=128 layout host: 8.0% |")


def test_the_readme_table_is_generated_from_the_committed_results():
    """The README's benchmark section is exactly what `benchmarks/make_table.py` makes of
    `benchmarks/results/latest.json` (run it after committing new results)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_table", root / "benchmarks/make_table.py")
    make_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_table)
    records = json.loads((root / "benchmarks/results/latest.json").read_text())
    readme = (root / "README.md").read_text()
    start = readme.index("<!-- bench:start -->\n") + len("<!-- bench:start -->\n")
    assert readme[start:readme.index("<!-- bench:end -->")] == make_table.section(records)


def test_step_cost_alternates_same_ids_with_a_new_ids_tensor_every_call(monkeypatch):
    """`_step_cost` times training forwards (inputs needing gradients) with the same ids tensor on
    every call against a new one on every call (equal contents), in alternating pairs, and gives
    the median of the pairs' differences."""
    import torch

    from attnlang import bench

    seen = []

    def module(q, k, v, segments):
        assert q.requires_grad and k.requires_grad and v.requires_grad
        seen.append(segments)

    timings = iter([1.0, 1.5, 1.1, 1.2, 0.9, 1.9])  # same, new, same, new, same, new
    kinds = []

    def fake_host_ms(fn, reps, rounds):
        del seen[:]
        for _ in range(6):
            fn()
        new = len({id(s) for s in seen}) > 1
        kinds.append(new)
        if new:  # consecutive calls never share a tensor, and all carry the same ids
            assert all(a is not b for a, b in zip(seen, seen[1:]))
        assert all(torch.equal(s, segments) and s is not segments for s in seen)
        return next(timings)

    monkeypatch.setattr(bench, "_host_ms", fake_host_ms)
    segments = torch.tensor([0, 0, 1, 1, 1, 2])
    q = torch.zeros(1, 1, 6, 4)
    cost, same, new = bench._step_cost(module, q, q, q, segments, pairs=3)
    assert kinds == [False, True] * 3
    assert (round(cost, 6), same, new) == (0.5, 1.0, 1.5)  # diffs 0.5, 0.1, 1.0


def test_attnlang_bench_is_a_command_with_clear_errors(capsys, monkeypatch):
    """`attnlang bench` (listed by `attnlang --help`) runs `attnlang.bench`: an unknown suite
    pattern, or a machine without a CUDA GPU, is an error naming what is wrong, not a
    traceback (before: the command's module did not exist)."""
    import torch

    from attnlang.cli import main

    assert main(["bench", "--pattern", "causal & nope"]) == 1
    err = capsys.readouterr().err
    assert "attnlang bench: error: --pattern: got 'causal & nope'; expected one of the suite's " \
        "patterns: 'causal', " in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--pattern", "causal"]) == 1
    assert "attnlang bench: error: the benchmark needs a CUDA GPU" in capsys.readouterr().err
