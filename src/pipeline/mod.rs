//! Stages and the glue between them (spec §1).

pub mod matte;
pub mod structure;
