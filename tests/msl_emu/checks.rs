//! The emulator's own checks. What Apple's compiler or Metal rejects must fail here too: small
//! kernels written by these tests go through the same path as the real ones (preprocess,
//! translate, compile, run), once as written and once with the one mistake. Then the limits,
//! the binding and uniformity checks, the fast-math model, and the bank-conflict counter on
//! synthetic kernels with known answers.

use super::{Config, EmuDispatch, Emulator, KernelBanks, Slot, Ways};

/// Builds `src` as `name` in `config`, panicking with the compiler's messages.
fn accepts(name: &str, src: &str, config: Config) -> Emulator {
    Emulator::try_build(name, src, config).unwrap_or_else(|e| panic!("{name} should build: {e}"))
}

/// `src` must fail to build in `config`, with every one of `needles` in the messages; prints
/// the first error line.
fn rejects(name: &str, src: &str, config: Config, needles: &[&str]) {
    match Emulator::try_build(name, src, config) {
        Ok(_) => panic!("{name}: built, but Metal rejects it"),
        Err(e) => {
            for needle in needles {
                assert!(e.contains(needle), "{name}: no `{needle}` in:\n{e}");
            }
            let first = e.lines().find(|l| l.contains("error")).unwrap_or(&e);
            println!("{name}: rejected: {}", first.trim());
        }
    }
}

/// `src` with `from` replaced by `to` (which must occur).
fn with(src: &str, from: &str, to: &str) -> String {
    assert!(src.contains(from), "`{from}` not in the test kernel");
    src.replace(from, to)
}

