"""The generated module's direct launches (`_launch`): after a first launch through Triton, a
launch whose arguments specialise the same way calls the compiled kernel itself.  The GPU is what
runs it for real (benchmarks/gpu_check.py); these tests pin the bookkeeping with a stand-in
kernel, on any machine."""
import pytest
import torch
import triton

from kernel_utils import pattern_of, shapes_of
from test_kernels_triton import _expr


def _launching_directly(text, monkeypatch):
    """The generated module of ``text``, its launches taken for direct-launch candidates (as on a
    GPU without hooks), its cache of direct launches empty."""
    from attnlang.cache import load_module

    module = load_module(pattern_of(_expr(text)))
    monkeypatch.setattr(module, "_direct_ok", lambda args: True)
    monkeypatch.setattr(module, "_current_stream", lambda: (0, 1234))
    monkeypatch.setattr(module, "_DIRECT", {})
    # kept launches made by earlier tests hold those tests' direct launches
    monkeypatch.setattr(module, "_BOUNDS", {})
    monkeypatch.setattr(module, "_SHAPES", {})
    monkeypatch.setattr(module, "_SEG_MEMO", {})
    return module


@pytest.fixture
def mod(monkeypatch):
    return _launching_directly("causal", monkeypatch)


class Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self):
        self.calls = []

    def run(self, *args):
        self.calls.append(args)


class Kernel:
    """What `_launch` uses of a JITFunction: `arg_names` and `kernel[grid](...)`, which returns
    the compiled kernel."""
    arg_names = ["x", "n", "scale", "BLOCK", "FLAG"]

    def __init__(self, compiled):
        self.compiled, self.through_triton = compiled, []

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.through_triton.append((grid, args, options))
            return self.compile(options)
        return launch

    def compile(self, options):
        return self.compiled


def test_a_repeated_specialisation_calls_the_compiled_kernel(mod):
    compiled = Compiled()
    kernel = Kernel(compiled)
    x = torch.zeros(64)
    options = dict(BLOCK=32, FLAG=True, num_warps=4)
    mod._launch(kernel, (3, 2), (x, 48, 0.5), options)
    assert len(kernel.through_triton) == 1 and not compiled.calls
    y = torch.ones(64)  # another tensor, same dtype and alignment; floats count by type
    mod._launch(kernel, (5, 7), (y, 48, 0.25), options)
    assert len(kernel.through_triton) == 1
    assert compiled.calls == [(5, 7, 1, 1234, "function", "metadata", None, None, None,
                               y, 48, 0.25, 32, True)]


def test_integers_key_exactly_but_a_last_integer_by_its_specialisation(mod):
    """Shapes and strides key exactly (another value: once more through Triton); the last
    integer -- the attention kernels' dropout seed, new on every call -- only by what Triton
    specialises it on, so that seeds neither miss nor grow the cache."""
    class Seeded(Kernel):
        arg_names = ["x", "n", "scale", "seed", "BLOCK", "FLAG"]

    compiled = Compiled()
    kernel = Seeded(compiled)
    x = torch.zeros(64)
    options = dict(BLOCK=32, FLAG=True)
    for seed in (12345, 67890, 1 << 30 | 3):  # none is 1 or divisible by 16
        mod._launch(kernel, (1, 1), (x, 48, 0.5, seed), options)
    assert len(kernel.through_triton) == 1 and len(compiled.calls) == 2
    mod._launch(kernel, (1, 1), (x, 48, 0.5, 32), options)  # divisible by 16: Triton's own key
    mod._launch(kernel, (1, 1), (x, 32, 0.5, 7), options)  # another length
    assert len(kernel.through_triton) == 3
    assert len(mod._DIRECT) == 3


def test_the_cache_starts_again_when_shapes_keep_changing(mod, monkeypatch):
    monkeypatch.setattr(mod, "_DIRECT_MAX", 4)
    kernel = Kernel(Compiled())
    for n in range(10):
        mod._launch(kernel, (1, 1), (torch.zeros(4), 48 + n, 0.5), dict(BLOCK=32, FLAG=False))
    assert 1 <= len(mod._DIRECT) <= 4


