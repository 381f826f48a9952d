//! A normal generator that reproduces PyTorch's CPU `torch.manual_seed(s); torch.randn(shape)`
//! float32 streams bit for bit, so `--seed N` gives the same noise as the reference pipeline.
//!
//! What PyTorch does (ATen, x86-64 with AVX2, which is what the reference streams in
//! `tests/fixtures/rng` were drawn on):
//! * `manual_seed(s)` seeds a standard MT19937 with the low 32 bits of `s` and clears the
//!   cached Box–Muller sample.
//! * A float32 tensor with at least 16 elements takes the *vectorised fill* path: first one
//!   24-bit uniform per element (`(u32 & 0xFF_FFFF) · 2⁻²⁴`), then Box–Muller in place over
//!   blocks of 16, pairing element `j` (radius) with `j + 8` (angle). When the size is not a
//!   multiple of 16 the last 16 elements are **redrawn** from fresh uniforms and transformed
//!   again, overlapping the previous block.
//! * That Box–Muller runs through the Cephes-style `log`/`sincos` polynomials of ATen's
//!   `avx_mathfun.h`, not libm, and the shipped build contracts every multiply that feeds an add
//!   into one fused multiply-add. Both change the last bits, so both are reproduced below.
//! * Fewer than 16 elements take the scalar path: `normal_distribution<double>` with 53-bit
//!   uniforms from two 32-bit draws, `r = sqrt(-2·log1p(-u2))`, `θ = 2π·u1`, returning
//!   `r·cos θ` and caching `r·sin θ` for the next scalar draw.

const MT_N: usize = 624;
const MT_M: usize = 397;

/// PyTorch's CPU generator state: MT19937 plus the cached second Box–Muller sample of the
/// scalar path.
#[derive(Clone)]
pub struct TorchRng {
    state: [u32; MT_N],
    index: usize,
    next_double_normal: Option<f64>,
}

impl TorchRng {
    /// `torch.manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for i in 1..MT_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            state,
            index: MT_N,
            next_double_normal: None,
        }
    }

    fn twist(&mut self) {
        for i in 0..MT_N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % MT_N] & 0x7fff_ffff);
            let mut v = y >> 1;
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ v;
        }
        self.index = 0;
    }

    /// One raw 32-bit draw (`generator->random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random64()`: the first 32-bit draw is the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `normal_distribution<double>(0, 1)` with the generator's one-sample cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n)` (any shape with `n` elements, contiguous float32), continuing the
    /// stream of this generator.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

/// Box–Muller over 16 uniforms in place, pairing `j` and `j + 8`, as ATen's AVX2 fill does.
fn box_muller_16(block: &mut [f32]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: computed in double, rounded once to float.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0f32 * cephes_log(u1)).sqrt();
        let (sin, cos) = cephes_sincos(two_pi * u2);
        // `fmadd(n, std = 1, mean = 0)` is exact, so a plain product is the same value.
        block[j] = radius * cos;
        block[j + 8] = radius * sin;
    }
}

// The constants are the decimal strings of avx_mathfun.h, so they round to the same floats.
/// One lane of `avx_mathfun.h`'s `log256_ps`, with the fused multiply-adds of the shipped build.
#[allow(clippy::excessive_precision)]
fn cephes_log(x: f32) -> f32 {
    const MIN_NORM_POS: u32 = 0x0080_0000;
    // The decimal of avx_mathfun.h; it rounds to the same float as FRAC_1_SQRT_2.
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let x = x.max(f32::from_bits(MIN_NORM_POS));
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Mantissa in [0.5, 1).
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < SQRT_HALF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    if below {
        e -= 1.0;
    }
    m += tmp;

    let z = m * m;
    let mut y = 7.0376836292E-2f32;
    for c in [
        -1.1514610310E-1f32,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ] {
        y = y.mul_add(m, c);
    }
    y *= m;
    y = y.mul_add(z, e * -2.12194440e-4);
    y = z.mul_add(-0.5, y);
    let r = m + y;
    e.mul_add(0.693359375, r)
}

/// One lane of `avx_mathfun.h`'s `sincos256_ps`, with the fused multiply-adds of the shipped
/// build. Returns `(sin, cos)`.
#[allow(clippy::excessive_precision)]
fn cephes_sincos(theta: f32) -> (f32, f32) {
    const FOUR_OVER_PI: f32 = 1.27323954473516;
    let mut sign_sin = theta.to_bits() & 0x8000_0000;
    let x = f32::from_bits(theta.to_bits() & 0x7fff_ffff);

    // Octant index, rounded up to even (`cvttps` truncates).
    let mut j = (x * FOUR_OVER_PI) as i32;
    j = (j + 1) & !1;
    let yq = j as f32;
    let swap_sign = ((j & 4) as u32) << 29;
    let use_sine_poly = (j & 2) == 0;
    sign_sin ^= swap_sign;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;

    // Extended-precision range reduction x − yq·π/4 in three parts.
    let mut x = yq.mul_add(-0.785_156_25, x);
    x = yq.mul_add(-2.4187564849853515625e-4, x);
    x = yq.mul_add(-3.77489497744594108e-8, x);

    let z = x * x;
    let mut yc = 2.443315711809948e-5f32.mul_add(z, -1.388731625493765e-3);
    yc = yc.mul_add(z, 4.166664568298827e-2);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;

    let mut ys = (-1.9515295891e-4f32).mul_add(z, 8.3321608736e-3);
    ys = ys.mul_add(z, -1.6666654611e-1);
    ys *= z;
    ys = ys.mul_add(x, x);

    let (sin, cos) = if use_sine_poly { (ys, yc) } else { (yc, ys) };
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// `torch.manual_seed(seed)` then one `torch.randn` per shape, in order.
pub fn randn_sequence(seed: u64, shapes: &[Vec<usize>]) -> Vec<Vec<f32>> {
    let mut rng = TorchRng::new(seed);
    shapes
        .iter()
        .map(|shape| rng.randn(shape.iter().product()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The 10000th output of std::mt19937 seeded with 5489 is 4123659995 (C++ standard).
        let mut rng = TorchRng::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn cephes_functions_are_close_to_libm() {
        for i in 1..1000 {
            let x = i as f32 / 1000.0;
            assert!((cephes_log(x) - x.ln()).abs() < 1e-6, "log({x})");
            let t = x * 6.0;
            let (s, c) = cephes_sincos(t);
            assert!(
                (s - t.sin()).abs() < 1e-6 && (c - t.cos()).abs() < 1e-6,
                "sincos({t})"
            );
        }
    }
}
