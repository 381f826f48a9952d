#!/usr/bin/env bash
# Runs the GPU measurements packed by benches/remote/pack.sh, on the GPU machine, from the root
# of a copy of the repository (the binaries read tests/fixtures and examples there).
#
#   PACK/run.sh [--out DIR] [--model DIR] PLAN...
#
# PLAN, in the order given (each one's output goes to DIR/PLAN.md, a log of all to DIR/run.log):
#   gpu        the card, driver, CPU, memory and disk
#   tests      the CUDA test binaries (cuda_kernels, cuda_models)
#   e2e-512    the end-to-end table at 512 (benches/README.md, "End to end"), --texture none
#   e2e-1024   the same at 1024-cascade
#   cold       e2e at 512 with the page cache and kernel cache emptied, three cold runs
#   prefetch   the weight read-ahead by reader count (1, 4, 8, 16) from an emptied page cache
#   overlap    the multi-GPU scheduler on one card (--device cuda:0,cuda:0), batch of 8 at 512
#   stages     the stage bench;  kernels  the kernel bench (--quick)
# The e2e plans write the full-size random model (≈16 GB, about two minutes) into --model
# (default /tmp/trellis2-e2e-model) once and reuse it. DIR defaults to $OUT, else ./remote-out.
set -uo pipefail
pack="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$PWD/remote-out}"
model=/tmp/trellis2-e2e-model
plans=()
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    *) plans+=("$1"); shift ;;
    esac
done
[ ${#plans[@]} -gt 0 ] || { sed -n 2,20p "$0" >&2; exit 2; }
mkdir -p "$out"
exec > >(tee -a "$out/run.log") 2>&1
# The binaries read the repository at the path they were built in.
built="$(cat "$pack/manifest_dir")"
if [ "$(cd "$built" 2>/dev/null && pwd -P)" != "$(pwd -P)" ]; then
    if [ -e "$built" ]; then
        echo "run.sh: $built exists and is not this repository; the binaries would read it" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
fi
bin=/tmp/trellis2-remote-bin
mkdir -p "$bin"
for a in "$pack"/cuda.tar.xz "$pack"/host.tar.xz; do
    [ -f "$a" ] && xz -dc "$a" | tar -C "$bin" -xf -
done
export TRELLIS2_BIN="$bin/trellis2"
start=$(date +%s)
need() { [ -x "$bin/$1" ] || { echo "not packed: $1"; return 1; }; }
e2e() { # name args...
    local name=$1
    shift
    need e2e && need trellis2 || return
    timeout 560 "$bin/e2e" --device cuda --model "$model" --extra "--texture none" "$@" >"$out/$name.md"
    echo "$name: rc $?"
    tail -n 40 "$out/$name.md"
}
for plan in "${plans[@]}"; do
    echo "== $plan (t=$(($(date +%s) - start)) s)"
    case "$plan" in
    gpu)
        nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$out/gpu.md"
        { lscpu | grep -E 'Model name|^CPU\(s\)'; free -g | head -2; df -h /tmp | tail -1; } | tee -a "$out/gpu.md" ;;
    tests)
        for t in cuda_kernels cuda_models; do
            need $t || continue
            timeout 300 "$bin/$t" 2>&1 | tail -n 15 | tee -a "$out/tests.md"
        done ;;
    e2e-512) e2e e2e-512 --pipeline 512 ;;
    e2e-1024) e2e e2e-1024 --pipeline 1024-cascade ;;
    cold) e2e cold --pipeline 512 --evict --cold-runs 3 --batch 2 ;;
    overlap) e2e overlap --pipeline 512 --device cuda:0,cuda:0 ;;
    prefetch)
        need prefetch || continue
        [ -f "$model/.complete" ] || { echo "prefetch: no model at $model (run an e2e plan first)"; continue; }
        timeout 300 "$bin/prefetch" --model "$model" --readers 1,4,8,16 | tee "$out/prefetch.md" ;;
    stages) need stages && timeout 560 "$bin/stages" --device cuda | tee "$out/stages.md" ;;
    kernels) need cuda_kernels_bench && timeout 560 "$bin/cuda_kernels_bench" --quick | tee "$out/kernels.md" ;;
    *) echo "unknown plan $plan" ;;
    esac
done
echo "== done (t=$(($(date +%s) - start)) s)"
