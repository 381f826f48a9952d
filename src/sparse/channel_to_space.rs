//! Channel→space with subdivision masks (`SparseChannel2Spatial`, factor 2; docs/MODEL.md §5.2):
//! child `s ∈ 0..8` sits at offset `(s & 1, s >> 1 & 1, s >> 2 & 1)` on (x, y, z) — bit 0 → x —
//! and takes parent channels `[s·C/8, (s+1)·C/8)`. Children come parent-major, then by `s`
//! ascending (not lexicographically sorted), exactly as upstream's `repeat_interleave` +
//! `nonzero`.
//!
//! On a CUDA device the children are built by kernels from the logits (`ops::subdivide`): only
//! their count, batch boundaries and maxima come back to the host. Elsewhere the mask comes back
//! and [`Subdivision::from_mask`], the reference, builds them.

use std::sync::Arc;

use candle_core::{bail, Result, Tensor};

use super::coords::{CoordSet, MAX_COORD};
use super::space_to_channel::Downsampling;
use super::tensor::SparseTensor;
use crate::ops::bias_act::Activation;
use crate::ops::c2s_skip_add::c2s_skip_add;
use crate::ops::layer_norm_act::{gathered_layer_norm_act, layer_norm_act};
use crate::ops::sparse_conv::{children_conv_applies, ConvWeights};
use crate::ops::subdivide::{children_host, positive, subdivide};
use crate::ops::vocab::ABSENT;
pub use crate::ops::vocab::CHILDREN;

/// Where the children of one subdivision come from; apply it to every tensor on the parents'
/// coordinates (the block input and its conv output share it).
#[derive(Debug, Clone)]
pub struct Subdivision {
    children: Arc<CoordSet>,
    /// `parent·8 + s` for each child, indexing the `[N·8, C/8]` view of parent features.
    sources: Tensor,
    parents: usize,
}

impl Subdivision {
    /// Children of `parents` where `logits[n, s] > 0` (`logits` `[N,8]`, any float dtype).
    pub fn from_logits(parents: &Arc<CoordSet>, logits: &Tensor) -> Result<Self> {
        let dims = logits.dims();
        if dims != [parents.len(), CHILDREN] {
            bail!(
                "subdivision logits: expected shape [{}, 8] for {} parent voxels, got {dims:?}",
                parents.len(),
                parents.len()
            );
        }
        if logits.device().is_cuda() && logits.device().same_device(parents.device()) {
            return Self::from_logits_on_device(parents, logits);
        }
        Self::from_mask(parents, &positive(logits)?)
    }

    /// [`Self::from_logits`] by the CUDA kernels: children rows, sources, batch ranges and
    /// exact maxima computed on the device, the rows never on the host.
    fn from_logits_on_device(parents: &Arc<CoordSet>, logits: &Tensor) -> Result<Self> {
        // Children coordinates are at most 2·max + 1: checked once here, so that the kernels
        // need not check each child.
        let max = parents.max();
        if let Some(a) = (1..4).find(|&a| 2 * max[a] as u64 + 1 >= MAX_COORD as u64) {
            bail!(
                "channel_to_space: parents reach {} = {}; their children could leave [0, \
                 {MAX_COORD})",
                ["batch", "x", "y", "z"][a],
                max[a]
            );
        }
        let built = subdivide(parents.tensor(), parents.batches(), logits)?;
        Ok(Self {
            children: Arc::new(CoordSet::from_device(built.rows, built.batches, built.max)?),
            sources: built.sources,
            parents: parents.len(),
        })
    }

    /// Children where `mask[n·8 + s]` is set: the reference the CUDA kernels are tested
    /// against (tests/cuda_kernels.rs).
    pub fn from_mask(parents: &Arc<CoordSet>, mask: &[bool]) -> Result<Self> {
        if mask.len() != parents.len() * CHILDREN {
            bail!(
                "subdivision mask: {} entries for {} parent voxels, expected {}",
                mask.len(),
                parents.len(),
                parents.len() * CHILDREN
            );
        }
        let (rows, sources) = children_host(parents.rows()?, mask);
        let device = parents.device();
        let n = sources.len();
        Ok(Self {
            children: Arc::new(CoordSet::from_host(rows, device)?),
            sources: Tensor::from_vec(sources, n, device)?,
            parents: parents.len(),
        })
    }

