#!/usr/bin/env bash
# The GPU device run of tdsk, in one command (docs/gpu-run.md).
#
#   bash bench/gpu/run.sh [--dry-run] [--budget SECONDS] OUTDIR [OFFICIAL_REPO]
#
# Runs, most important first, each step time-boxed with `timeout` inside one overall
# budget (default 480 s), each step writing OUTDIR/results.json as soon as it has numbers:
#   1. ceilings: device-to-device copy bandwidth, bf16 matmul rate
#   2. op benchmarks: tdsk vs reference vs torch.compile(reference), GB/s, % of copy
#   3. TDS-CLIP B/16 training step (tdsk vs official), TD-Adapter and SME stem (vs official
#      eager and compiled), inference clips/s at 3x2 views
#   4. kernels: one launch above 2^31 elements per op, block_hw sweep; userpath:
#      torch.compile(fullgraph) of a tiny model, one fit() epoch with fp16 + compile
#   5. python -m tdsk.doctor --json; pytest -m gpu (CUDA-parametrised and Triton tests)
#   6. if time remains: side attention xformers vs SDPA, DALI vs PyAV loader
# then OUTDIR/results.md and OUTDIR/results.png. OUTDIR ends up with at most 5 files:
# results.json, results.md, results.png, doctor.json, run.log.
# --steps a,b,...: only these steps (a rerun of what failed), in the order above.
#
# OFFICIAL_REPO: a local copy of BBYL9413/TDS-CLIP (only clip/model.py is used); without it
# the official rows are skipped with a message. --dry-run shrinks every size so the whole
# script runs on a CPU (TRITON_INTERPRET=1 there).
#
# Environment: PYTHON (default python3). Wheels in .whl/ (if any) are installed offline
# into a temporary folder first. Without an installed tdsk, the checkout is used
# (tdsk.kernels staged from kernels/; the C++ extension is not needed).
set -u

DRY=0
BUDGET=480
ONLY=""
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --budget) BUDGET="$2"; shift ;;
        --budget=*) BUDGET="${1#--budget=}" ;;
        --steps) ONLY=",$2,"; shift ;;
        --steps=*) ONLY=",${1#--steps=}," ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done
