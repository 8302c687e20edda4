//! Loading a model from a path: a Hugging Face directory, a lowbit quantized directory, or a
//! `.gguf` file; and saving one (dense tensors plus lowbit quantized ones).

use crate::config::ModelConfig;
use crate::device::Device;
use crate::gguf::{config_from_gguf, tokenizer_from_gguf, GgufSource};
use crate::model::Model;
use crate::safetensors_source::{checkpoint_files, SafetensorsSource};
use crate::tensors::TensorSource;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use lowbit_core::progress::{NoProgress, Progress};
use lowbit_core::QTensor;
use lowbit_cpu::{Linear, WeightKind};
use safetensors::tensor::{Dtype, TensorView};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// What [`Model::save_with`] writes besides the model: keys merged into `config.json` and
/// further files (the quantization pipeline's `quantization_config` and manifest).
#[derive(Clone, Debug, Default)]
pub struct SaveExtras {
    /// Keys set at the top level of `config.json` (replacing the model's own under that name).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Files written next to the model: name (no directories) and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Options for [`Model::load_with`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: Device,
    /// Skip the tokenizer even when the checkpoint has one.
    pub skip_tokenizer: bool,
}

impl Model {
    /// Loads a model from a Hugging Face-style directory or a `.gguf` file.
    ///
    /// ```no_run
    /// use lowbit_model::Model;
    /// let model = Model::load("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let tokenizer = model.tokenizer().expect("the GGUF carries its tokenizer");
    /// let prompt = tokenizer.encode("Once upon a time", false)?;
    /// println!("{} blocks, {} prompt tokens", model.config().num_hidden_layers, prompt.len());
    /// # Ok::<(), lowbit_model::ModelError>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// [`Model::load`] with options.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        Self::load_with_progress(path, opts, &mut NoProgress)
    }

    /// [`Model::load_with`] reporting the blocks loaded as phase `load` (and cancellable there).
    pub fn load_with_progress(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        progress: &mut dyn Progress,
    ) -> Result<Model> {
        with_source(path.as_ref(), opts, |config, src, tokenizer| {
            Model::build(config, src, tokenizer, opts.device, progress)
        })
    }

    /// Loads a Hugging Face directory: `config.json`, `model.safetensors` (or shards with their
    /// index; dense and lowbit-quantized tensors), and `tokenizer.json` when present.
    pub fn from_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        hf_dir_source(dir, opts, |config, src, tokenizer| {
            Model::build(config, src, tokenizer, opts.device, &mut NoProgress)
        })
    }

    /// Loads a GGUF file (llama architecture), dequantizing its tensors to f32 (F16/BF16 kept).
    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
        gguf_source(path, opts, |config, src, tokenizer| {
            Model::build(config, src, tokenizer, opts.device, &mut NoProgress)
        })
    }
}

/// Opens the model at `path` (a directory or a `.gguf` file) as a tensor source and hands it to
/// `f` with the config and tokenizer: [`Model::load`] takes every tensor at once, the
/// quantization pipeline one block at a time from the memory-mapped file.
pub(crate) fn with_source<R>(
    path: &Path,
    opts: &LoadOptions,
    f: impl FnOnce(ModelConfig, &mut dyn TensorSource, Option<Tokenizer>) -> Result<R>,
) -> Result<R> {
    opts.device.check_available()?;
    if path.is_dir() {
        hf_dir_source(path, opts, f)
    } else if path.is_file() {
        gguf_source(path, opts, f)
    } else {
        Err(ModelError::MissingFile {
            path: path.display().to_string(),
            what: "a model directory or .gguf file".into(),
        })
    }
}

fn hf_dir_source<R>(
    dir: &Path,
    opts: &LoadOptions,
    f: impl FnOnce(ModelConfig, &mut dyn TensorSource, Option<Tokenizer>) -> Result<R>,
) -> Result<R> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(ModelError::MissingFile { path: cfg_path.display().to_string(), what: "the model config".into() });
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let config = ModelConfig::from_json_str(&text)?;
    let files = checkpoint_files(dir)?;
    let src = SafetensorsSource::open(&files)?;
    let tokenizer = if !opts.skip_tokenizer && dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::config("config.json", e.to_string()))?;
    let mut src = crate::hf_quant::quantized_source(dir, &raw, src)?;
    f(config, src.as_mut(), tokenizer)
}

