//! The device implementation (feature `cuda`): cudarc's driver API with dynamic loading, the
//! kernels of `kernels.cu` compiled by NVRTC once per device per process.
//!
//! Buffers are addressed by raw device pointers in views, so a view is `Copy` like a slice
//! reference and kernels take plain pointer arguments. Everything runs in order on one stream;
//! cudarc's per-buffer event tracking (for multi-stream use) is switched off.
#![allow(unsafe_code)]

use crate::layout::{Format, GroupParams, Packed};
use crate::{CuView, CuViewMut, CudaError, DEFAULT_W4_VARIANT, W4_GEMV_VARIANTS};
use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use lowbit_core::backend::{AttnShape, Backend, HostWeight};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel of `kernels.cu`, loaded once per device.
const KERNELS: &[&str] = &[
    "gemv_w4h_r1u1",
    "gemv_w4h_r2u1",
    "gemv_w4h_r4u1",
    "gemv_w4h_r8u1",
    "gemv_w4h_r1u4",
    "gemv_w4h_r2u2",
    "gemv_w4h_r4u2",
    "gemv_w4f_r4u1",
    "gemv_w8h_r4u1",
    "gemv_w8f_r4u1",
    "gemv_f32_r4u1",
    "gemv_f16_r4u1",
    "gemv_bf16_r4u1",
    "gemm_w4h",
    "gemm_w4f",
    "gemm_w8h",
    "gemm_w8f",
    "gemm_f32",
    "gemm_f16",
    "gemm_bf16",
    "gemm_tc_w4h",
    "gemm_tc_w4f",
    "gemm_tc_w8h",
    "gemm_tc_w8f",
    "gemm_tc_f32",
    "gemm_tc_f16",
    "gemm_tc_bf16",
    "embed_w4h",
    "embed_w4f",
    "embed_w8h",
    "embed_w8f",
    "embed_f32",
    "embed_f16",
    "embed_bf16",
    "rms_norm",
    "add",
    "add_bias",
    "swiglu",
    "rope",
    "attention",
    "argmax",
];

/// Products of at most this many activation rows use the GEMV kernels (each row reads the
/// weights once, from L2 after the first); larger ones the tiled GEMM.
const GEMV_MAX_M: usize = 4;
/// Largest head dimension the attention kernel holds in registers.
const MAX_HEAD_DIM: usize = 256;

fn drv(op: &str, e: impl std::fmt::Display) -> CudaError {
    CudaError::Driver { op: op.to_string(), reason: e.to_string() }
}

/// Queues elementwise kernel `$name` over `$n` values with a grid-stride launch; the arguments
/// are locals (pointers and sizes) that outlive the launch. A failure is kept for the next
/// fallible call.
macro_rules! launch_1d {
    ($self:ident, $name:expr, $n:expr, $($arg:ident),+) => {{
        let n: usize = $n;
        if n > 0 {
            let r = (|| {
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(256).min(8192) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = $self.stream().launch_builder($self.func($name)?);
                $( b.arg(&$arg); )+
                // SAFETY: each caller passes the arguments of the kernel's signature, for views
                // whose lengths it checked.
                unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv($name, e))
            })();
            $self.keep(r);
        }
    }};
}

struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
    /// Prefill products on the tensor cores (f16 operands), from `LOWBIT_CUDA_TENSOR_CORES=1`.
    tensor_cores: bool,
    /// The INT4 GEMV variant [`Backend::linear`] uses: `LOWBIT_CUDA_W4_VARIANT` when it names
    /// one of [`W4_GEMV_VARIANTS`], else [`DEFAULT_W4_VARIANT`].
    w4_variant: &'static str,
    /// The first error of an op that cannot return one (the trait's elementwise ops), handed to
    /// the next fallible call.
    sticky: Mutex<Option<CudaError>>,
}

/// The CUDA backend: one device, one stream. Cloning shares the device.
#[derive(Clone)]
pub struct Cuda {
    dev: Arc<Device>,
}