    /// The inverse of a space→channel downsampling: each voxel of `children` (the set `down`
    /// was made from) back as child `s` of its parent, in `children`'s own order. The texturing
    /// pipeline's texture decoder rebuilds the encoder's voxels this way (upstream reuses the
    /// encoder's `channel2spatial` cache).
    pub fn from_downsampling(down: &Downsampling, children: &Arc<CoordSet>) -> Result<Self> {
        let slots = down
            .slots()
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<u32>()?;
        let mut sources = vec![ABSENT; children.len()];
        for (slot, &child) in slots.iter().enumerate() {
            if child != ABSENT {
                match sources.get_mut(child as usize) {
                    Some(s) => *s = slot as u32,
                    None => bail!(
                        "channel_to_space: the downsampling names voxel {child} of {}",
                        children.len()
                    ),
                }
            }
        }
        if let Some(i) = sources.iter().position(|&s| s == ABSENT) {
            bail!("channel_to_space: voxel {i} has no parent in the downsampling");
        }
        let n = sources.len();
        Ok(Self {
            children: children.clone(),
            sources: Tensor::from_vec(sources, n, children.device())?,
            parents: down.parents().len(),
        })
    }

    /// The children's coordinate set.
    pub fn children(&self) -> &Arc<CoordSet> {
        &self.children
    }

    /// `parent·8 + s` of each child, `[N']` u32 on the parents' device.
    pub fn sources(&self) -> &Tensor {
        &self.sources
    }

    /// `x`'s features viewed `[N·8, C/8]`: row `parent·8 + s` is channel block `s` of a parent.
    fn per_child(&self, x: &SparseTensor, what: &str) -> Result<Tensor> {
        let (n, c) = (x.len(), x.channels());
        if n != self.parents {
            bail!(
                "channel_to_space: {what} has {n} voxels, the subdivision was made for {}",
                self.parents
            );
        }
        if c % CHILDREN != 0 {
            bail!("channel_to_space: {what} has {c} channels, not a multiple of 8");
        }
        x.feats()
            .contiguous()?
            .reshape((n * CHILDREN, c / CHILDREN))
    }

    /// Moves channel block `s` of each parent to child `s`: `[N, C]` → `[N', C/8]`.
    pub fn apply(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let feats = self
            .per_child(x, "tensor")?
            .index_select(&self.sources, 0)?;
        SparseTensor::on(self.children.clone(), feats)
    }

    /// `act(LayerNorm(apply(x)))` (no affine) in one pass: the norm reads each child's channel
    /// block straight from the parent's row, so the moved features are never written.
    pub fn apply_layer_norm(
        &self,
        x: &SparseTensor,
        eps: f64,
        act: Activation,
    ) -> Result<SparseTensor> {
        let per_child = self.per_child(x, "tensor")?;
        let feats = gathered_layer_norm_act(&per_child, &self.sources, None, eps, act)?;
        SparseTensor::on(self.children.clone(), feats)
    }

    /// `act(LayerNorm(apply(conv(x))))` (no affine) for a conv of `8C'` outputs on the parents:
    /// a C2S block's first conv and norm. Where [`children_conv_applies`] (`TRELLIS2_C2S_CONV`,
    /// CUDA), the conv computes only the children's rows (`C'` channels each, the weight rows of
    /// their slot) and a row-wise norm follows; otherwise the conv runs on the parents and
    /// [`Self::apply_layer_norm`] reads each child's block. Equal results up to rounding.
    pub fn conv_layer_norm(
        &self,
        conv: &ConvWeights,
        x: &SparseTensor,
        eps: f64,
        act: Activation,
    ) -> Result<SparseTensor> {
        let co = conv.out_channels();
        if x.len() == self.parents
            && co.is_multiple_of(CHILDREN)
            && children_conv_applies(x.feats(), co / CHILDREN)?
        {
            let h = conv.conv_children(x.feats(), x.neighbour_map()?, &self.sources)?;
            let feats = layer_norm_act(&h, None, eps, act)?;
            return SparseTensor::on(self.children.clone(), feats);
        }
        let h = x.replace(conv.conv_map(x.feats(), x.neighbour_map()?)?)?;
        self.apply_layer_norm(&h, eps, act)
    }

