#!/usr/bin/env bash
# The next GPU session's calls, kept in the repo: the scratch folders that held them in rounds
# 61-64 did not survive a new checkout.  NOTES.md's latest round says what each step measures
# and why; the logs come back under $OUT, to be copied into benchmarks/results/ with the round.
#
#   bash benchmarks/next_gpu_call.sh prepare     # here (CPU): writes _next/ and .whl/
#   then two device calls, each carrying [".whl", "_next"] (~8-9 minutes each):
#     bash benchmarks/next_gpu_call.sh part1     # the branch against main, both Gluon kernels
#     bash benchmarks/next_gpu_call.sh part2     # main's checks; d = 64 forwards
#
# BRANCH (default r63-empty-band) is the unmeasured kernel change; `prepare` writes its tree
# and both versions of attnlang/gluon_forward.py, since a device call takes no git history.
set -uo pipefail
BRANCH=${BRANCH:-r63-empty-band}
cd "$(dirname "$0")/.."

step() {  # step NAME SECONDS COMMAND...: one measurement, its log under $OUT, cut at SECONDS
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    timeout "$limit" taskset -c 11 "$@" 2>&1 | tee "$OUT/$name.log"
}

case "${1:-}" in
prepare)
    rm -rf _next && mkdir -p _next/branch
    git show main:attnlang/gluon_forward.py > _next/gf_main.py
    git show "$BRANCH:attnlang/gluon_forward.py" > _next/gf_branch.py
    git archive "$BRANCH" attnlang templates grammar benchmarks | tar -x -C _next/branch
    rm -rf _next/branch/benchmarks/results && mkdir _next/branch/benchmarks/results
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp -d .whl lark==1.3.1
    grep -qx '/_next/' .git/info/exclude 2>/dev/null || echo '/_next/' >> .git/info/exclude
    du -sh _next .whl
    ;;
part1|part2)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
    ;;
*)
    echo "usage: bash benchmarks/next_gpu_call.sh prepare|part1|part2" >&2
    exit 2
    ;;
esac

if [ "$1" = part1 ]; then
    # The branch's forward (a tile whose rows keep none of the band's keys takes no block)
    # against main's, in one process: merge if every row is within noise.
    step ab_branch_forward 200 python benchmarks/ab_forward_files.py \
        main=_next/gf_main.py branch=_next/gf_branch.py --rounds 5 \
        --only "fixed pattern L=8192,window(512) L=32768,causal L=8192 d=128,Lk < Lq"
    # The branch's backward (_query_tiles: no tile for an empty band interval).
    step ab_branch_backward 200 python benchmarks/ab_trees.py --tree branch=_next/branch \
        --module gluon_backward --dims 64,128 --lengths 8192 --only causal
    # The branch's kernels against the float64 reference, both head dims.
    (cd _next/branch && step gpu_check_branch128 90 python benchmarks/gpu_check.py --gluon 8 \
        --d 128 && step gpu_check_branch64 90 python benchmarks/gpu_check.py --gluon 8 --d 64)
elif [ "$1" = part2 ]; then
    # main's Gluon kernels on its band cases (round 64's empty spans of global rows/columns).
    step gpu_check_main128 120 python benchmarks/gpu_check.py --gluon 8 --d 128
    # The Gluon band forward at d = 64 on ~1k-key bands: the two 32k d = 64 window forwards
    # that the `tl` kernels leave at 1.24x FlexAttention.
    step gluon_fwd64_bands 180 python benchmarks/gluon_fwd.py 64 --lengths 32768 \
        --pattern "window(512)" --pattern "causal & window(1023, 0)"
    # The Gluon gather forward at d = 64 with the interval masks (round 63's run was host-bound).
    step ab_gather_forward64 200 python benchmarks/ab_gather_forward.py --d 64
fi
