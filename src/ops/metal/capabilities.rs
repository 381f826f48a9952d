//! What trellis2 needs from an Apple GPU, and the options its kernels are compiled with, decided
//! from what a device reports (docs/METAL.md, "Device setup"). Plain Rust, so the refusals and
//! the language-version choice are unit-tested without a Mac; `setup` (with the `metal` feature)
//! fills a [`GpuReport`] in from Metal and acts on the decision.

use std::fmt;

/// What a Metal device and the OS report, as far as trellis2 cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuReport {
    /// `MTLDevice.name`, e.g. "Apple M1 Pro".
    pub name: String,
    /// `MTLDevice.architecture.name`, e.g. "applegpu_g13s" ("unknown" where Metal has none).
    pub architecture: String,
    /// The highest `MTLGPUFamilyAppleN` the device supports (None: not an Apple GPU family).
    pub apple_family: Option<u32>,
    /// Whether the device supports `MTLGPUFamilyMetal3`.
    pub metal3: bool,
    /// macOS version (major, minor, patch).
    pub os: (u32, u32, u32),
}

/// The Apple GPU family the kernels need: `simdgroup_matrix` (the conv and attention tiles) and
/// 32-wide SIMD-groups exist from Apple7 (M1, A14) on.
pub const MIN_APPLE_FAMILY: u32 = 7;

/// The SIMD-group width the norm and reduction kernels assume.
pub const SIMD_WIDTH: u32 = 32;

/// The Metal Shading Language version the kernels are compiled as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MslVersion {
    /// macOS 13: no `bfloat`, so the bf16 instantiations are not compiled.
    V3_0,
    /// macOS 14 and later: `bfloat` (`__HAVE_BFLOAT__`). Pinned even where a newer version
    /// exists, so a new OS does not change what the kernels compile to.
    V3_1,
}

impl fmt::Display for MslVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MslVersion::V3_0 => "3.0",
            MslVersion::V3_1 => "3.1",
        })
    }
}

/// How the libraries are compiled on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompilePlan {
    pub msl: MslVersion,
    /// Whether bf16 kernels exist; where not, the roles that run in bf16 run in f16.
    pub bf16: bool,
    /// Fast math on, stated explicitly (it is Metal's default): the kernels are written for it
    /// (no infinities: the softmax starts its running max at -FLT_MAX and masks by select) and
    /// the emulator's fast-math build checks their parity under it. candle compiles its own
    /// kernels the same way.
    pub fast_math: bool,
}

/// Why a device cannot run trellis2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub device: String,
    pub lacks: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metal: {} is not supported: {} (trellis2 needs an Apple{MIN_APPLE_FAMILY}-family \
             GPU: M1 or later, on macOS 13 or later)",
            self.device, self.lacks
        )
    }
}

impl std::error::Error for Refusal {}

impl GpuReport {
    /// The compile options for this device, or why it cannot run the kernels. The SIMD width is
    /// checked separately ([`check_simd_width`]): Metal reports it per compiled pipeline.
    pub fn plan(&self) -> Result<CompilePlan, Refusal> {
        let refuse = |lacks: String| Refusal {
            device: self.name.clone(),
            lacks,
        };
        match self.apple_family {
            Some(f) if f >= MIN_APPLE_FAMILY => {}
            Some(f) => {
                return Err(refuse(format!(
                    "it is an Apple{f}-family GPU, without the simdgroup_matrix tiles of \
                     Apple{MIN_APPLE_FAMILY}"
                )))
            }
            None => {
                return Err(refuse(
                    "it is not an Apple-family GPU (no simdgroup_matrix tiles, SIMD width not 32)"
                        .into(),
                ))
            }
        }
        if self.os.0 < 13 {
            return Err(refuse(format!(
                "macOS {} has no Metal Shading Language 3.0 (macOS 13 has)",
                self.os_string()
            )));
        }
        if !self.metal3 {
            return Err(refuse("it does not support the Metal 3 GPU family".into()));
        }
        let msl = if self.os.0 >= 14 {
            MslVersion::V3_1
        } else {
            MslVersion::V3_0
        };
        Ok(CompilePlan {
            msl,
            bf16: msl >= MslVersion::V3_1,
            fast_math: true,
        })
    }

    pub fn os_string(&self) -> String {
        let (a, b, c) = self.os;
        if c == 0 {
            format!("{a}.{b}")
        } else {
            format!("{a}.{b}.{c}")
        }
    }