    /// `h + repeat_interleave(apply(x))` over the channels: the skip connection of a C2S block,
    /// each of the `C/8` carried channels of `x` repeated `C'/(C/8)` times consecutively
    /// (`repeat_interleave`, not tiling), read from the parents' rows without materialising
    /// the moved or repeated features. `h` `[N', C']` on the children.
    pub fn add_carried(&self, h: &SparseTensor, x: &SparseTensor) -> Result<SparseTensor> {
        if !Arc::ptr_eq(h.coord_set(), &self.children) {
            bail!("channel_to_space: the skip add needs a tensor on this subdivision's children");
        }
        // Checks x's voxel count and channel multiple.
        self.per_child(x, "skip input")?;
        h.replace(c2s_skip_add(h.feats(), x.feats(), &self.sources)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn children_follow_parent_then_bit0_is_x_order() {
        let dev = Device::Cpu;
        let parents =
            Arc::new(CoordSet::from_host(vec![[0, 1, 2, 3], [1, 0, 0, 0]], &dev).unwrap());
        let mut mask = vec![false; 16];
        mask[1] = true; // parent 0, child x+1
        mask[6] = true; // parent 0, child y+1 z+1
        mask[8 + 4] = true; // parent 1, child z+1
        let sub = Subdivision::from_mask(&parents, &mask).unwrap();
        assert_eq!(
            sub.children().rows().unwrap(),
            &[[0, 3, 4, 6], [0, 2, 5, 7], [1, 0, 0, 1]]
        );
        let feats = Tensor::arange(0f32, 32., &dev)
            .unwrap()
            .reshape((2, 16))
            .unwrap();
        let x = SparseTensor::on(parents, feats).unwrap();
        let out = sub.apply(&x).unwrap().feats().to_vec2::<f32>().unwrap();
        assert_eq!(out, vec![vec![2., 3.], vec![12., 13.], vec![24., 25.]]);
    }

    /// Many parents (several parallel tasks, some keeping no child): the same children in the
    /// same order as one sequential pass.
    #[test]
    fn parallel_children_keep_the_sequential_order() {
        let parents: Vec<[i32; 4]> = (0..40_000)
            .map(|i| [i / 20_000, i % 97, i % 89, i / 97 % 50])
            .collect();
        let mask: Vec<bool> = (0..parents.len() * CHILDREN)
            .map(|i| (i * 7919) % 13 < 6)
            .collect();
        let mut want = Vec::new();
        for (n, c) in parents.iter().enumerate() {
            for s in (0..CHILDREN).filter(|&s| mask[n * CHILDREN + s]) {
                let bit = |b: usize| ((s >> b) & 1) as i32;
                want.push([
                    c[0],
                    2 * c[1] + bit(0),
                    2 * c[2] + bit(1),
                    2 * c[3] + bit(2),
                ]);
            }
        }
        let set = Arc::new(CoordSet::from_host(parents, &Device::Cpu).unwrap());
        let sub = Subdivision::from_mask(&set, &mask).unwrap();
        assert_eq!(sub.children().rows().unwrap(), want.as_slice());
    }

    /// The fused norm and skip add against `apply` followed by the composed candle ops.
    #[test]
    fn fused_tail_matches_apply_then_composed_ops() {
        let dev = Device::Cpu;
        let parents = Arc::new(
            CoordSet::from_host(vec![[0, 0, 0, 0], [0, 1, 0, 0], [1, 5, 5, 5]], &dev).unwrap(),
        );
        let mask: Vec<bool> = (0..24).map(|i| i % 3 != 1).collect();
        let sub = Subdivision::from_mask(&parents, &mask).unwrap();
        let n = sub.children().len();
        // conv1-like output: 8 blocks of 4 channels; x: 16 channels (2 carried, repeat 2).
        let h1 = Tensor::arange(0f32, 96.0, &dev)
            .unwrap()
            .reshape((3, 32))
            .unwrap()
            .cos()
            .unwrap();
        let x = Tensor::arange(0f32, 48.0, &dev)
            .unwrap()
            .reshape((3, 16))
            .unwrap();
        let h1 = SparseTensor::on(parents.clone(), h1).unwrap();
        let x = SparseTensor::on(parents, x).unwrap();
        let fused = sub.apply_layer_norm(&h1, 1e-6, Activation::Silu).unwrap();
        let moved = sub.apply(&h1).unwrap();
        let composed = crate::ops::layer_norm(moved.feats(), None, 1e-6)
            .unwrap()
            .silu()
            .unwrap();
        let diff = crate::test_util::max_abs_diff(fused.feats(), &composed);
        assert!(diff < 1e-6, "{diff}");
        let out = sub.add_carried(&fused, &x).unwrap();
        let skip = sub.apply(&x).unwrap().feats().clone();
        let repeated = skip
            .unsqueeze(2)
            .unwrap()
            .broadcast_as((n, 2, 2))
            .unwrap()
            .reshape((n, 4))
            .unwrap();
        let want = (fused.feats() + repeated).unwrap();
        assert_eq!(
            out.feats().to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
        // The skip add needs features on the children.
        assert!(sub.add_carried(&x, &x).is_err());
    }

    #[test]
    fn wrong_logit_shape_is_named() {
        let dev = Device::Cpu;
        let parents = Arc::new(CoordSet::from_host(vec![[0, 0, 0, 0]], &dev).unwrap());
        let logits = Tensor::zeros((1, 7), candle_core::DType::F32, &dev).unwrap();
        let err = Subdivision::from_logits(&parents, &logits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected shape [1, 8]") && err.contains("[1, 7]"),
            "{err}"
        );
    }
}