fn dispatch(kernel: &str, threads: u32, slots: Vec<(u32, Slot)>, tg: Vec<u64>) -> EmuDispatch {
    EmuDispatch {
        kernel: kernel.into(),
        threadgroups: [1, 1, 1],
        threads: [threads, 1, 1],
        slots,
        threadgroup_memory: tg,
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------- compile-time

/// A kernel that passes threadgroup memory to a helper taking device memory, and one that
/// stores through a helper taking a thread pointer: the qualifiers are part of the type.
const SPACES: &str = r#"
#include <metal_stdlib>
using namespace metal;
inline void put(device float* p, uint i, float v) { p[i] = v; }
inline float get(threadgroup const float* p, uint i) { return p[i]; }
template <typename T>
kernel void spaces(device T* out [[buffer(0)]], threadgroup T* tile [[threadgroup(0)]],
                   uint tid [[thread_index_in_threadgroup]]) {
    tile[tid] = T(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    thread float local = get(tile, 31 - tid);
    thread float* where = &local;
    put(out, tid, *where);
}
template [[host_name("spaces")]] kernel void spaces<float>(device float* out [[buffer(0)]],
    threadgroup float* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]]);
"#;

#[test]
fn address_space_missing_or_wrong_qualifiers_fail_to_build() {
    let emu = accepts("as_ok", SPACES, Config::MSL31);
    let out = emu
        .run(
            &[vec![0; 128]],
            &[dispatch(
                "spaces",
                32,
                vec![(0, Slot::Buffer(0))],
                vec![128],
            )],
        )
        .unwrap();
    let want: Vec<f32> = (0..32).map(|t| (31 - t) as f32).collect();
    assert_eq!(floats(&out[0]), want);

    // Missing: a kernel pointer parameter without a qualifier, and a helper's pointer without
    // one (Metal: "pointer type must have explicit address space").
    let missing_param = with(SPACES, "(device T* out", "(T* out");
    let missing_param = with(&missing_param, "(device float* out", "(float* out");
    rejects(
        "as_missing_param",
        &missing_param,
        Config::MSL31,
        &["address space qualifier missing or wrong"],
    );
    let missing_helper = with(SPACES, "put(device float* p", "put(float* p");
    rejects(
        "as_missing_helper",
        &missing_helper,
        Config::MSL31,
        &["put"],
    );
    // Wrong: threadgroup memory where device memory is expected, a buffer bound as threadgroup
    // memory, and a store through a constant pointer. The message names both spaces, whatever
    // the compiler's wording (GCC: "could not convert", clang on a Mac: "no known conversion").
    let wrong_call = with(SPACES, "put(out, tid", "put(tile, tid");
    rejects(
        "as_wrong_call",
        &wrong_call,
        Config::MSL31,
        &["threadgroup_space", "device_space"],
    );
    let wrong_param = with(SPACES, "(device T* out", "(threadgroup T* out");
    let wrong_param = with(
        &wrong_param,
        "(device float* out",
        "(threadgroup float* out",
    );
    rejects(
        "as_wrong_param",
        &wrong_param,
        Config::MSL31,
        &["address space qualifier missing or wrong"],
    );
    let wrong_const = with(SPACES, "put(device float* p", "put(constant float* p");
    rejects("as_wrong_const", &wrong_const, Config::MSL31, &["put"]);
    // A threadgroup variable in the kernel body is refused by the translator.
    let tg_var = with(SPACES, "thread float local", "threadgroup float local");
    rejects("as_tg_var", &tg_var, Config::MSL31, &["threadgroup"]);
}

const MATH: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void math(device T* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    out[tid] = exp(float(tid) / 32.0f);
}
template [[host_name("math")]] kernel void math<float>(device float* out [[buffer(0)]],
    uint tid [[thread_index_in_threadgroup]]);
"#;

#[test]
fn std_and_libm_names_are_not_in_scope() {
    accepts("std_ok", MATH, Config::MSL31);
    let std_call = with(MATH, "exp(float(tid)", "std::exp(float(tid)");
    rejects("std_call", &std_call, Config::MSL31, &["std"]);
    let libm = with(MATH, "exp(float(tid)", "expf(float(tid)");
    rejects("std_libm", &libm, Config::MSL31, &["expf"]);
    let header = with(
        MATH,
        "#include <metal_stdlib>",
        "#include <metal_stdlib>\n#include <cmath>",
    );
    rejects("std_header", &header, Config::MSL31, &["cmath"]);
}

const CONVERSIONS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void conv(device T* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    const float f = float(tid) + 0.25f;
    half h = f;                 // float -> half: implicit in MSL
    bfloat b = bfloat(f);       // float -> bfloat: explicit only
    const bfloat c = bfloat(h);
    const half d = half(b);
    const float e = b;          // bfloat -> float: implicit
    out[tid] = float(h) + float(c) + float(d) + e;
}
template [[host_name("conv")]] kernel void conv<float>(device float* out [[buffer(0)]],
    uint tid [[thread_index_in_threadgroup]]);
"#;

#[test]
fn half_bfloat_implicit_conversions_fail_to_build() {
    let emu = accepts("cv_ok", CONVERSIONS, Config::MSL31);
    let out = emu
        .run(
            &[vec![0; 128]],
            &[dispatch("conv", 32, vec![(0, Slot::Buffer(0))], vec![])],
        )
        .unwrap();
    assert_eq!(floats(&out[0])[2], 4.0 * 2.25);
    let cases = [
        ("cv_half_to_bfloat", "bfloat(h)", "h"),
        ("cv_bfloat_to_half", "half(b)", "b"),
        ("cv_float_to_bfloat", "bfloat b = bfloat(f)", "bfloat b = f"),
        ("cv_int_to_bfloat", "bfloat b = bfloat(f)", "bfloat b = 1"),
        ("cv_narrowing", "half h = f;", "half h{f};"),
    ];
    for (name, from, to) in cases {
        rejects(name, &with(CONVERSIONS, from, to), Config::MSL31, &["cv_"]);
    }
}

#[test]
fn every_kernel_file_compiles_without_bfloat() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/metal");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "metal"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let src = std::fs::read_to_string(&path).unwrap();
        let msl30 = accepts(stem, &src, Config::MSL30).kernels();
        let msl31 = accepts(stem, &src, Config::MSL31).kernels();
        let without_bf16: Vec<String> = msl31
            .iter()
            .filter(|n| !n.contains("bf16"))
            .cloned()
            .collect();
        assert_eq!(msl30, without_bf16, "{stem}: MSL 3.0 instantiations");
        println!(
            "{stem}.metal: MSL 3.0 build registers {} kernels",
            msl30.len()
        );
    }
    // An unguarded bfloat instantiation is an error there.
    let src = std::fs::read_to_string(dir.join("sparse_conv.metal")).unwrap();
    let unguarded = with(&src, "#if defined(__HAVE_BFLOAT__)", "#if 1");
    rejects(
        "sparse_conv_unguarded",
        &unguarded,
        Config::MSL30,
        &["bfloat"],
    );
}

// ---------------------------------------------------------------------------- run-time

