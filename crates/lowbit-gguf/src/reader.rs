//! Reading GGUF (v2 and v3): header, metadata, tensor infos and tensor data.
//!
//! [`GgufHeader::parse`] reads everything but the tensor data from a byte slice and checks it
//! against the file's length; [`GgufFile`] keeps the bytes (memory-mapped by [`GgufFile::open`]
//! with the `mmap` feature) for reading tensors. Every read is bounds-checked and every count is
//! held to the limits in [`crate::limits`] and to what the remaining bytes could hold, so a
//! truncated or hostile file is a [`GgufError`], never a panic or a huge allocation.

use crate::limits::*;
use crate::{GgmlType, GgufError, GgufValue, GgufValueType, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The GGUF magic.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// Where one tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dims, innermost first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub nbytes: usize,
}

impl GgufTensorInfo {
    /// Shape outermost first (the Hugging Face / PyTorch order).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// Everything in a GGUF file but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key-value pairs.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order, offsets absolute and checked against the input length.
    pub tensors: Vec<GgufTensorInfo>,
    /// Alignment of the tensor data (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = self.left();
        if n > left as u64 {
            return Err(GgufError::Truncated { offset: self.pos, what: what.to_string(), needed: n, left });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A count checked against `limit` and against the bytes left, at `min_size` bytes per item,
    /// so that callers may reserve capacity for it.
    fn count(&mut self, what: &str, limit: u64, min_size: u64) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::LimitExceeded { offset: at, what: what.to_string(), value: n, limit });
        }
        if n.saturating_mul(min_size) > self.left() as u64 {
            return Err(GgufError::Truncated {
                offset: self.pos,
                what: format!("{n} items of {what}"),
                needed: n.saturating_mul(min_size),
                left: self.left(),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str, limit: u64) -> Result<String> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::LimitExceeded { offset: at, what: format!("length of {what}"), value: n, limit });
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::malformed(at, format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: GgufValueType, key: &str, depth: u32) -> Result<GgufValue> {
        use GgufValue as V;
        Ok(match ty {
            GgufValueType::U8 => V::U8(self.arr::<1>(key)?[0]),
            GgufValueType::I8 => V::I8(self.arr::<1>(key)?[0] as i8),
            GgufValueType::U16 => V::U16(u16::from_le_bytes(self.arr(key)?)),
            GgufValueType::I16 => V::I16(i16::from_le_bytes(self.arr(key)?)),
            GgufValueType::U32 => V::U32(self.u32(key)?),
            GgufValueType::I32 => V::I32(i32::from_le_bytes(self.arr(key)?)),
            GgufValueType::F32 => V::F32(f32::from_le_bytes(self.arr(key)?)),
            GgufValueType::Bool => match self.arr::<1>(key)?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => return Err(GgufError::malformed(self.pos - 1, format!("{key}: bad boolean byte {b}"))),
            },
            GgufValueType::Str => V::Str(self.string(key, MAX_STRING_LEN)?),
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::LimitExceeded {
                        offset: self.pos,
                        what: format!("{key}: array nesting"),
                        value: u64::from(depth) + 1,
                        limit: MAX_ARRAY_DEPTH.into(),
                    });
                }
                let inner = self.value_type(key)?;
                // Strings take at least their 8-byte length, arrays 12 bytes of header.
                let min_size = inner.fixed_size().unwrap_or(if inner == GgufValueType::Str { 8 } else { 12 });
                let n = self.count(key, MAX_ARRAY_LEN, min_size as u64)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, key, depth + 1)?);
                }
                V::Array(inner, v)
            }
            GgufValueType::U64 => V::U64(self.u64(key)?),
            GgufValueType::I64 => V::I64(i64::from_le_bytes(self.arr(key)?)),
            GgufValueType::F64 => V::F64(f64::from_le_bytes(self.arr(key)?)),
        })
    }
    fn value_type(&mut self, key: &str) -> Result<GgufValueType> {
        let at = self.pos;
        let id = self.u32(key)?;
        GgufValueType::from_id(id).ok_or_else(|| GgufError::malformed(at, format!("{key}: unknown value type {id}")))
    }
}

