//! Tensors as the loaders hand them to the model builder, and the byte buffers files live in.

use crate::{ModelError, Result};
use half::{bf16, f16};
use lowbit_core::QTensor;
use lowbit_cpu::WeightKind;
use std::path::Path;

/// The bytes of a file: memory-mapped (feature `mmap`) or read into memory.
pub(crate) enum Bytes {
    /// Read into memory.
    Owned(Vec<u8>),
    /// Memory-mapped, read lazily by the OS.
    #[cfg(feature = "mmap")]
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            #[cfg(feature = "mmap")]
            Bytes::Mapped(m) => m,
        }
    }
}

/// Maps `file` read-only.
#[cfg(feature = "mmap")]
#[allow(unsafe_code)]
fn map_file(file: &std::fs::File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting the file while it is mapped would be undefined behaviour; model files are treated
    // as immutable while loaded (the same contract safetensors, candle and llama.cpp rely on).
    unsafe { memmap2::Mmap::map(file) }
}

/// Opens `path` as [`Bytes`], mapping it when the `mmap` feature is on.
pub(crate) fn read_bytes(path: &Path) -> Result<Bytes> {
    #[cfg(feature = "mmap")]
    {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if len == 0 {
            return Ok(Bytes::Owned(Vec::new()));
        }
        Ok(Bytes::Mapped(map_file(&file).map_err(|e| ModelError::io(path, e))?))
    }
    #[cfg(not(feature = "mmap"))]
    {
        Ok(Bytes::Owned(std::fs::read(path).map_err(|e| ModelError::io(path, e))?))
    }
}

/// Element storage of a loaded tensor.
#[derive(Clone, Debug)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    Bf16(Vec<bf16>),
    /// A lowbit quantized tensor (kept packed).
    Quant(QTensor),
}

/// A named tensor's shape and data, as a loader produced it.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Shape, outermost first (Hugging Face order: `[out_features, in_features]` for weights).
    pub shape: Vec<usize>,
    /// Elements.
    pub data: TensorData,
}

impl Tensor {
    /// Dense f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Tensor { shape, data: TensorData::F32(data) }
    }

    /// Elements as f32 (dequantizing a quantized tensor).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Quant(q) => q.dequantize(),
        }
    }

    /// Converts into a kernel weight without changing its storage.
    pub fn into_weight(self) -> WeightKind {
        match self.data {
            TensorData::F32(v) => WeightKind::F32(v),
            TensorData::F16(v) => WeightKind::F16(v),
            TensorData::Bf16(v) => WeightKind::Bf16(v),
            TensorData::Quant(q) => WeightKind::Quant(q),
        }
    }
}

/// Something tensors can be taken out of by Hugging Face name.
pub(crate) trait TensorSource {
    /// The tensor `name`, or `None` when the checkpoint lacks it.
    fn take(&mut self, name: &str) -> Result<Option<Tensor>>;
}

/// Reads little-endian f32s.
pub(crate) fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
/// Reads little-endian f16s.
pub(crate) fn le_f16(bytes: &[u8]) -> Vec<f16> {
    bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()
}
/// Reads little-endian bf16s.
pub(crate) fn le_bf16(bytes: &[u8]) -> Vec<bf16> {
    bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()
}