/// f32 values on the device: `len` of them in an allocation that may be larger (a KV cache
/// grows by doubling).
pub struct CudaBuffer {
    slice: Option<CudaSlice<f32>>,
    len: usize,
}

impl CudaBuffer {
    fn ptr(&self) -> u64 {
        self.slice.as_ref().map_or(0, |s| s.device_ptr(s.stream()).0)
    }
    fn capacity(&self) -> usize {
        self.slice.as_ref().map_or(0, |s| s.len())
    }
}

impl Clone for CudaBuffer {
    fn clone(&self) -> Self {
        // `Clone` cannot fail: running out of device memory here is fatal, like `Vec`'s.
        let slice = self.slice.as_ref().map(|s| s.try_clone().expect("CUDA: out of memory cloning a buffer"));
        CudaBuffer { slice, len: self.len }
    }
}

struct LinearData {
    format: Format,
    rows: usize,
    cols: usize,
    ld: usize,
    group: usize,
    groups: usize,
    f32_params: bool,
    data: CudaSlice<u8>,
    params: Option<CudaSlice<u8>>,
}

/// A weight matrix in the device layout ([`crate::layout`]); clones share the upload.
#[derive(Clone)]
pub struct CudaLinear {
    w: Arc<LinearData>,
}

/// `Debug` as a one-line summary: the device handles inside print nothing useful.
macro_rules! debug_summary {
    ($($t:ty => |$s:ident| $($fmt:expr),+;)*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $s = self;
                write!(f, $($fmt),+)
            }
        }
    )*};
}
debug_summary! {
    Cuda => |s| "Cuda({}, {})", s.dev.name, s.dev.arch;
    CudaBuffer => |s| "CudaBuffer({} f32)", s.len;
    CudaLinear => |s| "CudaLinear({} x {}, {})", s.w.rows, s.w.cols, s.w.format.name();
}

