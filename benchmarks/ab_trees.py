"""One Gluon kernel module of this tree against the same module of other trees, as attnlang runs
it, on the GPU: training steps of the band patterns and the documents, each tree's module set
on the generated module in turn (`_GLUON`), three interleaved rounds on the same inputs,
`do_bench` medians; each tree's gradients compared with this tree's.

    git archive HEAD attnlang templates grammar | tar -x -C _old     # a tree to compare with
    python benchmarks/ab_trees.py --tree old=_old [--tree name=DIR ...] [--module gluon_backward]
        [--dims 128,64] [--lengths 8192,32768] [--only TEXT] [--rounds 3] [--tl] [--docs-min N]
        [--docs-dims 64,128] [--pattern TEXT ...] [--min-keys-64 N] [--gather-min N]

A tree's ``attnlang`` package is imported as ``attnlang_<name>``; its modules must take the same
calls as this tree's.  ``--module`` may name several modules (``gluon_forward,gluon_backward``):
a variant sets them all, and ``--tl`` unsets them all.  ``--pattern`` replaces the band patterns
and the documents.  Where the module does not serve a call (the `tl` kernels run: documents
below GLUON_DOCS's lengths, narrow d = 64 bands), every tree times the same.
"""
import argparse
import importlib
import importlib.util
import os
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attnlang  # noqa: E402
from attnlang.bench import random_documents  # noqa: E402
from attnlang.cache import load_module  # noqa: E402
from gluon_bwd import max_rel  # noqa: E402
from head_order import BANDS, _inputs, _medians, _step_runner  # noqa: E402


def load_tree(name, root, module):
    """``module`` of the attnlang package under ``root``, imported as ``attnlang_<name>``."""
    package = f"attnlang_{name}"
    spec = importlib.util.spec_from_file_location(
        package, os.path.join(root, "attnlang", "__init__.py"),
        submodule_search_locations=[os.path.join(root, "attnlang")])
    sys.modules[package] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{module}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", default=[], help="name=DIR")
    parser.add_argument("--module", default="gluon_backward")
    parser.add_argument("--dims", default="128,64")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--only", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tl", action="store_true",
                        help="also time the `tl` kernels (the module unset) as variant 'tl'")
    parser.add_argument("--docs-min", type=int, default=None,
                        help="the fewest queries of the documents' Gluon backward at every head "
                             "dim (the generated modules' GLUON_DOCS; 0: documents run "
                             "the Gluon module at every length)")
    parser.add_argument("--pattern", action="append", help="time these patterns instead")
    parser.add_argument("--min-keys-64", type=int, default=None,
                        help="the generated modules' GLUON_MIN_KEYS_64 (0: bands of any width "
                             "may run the Gluon modules at d = 64)")
    parser.add_argument("--gather-min", type=int, default=None,
                        help="the fewest queries of a gather component's Gluon backward at "
                             "every head dim (the generated modules' GLUON_GATHER_MIN)")
    parser.add_argument("--docs-dims", default=None,
                        help="the head dims of the generated modules' GLUON_DOCS: those whose "
                             "documents may run the Gluon module, e.g. 64,128")
    args = parser.parse_args()
    names = args.module.split(",")
    trees = {name: [load_tree(name, root, module) for module in names]
             for name, root in (entry.split("=", 1) for entry in args.tree)}
    for D in (int(x) for x in args.dims.split(",")):
        for L in (int(x) for x in args.lengths.split(",")):
            B, H = max(1, 16384 // L), 16
            q, k, v, do, grads = _inputs(B, H, L, D)
            ids = random_documents(L, 64, "cuda", torch.Generator().manual_seed(0))
            for text in args.pattern or BANDS + ["causal & segment"]:
                if args.only not in text:
                    continue
                pattern = attnlang.parse(f"pattern x = {text}")["x"]
                module = pattern.module(backend="triton")
                extra = dict(segments=ids) if "segment" in text else {}
                generated = load_module(pattern)
                if args.docs_dims:
                    generated.GLUON_DOCS = {int(x): generated.GLUON_DOCS.get(int(x), 0)
                                            for x in args.docs_dims.split(",")}
                if args.min_keys_64 is not None:
                    generated.GLUON_MIN_KEYS_64 = args.min_keys_64
                if args.docs_min is not None:
                    generated.GLUON_DOCS = dict.fromkeys(generated.GLUON_DOCS, args.docs_min)
                if args.gather_min is not None:
                    generated.GLUON_GATHER_MIN = dict.fromkeys(generated.GLUON_GATHER_MIN,
                                                               args.gather_min)
                mods = {"this": [generated._gluon_module(m) for m in names], **trees}
                if args.tl:
                    mods["tl"] = [None] * len(names)

                def set_variant(gen, name):
                    gen._GLUON.update(zip(names, mods[name]))

                ms, res = _medians(pattern, list(mods), set_variant,
                                   _step_runner(module, grads, do, extra), args.rounds)
                others = [name for name in mods if name != "this"]
                diffs = {name: max(max_rel(a, b) for a, b in zip(res[name], res["this"]))
                         for name in others}
                print(f"{text:26s} L={L:6d} D={D:3d} step ms "
                      + " ".join(f"{name} {ms[name]:.3f}" for name in mods)
                      + " | this vs " + " ".join(
                          f"{name} {ms[name] / ms['this']:.3f}x (grads {diffs[name]:.1e})"
                          for name in others), flush=True)
                set_variant(generated, "this")
            del q, k, v, do, grads
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