const TILE: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void tile(device T* out [[buffer(0)]], threadgroup T* tile [[threadgroup(0)]],
                 uint tid [[thread_index_in_threadgroup]]) {
    tile[tid] = T(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = tile[tid ^ 1];
}
template [[host_name("tile")]] kernel void tile<float>(device float* out [[buffer(0)]],
    threadgroup float* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]]);
"#;

#[test]
fn threadgroup_memory_limit_and_granularity_are_enforced() {
    let emu = accepts("tg_limits", TILE, Config::MSL31);
    let run = |tg: Vec<u64>| {
        emu.run(
            &[vec![0; 128]],
            &[dispatch("tile", 32, vec![(0, Slot::Buffer(0))], tg)],
        )
    };
    run(vec![128]).unwrap();
    run(vec![32768]).unwrap();
    let oversize = run(vec![32768 + 16]).unwrap_err();
    assert!(oversize.contains("32768-byte limit"), "{oversize}");
    let misaligned = run(vec![136]).unwrap_err();
    assert!(misaligned.contains("not a multiple of 16"), "{misaligned}");
    let unset = run(vec![]).unwrap_err();
    assert!(unset.contains("no threadgroup memory length"), "{unset}");
    let extra = run(vec![128, 16]).unwrap_err();
    assert!(extra.contains("no [[threadgroup(1)]]"), "{extra}");
    // Smaller than the threads index: caught at the first access out of bounds.
    let small = run(vec![64]).unwrap_err();
    assert!(
        small.contains("out of bounds at tg_limits.metal:"),
        "{small}"
    );
}

const ARGS: &str = r#"
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;
template <typename T>
kernel void args(constant NeighbourArgs& args [[buffer(0)]], device const T* x [[buffer(1)]],
                 device T* out [[buffer(2)]], uint tid [[thread_index_in_threadgroup]]) {
    out[tid] = x[tid] * float(args.n_voxels);
}
template [[host_name("args")]] kernel void args<float>(constant NeighbourArgs& args [[buffer(0)]],
    device const float* x [[buffer(1)]], device float* out [[buffer(2)]],
    uint tid [[thread_index_in_threadgroup]]);
"#;

#[test]
fn binding_mismatches_name_the_kernel_and_binding() {
    use trellis2::ops::metal::kargs::{NeighbourArgs, RmsRopeArgs};
    let emu = accepts("bindings", ARGS, Config::MSL31);
    let conv = NeighbourArgs {
        n_voxels: 3,
        capacity_mask: 1,
        bits_x: 1,
        bits_y: 1,
        bits_z: 1,
    };
    let x: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let run = |slots: Vec<(u32, Slot)>, buffers: Vec<Vec<u8>>| {
        emu.run(&buffers, &[dispatch("args", 32, slots, vec![])])
    };
    let good = || {
        vec![
            (0, Slot::args(&conv)),
            (1, Slot::Buffer(0)),
            (2, Slot::Buffer(1)),
        ]
    };
    let out = run(good(), vec![x.clone(), vec![0; 128]]).unwrap();
    assert_eq!(floats(&out[1])[5], 15.0);

    // The same size as NeighbourArgs (20 bytes), another name.
    let other = RmsRopeArgs {
        rows: 1,
        heads: 1,
        head_dim: 2,
        normalize: 0,
        table_rows: 1,
    };
    // (what, bindings, buffers, expected message)
    type Case = (&'static str, Vec<(u32, Slot)>, Vec<Vec<u8>>, &'static str);
    let mut cases: Vec<Case> = Vec::new();
    let mut swapped = good();
    swapped[0] = (0, Slot::args(&other));
    cases.push((
        "another argument struct",
        swapped,
        vec![x.clone(), vec![0; 128]],
        "[[buffer(0)]] `constant NeighbourArgs& args`: the host binds a `RmsRopeArgs`",
    ));
    let mut short = good();
    short[0] = (0, Slot::Bytes(vec![0; 12]));
    cases.push((
        "a short argument struct",
        short,
        vec![x.clone(), vec![0; 128]],
        "[[buffer(0)]] `constant NeighbourArgs& args` is 20 bytes; the host binds 12",
    ));
    cases.push((
        "a missing buffer",
        good().into_iter().take(2).collect(),
        vec![x.clone(), vec![0; 128]],
        "[[buffer(2)]] `device float* out`: not bound by the host",
    ));
    let mut extra = good();
    extra.push((3, Slot::Buffer(1)));
    cases.push((
        "an extra buffer",
        extra,
        vec![x.clone(), vec![0; 128]],
        "the host binds buffer(3) but the kernel has no [[buffer(3)]]",
    ));
    let mut misaligned = good();
    misaligned[1] = (1, Slot::BufferAt(0, 2));
    cases.push((
        "a misaligned offset",
        misaligned,
        vec![x.clone(), vec![0; 128]],
        "[[buffer(1)]] `device const float* x`: bound at byte offset 2, not a multiple of its \
         4-byte alignment",
    ));
    cases.push((
        "a partial element",
        good(),
        vec![x.clone(), vec![0; 130]],
        "not a whole number of 4-byte elements",
    ));
    for (what, slots, buffers, needle) in cases {
        let e = run(slots, buffers).unwrap_err();
        // The message names the kernel, then the binding.
        assert!(e.starts_with("msl emulator: args: "), "{what}: {e}");
        assert!(e.contains(needle), "{what}: {e}");
        println!("{what}: {}", e.trim());
    }
}

