//! Where a model runs. Only the CPU is implemented; the enum is the seam where a CUDA backend
//! (crate `lowbit-cuda`, feature `cuda`) plugs in: loading onto a device it does not have
//! returns [`ModelError::DeviceUnavailable`](crate::ModelError::DeviceUnavailable), so callers never need `#[cfg]`.

/// A compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The host CPU (rayon threads, `lowbit-cpu` kernels).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (not compiled in this build).
    Cuda(usize),
}

impl Device {
    /// Checks this build can run on the device.
    pub fn check_available(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => Err(crate::ModelError::DeviceUnavailable {
                device: format!("cuda:{i}"),
                reason: "lowbit-model was built without a CUDA backend".into(),
            }),
        }
    }
}
