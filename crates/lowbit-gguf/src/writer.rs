//! Writing GGUF v3: declare the metadata and the tensors, then stream each tensor's data in the
//! declared order. Only the header is held in memory; tensor data goes straight to the output.
//!
//! ```no_run
//! use lowbit_gguf::{GgmlType, GgufValue, GgufWriter};
//! let mut w = GgufWriter::new();
//! w.add_kv("general.architecture", GgufValue::Str("llama".into()))?;
//! w.add_tensor("output_norm.weight", GgmlType::F32, &[576])?;
//! let mut out = w.create("model.gguf")?;          // a temporary file next to model.gguf
//! out.write_tensor_f32("output_norm.weight", &[1.0; 576])?;
//! out.finish()?;                                  // renamed into place only when complete
//! # Ok::<(), lowbit_gguf::GgufError>(())
//! ```

use crate::limits::*;
use crate::reader::{alignment_of, tensor_nbytes, MAGIC};
use crate::{GgmlType, GgufError, GgufValue, Result};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor declared to the writer.
#[derive(Clone, Debug)]
struct Declared {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    nbytes: usize,
}

/// Collects metadata and tensor declarations, then writes the header with [`GgufWriter::begin`]
/// (any `Write`) or [`GgufWriter::create`] (a file, atomically).
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    kvs: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<Declared>,
}

fn limit(what: String, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(GgufError::LimitExceeded { offset: 0, what, value, limit });
    }
    Ok(())
}

