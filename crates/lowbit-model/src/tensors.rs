//! Tensors as the loaders hand them to the model builder, and the byte buffers files live in.

use crate::{ModelError, Result};
use half::{bf16, f16};
use lowbit_cpu::WeightKind;
use std::path::Path;

/// The bytes of a file: memory-mapped (feature `mmap`) or read into memory (lowbit-gguf's type,
/// so the crate keeps no `unsafe` of its own).
pub(crate) use lowbit_gguf::FileBytes as Bytes;

/// Opens `path` as [`Bytes`], mapping it when the `mmap` feature is on.
pub(crate) fn read_bytes(path: &Path) -> Result<Bytes> {
    Bytes::read(path).map_err(|e| ModelError::io(path, e))
}

/// Element storage of a loaded tensor: the storage a kernel weight keeps, so a tensor becomes a
/// weight without conversion.
pub use lowbit_cpu::WeightKind as TensorData;

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
        self.data.to_f32()
    }

    /// Converts into a kernel weight without changing its storage.
    pub fn into_weight(self) -> WeightKind {
        self.data
    }
}

/// Something tensors can be taken out of by Hugging Face name.
pub(crate) trait TensorSource {
    /// The tensor `name`, or `None` when the checkpoint lacks it.
    fn take(&mut self, name: &str) -> Result<Option<Tensor>>;
    /// What the user should know about the tensors taken so far (types dequantized, suspicious
    /// values), one line per finding: [`crate::Model::load_warnings`] keeps them.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
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
