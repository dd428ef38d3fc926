#!/usr/bin/env bash
# Installs nvcc (Debian bookworm's nvidia-cuda-toolkit 11.8, the last line that still targets sm_61/Pascal)
# so build.rs can compile kernels/*.cu to PTX and the tests can run ptxas over it. Needs root and apt.
# Safe to run again: it does nothing when nvcc is already on PATH (or in /usr/lib/nvidia-cuda-toolkit).
# It also makes sure `g++` is on PATH: nvcc needs a host compiler for its preprocessing, and
# tests/kernels_on_cpu.rs compiles the kernels for the CPU with it (the toolkit's own dependency may be
# satisfied by a versioned g++-11 or clang alone).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if command -v nvcc >/dev/null 2>&1; then
  echo "install-nvcc: nvcc already present: $(command -v nvcc)"
  if ! command -v g++ >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ >/dev/null
  fi
  exit 0
fi
sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$sources" ]; then
  # The toolkit is in non-free; enable contrib and non-free on every Components: line that lacks them.
  if ! grep -q '^Components:.*non-free' "$sources"; then
    sed -i -E '/^Components:/{/non-free/!s/$/ contrib non-free/}' "$sources"
  fi
elif [ -f /etc/apt/sources.list ]; then
  sed -i -E '/^deb /{/non-free/!s/ main( |$)/ main contrib non-free\1/}' /etc/apt/sources.list
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit g++ >/dev/null
echo "install-nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
