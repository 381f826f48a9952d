//! SC-VAE decoders (docs/MODEL.md §5): the shape decoder `FlexiDualGridVaeDecoder` and the texture
//! decoder `SparseUnetVaeDecoder`, their building blocks and output activations.

pub mod activations;
pub mod blocks;
pub mod config;
pub mod decoder;

pub use config::{DecoderConfig, FlexiDualGridDecoderArgs, UnetDecoderArgs};
pub use decoder::{
    DecoderOutput, FlexiDualGridVaeDecoder, SparseUnetVaeDecoder, CASCADE_UPSAMPLE_TIMES,
};