/// Checks a value the way the reader will: lengths within the limits, arrays homogeneous.
fn check_value(key: &str, v: &GgufValue, depth: u32) -> Result<()> {
    match v {
        GgufValue::Str(s) => limit(format!("{key}: string length"), s.len() as u64, MAX_STRING_LEN),
        GgufValue::Array(ty, items) => {
            limit(format!("{key}: array nesting"), u64::from(depth) + 1, MAX_ARRAY_DEPTH.into())?;
            limit(format!("{key}: array length"), items.len() as u64, MAX_ARRAY_LEN)?;
            for item in items {
                if item.value_type() != *ty {
                    return Err(GgufError::Metadata {
                        key: key.to_string(),
                        reason: format!("array of {ty:?} holds a {:?}", item.value_type()),
                    });
                }
                check_value(key, item, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata pair (written in the order added). `general.alignment` sets the data
    /// alignment (a power of two; write it as a u32, as llama.cpp expects).
    pub fn add_kv(&mut self, key: impl Into<String>, value: GgufValue) -> Result<&mut Self> {
        let key = key.into();
        limit("metadata key length".into(), key.len() as u64, MAX_KEY_LEN)?;
        limit("metadata count".into(), self.kvs.len() as u64 + 1, MAX_KV_PAIRS)?;
        check_value(&key, &value, 0)?;
        if !self.keys.insert(key.clone()) {
            return Err(GgufError::Metadata { key, reason: "added twice".into() });
        }
        if key == "general.alignment" {
            alignment_of(&BTreeMap::from([(key.clone(), value.clone())]))?;
        }
        self.kvs.push((key, value));
        Ok(self)
    }

    /// Declares a tensor of type `ty` and `shape` (outermost first, the PyTorch order; stored
    /// reversed as ggml dims). Its data must later be written in declaration order.
    pub fn add_tensor(&mut self, name: impl Into<String>, ty: GgmlType, shape: &[usize]) -> Result<&mut Self> {
        let name = name.into();
        limit(format!("tensor {name}: name length"), name.len() as u64, MAX_TENSOR_NAME_LEN)?;
        limit("tensor count".into(), self.tensors.len() as u64 + 1, MAX_TENSORS)?;
        if shape.is_empty() || shape.len() > MAX_DIMS as usize {
            return Err(GgufError::LimitExceeded {
                offset: 0,
                what: format!("tensor {name}: dimension count (1 at least)"),
                value: shape.len() as u64,
                limit: MAX_DIMS.into(),
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::WriterState { reason: format!("tensor {name} declared twice") });
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let nbytes = tensor_nbytes(&name, &dims, ty)?;
        self.tensors.push(Declared { name, dims, ty, nbytes });
        Ok(self)
    }

    /// Writes the header to `out` and returns the writer for the tensor data.
    pub fn begin<W: Write>(self, out: W) -> Result<GgufDataWriter<W>> {
        let alignment = self
            .kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .map_or(Ok(DEFAULT_ALIGNMENT), |(k, v)| alignment_of(&BTreeMap::from([(k.clone(), v.clone())])))?;
        let mut out = Counting { inner: out, pos: 0 };
        let io = |e| GgufError::io(Path::new("<GGUF output>"), e);
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend(3u32.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.kvs.len() as u64).to_le_bytes());
        out.write_all(&header).map_err(io)?;
        for (k, v) in &self.kvs {
            let mut b = Vec::new();
            put_str(&mut b, k);
            b.extend(v.value_type().id().to_le_bytes());
            put_value(&mut b, v);
            out.write_all(&b).map_err(io)?;
        }
        let mut rel = 0u64;
        let mut pending = VecDeque::with_capacity(self.tensors.len());
        for t in self.tensors {
            rel = rel.div_ceil(alignment) * alignment;
            let mut b = Vec::new();
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.ty.id().to_le_bytes());
            b.extend(rel.to_le_bytes());
            out.write_all(&b).map_err(io)?;
            rel += t.nbytes as u64;
            pending.push_back(t);
        }
        out.pad_to(alignment).map_err(io)?;
        Ok(GgufDataWriter { out, pending, alignment, data_start: None })
    }

    /// Writes to a temporary file in `path`'s directory, renamed to `path` by
    /// [`GgufFileWriter::finish`]; dropped unfinished, the temporary file is removed. The file
    /// gets the process's default mode (0644 under the usual umask).
    pub fn create(self, path: impl AsRef<Path>) -> Result<GgufFileWriter> {
        let dest = path.as_ref().to_path_buf();
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let stem = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out.gguf".into());
        let (file, tmp) = (0..1000)
            .find_map(|i| {
                let tmp = dir.join(format!(".{stem}.{}.{i}.tmp", std::process::id()));
                match File::options().write(true).create_new(true).open(&tmp) {
                    Ok(f) => Some(Ok((f, tmp))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(GgufError::io(&tmp, e))),
                }
            })
            .unwrap_or_else(|| Err(GgufError::io(dir, std::io::Error::other("no free temporary file name"))))?;
        let mut guard = TempGuard(Some(tmp));
        let data = self.begin(BufWriter::new(file))?;
        let tmp = guard.0.take();
        Ok(GgufFileWriter { data: Some(data), tmp, dest })
    }
}

/// Removes a temporary file unless defused.
struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.push(*x as u8),
        GgufValue::U16(x) => b.extend(x.to_le_bytes()),
        GgufValue::I16(x) => b.extend(x.to_le_bytes()),
        GgufValue::U32(x) => b.extend(x.to_le_bytes()),
        GgufValue::I32(x) => b.extend(x.to_le_bytes()),
        GgufValue::F32(x) => b.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(u8::from(*x)),
        GgufValue::Str(s) => put_str(b, s),
        GgufValue::Array(ty, items) => {
            b.extend(ty.id().to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(b, item));
        }
        GgufValue::U64(x) => b.extend(x.to_le_bytes()),
        GgufValue::I64(x) => b.extend(x.to_le_bytes()),
        GgufValue::F64(x) => b.extend(x.to_le_bytes()),
    }
}

/// A writer that knows its position, for padding.
struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Counting<W> {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad_to(&mut self, alignment: u64) -> std::io::Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        let mut pad = (self.pos.div_ceil(alignment) * alignment - self.pos) as usize;
        while pad > 0 {
            let n = pad.min(ZEROS.len());
            self.write_all(&ZEROS[..n])?;
            pad -= n;
        }
        Ok(())
    }
}

/// Streams tensor data after the header, in declaration order.
pub struct GgufDataWriter<W: Write> {
    out: Counting<W>,
    pending: VecDeque<Declared>,
    alignment: u64,
    data_start: Option<u64>,
}

impl<W: Write> GgufDataWriter<W> {
    fn next(&mut self, name: &str) -> Result<&Declared> {
        match self.pending.front() {
            Some(t) if t.name == name => Ok(t),
            Some(t) => {
                Err(GgufError::WriterState { reason: format!("tensor {name} written where {} is next", t.name) })
            }
            None => {
                Err(GgufError::WriterState { reason: format!("tensor {name} written but not declared (or twice)") })
            }
        }
    }

    /// Writes the next tensor's data: exactly its declared bytes (ggml's layout for its type).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let expected = self.next(name)?.nbytes;
        if data.len() != expected {
            return Err(GgufError::Length { op: "GGUF write_tensor", unit: "bytes", expected, got: data.len() });
        }
        let io = |e| GgufError::io(Path::new("<GGUF output>"), e);
        let start = *self.data_start.get_or_insert(self.out.pos);
        // Pad relative to the data section (which itself starts aligned).
        let rel = self.out.pos - start;
        let pad = rel.div_ceil(self.alignment) * self.alignment - rel;
        self.out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.pending.pop_front();
        Ok(())
    }

    /// Quantizes `values` to the next tensor's declared type with the reference quantizer and
    /// writes it.
    pub fn write_tensor_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let ty = self.next(name)?.ty;
        let expected = self.next(name)?.dims.iter().product::<u64>() as usize;
        if values.len() != expected {
            return Err(GgufError::Length {
                op: "GGUF write_tensor_f32",
                unit: "elements",
                expected,
                got: values.len(),
            });
        }
        let bytes = crate::quantize(ty, values)?;
        self.write_tensor(name, &bytes)
    }

    /// Checks that every declared tensor was written, pads the end and flushes; returns the
    /// output.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.pending.front() {
            return Err(GgufError::WriterState {
                reason: format!("finish with {} tensors unwritten, first {}", self.pending.len(), t.name),
            });
        }
        let io = |e| GgufError::io(Path::new("<GGUF output>"), e);
        self.out.pad_to(self.alignment).map_err(io)?;
        self.out.inner.flush().map_err(io)?;
        Ok(self.out.inner)
    }
}

