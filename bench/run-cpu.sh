#!/usr/bin/env bash
# The CPU comparison of the issue, in ONE run on ONE machine: `tiedae bench --device cpu` (the three
# workloads, and their GEMMs alone: `--step-gemms`), the same workloads in Keras (bench/keras_reference.py,
# default and with XLA) and, when torch is installed, in PyTorch eager on the CPU (bench/torch_reference.py),
# numpy's sgemm and our GEMM at 1024³.
# Everything runs ROUNDS times, interleaved (tiedae, Keras, numpy, our GEMM, then again), so that a slow
# minute of a shared machine hits every side alike; the summary takes each ratio per round and reports the
# median over rounds.
#
#   bench/run-cpu.sh [ROUNDS]            (default 3)
#   PYTHON=/path/to/venv/bin/python bench/run-cpu.sh
#   WORKLOAD=mnist bench/run-cpu.sh 11   one workload only (more rounds in the same time, for a ratio that
#                                        a shared machine's slow minutes move)
#   ISA=avx2 bench/run-cpu.sh            every side capped to AVX2 (tiedae TIEDAE_CPU_ISA=avx2, Keras's oneDNN
#                                        ONEDNN_MAX_CPU_ISA=AVX2, PyTorch ATEN_CPU_CAPABILITY=avx2, OpenBLAS
#                                        OPENBLAS_CORETYPE=Haswell): what a CPU without AVX-512 (most
#                                        laptops) gets, measured on one that has it
#
# Needs a Python with tensorflow-cpu, numpy and threadpoolctl (e.g. python3 -m venv ~/bench-venv &&
# ~/bench-venv/bin/pip install tensorflow-cpu numpy threadpoolctl). Writes, times in UTC,
#   bench/results/cpu-<machine>/<date>/<HHMM>[-<isa>][-<workload>].jsonl   every raw JSON line, with "round"
#   bench/results/cpu-<machine>/<date>/<HHMM>[-<isa>][-<workload>].md      the table, the ratios and goals
# A run that backs a claim (README, bench/README.md, the speed notes) goes into bench/results/README.md.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which some machines set for old OpenBLAS builds, are unset for the
# numpy command only (they slow a current numpy down); its JSON line names the kernel OpenBLAS picked.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
PYTHON=${PYTHON:-python3}
ISA=${ISA:-}
case "$ISA" in
  "") ;;
  avx2) export TIEDAE_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ;;
  *) echo "run-cpu.sh: ISA=$ISA is not avx2 (or empty: every side at its widest)" >&2; exit 1 ;;
esac
TIEDAE=${TIEDAE:-target/release/tiedae}
WORKLOAD=${WORKLOAD:-all}
case "$WORKLOAD" in
  all | seed | digits | mnist) ;;
  *) echo "run-cpu.sh: WORKLOAD=$WORKLOAD is not seed, digits, mnist or all" >&2; exit 1 ;;
esac

if [ "$TIEDAE" = target/release/tiedae ]; then
  cargo build --release --quiet
fi
"$PYTHON" -c 'import tensorflow, numpy' 2>/dev/null || {
  echo "run-cpu.sh: $PYTHON lacks tensorflow or numpy; set PYTHON to a venv with tensorflow-cpu numpy threadpoolctl" >&2
  exit 1
}

model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/([^)]*)//g' | tr 'A-Z' 'a-z' |
  tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
machine="${model:-cpu}-$(nproc)c"
date=$(date -u +%F)
dir="bench/results/cpu-$machine/$date"
mkdir -p "$dir"
only=""
[ "$WORKLOAD" != all ] && only="-$WORKLOAD"
stem="$dir/$(date -u +%H%M)${ISA:+-$ISA}$only"
# Two runs in one minute: the second gets the seconds as well.
[ -e "$stem.jsonl" ] && stem="$dir/$(date -u +%H%M%S)${ISA:+-$ISA}$only"
out="$stem.jsonl"
md="$stem.md"
: >"$out"
# What the model name leaves out (one "Intel Xeon Processor" can be several generations): family/model,
# caches, AVX-512. summarize.py prints it under the machine.
cpu_field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'; }
cache() { lscpu 2>/dev/null | grep -m1 "^$1" | cut -d: -f2- | sed 's/^ *//'; }
avx512=$(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)
echo "{\"cpu\": \"family $(cpu_field 'cpu family') model $(cpu_field model), L1d $(cache 'L1d cache'), L2 $(cache 'L2 cache'), L3 $(cache 'L3 cache'), AVX-512 $avx512\"}" >>"$out"
[ -n "$ISA" ] && echo "{\"isa_cap\": \"$ISA\"}" >>"$out"

tag() { sed "s/^{/{\"round\": $1, /" | grep '^{' | tee -a "$out"; }

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$TIEDAE" bench --device cpu --workload "$WORKLOAD" --json | tag "$r"
  # The step's GEMMs alone: the ceiling any step built on our GEMM can reach (the summary's "bound" rows).
  "$TIEDAE" bench --device cpu --workload "$WORKLOAD" --step-gemms --json | tag "$r"
  TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" bench/keras_reference.py --workload "$WORKLOAD" 2>/dev/null | tag "$r"
  # Keras with XLA (jit_compile=True; Keras leaves it off on a CPU-only machine): for reference, no goal.
  TF_CPP_MIN_LOG_LEVEL=3 "$PYTHON" bench/keras_reference.py --workload "$WORKLOAD" --jit-compile 2>/dev/null |
    tag "$r"
  if "$PYTHON" -c 'import torch' 2>/dev/null; then # optional: PyTorch eager on the CPU, for reference
    "$PYTHON" bench/torch_reference.py --device cpu --workload "$WORKLOAD" --variants eager 2>/dev/null | tag "$r" ||
      echo "run-cpu.sh: bench/torch_reference.py failed in round $r (a reference only: the run goes on)" >&2
  fi
  if [ "$ISA" = avx2 ]; then
    env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell "$PYTHON" bench/numpy_sgemm.py --sizes 1024 | tag "$r"
  else
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" bench/numpy_sgemm.py --sizes 1024 | tag "$r"
  fi
  "$TIEDAE" bench --device cpu --gemm 1024 --json | tag "$r"
done

python3 bench/summarize.py "$out" >"$md"
echo "wrote $out and $md" >&2
cat "$md"