fn gguf_source<R>(
    path: &Path,
    opts: &LoadOptions,
    f: impl FnOnce(ModelConfig, &mut dyn TensorSource, Option<Tokenizer>) -> Result<R>,
) -> Result<R> {
    let file = crate::gguf::open(path)?;
    let config = config_from_gguf(&file)?;
    let tokenizer = if opts.skip_tokenizer { None } else { Some(tokenizer_from_gguf(&file)?) };
    let mut src = GgufSource::new(&file, &config);
    f(config, &mut src, tokenizer)
}

/// The tensors a saved model holds, counted as [`Model::save`] stores them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredSize {
    /// Parameters (elements) of every tensor: embedding, LM head when untied, block linears,
    /// norms and biases.
    pub params: usize,
    /// Bytes of every tensor as stored (dense elements; codes + scales + zeros), no headers:
    /// what llama.cpp reports as the model size.
    pub tensor_bytes: usize,
    /// Bytes of the token embedding.
    pub embed_bytes: usize,
    /// Bytes of the LM head; `None` when tied (the embedding is the head).
    pub lm_head_bytes: Option<usize>,
    /// Parameters of the block linears.
    pub linear_params: usize,
    /// Bytes of the block linears.
    pub linear_bytes: usize,
}

impl StoredSize {
    /// Stored bits per parameter over every tensor.
    pub fn bits_per_weight(&self) -> f64 {
        self.tensor_bytes as f64 * 8.0 / self.params.max(1) as f64
    }
    /// Stored bits per block-linear weight.
    pub fn linear_bits_per_weight(&self) -> f64 {
        self.linear_bytes as f64 * 8.0 / self.linear_params.max(1) as f64
    }
}

/// The file [`Model::save_with_last`] writes last: its name, and its contents as a function of
/// the bytes of every other file.
pub type LastFile<'a> = (&'a str, &'a dyn Fn(u64) -> Vec<u8>);