@pytest.mark.parametrize("change", ["alignment", "dtype", "one", "not16", "wide", "option"])
def test_another_specialisation_goes_through_triton(mod, change):
    compiled = Compiled()
    kernel = Kernel(compiled)
    x = torch.zeros(64)
    options = dict(BLOCK=32, FLAG=True, num_warps=4)
    mod._launch(kernel, (1, 1), (x, 48, 0.5), options)
    args, opts = [x, 48, 0.5], dict(options)
    if change == "alignment":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "dtype":
        args[0] = x.to(torch.float64)
    elif change == "one":
        args[1] = 1
    elif change == "not16":
        args[1] = 40
    elif change == "wide":
        args[1] = 2 ** 31 + 16
    else:
        opts["num_warps"] = 8
    mod._launch(kernel, (1, 1), tuple(args), opts)
    assert len(kernel.through_triton) == 2 and not compiled.calls


def test_a_compiled_kernel_without_a_launcher_is_always_launched_through_triton(mod):
    kernel = Kernel(object())
    for _ in range(3):
        mod._launch(kernel, (1, 1), (torch.zeros(4), 48, 0.5), dict(BLOCK=32, FLAG=False))
    assert len(kernel.through_triton) == 3


def test_what_else_decides_the_kernel_keys_the_cache_too(mod):
    """The Gluon kernels' launches pass the descriptors' dtype as ``extra`` (a descriptor
    argument counts by its type only): the same arguments with another dtype go through Triton
    again, never to the first dtype's compiled kernel."""
    compiled = Compiled()
    kernel = Kernel(compiled)
    x = torch.zeros(64)
    options = dict(BLOCK=32, FLAG=True)
    for dtype in (torch.bfloat16, torch.bfloat16, torch.float16, torch.float16):
        mod._launch(kernel, (1, 1), (x, 48, 0.5), options, (dtype,))
    assert len(kernel.through_triton) == 2 and len(compiled.calls) == 2


def test_a_descriptor_first_argument_is_read_through_its_tensor():
    """`_direct_ok` of a Gluon kernel's arguments, whose first is a descriptor: its tensor's
    device decides (here the CPU's: no direct launches), where reading `is_cuda` of the
    descriptor itself would fail."""
    from types import SimpleNamespace

    from attnlang.cache import load_module

    module = load_module(pattern_of(_expr("causal")))
    assert module._direct_ok((SimpleNamespace(base=torch.zeros(4)), 48)) is False
    assert module._direct_ok((torch.zeros(4), 48)) is False


def test_parameters_missing_from_the_options_keep_the_triton_path(mod):
    compiled = Compiled()
    kernel = Kernel(compiled)
    for _ in range(2):  # FLAG left to its default: the launcher's values would be incomplete
        mod._launch(kernel, (1, 1), (torch.zeros(4), 48, 0.5), dict(BLOCK=32))
    assert len(kernel.through_triton) == 2 and not compiled.calls


def test_the_real_kernels_can_key_the_cache(mod):
    """The generated kernels are hashable, and name their parameters for the launcher."""
    for kernel in (mod._bwd_delta, mod._segment_bounds, *mod.KERNELS[0]):
        hash(kernel)
        assert "BLOCK_M" in kernel.arg_names or "BLOCK_A" in kernel.arg_names


class TooBig(Kernel):
    """A kernel whose pipelined tiles do not fit in shared memory (triton.OutOfResources at its
    first launch) unless unpipelined; with ``never`` not even then."""

    def __init__(self, compiled, never=False):
        super().__init__(compiled)
        self.never = never

    def compile(self, options):
        if self.never or options.get("num_stages", 1) > 1:
            raise triton.OutOfResources(300000, 232448, "shared memory")
        return self.compiled