if [ ${#ARGS[@]} -lt 1 ] || [ ${#ARGS[@]} -gt 2 ]; then
    echo "usage: bash bench/gpu/run.sh [--dry-run] [--budget SECONDS] [--steps a,b] OUTDIR [OFFICIAL_REPO]" >&2
    exit 2
fi
OUT="${ARGS[0]}"
OFFICIAL="${ARGS[1]:-}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
if [ -n "$OFFICIAL" ]; then
    case "$OFFICIAL" in /*) ;; *) OFFICIAL="$PWD/$OFFICIAL" ;; esac
fi
PYTHON="${PYTHON:-python3}"
case "$PYTHON" in /*) ;; */*) PYTHON="$PWD/$PYTHON" ;; esac   # a relative path: from here
cd "$REPO" || exit 2
rm -f "$OUT/results.json" "$OUT/results.md" "$OUT/results.png" "$OUT/doctor.json" "$OUT/run.log"
exec > >(tee -a "$OUT/run.log") 2>&1

export PYTHONUNBUFFERED=1
TMP="$(mktemp -d /tmp/tdsk-run.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
RESERVE=20    # seconds kept for the report at the end

# setup messages wait in $TMP/setup.log: the first line of the run says what was found
exec 3>&1 4>&2 1>"$TMP/setup.log" 2>&1

# 0. wheels carried along (open_clip_torch, ftfy, wcwidth, av, scikit-video, ...), offline
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    echo "installing $(ls "$REPO"/.whl/*.whl | wc -l) wheels from .whl/ (offline) into $TMP/site"
    PIPI=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
          --disable-pip-version-check --upgrade --target "$TMP/site")
    if ! "${PIPI[@]}" "$REPO"/.whl/*.whl 2>/dev/null; then
        for whl in "$REPO"/.whl/*.whl; do  # one by one: a wheel for another Python must not stop the rest
            "${PIPI[@]}" "$whl" 2>/dev/null || echo "WARNING: $(basename "$whl") does not install here (skipped)"
        done
    fi
    export PYTHONPATH="$TMP/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# 1. tdsk with its Triton kernels: installed, or staged from the checkout (tdsk/ + kernels/
#    as tdsk/kernels, which is what setup.py's package_dir installs)
if ! (cd "$TMP" && "$PYTHON" -c "import tdsk.kernels" >/dev/null 2>&1); then
    mkdir -p "$TMP/src"
    cp -r "$REPO/tdsk" "$TMP/src/tdsk" && cp -r "$REPO/kernels" "$TMP/src/tdsk/kernels"
    find "$TMP/src" -name __pycache__ -prune -exec rm -rf {} +
    export PYTHONPATH="$TMP/src${PYTHONPATH:+:$PYTHONPATH}"
    # the checkout's tdsk/ (no kernels/ inside) must not shadow the staged copy: no cwd on sys.path
    export PYTHONSAFEPATH=1
    echo "tdsk: using the checkout (staged with tdsk.kernels in $TMP/src; no C++ extension needed)"
fi

HAS_CUDA="$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [ "$HAS_CUDA" = 1 ]; then
    # on the GPU machine the main steps need open_clip (the models) and PyAV (the demo data,
    # the loader, the data tests): refuse at once instead of spending the lease on skips
    MISSING="$("$PYTHON" -c '
import importlib.util as u
print(" ".join(n for n, m in (("open_clip", "open_clip"), ("PyAV", "av")) if u.find_spec(m) is None))' 2>/dev/null)"
    if [ -n "$MISSING" ]; then
        exec 1>&3 2>&4
        cat "$TMP/setup.log"
        echo "ERROR: CUDA is present but $MISSING cannot be imported: carry the wheels in .whl/" >&2
        echo "       (bash bench/gpu/prepare.sh makes .whl/ and .official/; docs/gpu-run.md)" >&2
        exit 3
    fi
fi
DRYFLAG=()
if [ "$DRY" = 1 ]; then
    DRYFLAG=(--dry-run)
    # Triton kernels run interpreted on CPU tensors (must be set before tdsk.kernels is imported)
    [ "$HAS_CUDA" = 1 ] || export TRITON_INTERPRET=1
fi
OFFFLAG=()
[ -n "$OFFICIAL" ] && OFFFLAG=(--official "$OFFICIAL")
DR=("$PYTHON" "$REPO/bench/gpu/device_run.py")

exec 1>&3 2>&4 3>&- 4>&-
"${DR[@]}" describe "$OUT" "${DRYFLAG[@]}" "${OFFFLAG[@]}" 2>"$TMP/describe.err" || echo "WARNING: describe failed"
cat "$TMP/setup.log" "$TMP/describe.err"

# step NAME BOX CMD...: run CMD under `timeout`, at most BOX seconds and never past the budget
step() {
    local name="$1" box="$2" extra=()
    shift 2
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then
        return
    fi
    if [ "$name" = doctor ]; then extra=(--doctor "$OUT/doctor.json"); fi
    if [ "$name" = pytest_gpu ]; then extra=(--junit "$TMP/pytest-gpu.xml"); fi
    local left=$((BUDGET - SECONDS - RESERVE))
    if [ "$left" -lt 15 ]; then
        echo "=== [$name] skipped: the ${BUDGET}s budget is spent (${SECONDS}s elapsed) ==="
        "${DR[@]}" mark "$OUT" "$name" skipped 0 0 0
        return
    fi
    [ "$box" -gt "$left" ] && box="$left"
    echo "=== [$name] time box ${box}s, ${SECONDS}s of ${BUDGET}s elapsed ==="
    local t0=$SECONDS rc status
    timeout -k 10 "$box" "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then status=ok
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout
    else status=failed; fi
    "${DR[@]}" mark "$OUT" "$name" "$status" "$rc" $((SECONDS - t0)) "$box" "${extra[@]}"
}

# pytest on the device: its workers compile the Triton kernels in parallel when xdist is there
PYTEST_X=()
"$PYTHON" -c "import xdist" >/dev/null 2>&1 && [ "$HAS_CUDA" = 1 ] && PYTEST_X=(-n 8)

# 1. ceilings
step ceilings 30 "${DR[@]}" ceilings "$OUT" "${DRYFLAG[@]}"
# 2. op benchmarks
step ops 120 "${DR[@]}" ops "$OUT" "${DRYFLAG[@]}"
# 3. model: training step, modules, inference
step train 90 "${DR[@]}" train "$OUT" "${DRYFLAG[@]}" "${OFFFLAG[@]}"
step modules 60 "${DR[@]}" modules "$OUT" "${DRYFLAG[@]}" "${OFFFLAG[@]}"
step inference 40 "${DR[@]}" inference "$OUT" "${DRYFLAG[@]}" "${OFFFLAG[@]}"
# 4. the kernels at their edges, the user's path (compile, fit with fp16)
step kernels 45 "${DR[@]}" kernels "$OUT" "${DRYFLAG[@]}"
step userpath 120 "${DR[@]}" userpath "$OUT" "${DRYFLAG[@]}"
# 5. correctness on the device
step doctor 60 bash -c '"$0" -m tdsk.doctor --json > "$1"' "$PYTHON" "$OUT/doctor.json"
step pytest_gpu 150 "$PYTHON" -m pytest -m gpu tests -q -rs -p no:cacheprovider "${PYTEST_X[@]}" \
    --junitxml="$TMP/pytest-gpu.xml" -o junit_family=xunit1
# 6. only if time remains
step attention 30 "${DR[@]}" attention "$OUT" "${DRYFLAG[@]}"
step loader 60 "${DR[@]}" loader "$OUT" "${DRYFLAG[@]}"

"${DR[@]}" report "$OUT"
echo "=== done in ${SECONDS}s: $OUT/results.json, results.md, results.png, doctor.json, run.log ==="
