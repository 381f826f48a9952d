#!/usr/bin/env bash
# Installs CUDA 13.0's nvcc, headers and runtime library from NVIDIA's Python wheels, so that
# `cargo build --features cuda` works on a machine with no GPU and no CUDA toolkit.
#
#   kernels/cuda/install-nvcc.sh [PREFIX]        # default PREFIX: $HOME/.local/cuda-13.0
#   source PREFIX/env.sh                     # then: cargo build --release --features cuda
#
# 13.0.x matches the H100 driver (580, CUDA 13.0): PTX from a newer nvcc would be rejected by
# that driver. The `-cu12` packages carry no nvcc binary; the unsuffixed 13.x ones do.
set -euo pipefail
PREFIX="${1:-$HOME/.local/cuda-13.0}"
PY="${PYTHON:-python3}"
WHEELS=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl nvidia-nvvm)
# A PREFIX that holds all five 13.0 wheels already is kept as it is (delete it to reinstall).
installed() {
    local w
    for w in "${WHEELS[@]}"; do
        compgen -G "$PREFIX/site/${w//-/_}-13.0.*.dist-info" >/dev/null || return 1
    done
}
if installed; then
    echo "CUDA 13.0 wheels already in $PREFIX/site"
else
    "$PY" -m pip install --quiet --upgrade --target "$PREFIX/site" "${WHEELS[@]/%/==13.0.*}"
fi
# The wheels install their parts under site/nvidia/cu13/{bin,include,lib,nvvm}; lay them out as
# a toolkit root (bin/, include/, lib64/, nvvm/) so nvcc, cudarc and cudaforge find them.
ROOT="$PREFIX/site/nvidia/cu13"
[ -x "$ROOT/bin/nvcc" ] || { echo "nvcc not found under $ROOT/bin" >&2; exit 1; }
ln -sfn lib "$ROOT/lib64"
# The linker wants the unversioned name.
if [ ! -e "$ROOT/lib/libcudart.so" ]; then
    ln -sfn "$(basename "$(ls "$ROOT"/lib/libcudart.so.13* | head -n1)")" "$ROOT/lib/libcudart.so"
fi
# Link-time stubs. candle links cudarc with `dynamic-linking`: the binary is linked against
# libcuda (the driver), libnvrtc, libcurand, libcublas and libcublasLt, which a machine without a
# GPU lacks (libcuda ships with the driver only). Each stub defines the functions cudarc
# declares, under the real library's soname, so the binary resolves them from the real libraries
# of the GPU machine at run time. The stubs are never put on LD_LIBRARY_PATH.
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
(cd "$REPO" && cargo fetch --quiet)
CUDARC_VER="$(grep -A1 '^name = "cudarc"' "$REPO/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VER" | head -n1)"
STUBS="$PREFIX/stubs"
mkdir -p "$STUBS"
for pair in driver:libcuda.so.1 nvrtc:libnvrtc.so.13 curand:libcurand.so.10 \
    cublas:libcublas.so.13 cublaslt:libcublasLt.so.13; do
    dir="${pair%%:*}" soname="${pair#*:}"
    grep -ho 'pub unsafe fn [A-Za-z0-9_]*' "$CUDARC/src/$dir/sys/mod.rs" | sort -u |
        awk '{print "void " $4 "(void) {}"}' > "$STUBS/$dir.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$STUBS/${soname%.so.*}.so" "$STUBS/$dir.c"
done
cat > "$PREFIX/env.sh" <<ENV
export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" CUDA_HOME="$ROOT" CUDA_TOOLKIT_ROOT_DIR="$ROOT"
export NVCC="$ROOT/bin/nvcc"
export PATH="$ROOT/bin:\$PATH"
export CPATH="$ROOT/include\${CPATH:+:\$CPATH}"
export LIBRARY_PATH="$ROOT/lib:$STUBS\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$ROOT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
ENV
# shellcheck disable=SC1091
. "$PREFIX/env.sh"
nvcc --version | tail -n2
echo "source $PREFIX/env.sh"