/// [`GgufDataWriter`] over a temporary file that becomes the destination on
/// [`finish`](GgufFileWriter::finish).
pub struct GgufFileWriter {
    data: Option<GgufDataWriter<BufWriter<File>>>,
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

impl GgufFileWriter {
    fn data(&mut self) -> Result<&mut GgufDataWriter<BufWriter<File>>> {
        self.data.as_mut().ok_or_else(|| GgufError::WriterState { reason: "already finished".into() })
    }
    /// See [`GgufDataWriter::write_tensor`].
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.data()?.write_tensor(name, data).map_err(|e| self.with_path(e))
    }
    /// See [`GgufDataWriter::write_tensor_f32`].
    pub fn write_tensor_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.data()?.write_tensor_f32(name, values).map_err(|e| self.with_path(e))
    }
    fn with_path(&self, e: GgufError) -> GgufError {
        match e {
            GgufError::Io { source, .. } => GgufError::io(self.tmp.as_deref().unwrap_or(&self.dest), source),
            e => e,
        }
    }
    /// Finishes the data, syncs the file to disk and renames it to the destination.
    pub fn finish(mut self) -> Result<()> {
        let data = self.data.take().ok_or_else(|| GgufError::WriterState { reason: "already finished".into() })?;
        let tmp = self.tmp.clone().unwrap_or_default();
        {
            // Closed at the end of the block, before the rename.
            let file = data.finish().map_err(|e| self.with_path(e))?;
            let file = file.into_inner().map_err(|e| GgufError::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| GgufError::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &self.dest).map_err(|e| GgufError::io(&self.dest, e))?;
        self.tmp = None;
        Ok(())
    }
}

impl Drop for GgufFileWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
