//! Copying tensors to the host without waiting for them: [`HostCopy::start`] queues the copies
//! behind the device's work so far and returns at once; [`HostCopy::tensors`] waits for them,
//! from any thread. On CUDA the bytes travel through page-locked buffers on a copy stream of
//! their own, overlapping the kernels queued after them (`ops::cuda::host_copy`), and a helper
//! thread turns them into host tensors as they land; elsewhere the copy is made by `start` (a
//! CPU tensor is only shared).

use std::sync::{Arc, Mutex};

use candle_core::{Device, Result, Tensor};

enum State {
    #[cfg(feature = "cuda")]
    Pending(super::cuda::HostCopyPending),
    Done(Vec<Tensor>),
    /// The copy failed; its error, for every later call.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Failed(String),
}

/// Tensors on their way to the host (cheap to clone: the clones share the copy).
#[derive(Clone)]
pub struct HostCopy {
    state: Arc<Mutex<State>>,
    count: usize,
}

impl std::fmt::Debug for HostCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCopy")
            .field("tensors", &self.count)
            .finish_non_exhaustive()
    }
}

impl HostCopy {
    /// Starts copying `tensors` to the host, after the work already queued that makes them.
    pub fn start(tensors: &[Tensor]) -> Result<Self> {
        let count = tensors.len();
        #[cfg(feature = "cuda")]
        if let Some(first @ Device::Cuda(dev)) = tensors.first().map(Tensor::device) {
            if tensors.iter().all(|t| t.device().same_device(first)) {
                let pending = super::cuda::start_host_copy(dev, tensors)?;
                let state = Arc::new(Mutex::new(State::Pending(pending)));
                // Landed bytes become host tensors at once, on a thread of their own: the
                // page-locked buffer goes back to the pool and the device tensors are freed even
                // while the caller is pictures behind (else each new copy allocates a buffer).
                let landing = state.clone();
                let _ = std::thread::Builder::new()
                    .name("host-copy".into())
                    .spawn(move || drop(settle(&landing)));
                return Ok(Self { state, count });
            }
        }
        let host = tensors
            .iter()
            .map(|t| t.to_device(&Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            state: Arc::new(Mutex::new(State::Done(host))),
            count,
        })
    }

    /// The tensors on the CPU, in the order given to [`HostCopy::start`]; waits for the copy.
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        let state = settle(&self.state);
        match &*state {
            State::Done(host) => Ok(host.clone()),
            State::Failed(e) => Err(candle_core::Error::Msg(format!("copying to the host: {e}"))),
            #[cfg(feature = "cuda")]
            State::Pending(_) => unreachable!("waited for above"),
        }
    }

    /// How many tensors it copies.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The state, locked, after waiting for a pending copy and keeping its outcome.
fn settle(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(feature = "cuda")]
    if matches!(*state, State::Pending(_)) {
        if let State::Pending(p) = std::mem::replace(&mut *state, State::Failed(String::new())) {
            *state = match p.wait() {
                Ok(host) => State::Done(host),
                Err(e) => State::Failed(format!("{e}")),
            };
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_tensors_come_back_as_they_are() {
        let a = Tensor::arange(0u32, 12, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        let copy = HostCopy::start(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(copy.len(), 2);
        let twice = copy.clone();
        for host in [copy.tensors().unwrap(), twice.tensors().unwrap()] {
            assert_eq!(
                host[0].to_vec2::<u32>().unwrap(),
                a.to_vec2::<u32>().unwrap()
            );
            assert_eq!(host[1].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        }
    }
}