const MATRIX: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void matrix(device T* out [[buffer(0)]], threadgroup T* tile [[threadgroup(0)]],
                   uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]) {
    for (uint i = tid; i < 128; i += 32) {
        tile[i] = T(i);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 m[2];
    simdgroup_load(m[0], tile, 8);
    simdgroup_load(m[1], tile + 64, 8);
    simdgroup_float8x8 p;
    simdgroup_multiply(p, m[1], m[0]);
    simdgroup_store(p, out, 8);
}
template [[host_name("matrix")]] kernel void matrix<float>(device float* out [[buffer(0)]],
    threadgroup float* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);
"#;

#[test]
fn non_uniform_simdgroup_matrix_arguments_abort() {
    let run = |name: &str, src: &str| {
        accepts(name, src, Config::MSL31).run(
            &[vec![0; 256]],
            &[dispatch(
                "matrix",
                32,
                vec![(0, Slot::Buffer(0))],
                vec![512],
            )],
        )
    };
    let out = run("sgm_ok", MATRIX).unwrap();
    let got = floats(&out[0]);
    // p = B A with A[r][c] = 8r + c and B[r][c] = 64 + 8r + c.
    let want = |r: usize, c: usize| {
        (0..8)
            .map(|k| ((64 + 8 * r + k) * (8 * k + c)) as f32)
            .sum::<f32>()
    };
    assert_eq!(got[8 * 3 + 5], want(3, 5));
    let cases = [
        (
            "sgm_pointer",
            "simdgroup_load(m[1], tile + 64, 8)",
            "simdgroup_load(m[1], tile + 64 + lane % 2, 8)",
            "simdgroup_load at sgm_pointer.metal:",
        ),
        (
            "sgm_stride",
            "simdgroup_load(m[1], tile + 64, 8)",
            "simdgroup_load(m[1], tile + 64, 8 + lane / 16)",
            "lane 16's arguments differ from lane 0's",
        ),
        (
            "sgm_operand",
            "simdgroup_multiply(p, m[1], m[0])",
            "simdgroup_multiply(p, m[lane % 2], m[0])",
            "simdgroup_multiply_accumulate at sgm_operand.metal:",
        ),
        (
            "sgm_divergent",
            "simdgroup_store(p, out, 8);",
            "if (lane < 16) { simdgroup_store(p, out, 8); }",
            "made by 16 of the 32 lanes",
        ),
    ];
    for (name, from, to, needle) in cases {
        let e = run(name, &with(MATRIX, from, to)).unwrap_err();
        assert!(e.contains(needle), "{name}: {e}");
        assert!(
            e.contains("simdgroup-uniform") || e.contains("whole simdgroup"),
            "{e}"
        );
    }
}

/// thread_elements(): lane l reads its pair of A (A[r][c] = 8r + c) in Apple's layout, doubles
/// it in place, and the matrix multiplied by the identity and stored shows the doubled matrix
/// (the pairs gathered back); out[64 + 2l + i] is what lane l saw.
const ELEMENTS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void elements(device T* out [[buffer(0)]], threadgroup T* tile [[threadgroup(0)]],
                     uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]) {
    for (uint i = tid; i < 64; i += 32) {
        tile[i] = T(i);
        tile[64 + i] = T(i / 8 == i % 8 ? 1.0f : 0.0f);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_matrix<T, 8, 8> a;
    simdgroup_matrix<T, 8, 8> eye;
    simdgroup_load(a, tile, 8);
    simdgroup_load(eye, tile + 64, 8);
    thread vec<T, 2>& mine = a.thread_elements();
    out[64 + 2 * lane] = mine[0];
    out[64 + 2 * lane + 1] = mine[1];
    mine[0] = mine[0] * T(2.0f);
    a.thread_elements()[1] *= T(2.0f);
    simdgroup_matrix<T, 8, 8> p;
    simdgroup_multiply(p, a, eye);
    simdgroup_store(p, out, 8);
}
template [[host_name("elements")]] kernel void elements<float>(device float* out [[buffer(0)]],
    threadgroup float* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);
"#;

/// The layout and the round trip of thread_elements(), and what Apple's compiler rejects:
/// simdgroup matrices that are not 8x8 or not of float, half or bfloat, and the pair taken as
/// another vector type.
#[test]
fn thread_elements_follow_apples_layout() {
    let emu = accepts("elements_ok", ELEMENTS, Config::MSL31);
    let out = emu
        .run(
            &[vec![0; 128 * 4]],
            &[dispatch(
                "elements",
                32,
                vec![(0, Slot::Buffer(0))],
                vec![512],
            )],
        )
        .unwrap();
    let got = floats(&out[0]);
    for lane in 0..32 {
        let q = lane / 4;
        let row = (q & 4) + (lane / 2) % 4;
        let col = (q & 2) * 2 + (lane % 2) * 2;
        for i in 0..2 {
            assert_eq!(
                got[64 + 2 * lane + i],
                (8 * row + col + i) as f32,
                "lane {lane}"
            );
        }
    }
    for (i, &v) in got[..64].iter().enumerate() {
        assert_eq!(v, 2.0 * i as f32, "element {i}");
    }
    let cases = [
        (
            "elements_4x4",
            "simdgroup_matrix<T, 8, 8> a;",
            "simdgroup_matrix<T, 4, 4> a;",
            "8x8",
        ),
        (
            "elements_int",
            "simdgroup_matrix<T, 8, 8> p;",
            "simdgroup_matrix<int, 8, 8> q; q.thread_elements()[0] = 1;\n    simdgroup_matrix<T, 8, 8> p;",
            "float, half or bfloat",
        ),
        (
            "elements_vec4",
            "thread vec<T, 2>& mine",
            "thread vec<T, 4>& mine",
            "vec<float, 4>",
        ),
    ];
    for (name, from, to, needle) in cases {
        rejects(name, &with(ELEMENTS, from, to), Config::MSL31, &[needle]);
    }
}

// ---------------------------------------------------------------------------- fast math

const TRANSCENDENTALS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void fns(device const T* x [[buffer(0)]], device T* out [[buffer(1)]],
                uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]) {
    const uint i = tg.x * 128 + tid;
    const float v = x[i];
    out[5 * i + 0] = exp(v);
    out[5 * i + 1] = exp2(v);
    out[5 * i + 2] = rsqrt(abs(v) + 1.0f);
    out[5 * i + 3] = tanh(v);
    out[5 * i + 4] = precise::tanh(v);
}
template [[host_name("fns")]] kernel void fns<float>(device const float* x [[buffer(0)]],
    device float* out [[buffer(1)]], uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);
