"""``attnlang show FILE``: draw each pattern's mask and block layout, and report its statistics.

For every pattern of the file (or the one named by ``--pattern``), bound with ``--set`` values:

1. the canonical pattern;
2. the mask at a small length (``--len``, default 64; ``--kv-len`` for keys), one character per
   (query, key) pair, ``█`` kept and ``·`` masked, one picture per group of heads whose masks
   differ (``--heads``);
3. the block layout (``█`` full, ``░`` partial, ``·`` skipped) at ``--layout-len`` tokens
   (default 32 blocks) with ``--block`` blocks (default 128);
4. ``analysis.analyze`` at ``--lengths`` (default 1k, 8k, 32k, 128k): density, block density,
   FLOPs saved, layout memory, empty rows, future keys (and the plan's visited pairs).

Patterns that use ``segment`` are shown with a synthetic segment layout: 4 equal documents
(``seg = 4 * position // length``, on each axis in key coordinates), and the output says so.
``--png OUT.png`` draws the mask and the block layout side by side (needs matplotlib).
"""
from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import AttnError
from .compile import (DEFAULT_CELLS, MAX_BLOCK, MAX_HEADS, block_option,
                      positive_option, random_cells, select)

DEFAULT_LENGTHS = (1024, 8192, 32768, 131072)
DOCUMENTS = 4


def add_arguments(parser) -> None:
    parser.add_argument("file", help="the .attn file")
    parser.add_argument("--pattern", metavar="NAME", help="show only this pattern")
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                        help="give a parameter a value (int, else float; repeatable)")
    parser.add_argument("--len", type=int, default=64, dest="length", metavar="N",
                        help="query length of the mask picture (default 64, at most 512)")
    parser.add_argument("--kv-len", type=int, default=None, metavar="N",
                        help="key length of the mask picture (default: --len, at most 512); the "
                             "analysis keeps the same key/query ratio")
    parser.add_argument("--heads", type=int, default=1, metavar="H",
                        help=f"number of heads (default 1, at most {MAX_HEADS})")
    parser.add_argument("--block", type=int, default=128, metavar="N",
                        help="block size of the layout and the analysis (default 128; a power "
                             f"of two from 16 to {MAX_BLOCK})")
    parser.add_argument("--layout-len", type=int, default=None, metavar="N",
                        help="length of the layout picture (default 32 blocks, at most 512 "
                             "blocks)")
    parser.add_argument("--lengths", default=None, metavar="N,N,...",
                        help="lengths of the analysis (default 1024,8192,32768,131072)")
    parser.add_argument("--png", metavar="OUT.png", help="also draw mask and layout to a PNG")


# the pictures draw one character per (query, key) pair or block pair: wider is no picture
PICTURE_MAX = 512


def synthetic_segments(q_len: int, k_len: int):
    """4 equal documents by key-coordinate position: (seg_q, seg_k)."""
    import torch

    seg_k = torch.arange(k_len) * DOCUMENTS // k_len
    seg_q = (torch.arange(q_len) + (k_len - q_len)).clamp(min=0) * DOCUMENTS // k_len
    return seg_q, seg_k


def mask_pictures(pattern, q_len, k_len, heads, segments):
    """``[(heads, picture)]``: one picture per distinct per-head mask."""
    mask = pattern.mask(q_len, k_len, num_heads=heads, segments=segments)
    groups = []
    for h in range(heads):
        for members, m in groups:
            if bool((m == mask[h]).all()):
                members.append(h)
                break
        else:
            groups.append(([h], mask[h]))
    out = []
    for members, m in groups:
        rows = ["".join("█" if v else "·" for v in row) for row in m.tolist()]
        out.append((members, "\n".join(rows)))
    return out, mask


def _heads_label(members, total):
    if len(members) == total:
        return "all heads" if total > 1 else ""
    return "heads " + ", ".join(map(str, members))


