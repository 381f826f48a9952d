#!/usr/bin/env bash
# Builds what the GPU measurements run and packs it for a machine with a GPU but no Rust
# toolchain (the project's H100 runs: build here, measure there, bring the numbers back).
#
#   benches/remote/pack.sh DIR [PART...]
#
# PART: trellis2 (the CUDA binary), tests (cuda_kernels + cuda_models), e2e and prefetch (the
# benches that drive the binary and read the disk, built without CUDA), stages and kernels (the
# stage and kernel benches, CUDA); default: trellis2 tests e2e prefetch. DIR receives
# cuda.tar.xz (the CUDA binaries in one archive: they share their embedded kernels, so xz keeps
# one copy), host.tar.xz (the others), run.sh and manifest_dir (the repository path compiled into
# the binaries, where they read tests/fixtures and examples). On the GPU machine, in a copy of
# the repository: `DIR/run.sh PLAN...` (see run.sh). Needs the CUDA toolkit of
# kernels/cuda/install-nvcc.sh (sourced here from $CUDA_PREFIX, default ~/.local/cuda-13.0).
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,14p "$0" >&2; exit 2; }
out="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(trellis2 tests e2e prefetch)
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
# shellcheck disable=SC1091
source "${CUDA_PREFIX:-$HOME/.local/cuda-13.0}/env.sh"
cuda_target="${CUDA_TARGET_DIR:-$repo/target-cuda}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/cuda" "$stage/host"

# The executables a cargo command built, from its JSON messages.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}
take() { # kind name path
    cp "$3" "$stage/$1/$2"
    strip "$stage/$1/$2"
}
for part in "${parts[@]}"; do
    case "$part" in
    trellis2)
        CARGO_TARGET_DIR="$cuda_target" cargo build --release --features cuda --bin trellis2 \
            --message-format=json | executables >"$stage/list" ;;
    tests)
        CARGO_TARGET_DIR="$cuda_target" cargo test --release --features cuda --no-run \
            --test cuda_kernels --test cuda_models --message-format=json | executables >"$stage/list" ;;
    stages | kernels)
        bench=$([ "$part" = stages ] && echo stages || echo cuda_kernels)
        CARGO_TARGET_DIR="$cuda_target" cargo bench --features cuda --no-run --bench "$bench" \
            --message-format=json | executables >"$stage/list" ;;
    e2e | prefetch)
        cargo bench --no-run --bench "$part" --message-format=json | executables >"$stage/list" ;;
    *) echo "pack.sh: unknown part $part" >&2; exit 2 ;;
    esac
    while read -r name path; do
        case "$part:$name" in
        trellis2:trellis2 | tests:cuda_kernels | tests:cuda_models | stages:stages) take cuda "$name" "$path" ;;
        kernels:cuda_kernels) take cuda cuda_kernels_bench "$path" ;;
        e2e:e2e | prefetch:prefetch) take host "$name" "$path" ;;
        esac
    done <"$stage/list"
done
for kind in cuda host; do
    rm -f "$out/$kind.tar.xz"
    if [ -n "$(ls "$stage/$kind")" ]; then
        tar -C "$stage/$kind" -cf - . | xz -9e --lzma2=preset=9e,dict=256MiB -T1 >"$out/$kind.tar.xz"
    fi
done
cp benches/remote/run.sh "$out/run.sh"
echo "$repo" >"$out/manifest_dir"
echo "packed $(git describe --always --dirty) into $out:"
ls -l "$out"
