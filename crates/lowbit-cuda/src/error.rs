//! The crate's one error type.

/// What can go wrong on the CUDA path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// This build or this machine cannot run CUDA: the `cuda` feature is off, or no driver,
    /// NVRTC or device was found. The message says which.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A driver call failed (out of memory, a kernel fault, ...).
    #[error("CUDA driver error in {op}: {reason}")]
    Driver {
        /// What was being done.
        op: String,
        /// The driver's message.
        reason: String,
    },
    /// NVRTC rejected the kernel source; the compile log is included.
    #[error("NVRTC could not compile lowbit's kernels for {arch}: {log}")]
    Compile {
        /// The target architecture (`sm_90`, ...).
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// Sizes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
}