def test_a_tile_too_big_for_shared_memory_runs_unpipelined(mod):
    compiled = Compiled()
    kernel = TooBig(compiled)
    x = torch.zeros(64)
    options = dict(BLOCK=32, FLAG=True, num_warps=4, num_stages=3)
    mod._launch(kernel, (1, 1), (x, 48, 0.5), options)
    assert [o["num_stages"] for _, _, o in kernel.through_triton] == [3, 1]
    mod._launch(kernel, (1, 1), (x, 48, 0.5), options)  # then straight to the unpipelined kernel
    assert len(kernel.through_triton) == 2 and len(compiled.calls) == 1


def test_a_tile_too_big_even_unpipelined_says_what_to_change(mod):
    kernel = TooBig(Compiled(), never=True)
    with pytest.raises(RuntimeError, match=r"^attnlang: .*shared memory.*ATTNLANG_TILES"):
        mod._launch(kernel, (1, 1), (torch.zeros(4), 48, 0.5),
                    dict(BLOCK=32, FLAG=True, num_stages=2))


class InterpreterError(Exception):
    """Stands for triton.runtime.errors.InterpreterError (matched by name, as Tritons differ)."""


class FailsInInterpreter(Kernel):
    def compile(self, options):
        raise InterpreterError("TypeError('only 0-dimensional arrays ...')")


@pytest.mark.parametrize("old", [True, False])
def test_an_old_interpreters_failure_says_which_triton_runs_the_kernels(mod, monkeypatch, old):
    """Triton 3.6's interpreter fails on the kernels' run-time loop bounds under numpy 2: there
    the error names Triton's version and what to use instead; a newer Triton's interpreter
    error (a real failure of a kernel) passes through as it is."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(mod, "_OLD_INTERPRETER", old)
    expected = ((RuntimeError, rf"^attnlang: Triton {triton.__version__}'s interpreter failed in "
                 r"the kernel .* from Triton 3\.7 on .*backend='torch'") if old else
                (InterpreterError, r"^TypeError"))
    with pytest.raises(expected[0], match=expected[1]):
        mod._compile_and_launch(FailsInInterpreter(Compiled()), (1, 1), (torch.zeros(4),),
                                dict(BLOCK=32))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InterpreterError):  # not interpreting: not the interpreter's failure
        mod._compile_and_launch(FailsInInterpreter(Compiled()), (1, 1), (torch.zeros(4),),
                                dict(BLOCK=32))


def test_float32_inputs_take_small_tiles_above_head_dim_64(mod):
    """float32 tiles take twice the shared memory: above d = 64 every role is unpipelined and
    small enough for a Hopper multiprocessor; 16-bit inputs keep the tuned tiles."""
    class OnGpu:
        device = torch.device("cuda")
        shape = (1, 2, 256, 128)

        def __init__(self, dtype):
            self.dtype = dtype

    for role in ("fwd", "dkdv", "dq"):
        assert mod._tiles(OnGpu(torch.float32), 128, role)[:2] == (64, 64)
        assert mod._tiles(OnGpu(torch.float32), 128, role)[2]["num_stages"] == 1
        assert mod._tiles(OnGpu(torch.float32), 256, role)[:2] == (32, 32)
    assert mod._tiles(OnGpu(torch.bfloat16), 128, "fwd")[:2] == (128, 128)
    assert mod._tiles(OnGpu(torch.float32), 64, "dq")[:2] == (64, 64)


def test_direct_launches_are_on_by_default_and_off_under_a_launch_hook(monkeypatch):
    """Newer Triton keeps its launch hooks in an always-present, empty-by-default ``HookChain``
    (older Triton: None).  No hook set means direct launches; any hook (a profiler) means every
    launch goes through Triton, which calls the hooks."""
    from triton import knobs

    from attnlang.cache import load_module

    module = load_module(pattern_of(_expr("causal")))
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    class OnGpu:
        is_cuda = True

    assert module._direct_ok((OnGpu(),))
    assert not module._direct_ok((torch.zeros(1),))  # a CPU tensor: not a compiled-kernel launch

    def hook(*_):
        pass
    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "calls"):
        monkeypatch.setattr(chain, "calls", [hook])  # the chain's own list comes back after
    else:
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", hook)
    assert not module._direct_ok((OnGpu(),))


@pytest.mark.parametrize("text", ["causal & (chunk(16) | cols(every(16, 14..16)))",
                                  "causal & (window(7, 0) | stride(16))", "causal & segment"])
@pytest.mark.parametrize("tiles", [None, "fwd=16x16:4:1:d:r,dkdv=16x16:4:1:t:d:a,dq=16x16:4:1:r"])
def test_every_kernel_of_a_call_can_launch_directly(text, tiles, monkeypatch):
    """Every kernel a forward and backward launch names all its later parameters in the launch
    options, so each can be called directly after its first launch: a constexpr missing from the
    options would silently send every launch through Triton's binder (round 9).  The strided
    band's dK/dV and dQ in one launch (SHARED_BWD) too, without ':a'."""
    if tiles:
        monkeypatch.setenv("ATTNLANG_TILES", tiles)
    module = _launching_directly(text, monkeypatch)
    monkeypatch.setattr(module, "SHARED_BWD", (16,))
    monkeypatch.setattr(module, "_compile_and_launch", lambda *args: Compiled())
    q, k, v, do = (torch.randn(1, 2, 40, 16) for _ in range(4))
    seg = torch.tensor([[0] * 15 + [1] * 25], dtype=torch.int32) if "segment" in text else None
    out, lse = module.attention_forward(q, k, v, 0.25, seg, seg, None, None, None, 0.0, 0)
    module.attention_backward(do, q, k, v, out, lse, 0.25, seg, seg, None, None, None, 0.0, 0,
                              False)
    launched = {key[0].__name__: bool(hit) for key, hit in module._DIRECT.items()}
    # a delta kernel of its own only where dK/dV adds dQ up (':a'); else the first dQ launch
    assert ("_bwd_delta" in launched) == (":a" in (tiles or "")) and any(
        name.startswith(("_bwd_dkdv", "_bwd_shared")) for name in launched)
    assert all(launched.values()), launched
    assert any(name.startswith("_bwd_shared") for name in launched) == (
        "stride" in text and not tiles)