/// `general.alignment` from parsed metadata, or the default.
pub(crate) fn alignment_of(metadata: &BTreeMap<String, GgufValue>) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(GgufError::Metadata {
                key: "general.alignment".into(),
                reason: format!("{v:?} is not a power of two up to {MAX_ALIGNMENT}"),
            }),
        },
    }
}

/// FileBytes of a tensor with ggml dims `dims` of type `ty`, checking the limits and that rows are
/// whole blocks.
pub(crate) fn tensor_nbytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<usize> {
    let bad = |reason: String| GgufError::BadDims { name: name.to_string(), dims: dims.to_vec(), reason };
    let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_ELEMENTS);
    let numel = numel.ok_or_else(|| bad(format!("more than {MAX_TENSOR_ELEMENTS} elements")))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_len() as u64 != 0 {
        return Err(bad(format!("rows of {ne0} are not whole {}-element {} blocks", ty.block_len(), ty.name())));
    }
    ty.bytes_for(numel as usize).ok_or_else(|| bad("byte count overflows".into()))
}

impl GgufHeader {
    /// Parses the header of a GGUF file held in `bytes` (the whole file: tensor offsets are
    /// checked against its length). This is the entry point to fuzz.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, "the magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic.to_vec() });
        }
        let version = r.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        // Minimum sizes on disk: a tensor info is a name length, one dim, a type and an offset
        // (8 + 4 + 8 + 4 + 8 bytes); a KV pair a key length, a type and one byte.
        let n_tensors = r.count("the tensor count", MAX_TENSORS, 32)?;
        let n_kv = r.count("the metadata count", MAX_KV_PAIRS, 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let at = r.pos;
            let key = r.string("a metadata key", MAX_KEY_LEN)?;
            let ty = r.value_type(&key)?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::malformed(at, format!("duplicate metadata key {key}")));
            }
        }
        let alignment = alignment_of(&metadata)?;
        let mut infos = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let at = r.pos;
            let name = r.string("a tensor name", MAX_TENSOR_NAME_LEN)?;
            if !names.insert(name.clone()) {
                return Err(GgufError::malformed(at, format!("duplicate tensor name {name}")));
            }
            let dims_at = r.pos;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::LimitExceeded {
                    offset: dims_at,
                    what: format!("tensor {name}: dimension count (1 at least)"),
                    value: n_dims.into(),
                    limit: MAX_DIMS.into(),
                });
            }
            let dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<u64>>>()?;
            let ty_id = r.u32(&name)?;
            let rel = r.u64(&name)?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| GgufError::UnknownTensorType { name: name.clone(), id: ty_id })?;
            let nbytes = tensor_nbytes(&name, &dims, ty)?;
            infos.push((name, dims, ty, rel, nbytes));
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty, rel, nbytes) in infos {
            let bad = |reason: String| GgufError::BadTensorData {
                name: name.clone(),
                offset: rel,
                nbytes: nbytes as u64,
                reason,
            };
            if rel % alignment != 0 {
                return Err(bad(format!("not a multiple of the alignment {alignment}")));
            }
            let end = data_offset.checked_add(rel).and_then(|o| o.checked_add(nbytes as u64));
            match end {
                Some(end) if end <= bytes.len() as u64 => {}
                _ => return Err(bad(format!("lies past the end of the {}-byte file (truncated?)", bytes.len()))),
            }
            tensors.push(GgufTensorInfo { name, dims, ty, offset: (data_offset + rel) as usize, nbytes });
        }
        let mut spans: Vec<(usize, usize, &str)> =
            tensors.iter().filter(|t| t.nbytes > 0).map(|t| (t.offset, t.offset + t.nbytes, t.name.as_str())).collect();
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            let t = tensors.iter().find(|t| t.name == w[1].2).map(|t| (t.offset - data_offset as usize, t.nbytes));
            let (rel, nbytes) = t.unwrap_or((0, 0));
            return Err(GgufError::BadTensorData {
                name: w[1].2.to_string(),
                offset: rel as u64,
                nbytes: nbytes as u64,
                reason: format!("overlaps tensor {}", w[0].2),
            });
        }
        Ok(GgufHeader { version, metadata, tensors, alignment, data_offset: data_offset as usize })
    }
}