impl CudaLinear {
    /// The storage format on the device.
    pub fn format(&self) -> Format {
        self.w.format
    }
    /// Bytes the device holds for this weight.
    pub fn device_bytes(&self) -> usize {
        self.w.data.len() + self.w.params.as_ref().map_or(0, |p| p.len())
    }
    fn ptrs(&self, stream: &CudaStream) -> (u64, u64) {
        let d = self.w.data.device_ptr(stream).0;
        let p = self.w.params.as_ref().map_or(0, |p| p.device_ptr(stream).0);
        (d, p)
    }
    /// The kernel-name suffix: format plus parameter width for quantized ones.
    fn suffix(&self) -> String {
        match self.w.format {
            Format::Int4 | Format::Int8 => {
                format!("{}{}", self.w.format.name(), if self.w.f32_params { "f" } else { "h" })
            }
            f => f.name().to_string(),
        }
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

impl Cuda {
    /// CUDA device `ordinal`, with lowbit's kernels compiled for it (once per process).
    /// [`CudaError::Unavailable`] when there is no driver, no NVRTC or no such device.
    pub fn new(ordinal: usize) -> Result<Cuda, CudaError> {
        let cache = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(Cuda { dev: d.clone() });
        }
        // cudarc panics when a library or symbol is missing: turn that into an error.
        let dev = std::panic::catch_unwind(|| open(ordinal))
            .map_err(|p| CudaError::Unavailable(format!("loading the CUDA libraries failed: {}", panic_text(&*p))))??;
        let dev = Arc::new(dev);
        map.insert(ordinal, dev.clone());
        Ok(Cuda { dev })
    }

    /// The device's name and compute capability, e.g. `NVIDIA H200 (sm_90)`, and the product
    /// kernels in use.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}), INT4 GEMV {}, prefill GEMM {}",
            self.dev.name,
            self.dev.arch,
            self.dev.w4_variant,
            if self.dev.tensor_cores { "mma.sync f16" } else { "fp32" }
        )
    }

    /// Waits for all queued work; returns the first error of an op that could not report one.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.dev.stream.synchronize().map_err(|e| drv("synchronize", e))?;
        self.take_sticky()
    }

    fn func(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.dev.funcs.get(name).ok_or_else(|| CudaError::Shape(format!("no kernel named {name}")))
    }

    fn keep(&self, r: Result<(), CudaError>) {
        if let Err(e) = r {
            let mut s = self.dev.sticky.lock().unwrap_or_else(|p| p.into_inner());
            s.get_or_insert(e);
        }
    }

    fn take_sticky(&self) -> Result<(), CudaError> {
        match self.dev.sticky.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    /// A buffer of `len` values whose contents are not initialized.
    fn alloc(&self, len: usize) -> Result<CudaBuffer, CudaError> {
        if len == 0 {
            return Ok(CudaBuffer { slice: None, len: 0 });
        }
        // SAFETY: every caller writes the values it later reads (zeros, or a copy).
        let s = unsafe { self.dev.stream.alloc::<f32>(len) }.map_err(|e| drv("alloc", e))?;
        Ok(CudaBuffer { slice: Some(s), len })
    }

    fn memset_zero(&self, ptr: u64, values: usize) -> Result<(), CudaError> {
        if values == 0 {
            return Ok(());
        }
        // SAFETY: callers pass a range inside one live allocation.
        unsafe { cu::memset_d8_async(ptr, 0, values * 4, self.stream().cu_stream()) }.map_err(|e| drv("memset", e))
    }

    fn copy_dtod(&self, dst: u64, src: u64, values: usize) -> Result<(), CudaError> {
        if values == 0 {
            return Ok(());
        }
        // SAFETY: callers pass ranges inside live allocations; stream order keeps them alive.
        unsafe { cu::memcpy_dtod_async(dst, src, values * 4, self.stream().cu_stream()) }.map_err(|e| drv("copy", e))
    }

    /// Grows `buf`'s allocation to hold at least `need` values, keeping its contents.
    fn reserve(&self, buf: &mut CudaBuffer, need: usize) -> Result<(), CudaError> {
        if need <= buf.capacity() {
            return Ok(());
        }
        let cap = need.max(buf.capacity() * 2);
        let mut fresh = self.alloc(cap)?;
        self.copy_dtod(fresh.ptr(), buf.ptr(), buf.len)?;
        fresh.len = buf.len;
        *buf = fresh;
        Ok(())
    }

    /// [`Backend::linear`] with the INT4 GEMV variant chosen (one of [`W4_GEMV_VARIANTS`]): the
    /// benchmark compares them. Other formats and GEMM sizes ignore `w4_variant`.
    pub fn linear_with(
        &self,
        w: &CudaLinear,
        x: CuView<'_>,
        m: usize,
        out: CuViewMut<'_>,
        w4_variant: &str,
    ) -> Result<(), CudaError> {
        if !self.product_needs_kernel(w, x, m, &out)? {
            return Ok(());
        }
        let d = &w.w;
        let (wp, pp) = w.ptrs(self.stream());
        let (xp, op) = (x.ptr, out.ptr);
        let rows = to_i32(d.rows)?;
        let cols = to_i32(d.cols)?;
        let gsz = to_i32(d.group)?;
        let ng = to_i32(d.groups)?;
        if m <= GEMV_MAX_M {
            let variant = match d.format {
                Format::Int4 if !d.f32_params => w4_variant,
                _ => "r4u1",
            };
            if !W4_GEMV_VARIANTS.contains(&variant) {
                return Err(CudaError::Shape(format!(
                    "no INT4 GEMV variant {variant:?} (one of {W4_GEMV_VARIANTS:?})"
                )));
            }
            // "r4u1": 4 rows per warp.
            let r: usize = variant[1..variant.find('u').unwrap_or(2)].parse().unwrap_or(4);
            let name = format!("gemv_{}_{variant}", w.suffix());
            let ld = to_i32(d.ld)?;
            let xvec = i32::from(xp % 16 == 0 && d.cols % 4 == 0);
            let rows_per_block = 4 * r;
            let cfg = LaunchConfig {
                grid_dim: (d.rows.div_ceil(rows_per_block) as u32, m as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let f = self.func(&name)?;
            let mut b = self.stream().launch_builder(f);
            b.arg(&wp).arg(&pp).arg(&xp).arg(&op).arg(&rows).arg(&cols).arg(&ld).arg(&gsz).arg(&ng).arg(&xvec);
            // SAFETY: the argument list matches the kernel's signature; the weight holds `rows`
            // rows of `ld` chunks, x holds `m * cols` and out `m * rows` values (checked above).
            unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv(&name, e))
        } else {
            self.gemm(w, x, m, out, self.dev.tensor_cores)
        }
    }

    /// `out = x · Wᵀ` on the tensor cores (mma.sync, f16 operands, f32 sums) for any `m`: within
    /// f16 rounding of [`Backend::linear`], not bit-close to the CPU. The backend uses it for
    /// prefill products when `LOWBIT_CUDA_TENSOR_CORES=1`.
    pub fn linear_tensor_cores(
        &self,
        w: &CudaLinear,
        x: CuView<'_>,
        m: usize,
        out: CuViewMut<'_>,
    ) -> Result<(), CudaError> {
        if !self.product_needs_kernel(w, x, m, &out)? {
            return Ok(());
        }
        self.gemm(w, x, m, out, true)
    }

    /// The checks every product starts with: the sticky error, the shapes; an empty product is
    /// done here (with `cols == 0` the output is zeros). Whether a kernel has work left.
    fn product_needs_kernel(
        &self,
        w: &CudaLinear,
        x: CuView<'_>,
        m: usize,
        out: &CuViewMut<'_>,
    ) -> Result<bool, CudaError> {
        self.take_sticky()?;
        let d = &w.w;
        if x.len != m * d.cols || out.len != m * d.rows {
            return Err(CudaError::Shape(format!(
                "a {} x {} product of {m} rows needs {} inputs and {} outputs, got {} and {}",
                d.rows,
                d.cols,
                m * d.cols,
                m * d.rows,
                x.len,
                out.len
            )));
        }
        if m == 0 || d.rows == 0 {
            return Ok(false);
        }
        if d.cols == 0 {
            self.memset_zero(out.ptr, out.len)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The tiled GEMM, FP32 or tensor-core; shapes already checked, none of them zero.
    fn gemm(&self, w: &CudaLinear, x: CuView<'_>, m: usize, out: CuViewMut<'_>, tc: bool) -> Result<(), CudaError> {
        let d = &w.w;
        let (wp, pp) = w.ptrs(self.stream());
        let (xp, op) = (x.ptr, out.ptr);
        let (rows, cols, gsz, ng) = (to_i32(d.rows)?, to_i32(d.cols)?, to_i32(d.group)?, to_i32(d.groups)?);
        let name = format!("{}_{}", if tc { "gemm_tc" } else { "gemm" }, w.suffix());
        let mi = to_i32(m)?;
        let ldb = to_i32(d.ld * 16)?;
        let cfg = LaunchConfig {
            grid_dim: (d.rows.div_ceil(64) as u32, m.div_ceil(64) as u32, 1),
            block_dim: (if tc { 128 } else { 256 }, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func(&name)?;
        let mut b = self.stream().launch_builder(f);
        b.arg(&wp).arg(&pp).arg(&xp).arg(&op).arg(&mi).arg(&rows).arg(&cols).arg(&ldb).arg(&gsz).arg(&ng);
        // SAFETY: the argument list matches the kernel's signature; x holds m * cols and out
        // m * rows values (checked by the callers); the tile loads are bounds-checked.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv(&name, e))
    }

    /// The index of the largest value in each of `rows` rows of `n` values of `x` (first on
    /// ties): greedy decoding without downloading the logits, only the token ids.
    pub fn argmax(&self, x: CuView<'_>, rows: usize, n: usize) -> Result<Vec<u32>, CudaError> {
        self.take_sticky()?;
        if x.len != rows * n || n == 0 {
            return Err(CudaError::Shape(format!("argmax of {rows} rows of {n} over {} values", x.len)));
        }
        if rows == 0 {
            return Ok(vec![]);
        }
        let out = self.stream().alloc_zeros::<u32>(rows).map_err(|e| drv("alloc", e))?;
        let (xp, op, ni) = (x.ptr, out.device_ptr(self.stream()).0, to_i32(n)?);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream().launch_builder(self.func("argmax")?);
        b.arg(&xp).arg(&ni).arg(&op);
        // SAFETY: x holds rows * n values and out rows ids (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| drv("argmax", e))?;
        let ids = self.stream().clone_dtoh(&out).map_err(|e| drv("argmax download", e))?;
        self.stream().synchronize().map_err(|e| drv("argmax download", e))?;
        Ok(ids)
    }

    /// Bandwidth of a device-to-device copy of `bytes` bytes (read plus written, GB/s), the
    /// median of `iters` timed copies: the ceiling the GEMV is measured against.
    pub fn copy_bandwidth(&self, bytes: usize, iters: usize) -> Result<f64, CudaError> {
        let n = bytes / 4;
        let src = self.zeros(n)?;
        let dst = self.zeros(n)?;
        let (s, d) = (src.ptr(), dst.ptr());
        let t = self.time(iters, || self.copy_dtod(d, s, n))?;
        Ok(2.0 * (n * 4) as f64 / t / 1e9)
    }

    /// The median time in seconds of `f` (queued work, timed with device events) over `iters`
    /// runs after two warm-up runs.
    pub fn time(&self, iters: usize, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        f()?;
        f()?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let a = self.dev.ctx.new_event(flags).map_err(|e| drv("event", e))?;
            let b = self.dev.ctx.new_event(flags).map_err(|e| drv("event", e))?;
            a.record(self.stream()).map_err(|e| drv("event", e))?;
            f()?;
            b.record(self.stream()).map_err(|e| drv("event", e))?;
            b.synchronize().map_err(|e| drv("event", e))?;
            times.push(f64::from(a.elapsed_ms(&b).map_err(|e| drv("event", e))?) / 1e3);
        }
        self.take_sticky()?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

fn to_i32(v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::Shape(format!("{v} exceeds the kernels' 32-bit sizes")))
}

/// NVRTC's PTX of lowbit's kernels for compute capability `major.minor`. Needs only NVRTC, no
/// driver or device: the check script and the tests compile the kernels on machines without a
/// GPU this way. The error carries NVRTC's log.
pub fn compile_kernels(major: i32, minor: i32) -> Result<String, CudaError> {
    let ptx = std::panic::catch_unwind(|| compile(major, minor))
        .map_err(|p| CudaError::Unavailable(format!("loading NVRTC failed: {}", panic_text(&*p))))??;
    Ok(ptx.to_src())
}

fn compile(major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    // SAFETY: this only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::Unavailable(
            "NVRTC (libnvrtc.so.13 or libnvrtc.so) was not found: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    // PTX for the device's virtual architecture; the driver turns it into the device's code
    // when the module is loaded.
    let compute: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(compute),
        options: vec!["-default-device".into(), "--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| {
        let log = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        CudaError::Compile { arch: compute.to_string(), log }
    })
}

/// Opens the device and compiles the kernels for it.
fn open(ordinal: usize) -> Result<Device, CudaError> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::Unavailable("no CUDA driver library (libcuda.so) was found".into()));
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::Unavailable(format!("the CUDA driver: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(CudaError::Unavailable(format!("no CUDA device {ordinal} ({count} present)")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::Unavailable(format!("device {ordinal}: {e}")))?;
    // SAFETY: one stream, in-order; no buffer is shared with another stream.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx.compute_capability().map_err(|e| drv("compute capability", e))?;
    let name = ctx.name().map_err(|e| drv("device name", e))?;
    let arch = format!("sm_{major}{minor}");
    let ptx = compile(major, minor)?;
    let module = ctx.load_module(ptx).map_err(|e| drv("loading the compiled kernels", e))?;
    let mut funcs = HashMap::new();
    for &k in KERNELS {
        funcs.insert(k, module.load_function(k).map_err(|e| drv(&format!("kernel {k}"), e))?);
    }
    let stream = ctx.default_stream();
    let tensor_cores = std::env::var("LOWBIT_CUDA_TENSOR_CORES").as_deref() == Ok("1");
    let w4_variant = std::env::var("LOWBIT_CUDA_W4_VARIANT")
        .ok()
        .and_then(|v| W4_GEMV_VARIANTS.iter().copied().find(|&k| k == v))
        .unwrap_or(DEFAULT_W4_VARIANT);
    Ok(Device { ctx, stream, funcs, name, arch, tensor_cores, w4_variant, sticky: Mutex::new(None) })
}

impl Backend for Cuda {
    crate::backend_types!();

    fn zeros(&self, len: usize) -> Result<CudaBuffer, CudaError> {
        let b = self.alloc(len)?;
        self.memset_zero(b.ptr(), len)?;
        Ok(b)
    }
    fn upload(&self, host: &[f32]) -> Result<CudaBuffer, CudaError> {
        if host.is_empty() {
            return Ok(CudaBuffer { slice: None, len: 0 });
        }
        let s = self.stream().clone_htod(host).map_err(|e| drv("upload", e))?;
        Ok(CudaBuffer { slice: Some(s), len: host.len() })
    }
    fn to_host(&self, buf: CudaBuffer) -> Result<Vec<f32>, CudaError> {
        self.take_sticky()?;
        let Some(s) = &buf.slice else { return Ok(vec![]) };
        let v = self.stream().clone_dtoh(&s.slice(0..buf.len)).map_err(|e| drv("download", e))?;
        self.stream().synchronize().map_err(|e| drv("download", e))?;
        self.take_sticky()?;
        Ok(v)
    }
    fn buf_len(&self, buf: &CudaBuffer) -> usize {
        buf.len
    }
    fn resize(&self, buf: &mut CudaBuffer, len: usize) -> Result<(), CudaError> {
        if len > buf.len {
            self.reserve(buf, len)?;
            self.memset_zero(buf.ptr() + 4 * buf.len as u64, len - buf.len)?;
        }
        buf.len = len;
        Ok(())
    }
    fn append(&self, buf: &mut CudaBuffer, src: CuView<'_>) -> Result<(), CudaError> {
        let old = buf.len;
        self.reserve(buf, old + src.len)?;
        self.copy_dtod(buf.ptr() + 4 * old as u64, src.ptr, src.len)?;
        buf.len = old + src.len;
        Ok(())
    }
    fn truncate(&self, buf: &mut CudaBuffer, len: usize) {
        buf.len = buf.len.min(len);
    }
    fn view<'a>(&self, buf: &'a CudaBuffer, range: Range<usize>) -> CuView<'a> {
        assert!(range.start <= range.end && range.end <= buf.len, "view {range:?} of a buffer of {}", buf.len);
        CuView { ptr: buf.ptr() + 4 * range.start as u64, len: range.len(), _buf: PhantomData }
    }
    fn view_mut<'a>(&self, buf: &'a mut CudaBuffer, range: Range<usize>) -> CuViewMut<'a> {
        assert!(range.start <= range.end && range.end <= buf.len, "view {range:?} of a buffer of {}", buf.len);
        CuViewMut { ptr: buf.ptr() + 4 * range.start as u64, len: range.len(), _buf: PhantomData }
    }

    fn load_linear(&self, rows: usize, cols: usize, w: HostWeight<'_>) -> Result<CudaLinear, CudaError> {
        let p = Packed::from_host(rows, cols, w)?;
        let up = |bytes: &[u8]| -> Result<CudaSlice<u8>, CudaError> {
            // A zero-size allocation is refused by the driver; a 16-byte one keeps pointers valid.
            if bytes.is_empty() {
                return self.stream().alloc_zeros::<u8>(16).map_err(|e| drv("upload weight", e));
            }
            self.stream().clone_htod(bytes).map_err(|e| drv("upload weight", e))
        };
        let data = up(&p.data)?;
        let (params, f32_params) = match &p.params {
            GroupParams::None => (None, false),
            GroupParams::Half(v) => (Some(up(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?), false),
            GroupParams::Float(v) => (Some(up(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?), true),
        };
        Ok(CudaLinear {
            w: Arc::new(LinearData {
                format: p.format,
                rows,
                cols,
                ld: p.ld,
                group: p.group,
                groups: p.groups,
                f32_params,
                data,
                params,
            }),
        })
    }
    fn linear_dims(&self, w: &CudaLinear) -> (usize, usize) {
        (w.w.rows, w.w.cols)
    }

    fn linear(&self, w: &CudaLinear, x: CuView<'_>, m: usize, out: CuViewMut<'_>) -> Result<(), CudaError> {
        self.linear_with(w, x, m, out, self.dev.w4_variant)
    }

    fn embed(&self, table: &CudaLinear, tokens: &[u32], out: CuViewMut<'_>) -> Result<(), CudaError> {
        self.take_sticky()?;
        let d = &table.w;
        if out.len != tokens.len() * d.cols {
            return Err(CudaError::Shape(format!("embedding {} tokens into {} values", tokens.len(), out.len)));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= d.rows) {
            return Err(CudaError::Shape(format!("token id {bad} is outside the table's {} rows", d.rows)));
        }
        if tokens.is_empty() || d.cols == 0 {
            return Ok(());
        }
        let ids = self.stream().clone_htod(tokens).map_err(|e| drv("upload token ids", e))?;
        let (wp, pp) = table.ptrs(self.stream());
        let (tp, op) = (ids.device_ptr(self.stream()).0, out.ptr);
        let (cols, ldb, gsz, ng) = (to_i32(d.cols)?, to_i32(d.ld * 16)?, to_i32(d.group)?, to_i32(d.groups)?);
        let name = format!("embed_{}", table.suffix());
        let cfg = LaunchConfig { grid_dim: (tokens.len() as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream().launch_builder(self.func(&name)?);
        b.arg(&wp).arg(&pp).arg(&tp).arg(&op).arg(&cols).arg(&ldb).arg(&gsz).arg(&ng);
        // SAFETY: ids are rows of the table (checked), out holds tokens * cols values; the ids'
        // allocation is freed in stream order after the kernel.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv(&name, e))
    }

    fn rms_norm(&self, x: CuView<'_>, weight: CuView<'_>, eps: f32, out: CuViewMut<'_>) {
        let d = weight.len;
        if d == 0 || x.len == 0 {
            return;
        }
        if x.len != out.len || x.len % d != 0 {
            return self.keep(Err(CudaError::Shape(format!("rms_norm of {} values by {d} into {}", x.len, out.len))));
        }
        let r = (|| {
            let (xp, wp, op, di) = (x.ptr, weight.ptr, out.ptr, to_i32(d)?);
            let cfg =
                LaunchConfig { grid_dim: ((x.len / d) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.stream().launch_builder(self.func("rms_norm")?);
            b.arg(&xp).arg(&wp).arg(&op).arg(&di).arg(&eps);
            // SAFETY: x and out hold whole rows of d values, weight d values (checked above).
            unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv("rms_norm", e))
        })();
        self.keep(r);
    }
    fn rms_norm_inplace(&self, x: CuViewMut<'_>, weight: CuView<'_>, eps: f32) {
        let v = CuView { ptr: x.ptr, len: x.len, _buf: PhantomData };
        // The kernel reads each element before the same thread overwrites it.
        self.rms_norm(v, weight, eps, x);
    }
    fn add(&self, x: CuViewMut<'_>, y: CuView<'_>) {
        if x.len != y.len {
            return self.keep(Err(CudaError::Shape(format!("add of {} and {} values", x.len, y.len))));
        }
        let (xp, yp, n) = (x.ptr, y.ptr, x.len as i32);
        launch_1d!(self, "add", x.len, xp, yp, n);
    }
    fn add_bias(&self, x: CuViewMut<'_>, bias: CuView<'_>) {
        if bias.len == 0 || x.len % bias.len != 0 {
            return self.keep(Err(CudaError::Shape(format!("bias of {} for {} values", bias.len, x.len))));
        }
        let (xp, bp, n, d) = (x.ptr, bias.ptr, x.len as i32, bias.len as i32);
        launch_1d!(self, "add_bias", x.len, xp, bp, n, d);
    }
    fn swiglu(&self, g: CuViewMut<'_>, u: CuView<'_>) {
        if g.len != u.len {
            return self.keep(Err(CudaError::Shape(format!("swiglu of {} and {} values", g.len, u.len))));
        }
        let (gp, up, n) = (g.ptr, u.ptr, g.len as i32);
        launch_1d!(self, "swiglu", g.len, gp, up, n);
    }
    fn rope(&self, x: CuViewMut<'_>, width: usize, head_dim: usize, cos: CuView<'_>, sin: CuView<'_>) {
        if width == 0 || head_dim == 0 || x.len == 0 {
            return;
        }
        let m = x.len / width;
        let half = head_dim / 2;
        if x.len % width != 0 || width % head_dim != 0 || cos.len < m * half || sin.len < m * half {
            return self.keep(Err(CudaError::Shape(format!(
                "rope of {} values, width {width}, head_dim {head_dim}, {} angles",
                x.len, cos.len
            ))));
        }
        let (xp, cp, sp) = (x.ptr, cos.ptr, sin.ptr);
        let (mi, wi, hi) = (m as i32, width as i32, head_dim as i32);
        launch_1d!(self, "rope", m * (width / head_dim) * half, xp, cp, sp, mi, wi, hi);
    }
    fn attention(
        &self,
        shape: &AttnShape,
        q: CuView<'_>,
        k: CuView<'_>,
        v: CuView<'_>,
        past: usize,
        out: CuViewMut<'_>,
    ) {
        let qd = shape.q_dim();
        if qd == 0 || out.len == 0 {
            return;
        }
        let n = out.len / qd;
        let kvd = shape.kv_dim();
        let bad = shape.head_dim > MAX_HEAD_DIM
            || shape.kv_heads == 0
            || shape.heads % shape.kv_heads != 0
            || out.len % qd != 0
            || q.len != out.len
            || k.len < (past + n) * kvd
            || v.len < (past + n) * kvd;
        if bad {
            return self.keep(Err(CudaError::Shape(format!(
                "attention {shape:?} of {n} queries after {past} over {} keys (head_dim at most {MAX_HEAD_DIM})",
                k.len / kvd.max(1)
            ))));
        }
        let r = (|| {
            let (qp, kp, vp, op) = (q.ptr, k.ptr, v.ptr, out.ptr);
            let (h, kvh, hd, pi) =
                (to_i32(shape.heads)?, to_i32(shape.kv_heads)?, to_i32(shape.head_dim)?, to_i32(past)?);
            let window = shape.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
            let scale = 1.0 / (shape.head_dim as f32).sqrt();
            let cfg = LaunchConfig {
                grid_dim: (shape.heads as u32, n as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream().launch_builder(self.func("attention")?);
            b.arg(&qp).arg(&kp).arg(&vp).arg(&op).arg(&h).arg(&kvh).arg(&hd).arg(&pi).arg(&window).arg(&scale);
            // SAFETY: q and out hold n rows of q_dim, k and v past + n rows of kv_dim (checked).
            unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| drv("attention", e))
        })();
        self.keep(r);
    }
}