def _kept_call_setup(text, monkeypatch, seed):
    """(module, stand-in compiled kernel, launches through Triton, (q, k, v, dO)) for a test of
    kept calls' direct launches: `_launching_directly`'s module whose first launches of each
    specialisation record themselves and return the stand-in."""
    module = _launching_directly(text, monkeypatch)
    compiled, through = Compiled(), []
    monkeypatch.setattr(module, "_compile_and_launch", lambda *launch: (
        through.append(launch), compiled)[1])
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g).requires_grad_(True) for _ in range(3))
    return module, compiled, through, (q, k, v, torch.randn(q.shape, generator=g))


@pytest.mark.parametrize("text", ["causal & (window(7, 0) | stride(16))", "causal & segment",
                                  "causal & (chunk(16) | cols(every(16, 14..16)))"])
def test_a_kept_call_launches_its_prepared_kernels_directly(text, monkeypatch):
    """A call whose launches are kept (`_call_key`) calls every compiled kernel straight away
    from its third step on (`_launch_prepared`; the second goes through `_launch`'s own direct
    path), nothing through Triton, passing what `_launch` itself passes: grid, stream, the
    compiled function, the arguments in order and the constexprs' values.  Only the call's
    tensors and strides are keyed each time -- also for the strided band's dK/dV and dQ in one
    launch (SHARED_BWD), whose two parts' own arguments are its own."""
    module, compiled, through, (q, k, v, do) = _kept_call_setup(text, monkeypatch, 3)
    monkeypatch.setattr(module, "SHARED_BWD", (16,))
    seg = torch.tensor([0] * 15 + [1] * 25) if "segment" in text else None

    def step():
        for t in (q, k, v):
            t.grad = None
        module.attention(q, k, v, segments=seg).backward(do)
    step()  # first: through Triton (here a stand-in), filling `_launch`'s cache
    first = [launch for launch in through if launch[0] is not module._segment_bounds]
    through.clear()
    step()  # second: `_launch`'s direct path, filling each kept launch's own cache
    assert not through
    compiled.calls.clear()
    keyed = []  # (the length of an argument list keyed, the prepared launch keying it or None)
    prepared = []  # (the call's part, the launch's own part) of each prepared launch's arguments
    inside = []  # the prepared launch under way

    def specialisation(args, real=module._specialisation):
        keyed.append((len(args), inside[-1] if inside else None))
        return real(args)

    def launch_prepared(p, head, options, real=module._launch_prepared):
        prepared.append((len(head), len(p.args), p.kernel.__name__))
        inside.append(prepared[-1])
        try:
            return real(p, head, options)
        finally:
            inside.pop()
    monkeypatch.setattr(module, "_specialisation", specialisation)
    monkeypatch.setattr(module, "_launch_prepared", launch_prepared)
    step()
    assert not through
    # only the call's own tensors and strides: the kept arguments' part of the key is kept too
    assert keyed and prepared and all(own for _, own, _ in prepared)
    assert {launch for _, launch in keyed} >= set(prepared)  # each prepared launch keyed
    assert all(n == launch[0] for n, launch in keyed if launch is not None), keyed
    shared = [own for _, own, name in prepared if name.startswith("_bwd_shared")]
    assert len(shared) == ("stride" in text) and all(own > 2 for own in shared)
    expected = []
    for kernel, grid, args, options in first:
        names = list(kernel.arg_names)[len(args):]
        expected.append((grid[0], grid[1], 1, 1234, "function", "metadata", None, None, None,
                         *args, *(options[name] for name in names)))
    assert len(compiled.calls) == len(expected)
    addresses = 0
    for run, want in zip(compiled.calls, expected):
        # a kept launch's own tensors (its tables, alive since the first step) go as addresses
        run = list(run)
        for i, (got, was) in enumerate(zip(run, want)):
            if isinstance(was, torch.Tensor) and type(got) is int:
                assert got == was.data_ptr()
                run[i], addresses = was, addresses + 1
        assert shapes_of(run) == shapes_of(want)
    assert addresses >= len(expected)  # every kept launch has tables; the call's tensors stay