/// The bytes of a file: memory-mapped (feature `mmap`) or read into memory. lowbit-model's
/// loaders hold their safetensors files in it too, so the one `unsafe` map lives here.
pub enum FileBytes {
    /// Read into memory (or handed over by the caller).
    Owned(Vec<u8>),
    /// Memory-mapped, read lazily by the OS.
    #[cfg(feature = "mmap")]
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            #[cfg(feature = "mmap")]
            FileBytes::Mapped(m) => m,
        }
    }
}

impl FileBytes {
    /// Opens `path`, mapping it when the `mmap` feature is on (an empty file is read, since
    /// zero-length maps are refused by some systems).
    pub fn read(path: &Path) -> std::io::Result<FileBytes> {
        #[cfg(feature = "mmap")]
        {
            let file = std::fs::File::open(path)?;
            if file.metadata()?.len() == 0 {
                return Ok(FileBytes::Owned(Vec::new()));
            }
            Ok(FileBytes::Mapped(map_file(&file)?))
        }
        #[cfg(not(feature = "mmap"))]
        {
            Ok(FileBytes::Owned(std::fs::read(path)?))
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

fn read_bytes(path: &Path) -> Result<FileBytes> {
    FileBytes::read(path).map_err(|e| GgufError::io(path, e))
}

/// A parsed GGUF file, its bytes kept (mapped) for reading tensors.
pub struct GgufFile {
    path: Option<PathBuf>,
    bytes: FileBytes,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("len", &self.bytes.len()).finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens and parses `path` (memory-mapped with the `mmap` feature).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_bytes(path)?;
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile { path: Some(path.to_path_buf()), bytes, header })
    }

    /// Parses a GGUF file held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile { path: None, bytes: FileBytes::Owned(bytes), header })
    }

    /// Parses a copy of `bytes` (see [`GgufHeader::parse`] to read a header without copying).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// The file this was read from, if it came from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }
    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }
    /// Metadata key-value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.header.metadata
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }
    /// Alignment of the tensor data.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.header.metadata.get(key)
    }
    /// A metadata string, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }
    /// A metadata unsigned integer: `None` when absent, an error when of another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| self.type_err(key, "an unsigned integer"))).transpose()
    }
    /// A metadata number: `None` when absent, an error when not numeric.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.type_err(key, "a number"))).transpose()
    }
    /// A metadata array of strings: `None` when absent, an error when of another type.
    pub fn get_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let arr = v.as_array().ok_or_else(|| self.type_err(key, "an array of strings"))?;
        arr.iter()
            .map(|v| v.as_str().ok_or_else(|| self.type_err(key, "an array of strings")))
            .collect::<Result<_>>()
            .map(Some)
    }
    fn type_err(&self, key: &str, expected: &str) -> GgufError {
        GgufError::Metadata { key: key.to_string(), reason: format!("not {expected}") }
    }

    /// A tensor's info by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw bytes. `info` should come from this file; any other is checked against
    /// the file's length.
    pub fn raw(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        info.offset.checked_add(info.nbytes).and_then(|end| self.bytes.get(info.offset..end)).ok_or_else(|| {
            GgufError::BadTensorData {
                name: info.name.clone(),
                offset: info.offset as u64,
                nbytes: info.nbytes as u64,
                reason: "lies outside the file".into(),
            }
        })
    }

    /// A tensor's raw bytes by name.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })?;
        self.raw(info)
    }

    /// A tensor dequantized to f32, shape outermost first.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })?;
        Ok((info.shape(), crate::dequantize_to_vec(info.ty, self.raw(info)?, info.numel())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_headers_are_errors() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(100u64.to_le_bytes()); // key length past the end
        b.extend(b"abc");
        for cut in 0..b.len() {
            assert!(GgufHeader::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(GgufHeader::parse(&b), Err(GgufError::Truncated { .. })));
        assert!(matches!(GgufHeader::parse(b"GGML\x03\0\0\0"), Err(GgufError::BadMagic { .. })));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        assert!(matches!(GgufHeader::parse(&b), Err(GgufError::LimitExceeded { .. })));
        // Within the limit but more than the bytes could hold.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1000u64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        assert!(matches!(GgufHeader::parse(&b), Err(GgufError::Truncated { .. })));
    }
}
