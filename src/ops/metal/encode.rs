//! Encodes one planned dispatch into candle's command stream.

use super::dispatch::Dispatch;
use candle_core::{MetalDevice, Result};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline};
use candle_metal_kernels::utils::{set_param, Input, Output};
use objc2_metal::MTLSize;

/// A buffer argument: read (with a byte offset) or written.
pub enum Arg<'a> {
    Read(&'a Buffer, usize),
    Write(&'a Buffer),
    /// Written, from a byte offset.
    WriteAt(&'a Buffer, usize),
}

fn size([width, height, depth]: [u32; 3]) -> MTLSize {
    MTLSize {
        width: width as usize,
        height: height as usize,
        depth: depth as usize,
    }
}

/// Binds `buffers` from index `first` on (written ones tagged as outputs, so candle places the
/// barriers).
fn bind(enc: &ComputeCommandEncoder, first: usize, buffers: &[Arg<'_>]) {
    for (i, arg) in buffers.iter().enumerate() {
        let at = first + i;
        match *arg {
            Arg::Read(buffer, offset) => set_param(enc, at, Input::with_offset(buffer, offset)),
            Arg::Write(buffer) => set_param(enc, at, Output::new(buffer)),
            Arg::WriteAt(buffer, offset) => set_param(enc, at, Output::with_offset(buffer, offset)),
        }
    }
}

/// `args` at buffer(0), `buffers` at 1.., threadgroup memory at threadgroup(0). Accounts the
/// dispatch's work in the device's command-buffer budget first (which may commit the buffer),
/// then takes candle's encoder (candle also commits every `CANDLE_METAL_COMPUTE_PER_BUFFER`
/// encoders) and drops it before returning: the caller may run other ops next.
pub fn encode<A: Copy>(
    device: &MetalDevice,
    pipeline: &ComputePipeline,
    label: &str,
    dispatch: &Dispatch<A>,
    buffers: &[Arg<'_>],
) -> Result<()> {
    encode_with(device, pipeline, label, dispatch, |enc| {
        enc.set_bytes(0, &dispatch.args);
        bind(enc, 1, buffers);
        enc.set_threadgroup_memory_length(0, dispatch.threadgroup_memory);
    })
}

/// As [`encode`] for candle-metal-kernels' MLX kernels: `buffers` at 0.., the argument struct
/// `args` right after them, no host-set threadgroup memory (theirs is declared in the kernel).
pub fn encode_args_last<P, A: Copy>(
    device: &MetalDevice,
    pipeline: &ComputePipeline,
    label: &str,
    dispatch: &Dispatch<P>,
    args: &A,
    buffers: &[Arg<'_>],
) -> Result<()> {
    encode_with(device, pipeline, label, dispatch, |enc| {
        bind(enc, 0, buffers);
        enc.set_bytes(buffers.len(), args);
    })
}

/// The budget, candle's encoder, `set` for the arguments, then the dispatch of `dispatch`'s grid.
fn encode_with<P>(
    device: &MetalDevice,
    pipeline: &ComputePipeline,
    label: &str,
    dispatch: &Dispatch<P>,
    set: impl FnOnce(&ComputeCommandEncoder),
) -> Result<()> {
    super::submit::before_dispatch(device, dispatch.work)?;
    let encoder = device.command_encoder()?;
    encoder.set_label(label);
    encoder.set_compute_pipeline_state(pipeline);
    let enc = encoder.as_ref();
    set(enc);
    enc.dispatch_thread_groups(size(dispatch.threadgroups), size(dispatch.threads));
    drop(encoder);
    Ok(())
}