"#;

/// The fast-math build approximates (a few ulp, and tanh overflows to NaN like Metal's) where
/// the precise build is correctly rounded.
#[test]
fn fast_math_build_approximates_transcendentals() {
    let n = 1024;
    let mut x: Vec<f32> = (0..n).map(|i| (i as f32 - 512.0) / 16.0).collect();
    x[0] = 100.0;
    let input: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let run = |config: Config| {
        let emu = accepts("fast_math_fns", TRANSCENDENTALS, config);
        let d = EmuDispatch {
            kernel: "fns".into(),
            threadgroups: [n as u32 / 128, 1, 1],
            threads: [128, 1, 1],
            slots: vec![(0, Slot::Buffer(0)), (1, Slot::Buffer(1))],
            threadgroup_memory: vec![],
        };
        let out = emu.run(&[input.clone(), vec![0; n * 20]], &[d]).unwrap();
        floats(&out[1])
    };
    let precise = run(Config::MSL31);
    let fast = run(Config {
        fast_math: true,
        ..Config::MSL31
    });
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
    let (mut differ, mut worst_exp2) = (0, 0);
    for i in 1..n {
        let v = x[i];
        assert_eq!(precise[5 * i], v.exp(), "precise exp({v})");
        assert_eq!(precise[5 * i + 1], v.exp2(), "precise exp2({v})");
        // exp(x) = exp2(x log2 e): the product's rounding grows with |x|.
        let exp_bound = 3 + (v.abs() * 2.0) as u64;
        assert!(ulps(fast[5 * i], precise[5 * i]) <= exp_bound, "exp({v})");
        worst_exp2 = worst_exp2.max(ulps(fast[5 * i + 1], precise[5 * i + 1]));
        assert!(ulps(fast[5 * i + 2], precise[5 * i + 2]) <= 1, "rsqrt({v})");
        assert_eq!(fast[5 * i + 4], precise[5 * i + 4], "precise::tanh({v})");
        differ += usize::from(fast[5 * i] != precise[5 * i]);
    }
    assert!(worst_exp2 <= 2 && worst_exp2 > 0, "exp2: {worst_exp2} ulp");
    assert!(
        differ > n / 4,
        "fast exp equals precise exp {} times",
        n - differ
    );
    // x = 100: exp(200) overflows, so the fast tanh is inf / inf.
    assert!(fast[3].is_nan() && precise[3] == 1.0 && fast[4] == 1.0);
}

