//! The API without the `cuda` feature: [`Cuda::new`] returns [`CudaError::Unavailable`], so no
//! value of these types can exist and every method is unreachable by construction.

use crate::CudaError;
use lowbit_core::backend::{AttnShape, Backend, HostWeight};
use std::convert::Infallible;
use std::marker::PhantomData;
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

/// A borrowed range of a [`CudaBuffer`].
#[derive(Clone, Copy, Debug)]
pub struct CuView<'a> {
    never: &'a Infallible,
}

/// A borrowed, writable range of a [`CudaBuffer`].
#[derive(Debug)]
pub struct CuViewMut<'a> {
    never: &'a Infallible,
    _mut: PhantomData<&'a mut ()>,
}

/// A weight matrix on the device.
#[derive(Clone, Debug)]
pub struct CudaLinear {
    never: Infallible,
}

impl CuView<'_> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match *self.never {}
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        match *self.never {}
    }
}

impl CuViewMut<'_> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match *self.never {}
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        match *self.never {}
    }
}

impl CudaLinear {
    /// The storage format on the device.
    pub fn format(&self) -> crate::layout::Format {
        match self.never {}
    }
    /// Bytes the device holds for this weight.
    pub fn device_bytes(&self) -> usize {
        match self.never {}
    }
}

impl Cuda {
    /// Always [`CudaError::Unavailable`]: lowbit-cuda was built without its `cuda` feature.
    pub fn new(ordinal: usize) -> Result<Cuda, CudaError> {
        Err(CudaError::Unavailable(format!(
            "device {ordinal}: lowbit-cuda was built without the `cuda` feature (cargo build --features lowbit-cuda/cuda)"
        )))
    }
    /// The device's name and compute capability.
    pub fn describe(&self) -> String {
        match self.never {}
    }
    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        match self.never {}
    }
    /// [`Backend::linear`] with the INT4 GEMV variant chosen.
    pub fn linear_with(
        &self,
        _w: &CudaLinear,
        _x: CuView<'_>,
        _m: usize,
        _out: CuViewMut<'_>,
        _w4_variant: &str,
    ) -> Result<(), CudaError> {
        match self.never {}
    }
    /// `out = x · Wᵀ` on the tensor cores.
    pub fn linear_tensor_cores(
        &self,
        _w: &CudaLinear,
        _x: CuView<'_>,
        _m: usize,
        _out: CuViewMut<'_>,
    ) -> Result<(), CudaError> {
        match self.never {}
    }
    /// The index of the largest value in each row.
    pub fn argmax(&self, _x: CuView<'_>, _rows: usize, _n: usize) -> Result<Vec<u32>, CudaError> {
        match self.never {}
    }
    /// Device-to-device copy bandwidth (GB/s).
    pub fn copy_bandwidth(&self, _bytes: usize, _iters: usize) -> Result<f64, CudaError> {
        match self.never {}
    }
    /// The median time of `f` in seconds.
    pub fn time(&self, _iters: usize, _f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        match self.never {}
    }
}

/// The INT4 GEMV variants (see the `cuda` build).
pub const W4_GEMV_VARIANTS: &[&str] = &["r1u1", "r2u1", "r4u1", "r8u1", "r1u4", "r2u2", "r4u2"];
/// The INT4 GEMV variant the backend uses.
pub const DEFAULT_W4_VARIANT: &str = "r4u1";

/// Always [`CudaError::Unavailable`]: lowbit-cuda was built without its `cuda` feature.
pub fn compile_kernels(_major: i32, _minor: i32) -> Result<String, CudaError> {
    Err(CudaError::Unavailable("lowbit-cuda was built without the `cuda` feature".into()))
}

impl Backend for Cuda {
    type Error = CudaError;
    type Buffer = CudaBuffer;
    type View<'a> = CuView<'a>;
    type ViewMut<'a> = CuViewMut<'a>;
    type Linear = CudaLinear;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn zeros(&self, _len: usize) -> Result<CudaBuffer, CudaError> {
        match self.never {}
    }
    fn upload(&self, _host: &[f32]) -> Result<CudaBuffer, CudaError> {
        match self.never {}
    }
    fn to_host(&self, _buf: CudaBuffer) -> Result<Vec<f32>, CudaError> {
        match self.never {}
    }
    fn buf_len(&self, buf: &CudaBuffer) -> usize {
        match buf.never {}
    }
    fn resize(&self, _buf: &mut CudaBuffer, _len: usize) -> Result<(), CudaError> {
        match self.never {}
    }
    fn append(&self, _buf: &mut CudaBuffer, _src: CuView<'_>) -> Result<(), CudaError> {
        match self.never {}
    }
    fn truncate(&self, _buf: &mut CudaBuffer, _len: usize) {
        match self.never {}
    }
    fn view<'a>(&self, _buf: &'a CudaBuffer, _range: Range<usize>) -> CuView<'a> {
        match self.never {}
    }
    fn view_mut<'a>(&self, _buf: &'a mut CudaBuffer, _range: Range<usize>) -> CuViewMut<'a> {
        match self.never {}
    }
    fn load_linear(&self, _rows: usize, _cols: usize, _w: HostWeight<'_>) -> Result<CudaLinear, CudaError> {
        match self.never {}
    }
    fn linear_dims(&self, _w: &CudaLinear) -> (usize, usize) {
        match self.never {}
    }
    fn linear(&self, _w: &CudaLinear, _x: CuView<'_>, _m: usize, _out: CuViewMut<'_>) -> Result<(), CudaError> {
        match self.never {}
    }
    fn embed(&self, _table: &CudaLinear, _tokens: &[u32], _out: CuViewMut<'_>) -> Result<(), CudaError> {
        match self.never {}
    }
    fn rms_norm(&self, _x: CuView<'_>, _weight: CuView<'_>, _eps: f32, _out: CuViewMut<'_>) {
        match self.never {}
    }
    fn rms_norm_inplace(&self, _x: CuViewMut<'_>, _weight: CuView<'_>, _eps: f32) {
        match self.never {}
    }
    fn add(&self, _x: CuViewMut<'_>, _y: CuView<'_>) {
        match self.never {}
    }
    fn add_bias(&self, _x: CuViewMut<'_>, _bias: CuView<'_>) {
        match self.never {}
    }
    fn swiglu(&self, _g: CuViewMut<'_>, _u: CuView<'_>) {
        match self.never {}
    }
    fn rope(&self, _x: CuViewMut<'_>, _width: usize, _head_dim: usize, _cos: CuView<'_>, _sin: CuView<'_>) {
        match self.never {}
    }
    fn attention(
        &self,
        _shape: &AttnShape,
        _q: CuView<'_>,
        _k: CuView<'_>,
        _v: CuView<'_>,
        _past: usize,
        _out: CuViewMut<'_>,
    ) {
        match self.never {}
    }
    fn join<A, B, RA, RB>(&self, _a: A, _b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        match self.never {}
    }
}
