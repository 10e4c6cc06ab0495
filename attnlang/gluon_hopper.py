"""What attnlang's Gluon kernels for Hopper share (``gluon_backward``, ``gluon_forward``): the
Gluon names of Triton 3.6 (the GPU image's) with the renames of later Tritons (CI's), the
register layout of wgmma results, and rank-4 TMA descriptors over [B, H, L, D] tensors.

Like the kernels, this module is copied into generated modules of band patterns and imported only
when they are about to use Gluon (an import error there means: no Gluon, use the ``tl`` kernels).
"""
import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128)
DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}

# names that Triton 3.7+ changed (Triton 3.6's first)
barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# (shared memory, dtype, shape, layout) -> the same bytes as another view
reinterpret = getattr(gl.shared_memory_descriptor, "reinterpret", None) or \
    gl.shared_memory_descriptor._reinterpret


if hasattr(tma, "async_atomic_add"):  # later Tritons (3.9, CI's)
    tma_add = tma.async_atomic_add
else:  # Triton 3.6 builds the TMA reduction (`cp.reduce.async.bulk.tensor`) but names no call
    from triton._C.libtriton import ir as _ir
    from triton.experimental.gluon.language._core import builtin as _builtin

    @_builtin
    def tma_add(tensor_desc, coord, src, _semantic=None):
        """Adds the shared memory tile ``src`` into the tensor of ``tensor_desc`` at ``coord``,
        by TMA (asynchronous: `tma.store_wait` waits until ``src`` has been read)."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD,
                                                  tensor_desc.handle, coord, src.handle)


@gluon.jit
def named_barrier(bar, threads: gl.constexpr, arrive: gl.constexpr):
    """Hardware barrier ``bar`` (0-15) of ``threads`` threads: with ``arrive``, count this
    partition's threads in and go on (``bar.arrive``); else wait until all have come
    (``bar.sync``).  Gluon names no such call in Triton 3.6, so it is one line of PTX (its
    output a dummy)."""
    if arrive:
        gl.inline_asm_elementwise("bar.arrive $1, $2;\n\tmov.u32 $0, 0;", "=r,r,r",
                                  [bar, threads], dtype=gl.int32, is_pure=False, pack=1)
    else:
        gl.inline_asm_elementwise("bar.sync $1, $2;\n\tmov.u32 $0, 0;", "=r,r,r",
                                  [bar, threads], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def grouped(index, per_head, group, BH):
    """(bh, j): the head (of BH batches and heads) and the item (of ``per_head``) that ``index``
    names in the order that takes ``group`` heads at a time -- their items 0 in turn, then
    their items 1... -- the last group of fewer heads where BH is not a multiple.  The kernels'
    order over heads (a grid's programs, a persistent program's tiles), so that a head's long
    items do not start last and a group's rows stay in L2 together."""
    first = index // (group * per_head) * group  # the group's first head
    heads = gl.minimum(group, BH - first)
    within = index - first * per_head
    return first + within % heads, within // heads


@gluon.jit
def snake(index, programs, items):
    """The item a persistent program's ``index``-th pick names (``index``: the program's id plus a
    multiple of ``programs``) when picks go back and forth: the programs take items 0, 1, ... in
    the first round, the next ``programs`` items in reverse in the second, and so on, the last
    round's reversal over the items left.  Where items come longest first, each program's sum
    evens out (a fixed stride gives program 0 the longest of every round); one program an item
    (``programs`` = ``items``) keeps every index."""
    r = index // programs
    p = index - r * programs
    left = gl.minimum(programs, items - r * programs)
    return r * programs + gl.where(r % 2 == 1, left - 1 - p, p)


def band_bounds(back, ahead, Lq, Lk):
    """(back, ahead) as the band kernels take them: no bound (None) as Lq + Lk, a distance
    beyond every pair's, and every bound clamped to within it (the kernels' int32)."""
    reach = Lq + Lk
    return tuple(reach if x is None else max(-reach, min(x, reach)) for x in (back, ahead))


