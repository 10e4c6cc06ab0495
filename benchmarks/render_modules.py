"""Render the generated module of every example pattern and every benchmark pattern into a
folder, one file each (``NNN.py``, in a fixed order), with the template version and digest
masked, so that two commits' generated code can be compared line for line:

    python benchmarks/render_modules.py OUT_DIR
    diff -r OUT_A OUT_B

Prints the number of modules written.  No GPU needed.
"""
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attnlang  # noqa: E402
from attnlang import codegen  # noqa: E402
from attnlang.bench import SUITE  # noqa: E402

EXTRA = ["all", "causal & window(1023, 0) & heads(0..4)", "global(0..3)"]


def patterns():
    found = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples",
                                              "*.attn"))):
        for pattern in attnlang.load(path):
            found.append(pattern.bind())
    for text in list(SUITE) + EXTRA:
        found.append(attnlang.parse(f"pattern x = {text}")["x"])
    return found


def main(out):
    os.makedirs(out, exist_ok=True)
    found = patterns()
    for i, pattern in enumerate(found):
        source = codegen.render_module(pattern).replace(codegen.TEMPLATE_VERSION, "VERSION")
        source = re.sub(r"digest [0-9a-f]+", "digest DIGEST", source, count=1)  # hashes it too
        with open(os.path.join(out, f"{i:03d}.py"), "w") as handle:
            handle.write(source)
    print(len(found), "modules written to", out)


if __name__ == "__main__":
    main(sys.argv[1])
