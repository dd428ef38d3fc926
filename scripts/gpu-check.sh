#!/usr/bin/env bash
# Checks a gpu-bundle (scripts/gpu-bundle.sh) on a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh [BUNDLE=gpu-bundle] [LOGDIR=gpu-logs]
#   GPU_CHECK_SECONDS=540 scripts/gpu-check.sh ...   (a time budget: see below)
#
# Run it FROM THE REPO ROOT (a checkout of the commit the bundle was built from): the CLI steps read data/,
# and the test executables look for their data where the build machine's checkout was (see BUNDLE/MANIFEST).
# Every step runs, each under `timeout`, each with its own log in LOGDIR; LOGDIR/summary.txt gets one line
# per step (PASS, FAIL or SKIP, seconds, log). Exits 1 when any step failed. Takes a few minutes.
#
# Steps, most important first: nvidia-smi, nvcc --version, tiedae info, whether the bundle was built from this
# checkout's sources; every test executable with TIEDAE_REQUIRE_GPU=1 and TIEDAE_REQUIRE_KERNELS=1 (so a
# missing GPU fails instead of skipping); a CPU-vs-GPU comparison (same seed) through `tiedae eval --json`,
# and kernel by kernel against --cuda-graphs (the same bits); `tiedae bench --json --device all` (and that
# its cuda-graphs rows really replayed graphs), our GEMM plans against cuBLAS (benches/gpu_gemm),
# bench/torch_reference.py on the same GPU, the bench with the data set kept on the host, and with the
# first GPU kernels (TIEDAE_CUDA_GEMM=64 TIEDAE_CUDA_FUSE=0: the before of the GEMM work); compute-sanitizer
# memcheck, racecheck, synccheck and initcheck on a one-epoch training run (memcheck also with
# --cuda-graphs); last, memcheck and racecheck on the gpu_kernels tests (slow under the sanitizer).
#
# GPU_CHECK_SECONDS (default: none) caps the whole run: each step's timeout is cut to the time left, and a
# step that would start with under 20 s left is noted SKIP ("out of time"), so one device call with a hard
# limit still comes back with every log written so far.
#
# GPU_CHECK_OUT=DIR (default: none) also keeps DIR up to date after every step with three files only:
# summary.txt, all-logs.txt (every step's log, its last 200 kB, one after the other) and logs.tar.gz (LOGDIR
# without the model files). The device tool brings back at most 8 files from $OUT, and LOGDIR holds dozens:
#   GPU_CHECK_SECONDS=540 GPU_CHECK_OUT=$OUT scripts/gpu-check.sh gpu-bundle /tmp/gpu-logs
set -uo pipefail

bundle="${1:-gpu-bundle}"
logdir="${2:-gpu-logs}"
if [ ! -x "$bundle/tiedae" ] || [ ! -d "$bundle/tests" ]; then
  echo "gpu-check: $bundle is not a bundle (run scripts/gpu-bundle.sh first)" >&2
  exit 2
fi
if [ ! -f data/digits.csv ]; then
  echo "gpu-check: run me from the repo root (data/digits.csv not found in $PWD)" >&2
  exit 2
