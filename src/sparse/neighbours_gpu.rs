//! The neighbour map built on the GPU (kernels/metal/neighbour_map.metal,
//! kernels/cuda/neighbour_map.cu; one plan for both) as a custom op on the coordinates: output
//! `[T·27 + 2]` u32, the `[T,27]` map followed by two status words (the smallest row that lost
//! the insert race to another row of the same voxel, or `u32::MAX`; the number of existing
//! pairs). The CPU forward is the host builder of neighbours.rs, the reference the kernels are
//! tested against.

use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

use super::coords::CoordSet;
use super::neighbours::{NeighbourMap, TAPS};
use crate::ops::cpu_storage::contiguous;
use crate::ops::metal::neighbour_plan::{neighbour_plan, neighbour_plan_for, NeighbourPlan};

/// Status word: no duplicate voxel.
const NO_DUPLICATE: u32 = u32::MAX;

struct BuildNeighbourMap {
    #[cfg_attr(not(any(feature = "metal", feature = "cuda")), allow(dead_code))]
    plan: NeighbourPlan,
}

impl CustomOp1 for BuildNeighbourMap {
    fn name(&self) -> &'static str {
        "neighbour-map"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::I32(c) = s else {
            bail!("neighbour map: coords must be i32");
        };
        let c = contiguous(c, l, "neighbour map", "coords")?;
        let rows = c
            .chunks_exact(4)
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
        let map = NeighbourMap::build(&CoordSet::from_host(rows, &Device::Cpu)?)?;
        let mut out = map.tensor().flatten_all()?.to_vec1::<u32>()?;
        out.extend([NO_DUPLICATE, map.pairs() as u32]);
        let len = out.len();
        Ok((CpuStorage::U32(out), Shape::from(len)))
    }

    /// kernels/cuda/neighbour_map.cu, the same plan and output; tested in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::ops::cuda::neighbour_map(s, l, &self.plan)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s: &candle_core::MetalStorage,
        l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        crate::ops::metal::neighbour_map::forward(s, l, &self.plan)
    }
}

/// The map of `set` built by the GPU kernels on the set's device, or `None` when they do not
/// apply (empty set, keys wider than 31 bits): the caller then builds it on the host.
pub(crate) fn build_on_device(set: &CoordSet) -> Result<Option<NeighbourMap>> {
    // The length and maxima only: a set built on the device keeps its rows there.
    let n = set.len();
    let Some(plan) = neighbour_plan_for(n, set.max())? else {
        return Ok(None);
    };
    if plan.dispatches.is_empty() {
        return Ok(None);
    }
    let out = set
        .tensor()
        .contiguous()?
        .apply_op1_no_bwd(&BuildNeighbourMap { plan })?;
    // Reading the two status words waits for the GPU: once per coordinate set and stage.
    let status = status_words(&out, n * TAPS)?;
    if status[0] != NO_DUPLICATE {
        // Which copy lost the race for the slot depends on scheduling; name both, in order.
        let rows = set.rows()?;
        let dup = status[0] as usize;
        let other = (0..n)
            .find(|&j| j != dup && rows[j] == rows[dup])
            .unwrap_or(dup);
        bail!(
            "sparse coords: duplicate voxel {:?} at rows {} and {} (batch {})",
            rows[dup],
            dup.min(other),
            dup.max(other),
            rows[dup][0]
        );
    }
    let map = out.narrow(0, 0, n * TAPS)?.reshape((n, TAPS))?;
    Ok(Some(NeighbourMap::from_parts(map, status[1] as usize)))
}

/// The two status words at `at` of the op's output. CUDA reads back just those 8 bytes (candle's
/// `to_vec1` would copy the whole map first: ≈400 MB at 3.7 M voxels).
fn status_words(out: &Tensor, at: usize) -> Result<Vec<u32>> {
    #[cfg(feature = "cuda")]
    if out.device().is_cuda() {
        return crate::ops::cuda::read_u32_words(out, at, 2);
    }
    out.narrow(0, at, 2)?.to_vec1::<u32>()
}

/// The op's raw `[T·27 + 2]` output for `coords` `[T,4]` i32 on their device; public for the
/// emulator tests, which compare the kernels' buffers with the CPU forward word for word.
pub fn neighbour_op_output(coords: &Tensor) -> Result<Tensor> {
    let rows: Vec<[i32; 4]> = coords
        .to_vec2::<i32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let Some(plan) = neighbour_plan(&rows)? else {
        bail!("neighbour map: keys of these coordinates need more than 31 bits");
    };
    coords
        .contiguous()?
        .apply_op1_no_bwd(&BuildNeighbourMap { plan })
}