/// A model's tensors under their Hugging Face names: the matrices, then the f32 vectors.
type NamedTensors<'m> = (Vec<(String, &'m Linear)>, Vec<(String, &'m [f32])>);

impl Model {
    /// Every tensor [`Model::save`] writes, by name; a tied model has no `lm_head.weight`.
    pub(crate) fn named_tensors(&self) -> NamedTensors<'_> {
        let mut mats: Vec<(String, &Linear)> = vec![("model.embed_tokens.weight".into(), self.embedding())];
        if !self.config().tie_word_embeddings {
            mats.push(("lm_head.weight".into(), self.lm_head()));
        }
        for (i, l) in self.layers().iter().enumerate() {
            for (suffix, lin) in l.linears() {
                mats.push((format!("model.layers.{i}.{suffix}.weight"), lin));
            }
        }
        let mut vecs: Vec<(String, &[f32])> = vec![("model.norm.weight".into(), self.final_norm())];
        for (i, l) in self.layers().iter().enumerate() {
            let p = format!("model.layers.{i}.");
            vecs.push((format!("{p}input_layernorm.weight"), &l.input_norm));
            vecs.push((format!("{p}post_attention_layernorm.weight"), &l.post_attention_norm));
            for (n, v) in [
                ("self_attn.q_proj.bias", &l.q_bias),
                ("self_attn.k_proj.bias", &l.k_bias),
                ("self_attn.v_proj.bias", &l.v_bias),
                ("self_attn.q_norm.weight", &l.q_norm),
                ("self_attn.k_norm.weight", &l.k_norm),
            ] {
                if let Some(v) = v {
                    vecs.push((format!("{p}{n}"), v));
                }
            }
        }
        (mats, vecs)
    }

    /// Parameters and stored bytes of the tensors [`Model::save`] writes.
    pub fn stored_size(&self) -> StoredSize {
        let (mats, vecs) = self.named_tensors();
        let mut s = StoredSize::default();
        for (name, lin) in &mats {
            let (n, bytes) = (lin.rows() * lin.cols(), stored_bytes(lin.weight()));
            s.params += n;
            s.tensor_bytes += bytes;
            match name.as_str() {
                "model.embed_tokens.weight" => s.embed_bytes = bytes,
                "lm_head.weight" => s.lm_head_bytes = Some(bytes),
                _ => {
                    s.linear_params += n;
                    s.linear_bytes += bytes;
                }
            }
        }
        for (_, v) in &vecs {
            s.params += v.len();
            s.tensor_bytes += 4 * v.len();
        }
        s
    }

    /// Saves the model as a Hugging Face-style directory that [`Model::load`] reads back:
    /// `config.json`, dense tensors in `model-00001-of-00002.safetensors`, lowbit quantized
    /// tensors (block linears, and the embedding or LM head when quantized) in
    /// `model-00002-of-00002.safetensors` (the `lowbit_core::io` layout), the index, and the
    /// tokenizer files when the model has a tokenizer. Written into a temporary directory, then
    /// renamed to `dir` (which must not exist or be empty).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, &SaveExtras::default()).map(|_| ())
    }

    /// [`Model::save`] with extra content in the same atomic write; returns the bytes of every
    /// file written.
    pub fn save_with(&self, dir: &Path, extras: &SaveExtras) -> Result<u64> {
        self.save_with_last(dir, extras, None)
    }

    /// [`Model::save_with`] and one more file written last, whose contents may depend on the
    /// bytes of all the others (a manifest that records the directory's size): `last` is its
    /// name and a function from those bytes to its contents. Returns the bytes of every file
    /// written, the last included.
    pub fn save_with_last(&self, dir: &Path, extras: &SaveExtras, last: Option<LastFile<'_>>) -> Result<u64> {
        let mut total = 0u64;
        write_dir_atomically(dir, |tmp| {
            total = self.save_files(&mut DirSink(tmp), extras, last)?;
            // safetensors writes through a private (0600) temporary file: give the dense shard
            // the mode every other file gets.
            let config_path = tmp.join("config.json");
            let mode = std::fs::metadata(&config_path).map_err(|e| ModelError::io(&config_path, e))?.permissions();
            for name in ["model-00001-of-00001.safetensors", "model-00001-of-00002.safetensors"] {
                let p = tmp.join(name);
                if p.is_file() {
                    std::fs::set_permissions(&p, mode.clone()).map_err(|e| ModelError::io(&p, e))?;
                }
            }
            Ok(())
        })?;
        Ok(total)
    }

    /// The files [`Model::save_with_last`] writes, in memory (name -> bytes): where there is no
    /// file system (the browser). The same bytes as the directory's files.
    pub fn save_to_memory(&self, extras: &SaveExtras, last: Option<LastFile<'_>>) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut sink = MemorySink(BTreeMap::new());
        self.save_files(&mut sink, extras, last)?;
        Ok(sink.0)
    }

    /// Puts every file of the saved model into `sink`; returns their bytes, the last included.
    fn save_files(&self, sink: &mut dyn Sink, extras: &SaveExtras, last: Option<LastFile<'_>>) -> Result<u64> {
        let mut total = 0u64;
        // Dense tensors are borrowed, not copied, and streamed to the file: an f32 embedding
        // alone is most of a small model.
        let (mats, vecs) = self.named_tensors();
        let mut dense: Vec<DenseEntry<'_>> = vec![];
        let mut quant: Vec<(String, &QTensor)> = vec![];
        for (name, lin) in mats {
            match lin.weight() {
                WeightKind::Quant(q) => quant.push((name, q)),
                w => dense.push(dense_entry(name, vec![lin.rows(), lin.cols()], w)),
            }
        }
        for (name, v) in vecs {
            dense.push((name, Dtype::F32, vec![v.len()], Cow::Borrowed(bytemuck::cast_slice(v))));
        }
        let mut weight_map = serde_json::Map::new();
        let shards = if quant.is_empty() { 1 } else { 2 };
        let dense_file = format!("model-00001-of-0000{shards}.safetensors");
        let views = dense
            .iter()
            .map(|(n, dt, shape, data)| {
                weight_map.insert(n.clone(), dense_file.clone().into());
                TensorView::new(*dt, shape.clone(), data).map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Safetensors { path: dense_file.clone(), reason: e.to_string() })?;
        total += sink.put_safetensors(&dense_file, views)?;
        if !quant.is_empty() {
            let qfile = "model-00002-of-00002.safetensors".to_string();
            for (n, _) in &quant {
                weight_map.insert(n.clone(), qfile.clone().into());
            }
            let bytes = lowbit_core::io::to_bytes(quant.iter().map(|(n, q)| (n.as_str(), *q)), &BTreeMap::new())?;
            total += sink.put(&qfile, &bytes)?;
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        total += sink.put("model.safetensors.index.json", index.to_string().as_bytes())?;
        let mut config = self.config().to_hf_json();
        if let Some(obj) = config.as_object_mut() {
            obj.extend(extras.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        total += sink.put("config.json", serde_json::to_string_pretty(&config).unwrap_or_default().as_bytes())?;
        if let Some(t) = self.tokenizer() {
            for (name, bytes) in tokenizer_files(t) {
                total += sink.put(name, &bytes)?;
            }
        }
        for (name, bytes) in &extras.files {
            check_file_name(name)?;
            total += sink.put(name, bytes)?;
        }
        if let Some((name, contents)) = last {
            check_file_name(name)?;
            total += sink.put(name, &contents(total))?;
        }
        Ok(total)
    }
}

/// Where [`Model::save_files`] puts each file: a directory, or a map in memory.
trait Sink {
    /// Stores `name`; returns its length.
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<u64>;
    /// Stores a safetensors file of `views`; returns its length.
    fn put_safetensors(&mut self, name: &str, views: Vec<(String, TensorView<'_>)>) -> Result<u64>;
}

fn safetensors_error(name: &str, e: safetensors::SafeTensorError) -> ModelError {
    ModelError::Safetensors { path: name.to_string(), reason: e.to_string() }
}

struct DirSink<'a>(&'a Path);

impl Sink for DirSink<'_> {
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<u64> {
        write(&self.0.join(name), bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Streamed to the file: the tensors are not copied.
    fn put_safetensors(&mut self, name: &str, views: Vec<(String, TensorView<'_>)>) -> Result<u64> {
        let path = self.0.join(name);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| safetensors_error(name, e))?;
        Ok(std::fs::metadata(&path).map_err(|e| ModelError::io(&path, e))?.len())
    }
}

struct MemorySink(BTreeMap<String, Vec<u8>>);

impl Sink for MemorySink {
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<u64> {
        self.0.insert(name.to_string(), bytes.to_vec());
        Ok(bytes.len() as u64)
    }

    fn put_safetensors(&mut self, name: &str, views: Vec<(String, TensorView<'_>)>) -> Result<u64> {
        let bytes = safetensors::serialize(views, None).map_err(|e| safetensors_error(name, e))?;
        let n = bytes.len() as u64;
        self.0.insert(name.to_string(), bytes);
        Ok(n)
    }
}

/// Bytes of a weight as [`Model::save`] stores it.
fn stored_bytes(w: &WeightKind) -> usize {
    match w {
        WeightKind::F32(v) => 4 * v.len(),
        WeightKind::F16(v) => 2 * v.len(),
        WeightKind::Bf16(v) => 2 * v.len(),
        WeightKind::Quant(q) => q.nbytes(),
    }
}

fn check_file_name(name: &str) -> Result<()> {
    if Path::new(name).file_name() != Some(std::ffi::OsStr::new(name)) {
        return Err(ModelError::input("save", format!("extra file name {name:?} is not a plain file name")));
    }
    Ok(())
}

/// A dense tensor to save: name, dtype, shape, little-endian bytes.
type DenseEntry<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

fn dense_entry(name: String, shape: Vec<usize>, w: &WeightKind) -> DenseEntry<'_> {
    match w {
        WeightKind::F32(v) => (name, Dtype::F32, shape, Cow::Borrowed(bytemuck::cast_slice(v))),
        WeightKind::F16(v) => (name, Dtype::F16, shape, Cow::Borrowed(bytemuck::cast_slice(v))),
        WeightKind::Bf16(v) => (name, Dtype::BF16, shape, Cow::Borrowed(bytemuck::cast_slice(v))),
        WeightKind::Quant(q) => (name, Dtype::F32, shape, Cow::Owned(bytemuck::cast_slice(&q.dequantize()).to_vec())),
    }
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// `tokenizer.json` and a `tokenizer_config.json` with the special tokens and chat template.
pub(crate) fn write_tokenizer_files(dir: &Path, t: &Tokenizer) -> Result<()> {
    for (name, bytes) in tokenizer_files(t) {
        write(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// The contents of [`write_tokenizer_files`]'s two files.
fn tokenizer_files(t: &Tokenizer) -> [(&'static str, Vec<u8>); 2] {
    let mut cfg = serde_json::json!({"add_bos_token": false, "clean_up_tokenization_spaces": false});
    if let Some(b) = t.bos_token() {
        cfg["bos_token"] = b.into();
    }
    if let Some(e) = t.eos_token() {
        cfg["eos_token"] = e.into();
    }
    if let Some(c) = t.chat_template() {
        cfg["chat_template"] = c.into();
    }
    [
        ("tokenizer.json", t.to_json_string().as_bytes().to_vec()),
        ("tokenizer_config.json", serde_json::to_string_pretty(&cfg).unwrap_or_default().into_bytes()),
    ]
}

/// Fills a fresh temporary sibling of `dir` with `fill`, then renames it to `dir`. `dir` must not
/// exist or be an empty directory; on failure the temporary directory is removed.
pub(crate) fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_none();
        if !empty {
            return Err(ModelError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output directory exists and is not empty",
                ),
            });
        }
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let result = fill(&tmp).and_then(|()| {
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