fi
bundle="$(cd "$bundle" && pwd)"
mkdir -p "$logdir"
logdir="$(cd "$logdir" && pwd)"
summary="$logdir/summary.txt"
: >"$summary"
failures=0
out="${GPU_CHECK_OUT:-}"
if [ -n "$out" ]; then
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  case "$logdir/" in
    "$out"/*)
      # The logs' dozens of files would crowd out the three that matter.
      echo "gpu-check: LOGDIR ($logdir) must not be inside GPU_CHECK_OUT ($out): use e.g. /tmp/gpu-logs" >&2
      exit 2
      ;;
  esac
  : >"$out/all-logs.txt"
fi

# pack: GPU_CHECK_OUT's summary.txt and logs.tar.gz brought up to date (all-logs.txt grows in `step`).
pack() {
  [ -n "$out" ] || return 0
  cp "$summary" "$out/summary.txt" 2>/dev/null
  tar -czf "$out/logs.tar.gz.part" --exclude='*.safetensors' -C "$(dirname "$logdir")" "$(basename "$logdir")" \
    2>/dev/null && mv "$out/logs.tar.gz.part" "$out/logs.tar.gz"
  return 0
}

export TIEDAE_REQUIRE_GPU=1
export TIEDAE_REQUIRE_KERNELS=1
budget="${GPU_CHECK_SECONDS:-0}"
t_start=$(date +%s)

# note NAME STATUS SECONDS DETAIL
note() {
  printf '%-4s %-36s %5ss  %s\n' "$2" "$1" "$3" "$4" | tee -a "$summary"
  pack
}

# step NAME TIMEOUT_SECONDS COMMAND...: runs COMMAND with its output in LOGDIR/NAME.log.
step() {
  local name="$1" limit="$2"
  shift 2
  local log="$logdir/$name.log" start rc status detail left
  start=$(date +%s)
  if [ "$budget" -gt 0 ]; then
    left=$((budget - (start - t_start)))
    if [ "$left" -lt 20 ]; then
      note "$name" SKIP 0 "out of time (GPU_CHECK_SECONDS=$budget)"
      return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
  fi
  {
    echo "\$ $*"
    echo
  } >"$log"
  timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    status=PASS
    detail="$log"
  else
    status=FAIL
    failures=$((failures + 1))
    case "$rc" in
      124 | 137) detail="timed out after ${limit}s; $log" ;;
      *) detail="exit $rc; $log" ;;
    esac
  fi
  if [ -n "$out" ]; then
    {
      printf '\n===== %s: %s (%s) =====\n' "$name" "$status" "$detail"
      tail -c 200000 "$log"
    } >>"$out/all-logs.txt"
  fi
  note "$name" "$status" "$(($(date +%s) - start))" "$detail"
  return "$rc"
}

skip() {
  note "$1" SKIP 0 "$2"
}

echo "gpu-check: bundle $bundle, logs $logdir, repo $PWD" | tee -a "$summary"
[ -f "$bundle/MANIFEST" ] && sed 's/^/  /' "$bundle/MANIFEST" | head -n 4 | tee -a "$summary"

# The test executables read data through paths fixed at build time (CARGO_MANIFEST_DIR). When this checkout is
# elsewhere, point that path here if it is free (best effort; the tests that need it fail otherwise).
built_root="$(sed -n 's/^manifest_dir //p' "$bundle/MANIFEST" 2>/dev/null)"
if [ -n "$built_root" ] && [ "$built_root" != "$PWD" ] && [ ! -e "$built_root" ]; then
  if mkdir -p "$(dirname "$built_root")" 2>/dev/null && ln -s "$PWD" "$built_root" 2>/dev/null; then
    echo "gpu-check: linked $built_root -> $PWD (the build's CARGO_MANIFEST_DIR)" | tee -a "$summary"
  else
    echo "gpu-check: could not link $built_root -> $PWD; tests that read files may fail" | tee -a "$summary"
  fi
fi
# The CLI tests run the binary where cargo put it at build time (CARGO_BIN_EXE_tiedae, under the build's
# target/, which does not travel): put the bundle's there when nothing is.
if [ -n "$built_root" ] && [ -d "$built_root" ] && [ ! -e "$built_root/target/release/tiedae" ]; then
  if mkdir -p "$built_root/target/release" 2>/dev/null &&
    ln -s "$bundle/tiedae" "$built_root/target/release/tiedae" 2>/dev/null; then
    echo "gpu-check: linked $built_root/target/release/tiedae -> $bundle/tiedae (the CLI tests' binary)" |
      tee -a "$summary"
  else
    echo "gpu-check: could not put the binary at $built_root/target/release/tiedae; the CLI tests will fail" |
      tee -a "$summary"
  fi
fi

# The bundle against this checkout: the hash of the sources it was built from (gpu-bundle.sh).
want_sources="$(sed -n 's/^sources //p' "$bundle/MANIFEST" 2>/dev/null)"
if [ -n "$want_sources" ] && [ -f "$bundle/SOURCES" ]; then
  have_sources="$(while read -r f; do sha256sum "$f"; done <"$bundle/SOURCES" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [ "$have_sources" = "$want_sources" ]; then
    note bundle-matches-checkout PASS 0 "built from these sources ($want_sources)"
  else
    note bundle-matches-checkout FAIL 0 "built from other sources than this checkout's: rebuild with scripts/gpu-bundle.sh"
    failures=$((failures + 1))
  fi
else
  note bundle-matches-checkout FAIL 0 "the bundle records no sources hash (an old gpu-bundle.sh?)"
  failures=$((failures + 1))
fi

# cudarc, built against CUDA 11.8, opens libcublas.so or libcublas.so.{12,11,10,9,1}, and a CUDA 13 machine may
# have only libcublas.so.13: then give it the unversioned name (benches/gpu_gemm's cuBLAS side needs it).
cublas_path=""
cublas_found="$(python3 -c '
import ctypes
for n in ["libcublas.so", "libcublas.so.12", "libcublas.so.11", "libcublas.so.10", "libcublas.so.9", "libcublas.so.1"]:
    try:
        ctypes.CDLL(n)
        print(n)
        break
    except OSError:
        pass
' 2>/dev/null)"
if [ -z "$cublas_found" ]; then
  site_dirs="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
  # shellcheck disable=SC2086 # the site directories are separate words
  cublas_lib="$(find /usr/local/cuda* /usr/lib/x86_64-linux-gnu /usr/local/lib $site_dirs -name 'libcublas.so.*' \
    ! -name '*Lt*' 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$cublas_lib" ] && mkdir -p /tmp/tiedae-cublas && ln -sf "$cublas_lib" /tmp/tiedae-cublas/libcublas.so; then
    # For benches/gpu_gemm only: PyTorch keeps the cuBLAS of its own wheel.
    cublas_path="/tmp/tiedae-cublas:$(dirname "$cublas_lib")"
    echo "gpu-check: cuBLAS for cudarc: /tmp/tiedae-cublas/libcublas.so -> $cublas_lib" | tee -a "$summary"
  else
    echo "gpu-check: no libcublas found; the cuBLAS comparison will fail" | tee -a "$summary"
  fi
else
  echo "gpu-check: cuBLAS for cudarc: $cublas_found" | tee -a "$summary"
fi

# --- the machine ---------------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  step nvidia-smi 60 nvidia-smi
else
  note nvidia-smi FAIL 0 "nvidia-smi not found: no NVIDIA driver?"
  failures=$((failures + 1))
fi
if command -v nvcc >/dev/null 2>&1; then
  step nvcc-version 30 nvcc --version
else
  skip nvcc-version "no nvcc here (not needed: the kernels are embedded as PTX)"
fi
step info 60 "$bundle/tiedae" info
step demo-cuda 60 "$bundle/tiedae" demo --device cuda

# --- the test executables ------------------------------------------------------------------------------------
# The PTX test assembles for sm_61, which CUDA 13's ptxas no longer knows: it belongs to the build machine
# (CI runs it with the nvcc 11.8 that wrote the PTX); here the driver's JIT assembles the PTX for this GPU.
ptx_skip=(--skip ptx_assembles_for_sm61_and_sm90)
skip ptx_assembles_for_sm61_and_sm90 "a build-machine test (CI runs it with nvcc 11.8; CUDA 13 has no sm_61)"
for exe in "$bundle"/tests/*; do
  [ -f "$exe" ] && [ -x "$exe" ] || continue
  name="$(basename "$exe")"
  if [ "$name" = kernels_on_cpu ]; then
    skip "test-$name" "CPU-only (the kernels compiled for the CPU): CI runs it; GPU time is better spent"
    continue
  fi
  if [ "$name" = emulated_cuda ]; then
    skip "test-$name" "the emulated driver's own tests: they run where there is no GPU (CI)"
    continue
  fi
  step "test-$name" 150 "$exe" --test-threads=1 --nocapture ${ptx_skip[@]+"${ptx_skip[@]}"}
done

# --- CPU vs GPU ----------------------------------------------------------------------------------------------
compare_args=(train --data data/digits.csv --ignore-columns digit --layers 32,8 --epochs 3 --seed 7)
step train-cpu 120 "$bundle/tiedae" "${compare_args[@]}" --device cpu --out "$logdir/m-cpu.safetensors"
step train-cuda 120 "$bundle/tiedae" "${compare_args[@]}" --device cuda --out "$logdir/m-cuda.safetensors"
step train-cuda-graphs 120 "$bundle/tiedae" "${compare_args[@]}" --device cuda --cuda-graphs \
  --out "$logdir/m-cuda-graphs.safetensors"
step eval-cpu-model-on-cpu 60 "$bundle/tiedae" eval --json --model "$logdir/m-cpu.safetensors" \
  --data data/digits.csv --device cpu
step eval-cuda-model-on-cuda 60 "$bundle/tiedae" eval --json --model "$logdir/m-cuda.safetensors" \
  --data data/digits.csv --device cuda
step eval-cuda-model-on-cpu 60 "$bundle/tiedae" eval --json --model "$logdir/m-cuda.safetensors" \
  --data data/digits.csv --device cpu
step eval-cuda-graphs-model-on-cuda 60 "$bundle/tiedae" eval --json \
  --model "$logdir/m-cuda-graphs.safetensors" --data data/digits.csv --device cuda

# The "mse" of an eval log's JSON line.
mse_of() {
  grep -o '"mse":[^,}]*' "$logdir/$1.log" 2>/dev/null | tail -n 1 | cut -d: -f2
}
# compare NAME A B RTOL: |a - b| <= rtol·max(|a|, |b|)
compare() {
  local name="$1" a="$2" b="$3" rtol="$4"
  if [ -z "$a" ] || [ -z "$b" ]; then
    note "$name" FAIL 0 "no mse to compare (see the eval logs)"
    failures=$((failures + 1))
    return
  fi
  if awk -v a="$a" -v b="$b" -v r="$rtol" 'BEGIN {
        d = a - b; if (d < 0) d = -d; m = (a < 0 ? -a : a); mb = (b < 0 ? -b : b); if (mb > m) m = mb;
        exit !(d <= r * m) }'; then
    note "$name" PASS 0 "mse $a vs $b (rtol $rtol)"
  else
    note "$name" FAIL 0 "mse $a vs $b differ by more than rtol $rtol"
    failures=$((failures + 1))
  fi
}
# The same trained model evaluated by both backends: only forward-pass rounding differs.
compare "compare-forward-cpu-vs-cuda" "$(mse_of eval-cuda-model-on-cuda)" "$(mse_of eval-cuda-model-on-cpu)" 1e-4
# Training with the same seed on both: float rounding drifts a little over 3 epochs, no more.
compare "compare-training-cpu-vs-cuda" "$(mse_of eval-cpu-model-on-cpu)" "$(mse_of eval-cuda-model-on-cuda)" 1e-2
# Replayed graphs run the same kernels on the same data in the same order: the same bits, so the same mse.
compare "compare-graphs-vs-launches" "$(mse_of eval-cuda-graphs-model-on-cuda)" "$(mse_of eval-cuda-model-on-cuda)" 0
if [ -f "$logdir/m-cuda.safetensors" ] && [ -f "$logdir/m-cuda-graphs.safetensors" ]; then
  # The weights themselves (the files also hold the device's name and timings, so compare the tensors' bytes).
  step compare-graphs-weights 60 python3 -c '
import sys, json, struct
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in head.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
bad = [k for k in a if a[k] != b.get(k)]
print("tensors:", sorted(a), "differ:", bad)
sys.exit(1 if bad or a.keys() != b.keys() else 0)' "$logdir/m-cuda.safetensors" "$logdir/m-cuda-graphs.safetensors"
fi

# --- benchmarks -----------------------------------------------------------------------------------------------
# tiedae on every device (CPU and GPU, the same run), our GEMM against cuBLAS, PyTorch on the same GPU; then
# the data set kept on the host, and the first GPU kernels (the before of the GEMM work).
step bench-tiedae 180 "$bundle/tiedae" bench --json --device all
grep '^{' "$logdir/bench-tiedae.log" >"$logdir/bench-tiedae.jsonl" 2>/dev/null || true
# `--device all` is every device tiedae finds: without a cuda row the run measured the CPU only.
if grep -q '"device":"cuda' "$logdir/bench-tiedae.jsonl" 2>/dev/null; then
  note bench-tiedae-has-cuda PASS 0 "cuda rows in bench-tiedae.jsonl"
else
  note bench-tiedae-has-cuda FAIL 0 "no cuda row in bench-tiedae.jsonl: tiedae saw no GPU"
  failures=$((failures + 1))
fi
# A cuda-graphs row whose recordings failed ran kernel by kernel: its figure would not be the graphs'.
step bench-tiedae-graphs-replayed 30 python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if r.get("graph_failures")]
for r in bad:
    print(r.get("workload"), r.get("device"), r["graph_failures"])
print(len(rows), "rows,", len(bad), "with graph failures")
sys.exit(1 if bad or not rows else 0)' "$logdir/bench-tiedae.jsonl"
if [ -x "$bundle/benches/gpu_gemm" ]; then
  step bench-gemm-vs-cublas 240 env LD_LIBRARY_PATH="${cublas_path:+$cublas_path:}${LD_LIBRARY_PATH:-}" \
    "$bundle/benches/gpu_gemm" --bench --warm-up-time 0.3 --measurement-time 0.7
else
  note bench-gemm-vs-cublas FAIL 0 "no benches/gpu_gemm in $bundle"
  failures=$((failures + 1))
fi
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  step bench-torch 180 python3 bench/torch_reference.py --device cuda
  grep '^{' "$logdir/bench-torch.log" >"$logdir/bench-torch.jsonl" 2>/dev/null || true
else
  skip bench-torch "no PyTorch with CUDA here"
fi
# A data set kept on the host (--data-on host): each batch copied up on a second stream while the step before
# it runs; against the bench-tiedae rows above, the cost of the copies that do not hide.
step bench-tiedae-data-on-host 120 "$bundle/tiedae" bench --json --device cuda --data-on host
grep '^{' "$logdir/bench-tiedae-data-on-host.log" >"$logdir/bench-tiedae-data-on-host.jsonl" 2>/dev/null || true
# Before/after of the GPU GEMM work: the 64×64 kernel alone, bias and activation unfused.
step bench-tiedae-before 120 env TIEDAE_CUDA_GEMM=64 TIEDAE_CUDA_FUSE=0 "$bundle/tiedae" bench --json --device cuda
grep '^{' "$logdir/bench-tiedae-before.log" >"$logdir/bench-tiedae-before.jsonl" 2>/dev/null || true

# --- compute-sanitizer ---------------------------------------------------------------------------------------
train_args=(train --data data/digits.csv --ignore-columns digit --layers 32,8 --epochs 1 --device cuda)
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck synccheck initcheck; do
    step "sanitizer-$tool-train" 120 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$bundle/tiedae" "${train_args[@]}" --out "$logdir/sanitizer-$tool.safetensors"
  done
  # The same run with its steps recorded as CUDA graphs and replayed (--cuda-graphs; 3 epochs, so that most
  # steps are replays).
  step sanitizer-memcheck-train-graphs 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$bundle/tiedae" train --data data/digits.csv --ignore-columns digit --layers 32,8 --epochs 3 --device cuda --cuda-graphs \
    --out "$logdir/sanitizer-memcheck-graphs.safetensors"
else
  note compute-sanitizer FAIL 0 "compute-sanitizer not found (it comes with the CUDA toolkit)"
  failures=$((failures + 1))
fi

# --- compute-sanitizer on every kernel test (slow: last) -----------------------------------------------------
if command -v compute-sanitizer >/dev/null 2>&1 && [ -x "$bundle/tests/gpu_kernels" ]; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool-gpu_kernels" 420 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$bundle/tests/gpu_kernels" --test-threads=1 --skip ptx_assembles_for_sm61_and_sm90
  done
else
  note sanitizer-gpu_kernels FAIL 0 "no compute-sanitizer, or no gpu_kernels test executable in $bundle/tests"
  failures=$((failures + 1))
fi

echo | tee -a "$summary"
pack
if [ "$failures" -eq 0 ]; then
  echo "gpu-check: every step passed" | tee -a "$summary"
  pack
  exit 0
fi
echo "gpu-check: $failures step(s) FAILED (see $summary)" | tee -a "$summary"
pack
exit 1
