//! SC-VAEs (docs/MODEL.md §5, §13): the shape decoder `FlexiDualGridVaeDecoder`, the texture
//! decoder `SparseUnetVaeDecoder`, the shape encoder `FlexiDualGridVaeEncoder` (texturing), their
//! building blocks and output activations.

pub mod activations;
pub mod blocks;
pub mod config;
pub mod decoder;
pub mod encoder;

pub use config::{
    DecoderConfig, EncoderConfig, FlexiDualGridDecoderArgs, FlexiDualGridEncoderArgs,
    UnetDecoderArgs,
};
pub use decoder::{
    DecoderOutput, FlexiDualGridVaeDecoder, SparseUnetVaeDecoder, CASCADE_UPSAMPLE_TIMES,
};
pub use encoder::{EncoderOutput, FlexiDualGridVaeEncoder};