    /// The line `trellis2 selftest` prints at the top (what a bug report needs).
    pub fn describe(&self, plan: Option<&CompilePlan>, simd_width: Option<u32>) -> String {
        let family = match self.apple_family {
            Some(f) => format!("Apple{f}"),
            None => "no Apple family".into(),
        };
        let mut s = format!(
            "{} ({}), GPU family {family}{}, macOS {}",
            self.name,
            self.architecture,
            if self.metal3 { " + Metal3" } else { "" },
            self.os_string()
        );
        if let Some(p) = plan {
            s += &format!(
                ", MSL {}, fast math {}, bf16 {}",
                p.msl,
                if p.fast_math { "on" } else { "off" },
                if p.bf16 {
                    "yes"
                } else {
                    "no (bf16 roles run in f16)"
                }
            );
        }
        if let Some(w) = simd_width {
            s += &format!(", SIMD width {w}");
        }
        s
    }

    /// The note a run prints once where bf16 roles fall back to f16.
    pub fn bf16_fallback_note(&self) -> String {
        format!(
            "metal: {} on macOS {} has no bfloat (Metal Shading Language 3.1 needs macOS 14): \
             the models that run in bf16 run in f16",
            self.name,
            self.os_string()
        )
    }
}

/// Refuses a device whose SIMD-groups are not [`SIMD_WIDTH`] wide (the norm kernels' shuffles
/// and reductions assume 32 lanes).
pub fn check_simd_width(device: &str, width: u32) -> Result<(), Refusal> {
    if width == SIMD_WIDTH {
        Ok(())
    } else {
        Err(Refusal {
            device: device.to_string(),
            lacks: format!("its SIMD-groups are {width} wide; the kernels assume {SIMD_WIDTH}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(family: Option<u32>, metal3: bool, os: (u32, u32, u32)) -> GpuReport {
        GpuReport {
            name: "Apple M1".into(),
            architecture: "applegpu_g13g".into(),
            apple_family: family,
            metal3,
            os,
        }
    }

    #[test]
    fn apple7_on_macos_14_compiles_msl_3_1_with_bf16() {
        let plan = report(Some(7), true, (14, 5, 0)).plan().unwrap();
        assert_eq!(
            plan,
            CompilePlan {
                msl: MslVersion::V3_1,
                bf16: true,
                fast_math: true
            }
        );
        // A newer OS keeps the pinned version.
        assert_eq!(report(Some(9), true, (26, 1, 0)).plan().unwrap(), plan);
    }

    #[test]
    fn macos_13_compiles_msl_3_0_without_bf16() {
        let r = report(Some(8), true, (13, 6, 1));
        let plan = r.plan().unwrap();
        assert_eq!((plan.msl, plan.bf16), (MslVersion::V3_0, false));
        assert!(r.bf16_fallback_note().contains("macOS 13.6.1"));
        assert!(r
            .describe(Some(&plan), Some(32))
            .ends_with("MSL 3.0, fast math on, bf16 no (bf16 roles run in f16), SIMD width 32"));
    }

    #[test]
    fn refusals_name_the_device_and_what_it_lacks() {
        let e = report(Some(6), true, (14, 0, 0)).plan().unwrap_err();
        assert_eq!(
            e.to_string(),
            "metal: Apple M1 is not supported: it is an Apple6-family GPU, without the \
             simdgroup_matrix tiles of Apple7 (trellis2 needs an Apple7-family GPU: M1 or later, \
             on macOS 13 or later)"
        );
        let paravirtual = GpuReport {
            name: "Apple Paravirtual device".into(),
            ..report(None, false, (14, 6, 0))
        };
        let e = paravirtual.plan().unwrap_err().to_string();
        assert!(
            e.starts_with("metal: Apple Paravirtual device is not supported: it is not an Apple"),
            "{e}"
        );
        let e = report(Some(7), true, (12, 7, 0)).plan().unwrap_err();
        assert!(e.lacks.contains("macOS 12.7"), "{e}");
        let e = report(Some(7), false, (13, 0, 0)).plan().unwrap_err();
        assert!(e.lacks.contains("Metal 3"), "{e}");
        assert!(check_simd_width("Apple M1", 32).is_ok());
        let e = check_simd_width("AMD Radeon Pro 5500M", 64).unwrap_err();
        assert!(e.to_string().contains("SIMD-groups are 64 wide"), "{e}");
    }
}
