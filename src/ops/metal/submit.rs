//! The command-buffer budget on a real device (docs/METAL.md, "Watchdog and dispatch"): one
//! [`CommandBudget`] per Metal device accounts every dispatch of our kernels and every linear
//! layer's matmul, and commits candle's command buffer, without waiting for it, before the one
//! that would take the buffer's estimate past [`COMMAND_BUFFER_SECONDS`].

use super::budget::{
    candle_encoders_per_buffer, seconds, CommandBudget, Work, COMMAND_BUFFER_SECONDS,
};
use candle_core::{MetalDevice, Result};
use std::sync::{LazyLock, Mutex};

type Budgets = Vec<(candle_core::metal_backend::DeviceId, CommandBudget)>;

static BUDGETS: LazyLock<Mutex<Budgets>> = LazyLock::new(Default::default);

/// candle reads its encoder count per buffer once, when the device is made; so do we.
static ENCODERS_PER_BUFFER: LazyLock<usize> = LazyLock::new(candle_encoders_per_buffer);

/// Accounts a dispatch of `work` about to be encoded on `device`, committing the command buffer
/// first when the budget says so.
pub(crate) fn before_dispatch(device: &MetalDevice, work: Work) -> Result<()> {
    let commit = {
        let mut budgets = BUDGETS
            .lock()
            .map_err(|_| candle_core::Error::Msg("metal command budget lock poisoned".into()))?;
        let id = device.id();
        let at = match budgets.iter().position(|(d, _)| *d == id) {
            Some(at) => at,
            None => {
                budgets.push((id, CommandBudget::new(COMMAND_BUFFER_SECONDS)));
                budgets.len() - 1
            }
        };
        budgets[at].1.admit(seconds(work))
    };
    if commit {
        commit_without_wait(device)?;
    }
    Ok(())
}

/// Commits the command buffer being encoded without waiting for it: candle 0.11.1 offers no
/// direct call for that outside the crate (`budget::CommandStream` says why), but its
/// `command_encoder()` commits once the buffer's encoder count reaches the limit, so as many
/// empty encoders as the limit commit it exactly once.
fn commit_without_wait(device: &MetalDevice) -> Result<()> {
    for _ in 0..*ENCODERS_PER_BUFFER {
        drop(device.command_encoder()?);
    }
    Ok(())
}
