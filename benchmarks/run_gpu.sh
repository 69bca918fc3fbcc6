#!/usr/bin/env bash
# The GPU run in one command: environment check, pytest -m gpu, `fertk bench` CUDA rows and
# `fertk synth` runs on CUDA, under one time budget, into at most 8 files (see benchmarks/README.md,
# "GPU run").
#
#   benchmarks/run_gpu.sh                     # on the GPU machine: budget 420 s, results into $OUT
#   benchmarks/run_gpu.sh --budget-s 300      # a shorter run (every stage gets its share)
#   benchmarks/run_gpu.sh --stages env,synth-gan --budget-s 400   # re-run chosen stages only
#   benchmarks/run_gpu.sh --dry-run           # the same script on CPU at tiny sizes (what CI runs)
#
# Run from anywhere; it works from the repository root. fertk runs from the checkout
# (PYTHONPATH=toolkit, `python3 -m fertk`), nothing is installed. Pure-Python wheels put in
# benchmarks/gpu/wheels/ (or $FERTK_GPU_WHEELS) are unpacked (offline) into a temp dir on PYTHONPATH first.
# PYTHON picks the interpreter (default python3). Outputs go to $OUT, else benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD/toolkit${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

site=""
cleanup() { [ -n "$site" ] && rm -rf "$site"; }
trap cleanup EXIT
shopt -s nullglob
# Carried wheels of distributions this Python lacks. One it already has is left out: PYTHONPATH
# comes before site-packages, and a shadowed copy breaks the installed one's entry points (seen:
# pytest loading platformdirs' plugin from a newer installed platformdirs).
wheels=()
for w in "${FERTK_GPU_WHEELS:-benchmarks/gpu/wheels}"/*.whl; do
    dist="$(basename "$w")"; dist="${dist%%-*}"
    if "$py" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
        echo "carried wheel ${w##*/} not needed: $dist is installed"
    else
        wheels+=("$w")
    fi
done
if [ ${#wheels[@]} -gt 0 ]; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/fertk-wheels-XXXXXX")"
    if "$py" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$site" "${wheels[@]}"; then
        echo "carried wheels: ${wheels[*]##*/} (installed offline into $site)"
    else  # no pip: a pure-Python wheel is a zip that imports from sys.path as is
        for w in "${wheels[@]}"; do cp "$w" "$site/"; done
        echo "carried wheels: ${wheels[*]##*/} (pip failed: on PYTHONPATH as zip files)"
        for w in "$site"/*.whl; do PYTHONPATH="$PYTHONPATH:$w"; done
    fi
    export PYTHONPATH="$PYTHONPATH:$site"
fi

# The outer guard: the driver ends itself before its budget; this stops it 30 s after, whatever happens.
budget="" dry=0
for ((i = 1; i <= $#; i++)); do
    arg="${!i}"
    case "$arg" in
        --dry-run) dry=1 ;;
        --budget-s) j=$((i + 1)); budget="${!j:-}" ;;
        --budget-s=*) budget="${arg#*=}" ;;
    esac
done
[ -n "$budget" ] || { [ "$dry" = 1 ] && budget=240 || budget=420; }
guard=$(awk -v b="$budget" 'BEGIN { printf "%d", b + 30 }')
if command -v timeout >/dev/null 2>&1; then
    timeout -k 10 "$guard" "$py" benchmarks/gpu/run_gpu.py "$@"
else
    "$py" benchmarks/gpu/run_gpu.py "$@"
fi
