//! Hugging Face safetensors checkpoints (single file or sharded with an index), dense f32/f16/bf16
//! tensors and lowbit quantized tensors (`lowbit_core::io` layout) side by side.

use crate::tensors::{le_bf16, le_f16, le_f32, read_bytes, Bytes, Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use lowbit_core::QTensor;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of one checkpoint, indexed by name; data is read from the (mapped) files on `take`.
pub(crate) struct SafetensorsSource {
    files: Vec<(PathBuf, Bytes)>,
    entries: HashMap<String, Entry>,
    quant: HashMap<String, QTensor>,
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json` (each must exist).
pub(crate) fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::MissingFile {
            path: single.display().to_string(),
            what: "the weights (model.safetensors, or model.safetensors.index.json with its shards)".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let shards = index_shards(&text, &index)?;
    let files: Vec<PathBuf> = shards.into_iter().map(|f| dir.join(f)).collect();
    for f in &files {
        if !f.is_file() {
            return Err(ModelError::MissingFile {
                path: f.display().to_string(),
                what: "a shard listed in model.safetensors.index.json".into(),
            });
        }
    }
    Ok(files)
}

/// The shard file names listed in the text of a `model.safetensors.index.json` (`path` is only
/// used in messages). Each must be a plain file name, so an index cannot point outside its
/// directory.
pub(crate) fn index_shards(text: &str, path: &Path) -> Result<BTreeSet<String>> {
    let corrupt = |reason: String| ModelError::Safetensors { path: path.display().to_string(), reason };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| corrupt("no weight_map object".into()))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| corrupt(format!("weight_map entry {name} is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(corrupt(format!("shard name {file:?} must be a plain file name")));
        }
        shards.insert(file.to_string());
    }
    Ok(shards)
}

fn quant_part_names(name: &str) -> [String; 4] {
    ["qweight", "scales", "zeros", "absmax_q"].map(|s| format!("{name}.{s}"))
}

impl SafetensorsSource {
    /// Indexes the given files (validating each header and its offsets).
    pub(crate) fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut src = SafetensorsSource { files: vec![], entries: HashMap::new(), quant: HashMap::new() };
        for path in paths {
            let bytes = read_bytes(path)?;
            src.add(path.clone(), bytes)?;
        }
        Ok(src)
    }

    /// Indexes files held in memory (their paths are only used in messages).
    pub(crate) fn from_byte_files(files: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let mut src = SafetensorsSource { files: vec![], entries: HashMap::new(), quant: HashMap::new() };
        for (path, bytes) in files {
            src.add(path, Bytes::Owned(bytes))?;
        }
        Ok(src)
    }

    /// Indexes one file held in memory (`path` is only used in messages).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let mut src = SafetensorsSource { files: vec![], entries: HashMap::new(), quant: HashMap::new() };
        src.add(path, Bytes::Owned(bytes))?;
        Ok(src)
    }

    /// Every tensor name, dense and quantized, in no particular order.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.keys().chain(self.quant.keys()).cloned().collect()
    }

    /// Whether a dense (non-lowbit) tensor `name` is still there to take.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Takes a dense tensor whatever its dtype (GPTQ's int32 parts): dtype, shape, bytes, and
    /// the file it is in.
    pub(crate) fn take_raw(&mut self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8], &Path)> {
        let e = self.entries.remove(name)?;
        let (path, bytes) = &self.files[e.file];
        Some((e.dtype, e.shape, &bytes[e.start..e.end], path.as_path()))
    }

    fn add(&mut self, path: PathBuf, bytes: Bytes) -> Result<()> {
        let corrupt = |reason: String| ModelError::Safetensors { path: path.display().to_string(), reason };
        let file = self.files.len();
        lowbit_core::io::check_header_len(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let is_lowbit = header.metadata().as_ref().is_some_and(|m| m.contains_key("lowbit.format_version"));
        let mut skip = BTreeSet::new();
        if is_lowbit {
            let loaded = lowbit_core::io::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
            for (name, qt) in loaded.tensors {
                skip.extend(quant_part_names(&name));
                if self.quant.insert(name.clone(), qt).is_some() {
                    return Err(corrupt(format!("tensor {name} appears in more than one file")));
                }
            }
        }
        let base = bytes.as_ptr() as usize;
        for (name, view) in st.tensors() {
            if skip.contains(&name) {
                continue;
            }
            let start = view.data().as_ptr() as usize - base;
            let entry = Entry {
                file,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                start,
                end: start + view.data().len(),
            };
            if self.quant.contains_key(&name) || self.entries.insert(name.clone(), entry).is_some() {
                return Err(corrupt(format!("tensor {name} appears more than once")));
            }
        }
        drop(st);
        self.files.push((path, bytes));
        Ok(())
    }
}

impl TensorSource for SafetensorsSource {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        if let Some(q) = self.quant.remove(name) {
            return Ok(Some(Tensor { shape: q.shape().to_vec(), data: TensorData::Quant(q) }));
        }
        let Some(e) = self.entries.remove(name) else { return Ok(None) };
        let bytes = &self.files[e.file].1[e.start..e.end];
        let data = match e.dtype {
            Dtype::F32 => TensorData::F32(le_f32(bytes)),
            Dtype::F16 => TensorData::F16(le_f16(bytes)),
            Dtype::BF16 => TensorData::Bf16(le_bf16(bytes)),
            other => return Err(ModelError::UnsupportedDtype { name: name.into(), dtype: format!("{other:?}") }),
        };
        Ok(Some(Tensor { shape: e.shape, data }))
    }
}
