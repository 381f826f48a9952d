//! Which kernel of a tensor-core op family runs: the Hopper wgmma kernel or the mma.sync one,
//! the same rule for the sparse conv and attention (their `cuda.rs` name the family).

use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, Result};

use crate::ops::tuning::KernelChoice;

/// Whether `dev` runs sm_90a code: a build with it (`built`) and a device of compute capability
/// exactly 9.0 (sm_90a code runs on no other).
pub(crate) fn sm90a_device(dev: &CudaDevice, built: bool) -> Result<bool> {
    if !built {
        return Ok(false);
    }
    let cc = dev.cuda_stream().context().compute_capability().w()?;
    Ok(cc == (9, 0))
}

/// An op's kernel knob as [`choose_wgmma`] takes it: `Some(true)` asks for the wgmma kernel,
/// `Some(false)` for the mma.sync one, `None` leaves the choice to the default.
pub(crate) fn kernel_env(choice: KernelChoice) -> Option<bool> {
    match choice {
        KernelChoice::Auto => None,
        KernelChoice::Mma => Some(false),
        KernelChoice::Wgmma => Some(true),
    }
}

/// One op's wgmma kernel family, for [`choose_wgmma`].
pub(crate) struct WgmmaFamily {
    /// The op, for errors.
    pub op: &'static str,
    /// The sm_90a kernels are compiled into this build.
    pub built: bool,
    /// What `Auto` picks without the environment variable: wgmma wherever it can run.
    pub by_default: bool,
    /// The op's tuning knob ([`kernel_env`]).
    pub env: Option<bool>,
}

/// Whether a call runs its op's wgmma kernel rather than the mma.sync one, the same rule for
/// every tensor-core op. `requested` (the op's kernel argument): `Some(false)` never;
/// `Some(true)` always, an error where it cannot (not built for sm_90a, not a 9.0 device, the
/// shape not `shape_ok`: `requirement` says what the shape needs). `None` (`Auto`) follows the
/// environment variable (`wgmma`: an error where the kernel cannot run, mma.sync for shapes it
/// does not take), else the wgmma kernel wherever it runs if `by_default`.
pub(crate) fn choose_wgmma(
    family: WgmmaFamily,
    dev: &CudaDevice,
    requested: Option<bool>,
    shape_ok: bool,
    requirement: impl FnOnce() -> String,
) -> Result<bool> {
    let (wgmma, forced) = match (requested, family.env) {
        (Some(k), _) => (k, true),
        (None, Some(k)) => (k, false),
        (None, None) => {
            return Ok(family.by_default && shape_ok && sm90a_device(dev, family.built)?);
        }
    };
    if !wgmma {
        return Ok(false);
    }
    if !sm90a_device(dev, family.built)? {
        bail!(
            "{}: the wgmma kernel needs a build with CUDA_COMPUTE_CAP=90 (this one {}) and a \
             compute capability 9.0 device",
            family.op,
            if family.built { "has it" } else { "lacks it" }
        );
    }
    if !shape_ok && forced {
        bail!("{}: the wgmma kernel takes {}", family.op, requirement());
    }
    Ok(shape_ok)
}
