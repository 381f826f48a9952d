//! Backend-dispatched primitives as candle custom ops. The CPU implementation of every op is
//! the reference that the Metal and CUDA kernels are tested against.

pub mod attention;
pub mod rope;