/// The parity tests of tests/metal_emu.rs hold their tolerances in the fast-math build too:
/// the test binary runs itself with `MSL_EMU_FAST_MATH=1` (every test but these checks) and
/// prints the child's report lines prefixed with `[fast-math]`.
#[test]
fn parity_tests_hold_in_fast_math() {
    if Config::from_env().fast_math {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "msl_emu::", "--nocapture"])
        .env("MSL_EMU_FAST_MATH", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        println!("[fast-math] {line}");
    }
    assert!(
        out.status.success(),
        "the fast-math pass failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test result: ok"), "{stdout}");
}

// ---------------------------------------------------------------------------- bank conflicts

const BANKS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void banks(device float* out [[buffer(0)]], constant uint& stride [[buffer(1)]],
                  threadgroup T* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]],
                  uint lane [[thread_index_in_simdgroup]]) {
    tile[lane * stride] = T(float(lane)); // STRIDED
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = float(tile[0]); // BROADCAST
}
template [[host_name("banks_float")]] kernel void banks<float>(device float* out [[buffer(0)]],
    constant uint& stride [[buffer(1)]], threadgroup float* tile [[threadgroup(0)]],
    uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
template [[host_name("banks_half")]] kernel void banks<half>(device float* out [[buffer(0)]],
    constant uint& stride [[buffer(1)]], threadgroup half* tile [[threadgroup(0)]],
    uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
"#;

const MATRIX_BANKS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void tile_load(device T* out [[buffer(0)]], constant uint& stride [[buffer(1)]],
                      threadgroup T* tile [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]]) {
    for (uint i = tid; i < 8 * stride; i += 32) {
        tile[i] = T(i);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 m;
    simdgroup_load(m, tile, stride); // LOAD
    simdgroup_store(m, out, 8);
}
template [[host_name("tile_load")]] kernel void tile_load<float>(device float* out [[buffer(0)]],
    constant uint& stride [[buffer(1)]], threadgroup float* tile [[threadgroup(0)]],
    uint tid [[thread_index_in_threadgroup]]);
"#;

const WIDE_BANKS: &str = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void wide(device float* out [[buffer(0)]], threadgroup float4* quads [[threadgroup(0)]],
                 threadgroup T* narrow [[threadgroup(1)]], uint lane [[thread_index_in_simdgroup]]) {
    float4 v;
    for (uint k = 0; k < 4; ++k) {
        v[k] = float(lane + k);
    }
    quads[lane] = v; // QUADS
    narrow[2 * lane] = T(float(lane)); // NARROW
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[lane] = quads[lane ^ 1][2] + float(narrow[2 * lane]); // ELEMENT
}
template [[host_name("wide")]] kernel void wide<bfloat>(device float* out [[buffer(0)]],
    threadgroup float4* quads [[threadgroup(0)]], threadgroup bfloat* narrow [[threadgroup(1)]],
    uint lane [[thread_index_in_simdgroup]]);
"#;

/// The ways of the source line marked `marker` in `src` (as `name.metal`), from `stats`.
fn ways_at(stats: &KernelBanks, kernel: &str, name: &str, src: &str, marker: &str) -> Ways {
    let line = 1 + src.lines().position(|l| l.contains(marker)).unwrap();
    stats[kernel].sites[&format!("{name}.metal:{line}")]
}

#[test]
fn bank_conflict_counter_counts_distinct_words_per_bank() {
    let emu = accepts("bank_strides", BANKS, Config::MSL31);
    // (element type, stride in elements, ways): a word is 2 halves; the same word is a broadcast.
    let cases = [
        ("float", 1, 1),
        ("float", 2, 2),
        ("float", 4, 4),
        ("float", 32, 32),
        ("float", 33, 1),
        ("float", 0, 1),
        ("half", 1, 1),
        ("half", 2, 1),
        ("half", 4, 2),
        ("half", 64, 32),
        ("half", 66, 1),
    ];
    for (ty, stride, want) in cases {
        let kernel = format!("banks_{ty}");
        let d = EmuDispatch {
            kernel: kernel.clone(),
            threadgroups: [2, 1, 1],
            threads: [64, 1, 1],
            slots: vec![
                (0, Slot::Buffer(0)),
                (1, Slot::Bytes((stride as u32).to_le_bytes().to_vec())),
            ],
            threadgroup_memory: vec![(32 * stride.max(1) * 4) as u64],
        };
        let (_, stats) = emu.run_with_stats(&[vec![0; 256]], &[d]).unwrap();
        let strided = ways_at(&stats, &kernel, "bank_strides", BANKS, "// STRIDED");
        let broadcast = ways_at(&stats, &kernel, "bank_strides", BANKS, "// BROADCAST");
        // 2 threadgroups x 2 simdgroups, one access each.
        assert_eq!(
            strided,
            Ways {
                accesses: 4,
                sum: 4 * want,
                max: want as u32
            },
            "{ty} stride {stride}"
        );
        assert_eq!(broadcast.max, 1, "{ty} broadcast");
        assert_eq!(stats[&kernel].all.max, want as u32);
    }
    // A float4 per lane is 4 words per lane (128 words, 4 per bank); bfloat elements 2 apart
    // are one word per lane; one float of each float4 is a stride-4 access (4 ways).
    let emu = accepts("bank_wide", WIDE_BANKS, Config::MSL31);
    let d = EmuDispatch {
        kernel: "wide".into(),
        threadgroups: [1, 1, 1],
        threads: [32, 1, 1],
        slots: vec![(0, Slot::Buffer(0))],
        threadgroup_memory: vec![512, 128],
    };
    let (out, stats) = emu.run_with_stats(&[vec![0; 128]], &[d]).unwrap();
    assert_eq!(floats(&out[0])[5], (4 + 2 + 5) as f32);
    for (marker, want) in [("// QUADS", 4), ("// NARROW", 1)] {
        let w = ways_at(&stats, "wide", "bank_wide", WIDE_BANKS, marker);
        assert_eq!((w.accesses, w.max), (1, want), "{marker}");
    }
    let element = ways_at(&stats, "wide", "bank_wide", WIDE_BANKS, "// ELEMENT");
    assert_eq!((element.accesses, element.max), (2, 4));
    // A simdgroup_matrix load is one access of its 64 elements: 2 ways at best (64 words over
    // 32 banks); rows 32 floats apart share their 8 banks (8 ways).
    let emu = accepts("bank_matrix", MATRIX_BANKS, Config::MSL31);
    for (stride, want) in [(8u32, 2u32), (32, 8), (16, 4)] {
        let d = EmuDispatch {
            kernel: "tile_load".into(),
            threadgroups: [1, 1, 1],
            threads: [32, 1, 1],
            slots: vec![
                (0, Slot::Buffer(0)),
                (1, Slot::Bytes(stride.to_le_bytes().to_vec())),
            ],
            threadgroup_memory: vec![u64::from(8 * stride * 4)],
        };
        let (out, stats) = emu.run_with_stats(&[vec![0; 256]], &[d]).unwrap();
        assert_eq!(floats(&out[0])[9], (stride + 1) as f32);
        let load = ways_at(&stats, "tile_load", "bank_matrix", MATRIX_BANKS, "// LOAD");
        assert_eq!(
            (load.accesses, load.max),
            (1, want),
            "matrix stride {stride}"
        );
    }
}