def test_new_ids_launch_the_kept_kernels_with_their_own_bounds(monkeypatch):
    """A document call with new ids (a new tensor) takes the kept launches of the earlier calls
    (`_rebound`): every kernel is called straight away, nothing goes through Triton, and the
    attention kernels get the addresses of the bounds and flag this call's `_segment_bounds`
    launch filled -- not the earlier call's."""
    module, compiled, through, (q, k, v, do) = _kept_call_setup("causal & segment", monkeypatch,
                                                                  4)

    def step(seg):
        for t in (q, k, v):
            t.grad = None
        compiled.calls.clear()
        module.attention(q, k, v, segments=seg).backward(do)
        bounds = [c for c in compiled.calls if len(c) > 16 and type(c[16]) is int
                  and c[16] > 2 ** 30]  # `_segment_bounds`: its token after seven tensors
        return bounds, [c for c in compiled.calls if c not in bounds]
    step(torch.tensor([0] * 15 + [1] * 25))
    step(torch.tensor([0] * 15 + [1] * 25))  # more new tensors: `_launch`'s direct path
    through.clear()
    bounds, kernels = step(torch.tensor([0] * 30 + [1] * 10))
    assert not through and len(bounds) == 1 and len(kernels) == 3  # forward, dK/dV, dQ
    flag, first, second = bounds[0][9], bounds[0][12], bounds[0][15]
    old = set()
    for _ in range(2):  # and again with other ids: the same kernels, this call's tensors
        for run in kernels:
            addresses = {a for a in run if type(a) is int and a > 2 ** 32}
            assert flag.data_ptr() in addresses
            assert {first.data_ptr(), second.data_ptr()} & addresses
            assert not addresses & old
        old = {t.data_ptr() for t in (flag, first, second)}
        bounds, kernels = step(torch.tensor([0] * 5 + [1] * 35))
        assert not through and len(bounds) == 1 and len(kernels) == 3
        flag, first, second = bounds[0][9], bounds[0][12], bounds[0][15]


