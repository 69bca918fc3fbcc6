#!/usr/bin/env bash
# Reproduce the recorded CPU benchmark: benchmarks/results/cpu-<date>.json and .png.
#
#   benchmarks/run_cpu.sh              # the full suite (about 45-60 min on an idle 2-core machine)
#   benchmarks/run_cpu.sh --quick      # about a minute: FER CNN + procedural pipeline, CPU backends
#   benchmarks/run_cpu.sh --models fer-cnn:paper --batches 32,256   # any `fertk bench` option
#
# Run it on an idle machine: every other process steals cycles from the timed loops, and with two
# cores a single busy neighbour halves the numbers. THREADS (default: all logical cores) is given
# to torch and onnxruntime alike.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-$(python -c 'import os; print(os.cpu_count())')}"
out="${OUT:-benchmarks/results}"
fertk info
fertk bench --threads "$threads" --out "$out" "$@"
