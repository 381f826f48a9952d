//! The PTX of `kernels/cuda/*.cu`, built by `build.rs` behind the `cuda` feature: one [`Ptx`]
//! per file, loaded once per device under its module name through candle's module cache.

/// One PTX module.
pub(crate) struct Ptx {
    /// The module's name in candle's cache.
    pub name: &'static str,
    /// The PTX text.
    pub text: &'static str,
}

macro_rules! ptx {
    ($file:literal) => {
        include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx"))
    };
}

pub(crate) const SPARSE_CONV: Ptx = Ptx {
    name: "trellis2_sparse_conv",
    text: ptx!("sparse_conv"),
};
/// The wgmma sparse-conv kernels (`kernels/cuda/sparse_conv_sm90a.cu`), built only for
/// `CUDA_COMPUTE_CAP=90` (build.rs sets `trellis2_sm90a` then).
#[cfg(trellis2_sm90a)]
pub(crate) const SPARSE_CONV_SM90A: Option<Ptx> = Some(Ptx {
    name: "trellis2_sparse_conv_sm90a",
    text: ptx!("sparse_conv_sm90a"),
});
#[cfg(not(trellis2_sm90a))]
pub(crate) const SPARSE_CONV_SM90A: Option<Ptx> = None;
pub(crate) const ATTENTION: Ptx = Ptx {
    name: "trellis2_attention",
    text: ptx!("attention"),
};
/// The wgmma attention kernel (`kernels/cuda/attention_sm90a.cu`), built only for
/// `CUDA_COMPUTE_CAP=90` like the conv one.
#[cfg(trellis2_sm90a)]
pub(crate) const ATTENTION_SM90A: Option<Ptx> = Some(Ptx {
    name: "trellis2_attention_sm90a",
    text: ptx!("attention_sm90a"),
});
#[cfg(not(trellis2_sm90a))]
pub(crate) const ATTENTION_SM90A: Option<Ptx> = None;
pub(crate) const DEFORM_CONV: Ptx = Ptx {
    name: "trellis2_deform_conv",
    text: ptx!("deform_conv"),
};
pub(crate) const NORMS: Ptx = Ptx {
    name: "trellis2_norms",
    text: ptx!("norms"),
};
pub(crate) const NEIGHBOUR_MAP: Ptx = Ptx {
    name: "trellis2_neighbour_map",
    text: ptx!("neighbour_map"),
};
pub(crate) const ELEMENTWISE: Ptx = Ptx {
    name: "trellis2_elementwise",
    text: ptx!("elementwise"),
};
pub(crate) const CHANNEL_TO_SPACE: Ptx = Ptx {
    name: "trellis2_channel_to_space",
    text: ptx!("channel_to_space"),
};
pub(crate) const CONV_ORDER: Ptx = Ptx {
    name: "trellis2_conv_order",
    text: ptx!("conv_order"),
};
pub(crate) const CASCADE_QUANTIZE: Ptx = Ptx {
    name: "trellis2_cascade_quantize",
    text: ptx!("cascade_quantize"),
};