def class_band(back, ahead, step):
    """The band -ahead <= d <= back (None: no bound) of distances that are multiples of
    ``step``, in units of the step (the band of `residue_classes`' positions): ``step * x`` is
    in it for -(ahead // step) <= x <= back // step."""
    return tuple(None if x is None else x // step for x in (back, ahead))


def global_bounds(rows, cols, Lq, Lk):
    """(ra, rb, ca, cb) as the kernels take a band's global rows and columns (`band.banded_of`):
    the queries at positions p in [ra, rb) keep every key, the keys in [ca, cb) every query; no
    bound as -(Lq + Lk) (rows: positions start at Lk - Lq) or 0 (columns) and Lq + Lk, every
    bound clamped to within those (the kernels' int32). None, or a span that holds none of the
    queries' positions (of the keys), becomes the empty span at the first of them: [Lk - Lq,
    Lk - Lq) for rows, [0, 0) for columns. The kernels round a span out to whole tiles
    (blocks), so an empty span elsewhere -- past the last position, or rows' [0, 0) where
    Lq > Lk -- would still give them one."""
    reach = Lq + Lk
    bounds = []
    for span, first, (lo, hi) in ((rows, -reach, (Lk - Lq, Lk)), (cols, 0, (0, Lk))):
        start, stop = (lo, lo) if span is None else span
        start = first if start is None else max(first, min(start, reach))
        stop = reach if stop is None else max(first, min(stop, reach))
        bounds += [start, stop] if max(start, lo) < min(stop, hi) else [lo, lo]
    return tuple(bounds)


def heavy_span(start, stop, offset, length, size):
    """[first, last) of the items of ``size`` positions (item i covering offset + i * size ...,
    cdiv(length, size) of them) that meet the positions [start, stop) among the ``length`` ones
    from ``offset`` on: the tiles that global rows or columns make long, which the kernels take
    first (`heavy_first`). Positions past the last (a last partial item's padding) meet none:
    global rows or columns wholly past the queries or keys make no item long."""
    start, stop = max(start, offset), min(stop, offset + length)
    if stop <= start:
        return 0, 0
    return (start - offset) // size, -(-(stop - offset) // size)


@gluon.jit
def heavy_first(index, per_head, group, BH, h0, h1):
    """(bh, j) as `grouped`, but the items [h0, h1) of every head first, the heads in turn, then
    every head's others (those from h1 on, then those before h0) in `grouped`'s order: where
    global rows or columns make a few items of each head long, those start first, and the short
    ones even out the end."""
    heavy = (h1 - h0) * BH
    rest = gl.maximum(index - heavy, 0)
    bh, j = grouped(rest, gl.maximum(per_head - (h1 - h0), 1), group, BH)
    return (gl.where(index < heavy, index % BH, bh),
            gl.where(index < heavy, h0 + index // BH, (h1 + j) % per_head))


@gluon.jit
def two_ranges(lo, hi, glo, ghi):
    """((first, n1, second), n): the blocks [lo, hi) and [glo, ghi) (either may be empty) as
    one sequence of n blocks without repeats, the i-th `block_at` i: first + i for i < n1, then
    second + (i - n1) -- one range (n1 = n) where they overlap or touch, else the lower first."""
    nb = gl.maximum(hi - lo, 0)
    ng = gl.maximum(ghi - glo, 0)
    joined = (nb == 0) | (ng == 0) | ((glo <= hi) & (lo <= ghi))
    j_lo = gl.where(nb == 0, glo, gl.where(ng == 0, lo, gl.minimum(lo, glo)))
    j_hi = gl.where(nb == 0, ghi, gl.where(ng == 0, hi, gl.maximum(hi, ghi)))
    n_joined = gl.maximum(j_hi - j_lo, 0)
    g_first = glo < lo
    first = gl.where(joined, j_lo, gl.where(g_first, glo, lo))
    n1 = gl.where(joined, n_joined, gl.where(g_first, ng, nb))
    second = gl.where(g_first, lo, glo)
    return (first, n1, second), gl.where(joined, n_joined, nb + ng)


@gluon.jit
def kept(p, k, back, ahead, globs, GLOBAL: gl.constexpr):
    """Whether the pairs of positions p and keys k (broadcast against each other) are in the
    band -ahead <= p - k <= back, or with GLOBAL in globs = (ra, rb, ca, cb, ...)'s global rows
    (ra <= p < rb) or columns (ca <= k < cb)."""
    dist = p - k
    keep = (dist >= -ahead) & (dist <= back)
    if GLOBAL:
        ra, rb, ca, cb, _, _ = globs
        keep = keep | ((p >= ra) & (p < rb)) | ((k >= ca) & (k < cb))
    return keep


@gluon.jit
def partial_tile(p0, m, key0, n, back, ahead, globs, GLOBAL: gl.constexpr):
    """Whether some pair of the positions p0 ... p0 + m - 1 and the keys key0 ... key0 + n - 1
    is not `kept` (keys past the end aside): the tiles the kernels mask."""
    partial = (p0 - (key0 + n - 1) < -ahead) | (p0 + m - 1 - key0 > back)
    if GLOBAL:  # not where every position is a global row, or every key a global column
        ra, rb, ca, cb, _, _ = globs
        partial = partial & ((p0 < ra) | (p0 + m - 1 >= rb)) & ((key0 < ca) | (key0 + n > cb))
    return partial


@gluon.jit
def block_at(seq, i, GLOBAL: gl.constexpr):
    """The i-th block of a `two_ranges` sequence; without GLOBAL, seq's first + i (one range)."""
    first, n1, second = seq
    if GLOBAL:
        return gl.where(i < n1, first + i, second + (i - n1))
    else:
        return first + i


@gluon.constexpr_function
def wgmma_layout(warps_m, warps_n, n):
    """The register layout of a wgmma result: warps over [rows, columns], n columns per
    instruction."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps_m, warps_n],
                                     instr_shape=[16, n, 16])


@functools.lru_cache(maxsize=None)  # one per tile, head dimension and dtype: built once each
def shared_layout(rows, D, dtype):
    """The NVMMA shared layout of a [1, 1, rows, D] tile of ``dtype`` (one of DTYPES, or float32
    for the backward's dQ sums)."""
    return block_layout((1, 1, rows, D), dtype)


@functools.lru_cache(maxsize=None)  # (~20 µs each on a CPU)
def block_layout(block, dtype):
    """The NVMMA shared layout of a tile of shape ``block`` (a tuple) of ``dtype`` (as
    `shared_layout`)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), {
        **DTYPES, torch.float32: gl.float32}[dtype])


def residue_classes(t, step):
    """The [B, H, L, D] tensor ``t`` (B and H one dimension in memory: ``t.view`` can merge
    them) as the residue classes of ``step``, a view [B * H, step, L / step, D]: "head" r of
    batch b * H + h holds the rows r, r + step, ... of head h of batch b.  Each class is a
    band of its own for a band with ``stride(step)`` (`band.strided_band_of`), which the kernels
    read through descriptors of this view (its strides are multiples of 16 bytes where ``t``'s
    are), writing their outputs into the natural order."""
    B, H, L, D = t.shape
    return t.view(B * H, L // step, step, D).transpose(1, 2)


def mergeable(t):
    """Whether [B, H, ...] tensor ``t``'s first two dimensions are one in memory (what
    `residue_classes`' view takes)."""
    return t.shape[0] == 1 or t.shape[1] == 1 or t.stride(0) == t.shape[1] * t.stride(1)


def class_view(shape, strides, step):
    """(shape, strides) of `residue_classes`' view of a [B, H, L, D] tensor of this shape and
    these strides (its first two dimensions one in memory), or its own without a ``step``; a
    [B, H, L] tensor's likewise, without D."""
    if step == 1:
        return tuple(shape), tuple(strides)
    B, H, L = shape[:3]
    # (one batch and head: the stride torch's view gives a dimension of one, its rows' span)
    merged = strides[1] if H > 1 else strides[0] if B > 1 else L * strides[2]
    return (B * H, step, L // step, *shape[3:]), (merged, strides[2], step * strides[2],
                                                  *strides[3:])


@gluon.jit
def row_offset(b, h, bh, rows, H, Lq, CLASSES: gl.constexpr):
    """Where the forward's log-sum-exp of ``rows`` of (b, h) go in its [B * H, Lq] rows: at
    bh * Lq + rows, or with CLASSES (`residue_classes`: h a class of H = step, Lq its length),
    in the natural order of the original head's rows, b * H * Lq + rows * H + h."""
    if CLASSES:
        return b.to(gl.int64) * H * Lq + rows * H + h
    else:
        return bh.to(gl.int64) * Lq + rows


def descriptor(t, rows):
    """A TMA descriptor over the [B, H, L, D] tensor ``t`` reading tiles of ``rows`` rows of one
    head: a tile past the sequence's end reads zeros, a store past it is clipped."""
    return host_descriptor(t, *head_tile(rows, t.shape[3], t.dtype))


def head_tile(rows, D, dtype):
    """(block, layout) of `descriptor`'s tiles: ``rows`` rows of one head of a [B, H, L, D]
    tensor of ``dtype``."""
    return (1, 1, rows, D), shared_layout(rows, D, dtype)


# descriptors already checked, by geometry: (dtype, shape, strides, block, layout, base address
# mod 16) -> the descriptor's fields, its base left out (kept, it would keep a tensor alive)
_CHECKED = {}


def host_descriptor(t, block, layout):
    """``TensorDescriptor(t, t.shape, t.stride(), block, layout)`` (``block`` a tuple).  Triton
    checks a new descriptor's geometry (rank, alignment, strides, block and layout) and nothing
    else, which took 23% of a Gluon backward's host time under cProfile (nine descriptors;
    results/host_r30a.log): a geometry seen before is not checked again, its descriptor copied
    with ``t`` as the base."""
    shape, strides = t.shape, t.stride()
    key = (t.dtype, shape, strides, block, layout, t.data_ptr() % 16)
    fields = _CHECKED.get(key)
    if fields is None:
        if len(_CHECKED) >= 256:  # the geometries of a few shapes in use
            _CHECKED.clear()
        fields = _CHECKED[key] = descriptor_fields(t, shape, strides, block, layout)
    return with_base(fields, t)


def descriptor_fields(t, shape, strides, block, layout):
    """The fields of ``TensorDescriptor(t, shape, strides, block, layout)`` (its geometry
    checked by Triton), the base left out (kept, it would keep a tensor alive): `with_base`'s
    for any tensor of ``t``'s dtype and 16-byte alignment."""
    desc = TensorDescriptor(t, list(shape), list(strides), list(block), layout)
    return dict(desc.__dict__, base=None)


def with_base(fields, t):
    """A descriptor of `descriptor_fields`' ``fields`` over ``t``, unchecked."""
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(fields)
    desc.base = t
    return desc


def jit_launch(kernel, grid, args, options, key=()):
    """``kernel[grid](*args, **options)``: how the Gluon modules launch their kernels unless the
    caller gives them a faster way (the generated modules' `_launch`, which after a first launch
    calls the compiled kernel directly; ``key``: what else decides the compiled kernel -- the
    descriptors' dtype -- for such a launcher's cache)."""
    return kernel[grid](*args, **options)
