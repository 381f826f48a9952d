//! Stages and the glue between them (spec §1).

pub mod config;
pub mod flow_model;
pub mod sampler;
pub mod structure;
