//! The API without the `cuda` feature: [`Cuda::new`] returns [`CudaError::Unavailable`], so no
//! value of these types can exist and every method is unreachable by construction. (Private
//! `Infallible` fields rather than empty enums: callers' code after `Cuda::new()?` must not be
//! flagged unreachable.)

use crate::{CuView, CuViewMut, CudaError};
use lowbit_core::backend::{AttnShape, Backend, HostWeight};
use std::convert::Infallible;
use std::ops::Range;

/// The CUDA backend (this build has none: see [`Cuda::new`]).
#[derive(Clone, Debug)]
pub struct Cuda {
    never: Infallible,
}

/// f32 values on the device.
#[derive(Clone, Debug)]
pub struct CudaBuffer {
    never: Infallible,
}

/// A weight matrix on the device.
#[derive(Clone, Debug)]
pub struct CudaLinear {
    never: Infallible,
}

/// Methods of a type with no values in this build: each body is `match self.never {}`.
macro_rules! unreachable_methods {
    ($($(#[$doc:meta])* $vis:vis fn $name:ident $(<$lt:lifetime>)? (&self $(, $arg:ident: $ty:ty)*) $(-> $ret:ty)?;)*) => {$(
        $(#[$doc])*
        $vis fn $name $(<$lt>)? (&self $(, $arg: $ty)*) $(-> $ret)? {
            match self.never {}
        }
    )*};
}

impl CudaLinear {
    unreachable_methods! {
        /// The storage format on the device.
        pub fn format(&self) -> crate::layout::Format;
        /// Bytes the device holds for this weight.
        pub fn device_bytes(&self) -> usize;
    }
}

impl Cuda {
    /// Always [`CudaError::Unavailable`]: lowbit-cuda was built without its `cuda` feature.
    pub fn new(ordinal: usize) -> Result<Cuda, CudaError> {
        Err(CudaError::Unavailable(format!(
            "device {ordinal}: lowbit-cuda was built without the `cuda` feature (cargo build --features lowbit-cuda/cuda)"
        )))
    }
    unreachable_methods! {
        /// The device's name and compute capability.
        pub fn describe(&self) -> String;
        /// Waits for all queued work.
        pub fn synchronize(&self) -> Result<(), CudaError>;
        /// [`Backend::linear`] with the INT4 GEMV variant chosen.
        pub fn linear_with(&self, _w: &CudaLinear, _x: CuView<'_>, _m: usize, _out: CuViewMut<'_>, _w4_variant: &str) -> Result<(), CudaError>;
        /// `out = x · Wᵀ` on the tensor cores.
        pub fn linear_tensor_cores(&self, _w: &CudaLinear, _x: CuView<'_>, _m: usize, _out: CuViewMut<'_>) -> Result<(), CudaError>;
        /// The index of the largest value in each row.
        pub fn argmax(&self, _x: CuView<'_>, _rows: usize, _n: usize) -> Result<Vec<u32>, CudaError>;
        /// Device-to-device copy bandwidth (GB/s).
        pub fn copy_bandwidth(&self, _bytes: usize, _iters: usize) -> Result<f64, CudaError>;
        /// The median time of `f` in seconds.
        pub fn time(&self, _iters: usize, _f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError>;
    }
}

/// Always [`CudaError::Unavailable`]: lowbit-cuda was built without its `cuda` feature.
pub fn compile_kernels(_major: i32, _minor: i32) -> Result<String, CudaError> {
    Err(CudaError::Unavailable("lowbit-cuda was built without the `cuda` feature".into()))
}

impl Backend for Cuda {
    crate::backend_types!();
    unreachable_methods! {
        fn zeros(&self, _len: usize) -> Result<CudaBuffer, CudaError>;
        fn upload(&self, _host: &[f32]) -> Result<CudaBuffer, CudaError>;
        fn to_host(&self, _buf: CudaBuffer) -> Result<Vec<f32>, CudaError>;
        fn resize(&self, _buf: &mut CudaBuffer, _len: usize) -> Result<(), CudaError>;
        fn append(&self, _buf: &mut CudaBuffer, _src: CuView<'_>) -> Result<(), CudaError>;
        fn truncate(&self, _buf: &mut CudaBuffer, _len: usize);
        fn view<'a>(&self, _buf: &'a CudaBuffer, _range: Range<usize>) -> CuView<'a>;
        fn view_mut<'a>(&self, _buf: &'a mut CudaBuffer, _range: Range<usize>) -> CuViewMut<'a>;
        fn load_linear(&self, _rows: usize, _cols: usize, _w: HostWeight<'_>) -> Result<CudaLinear, CudaError>;
        fn linear_dims(&self, _w: &CudaLinear) -> (usize, usize);
        fn linear(&self, _w: &CudaLinear, _x: CuView<'_>, _m: usize, _out: CuViewMut<'_>) -> Result<(), CudaError>;
        fn embed(&self, _table: &CudaLinear, _tokens: &[u32], _out: CuViewMut<'_>) -> Result<(), CudaError>;
        fn rms_norm(&self, _x: CuView<'_>, _weight: CuView<'_>, _eps: f32, _out: CuViewMut<'_>);
        fn rms_norm_inplace(&self, _x: CuViewMut<'_>, _weight: CuView<'_>, _eps: f32);
        fn add(&self, _x: CuViewMut<'_>, _y: CuView<'_>);
        fn add_bias(&self, _x: CuViewMut<'_>, _bias: CuView<'_>);
        fn swiglu(&self, _g: CuViewMut<'_>, _u: CuView<'_>);
        fn rope(&self, _x: CuViewMut<'_>, _width: usize, _head_dim: usize, _cos: CuView<'_>, _sin: CuView<'_>);
        fn attention(&self, _shape: &AttnShape, _q: CuView<'_>, _k: CuView<'_>, _v: CuView<'_>, _past: usize, _out: CuViewMut<'_>);
    }
    fn buf_len(&self, buf: &CudaBuffer) -> usize {
        match buf.never {}
    }
}