_FAKE_DRIVER = """
_BASE_ARGS_FORMAT_LEN = 13
expanded = []


def make_tensordesc_arg(arg, metadata):
    expanded.append(arg)
    if metadata is None:
        return [arg.base, *arg.shape, *arg.strides, "padding", *arg.shape, *arg.strides]
    return [("map", arg.base.data_ptr(), metadata), *arg.shape, *arg.strides]


def wrap(launcher, tensordesc_indices, tensordesc_meta):
    if not tensordesc_meta:
        tensordesc_meta = [None] * len(tensordesc_indices)

    def inner(*args):
        final = list(args[:13])
        count = 0
        for i, arg in enumerate(args[13:]):
            if i in tensordesc_indices:
                final.extend(make_tensordesc_arg(arg, tensordesc_meta[count]))
                count += 1
            else:
                final.append(arg)
        return launcher(*final)
    return inner


class CudaLauncher:
    num_ctas, global_scratch_size, profile_scratch_size = 1, 0, 0
    launch_cooperative_grid, launch_pdl = False, True

    def __init__(self, positions=None, metas=None):
        self.raw = []
        self.launch = self.raw_launch if positions is None else wrap(
            self.raw_launch, set(positions), metas)

    def raw_launch(self, *args):
        self.raw.append(args)

    def __call__(self, gx, gy, gz, stream, function, *args):
        self.launch(gx, gy, gz, stream, function, self.launch_cooperative_grid,
                    self.launch_pdl, None, None, *args)
"""


def _fake_triton_driver():
    """A stand-in for Triton 3.6's CUDA driver module as `_bare_launcher` reads it: a launcher
    class named CudaLauncher whose call puts the thirteen leading arguments before the kernel's
    and hands them to ``launch``, which for a kernel taking host descriptors is a closure
    ``inner`` over the C launcher, the descriptors' positions and their TMA metadata that expands
    each descriptor in place (`make_tensordesc_arg`); ``expanded`` records the expansions."""
    import sys
    import types

    driver = types.ModuleType("fake_triton_driver")
    exec(compile(_FAKE_DRIVER, "fake_triton_driver", "exec"), driver.__dict__)
    sys.modules[driver.__name__] = driver
    return driver


@pytest.mark.parametrize("metas", [None, ["meta0", "meta1"]])
def test_the_bare_launcher_passes_what_tritons_launcher_would(mod, metas):
    """Where the compiled kernel's launcher is Triton 3.6's (a stand-in here), `_bare_launcher`
    calls the C launcher beneath it with exactly the arguments Triton's own call would give it,
    host descriptors expanded in place; a descriptor's TMA map is made once per base address,
    shape and strides, and again for another tensor (without TMA metadata: every launch)."""
    from types import SimpleNamespace

    driver = _fake_triton_driver()
    x, y = torch.zeros(64), torch.zeros(64)

    def desc(t):
        return SimpleNamespace(base=t, shape=[8, 8], strides=[8, 1], block_shape=[4, 8],
                               padding="zero")
    compiled = SimpleNamespace(function="function", packed_metadata="metadata")
    ours, theirs = driver.CudaLauncher([1, 3], metas), driver.CudaLauncher([1, 3], metas)
    compiled.run = ours
    bare = mod._bare_launcher(compiled)
    for tensor in (x, x, y):
        args = (tensor, desc(tensor), 48, desc(tensor), 0.5, None, 32)
        bare(4, 2, 1, 1234, args)
        theirs(4, 2, 1, 1234, "function", "metadata", None, None, None, *args)
    assert [shapes_of(a) for a in ours.raw] == [shapes_of(a) for a in theirs.raw]
    assert len(ours.raw) == 3 and all(a[13] is b[13] for a, b in zip(ours.raw, theirs.raw))
    assert ours.raw[0][:13] == (4, 2, 1, 1234, "function", False, True, None, None, "metadata",
                                None, None, None)
    # theirs expanded 2 descriptors per launch; ours 2 per launch without metadata, else 2 for x
    # (once) and 2 for y
    assert len(driver.expanded) == 6 + (6 if metas is None else 4)


