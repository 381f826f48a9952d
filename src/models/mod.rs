//! One file per network, built from a `VarBuilder` whose paths are the upstream state-dict keys.

pub mod birefnet;
pub mod dinov3;
pub mod dit;
pub mod forward;
pub mod sc_vae;
pub mod ss_decoder;
pub mod trace;
