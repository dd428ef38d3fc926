#!/usr/bin/env bash
# Builds what a GPU machine needs to check tiedae, without Rust or nvcc there: the release binary and every
# test executable (release profile), with the CUDA kernels embedded, stripped, in gpu-bundle/.
#
#   scripts/gpu-bundle.sh [BUNDLE_DIR]        (default: gpu-bundle/ at the repo root; git-ignored)
#
# Then, on the GPU machine, FROM THE ROOT OF A CHECKOUT OF THE SAME COMMIT:
#   scripts/gpu-check.sh gpu-bundle gpu-logs
# (with the device tool: GPU_CHECK_SECONDS=540 GPU_CHECK_OUT=$OUT scripts/gpu-check.sh gpu-bundle /tmp/gpu-logs)
# The test executables find their data through paths fixed at compile time (env!("CARGO_MANIFEST_DIR"),
# recorded in BUNDLE/MANIFEST); gpu-check.sh runs them from the repo root and, when the checkout lives
# elsewhere, links the recorded path to it if it can.
#
# Needs nvcc here (TIEDAE_REQUIRE_KERNELS=1: a build without kernels fails instead of bundling CPU-only
# binaries), and jq or python3 to read cargo's JSON messages. The bundle must stay under 64 MiB.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="${1:-$root/gpu-bundle}"
limit_mib=64
export TIEDAE_REQUIRE_KERNELS=1

# Prints "KIND NAME EXECUTABLE" for every artifact with an executable in cargo's JSON messages on stdin;
# with "tests", only test-profile artifacts, with "bins", only the others.
executables() {
  local which="$1"
  if command -v jq >/dev/null 2>&1; then
    jq -r --arg which "$which" 'select(.reason == "compiler-artifact" and .executable != null
        and (.profile.test == ($which == "tests")))
      | "\(.target.kind[0]) \(.target.name) \(.executable)"'
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
tests = sys.argv[1] == "tests"
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] == tests:
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
' "$which"
  else
    echo "gpu-bundle: need jq or python3 to read cargo's JSON output" >&2
    return 1
  fi
}

echo "gpu-bundle: building the release binary (kernels required)"
bin_lines="$(cargo build --release --bin tiedae --message-format=json-render-diagnostics | executables bins)"
echo "gpu-bundle: building the release test executables"
test_lines="$(cargo test --release --no-run --message-format=json-render-diagnostics | executables tests)"

echo "gpu-bundle: building the GPU GEMM benchmark (ours against cuBLAS)"
bench_lines="$(cargo bench --no-run --bench gpu_gemm --message-format=json-render-diagnostics | executables tests)"

rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/benches"
tiedae_bin="$(awk '$1 == "bin" && $2 == "tiedae" { print $3 }' <<<"$bin_lines" | tail -n 1)"
if [ -z "$tiedae_bin" ]; then
  echo "gpu-bundle: cargo did not report the tiedae binary" >&2
  exit 1
fi
cp "$tiedae_bin" "$bundle/tiedae"

# Integration tests keep their name; unit tests of the library and the binary become lib-NAME / bin-NAME.
count=0
while read -r kind name exe; do
  [ -n "${exe:-}" ] || continue
  case "$kind" in
    test) dest="$name" ;;
    *) dest="$kind-$name" ;;
  esac
  cp "$exe" "$bundle/tests/$dest"
  count=$((count + 1))
done <<<"$test_lines"
if [ "$count" -eq 0 ]; then
  echo "gpu-bundle: cargo reported no test executables" >&2
  exit 1
fi

gemm_bench="$(awk '$2 == "gpu_gemm" { print $3 }' <<<"$bench_lines" | tail -n 1)"
if [ -z "$gemm_bench" ]; then
  echo "gpu-bundle: cargo did not report the gpu_gemm bench executable" >&2
  exit 1
fi
cp "$gemm_bench" "$bundle/benches/gpu_gemm"

strip "$bundle/tiedae" "$bundle"/tests/* "$bundle/benches/gpu_gemm" || echo "gpu-bundle: strip failed; bundling unstripped"

# The data beside the binaries, in the repo's layout (gpu-check.sh itself reads them from the repo root).
mkdir -p "$bundle/data"
cp -r data/. "$bundle/data/"
if [ -d tests/data ]; then
  mkdir -p "$bundle/tests/data"
  cp -r tests/data/. "$bundle/tests/data/"
fi

# What the binaries were built from, so that gpu-check.sh can tell a bundle that is older than the checkout
# it runs in (the device gets a copy of the working tree without .git): the source files' list and one hash
# over their contents.
git ls-files src kernels tests benches bench/workloads.json build.rs Cargo.toml Cargo.lock >"$bundle/SOURCES"
sources_hash="$(while read -r f; do sha256sum "$f"; done <"$bundle/SOURCES" | sha256sum | cut -d' ' -f1)"

{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "manifest_dir $root"
  echo "sources $sources_hash"
  "$bundle/tiedae" info 2>/dev/null | grep -i "kernels" || true
  echo "tests:"
  find "$bundle/tests" -maxdepth 1 -type f -printf '  %f\n' | sort
} >"$bundle/MANIFEST"

size_kib="$(du -sk "$bundle" | cut -f1)"
size_mib=$(((size_kib + 1023) / 1024))
echo "gpu-bundle: $bundle: tiedae + $count test executables, ${size_mib} MiB (limit ${limit_mib} MiB)"
cat "$bundle/MANIFEST"
if [ "$size_mib" -ge "$limit_mib" ]; then
  echo "gpu-bundle: the bundle is ${size_mib} MiB, over the ${limit_mib} MiB limit" >&2
  exit 1
fi