def test_the_bare_launcher_of_a_kernel_without_descriptors_is_the_c_launcher(mod):
    from types import SimpleNamespace

    driver = _fake_triton_driver()
    compiled = SimpleNamespace(function="function", packed_metadata="metadata")
    compiled.run = ours = driver.CudaLauncher()
    theirs = driver.CudaLauncher()
    mod._bare_launcher(compiled)(4, 2, 1, 1234, (torch.zeros(4), 48, None))
    theirs(4, 2, 1, 1234, "function", "metadata", None, None, None, torch.zeros(4), 48, None)
    assert [shapes_of(a) for a in ours.raw] == [shapes_of(a) for a in theirs.raw]
    assert len(ours.raw) == 1


@pytest.mark.parametrize("change", ["scratch", "name", "format"])
def test_an_unknown_launcher_is_called_as_it_is(mod, change):
    """A launcher `_bare_launcher` does not know (another Triton's: scratch memory to allocate,
    another class, another argument format) is called through ``compiled.run``."""
    from types import SimpleNamespace

    driver = _fake_triton_driver()
    launcher = driver.CudaLauncher([0], ["meta"])
    if change == "scratch":
        launcher.global_scratch_size = 128
    elif change == "format":
        driver._BASE_ARGS_FORMAT_LEN = 14
    calls = []
    if change == "name":
        launcher = SimpleNamespace(launch=launcher.launch, num_ctas=1, global_scratch_size=0,
                                   profile_scratch_size=0, launch_cooperative_grid=False,
                                   launch_pdl=False, __call__=None)

    class Run:  # records the call as `compiled.run` receives it
        def __init__(self, inner):
            self.__dict__.update(inner.__dict__)

        def __call__(self, *args):
            calls.append(args)
    Run.__module__ = driver.__name__
    if change != "name":
        Run.__name__ = "CudaLauncher"
    compiled = SimpleNamespace(function="function", packed_metadata="metadata",
                               run=Run(launcher))
    mod._bare_launcher(compiled)(4, 2, 1, 1234, ("a", 48))
    assert calls == [(4, 2, 1, 1234, "function", "metadata", None, None, None, "a", 48)]


def test_tables_of_many_lengths_never_grow_without_bound(tmp_path):
    """A run of varying lengths made a new entry of the plans' device tables (and of the rows'
    mean blocks) per length, kept for good: both caches start again when full."""
    from attnlang.cache import load_module

    module = load_module(pattern_of(_expr("causal & window(8, 0)")), directory=tmp_path)
    for length in range(16, 16 + 150):
        module._plans(length, length, 2, 16, 16, None, None, torch.device("cpu"))
        module._row_blocks(length, length, 2, 16, 16, torch.device("cpu"))
        assert len(module._TABLES) <= 64 and len(module._ROW_BLOCKS) <= 64
    plans, tables = module._plans(165, 165, 2, 16, 16, None, None, torch.device("cpu"))
    assert module._TABLES[(165, 165, 2, 16, 16, "cpu")] == (plans, tables)  # kept, the latest