def _lengths(args):
    if args.lengths is None:
        return DEFAULT_LENGTHS
    try:
        values = tuple(int(x) for x in args.lengths.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise AttnError(f"--lengths: got {args.lengths!r}; expected positive integers separated "
                        f"by commas", filename=args.file)
    return values


def _check_options(args):
    """Every option, before anything is printed: ``(q_len, k_len, heads, lay_q, lengths)``."""
    block_option("--block", args.block, args.file)
    q_len = positive_option("--len", args.length, args.file, PICTURE_MAX)
    k_len = q_len if args.kv_len is None else args.kv_len
    k_len = positive_option("--kv-len", k_len, args.file, PICTURE_MAX)
    heads = positive_option("--heads", args.heads, args.file, MAX_HEADS)
    lay_q = 32 * args.block if args.layout_len is None else args.layout_len
    lay_q = positive_option("--layout-len", lay_q, args.file, PICTURE_MAX * args.block)
    if args.png is not None:
        if not args.png.lower().endswith(".png") or os.path.isdir(args.png):
            raise AttnError(f"--png: got {args.png!r}; expected the name of a file ending in "
                            f".png", filename=args.file)
        if importlib.util.find_spec("matplotlib") is None:
            raise AttnError("--png needs matplotlib (pip install matplotlib)",
                            filename=args.png)
    return q_len, k_len, heads, lay_q, _lengths(args)


def show_pattern(pattern, args, options, out) -> None:
    """Print one pattern; ``options`` are ``_check_options(args)``'s values."""
    from ..analysis import analyze
    from ..torch_backend import uses_segments

    expr = pattern.ir
    q_len, k_len, heads, lay_q, lengths = options
    block = args.block
    segmented = uses_segments(expr)
    print(f"pattern {pattern.name} = {expr}", file=out)
    if segmented:
        print(f"  (uses segment: shown with a synthetic layout of {DOCUMENTS} equal documents)",
              file=out)
    segs = synthetic_segments(q_len, k_len) if segmented else None
    pictures, mask = mask_pictures(pattern, q_len, k_len, heads, segs)
    for members, pic in pictures:
        label = _heads_label(members, heads)
        print(f"\nmask at Lq={q_len}, Lk={k_len}{', ' + label if label else ''} "
              f"(█ kept, · masked):", file=out)
        print(pic, file=out)
    lay_k = max(1, round(lay_q * k_len / q_len))
    lay = pattern.layout(lay_q, lay_k, block_m=block, block_n=block, num_heads=heads,
                         segments=synthetic_segments(lay_q, lay_k) if segmented else None)
    for g, members in enumerate(lay.groups):
        label = _heads_label(list(members), heads)
        print(f"\nblock layout at Lq={lay_q}, Lk={lay_k}, blocks {block}x{block}"
              f"{', ' + label if label else ''} (█ full, ░ partial, · skipped):", file=out)
        print(lay.to_string(g), file=out)
    print(f"\nanalysis (blocks {block}x{block}):", file=out)
    for length in lengths:
        kv = max(1, round(length * k_len / q_len))
        cells = random_cells(expr, length, kv)
        if args.lengths is None and cells > DEFAULT_CELLS:
            print(f"Lq={length} Lk={kv}: not analysed by default: random() decides the layout "
                  f"cell by cell, {cells} cells at this length (the default lengths stop at "
                  f"{DEFAULT_CELLS}); name it in --lengths to wait for it", file=out)
            continue
        report = analyze(expr, length, kv, num_heads=heads, block_m=block, block_n=block,
                         segments=synthetic_segments(length, kv) if segmented else None)
        print(report.format(), file=out)
    print(file=out)
    if args.png is not None:
        _png(args.png, pattern, mask, lay)


def _png(path, pattern, mask, lay) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AttnError("--png needs matplotlib (pip install matplotlib)", filename=path) from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.imshow(mask[0].numpy(), cmap="Greys", interpolation="nearest")
    left.set_title(f"mask (Lq={mask.shape[1]}, Lk={mask.shape[2]})")
    left.set_xlabel("key")
    left.set_ylabel("query")
    right.imshow(lay.classes()[0].numpy(), cmap="Greys", vmin=0, vmax=2,
                 interpolation="nearest")
    right.set_title(f"block layout ({lay.block_m}x{lay.block_n}: black full, grey partial)")
    right.set_xlabel("key block")
    right.set_ylabel("query block")
    fig.suptitle(str(pattern.ir))
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise AttnError(f"cannot write PNG ({exc.strerror})", filename=path) from None
    finally:
        plt.close(fig)


def run(args) -> int:
    from ..api import load

    options = _check_options(args)
    program = load(args.file)
    patterns = select(program, args)
    if args.png is not None and len(patterns) > 1:
        raise AttnError("--png draws one pattern: choose it with --pattern NAME",
                        filename=args.file)
    for pattern in patterns:
        show_pattern(pattern, args, options, sys.stdout)
    return 0
