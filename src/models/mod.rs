//! One file per network, built from a `VarBuilder` whose paths are the upstream state-dict keys;
//! [`layers`] holds the layers several networks share, [`registry`] opens a checkpoint and loads
//! the network it holds.

pub mod birefnet;
pub mod dinov3;
pub mod dit;
pub mod layers;
pub mod limits;
pub mod registry;
pub mod sc_vae;
pub mod ss_decoder;
pub mod trace;

/// How a loaded model holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMemory {
    /// Everything on the device for the model's lifetime: fastest.
    #[default]
    Resident,
    /// `--low-memory`: the big repeated parts (the flow transformers' blocks) are read from the
    /// memory-mapped checkpoint each time they run and dropped afterwards, and wide
    /// intermediates are computed in token chunks. Peak weight memory is one block instead of
    /// the whole model, at the cost of re-reading (and casting) the weights every forward.
    Streamed,
}
