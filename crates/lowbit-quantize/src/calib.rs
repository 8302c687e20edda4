//! Calibration data: where the token windows come from.
//!
//! The default follows the calibration protocol (`../shared/PROTOCOL.md`): the whole text file
//! tokenized without special tokens, then `nsamples` windows of `seqlen` tokens starting at
//! `numpy.random.default_rng(seed).integers(0, len(ids) - seqlen, nsamples)` (seed 0), drawn
//! here with a bit-exact port of numpy's generator (`numpy_rng`).
//!
//! A leading UTF-8 byte-order mark is an encoding marker, not text: it is dropped before
//! tokenizing (as Python's `utf-8-sig` codec does), and `\r\n` line ends become `\n` (the
//! evaluation text is read the same way, see `perplexity::read_text_file`).

use crate::numpy_rng::NumpyPcg64;
use crate::roles::TensorScheme;
use crate::{QuantizeError, Result};
use lowbit_core::progress::{phase, Progress};
use lowbit_core::Bits;
use lowbit_model::generate::{BatchPrompt, GenerateOptions, Rng};
use lowbit_model::perplexity::normalize_newlines;
use lowbit_model::{Model, ModelError};
use std::path::{Path, PathBuf};

/// Where calibration tokens come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibSource {
    /// A UTF-8 text file, tokenized whole (the protocol's `valid.txt`).
    Text(PathBuf),
    /// JSON Lines, one object per line; the string under `field` of each is joined with blank
    /// lines and tokenized whole.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The key holding the text (`"text"`).
        field: String,
    },
    /// Token ids in a `.npy` (integer dtype) or `.json` file: a 1-D array is a token stream that
    /// windows are drawn from; a 2-D `[n, seqlen]` array is taken as the windows themselves.
    TokenFile(PathBuf),
    /// A token stream already in memory (windows are drawn from it as from a text's ids).
    Tokens(Vec<u32>),
    /// Text in memory (the browser's calibration text), read as a [`CalibSource::Text`] file's.
    InlineText(String),
    /// No data: sequences sampled from the model itself, from its BOS token (see
    /// [`data_free_windows`]), seeded.
    DataFree,
}

impl CalibSource {
    /// Picks the source kind from a file's extension: `.jsonl` (field `text`), `.npy` and
    /// `.json` token ids, anything else plain text.
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl") => CalibSource::Jsonl { path, field: "text".into() },
            Some("npy") | Some("json") => CalibSource::TokenFile(path),
            _ => CalibSource::Text(path),
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            CalibSource::Text(p) => format!("text:{}", p.display()),
            CalibSource::Jsonl { path, field } => format!("jsonl:{}#{field}", path.display()),
            CalibSource::TokenFile(p) => format!("tokens:{}", p.display()),
            CalibSource::Tokens(v) => format!("tokens:<{} in memory>", v.len()),
            CalibSource::InlineText(t) => format!("text:<{} bytes in memory>", t.len()),
            CalibSource::DataFree => "data-free".into(),
        }
    }
}

fn bad(reason: impl Into<String>) -> QuantizeError {
    QuantizeError::input("calibration", reason.into())
}

/// Builds `nsamples` windows of `seqlen` tokens (row-major, `nsamples * seqlen` ids), as phase
/// `calibrate`: one unit per window, or per sampled token when data-free (sampling is most of a
/// data-free run's calibration time, and its bar should move while it runs).
pub(crate) fn calibration_windows(
    model: &Model,
    src: &CalibSource,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<Vec<u32>> {
    let units = if matches!(src, CalibSource::DataFree) { nsamples * seqlen } else { nsamples };
    let mut progress = phase(progress, "calibrate", units as u64);
    let cfg = model.config();
    if nsamples == 0 || seqlen == 0 {
        return Err(bad(format!("nsamples and seqlen must be positive, got {nsamples} x {seqlen}")));
    }
    if seqlen > cfg.max_position_embeddings {
        return Err(bad(format!(
            "seqlen {seqlen} is beyond the model's context of {} tokens",
            cfg.max_position_embeddings
        )));
    }
    let stream = match src {
        CalibSource::Text(p) => tokenize(model, &read_text(p)?)?,
        CalibSource::Jsonl { path, field } => tokenize(model, &read_jsonl(path, field)?)?,
        CalibSource::Tokens(v) => v.clone(),
        CalibSource::InlineText(t) => tokenize(model, &normalize_newlines(t.strip_prefix('\u{feff}').unwrap_or(t)))?,
        CalibSource::TokenFile(p) => match read_token_file(p)? {
            TokenArray::Stream(v) => v,
            TokenArray::Windows { rows, cols, ids } => {
                if cols != seqlen || rows < nsamples {
                    return Err(bad(format!(
                        "{}: a [{rows}, {cols}] window array cannot give {nsamples} windows of {seqlen}",
                        p.display()
                    )));
                }
                let ids = ids[..nsamples * seqlen].to_vec();
                check_vocab(model, &ids)?;
                progress.advance(nsamples as u64);
                return Ok(ids);
            }
        },
        CalibSource::DataFree => {
            let batch = data_free_batch(model, seqlen);
            return data_free_windows(model, nsamples, seqlen, seed, batch, &mut *progress);
        }
    };
    check_vocab(model, &stream)?;
    let windows = windows_from_stream(&stream, nsamples, seqlen, seed)?;
    progress.advance(nsamples as u64);
    Ok(windows)
}

/// The protocol's windows over a token stream.
pub fn windows_from_stream(ids: &[u32], nsamples: usize, seqlen: usize, seed: u64) -> Result<Vec<u32>> {
    if ids.is_empty() {
        return Err(bad("the calibration data holds no tokens"));
    }
    if ids.len() <= seqlen {
        return Err(bad(format!(
            "the calibration data has {} tokens, too few for windows of {seqlen} (it needs more than {seqlen})",
            ids.len()
        )));
    }
    let offsets = NumpyPcg64::new(seed)
        .integers(0, (ids.len() - seqlen) as i64, nsamples)
        .ok_or_else(|| bad(format!("{} tokens are more than the offset generator supports (2^32)", ids.len())))?;
    let mut out = Vec::with_capacity(nsamples * seqlen);
    for o in offsets {
        out.extend_from_slice(&ids[o as usize..o as usize + seqlen]);
    }
    Ok(out)
}

fn check_vocab(model: &Model, ids: &[u32]) -> Result<()> {
    let v = model.config().vocab_size;
    match ids.iter().find(|&&t| t as usize >= v) {
        Some(t) => Err(bad(format!("token id {t} is outside the vocabulary of {v}"))),
        None => Ok(()),
    }
}

fn tokenize(model: &Model, text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        return Err(bad("the calibration text is empty"));
    }
    let tok = model.tokenizer().ok_or(ModelError::NoTokenizer { op: "calibration from text" })?;
    Ok(tok.encode(text, false)?)
}

fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| QuantizeError::io(path, e))?;
    Ok(normalize_newlines(raw.strip_prefix('\u{feff}').unwrap_or(&raw)))
}

fn read_jsonl(path: &Path, field: &str) -> Result<String> {
    let text = read_text(path)?;
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("{} line {}: not JSON: {e}", path.display(), i + 1)))?;
        let s = v
            .get(field)
            .and_then(|x| x.as_str())
            .ok_or_else(|| bad(format!("{} line {}: no string field {field:?}", path.display(), i + 1)))?;
        docs.push(s.to_string());
    }
    Ok(docs.join("\n\n"))
}

enum TokenArray {
    Stream(Vec<u32>),
    Windows { rows: usize, cols: usize, ids: Vec<u32> },
}

fn to_ids(vals: Vec<i64>, path: &Path) -> Result<Vec<u32>> {
    vals.into_iter()
        .map(|v| u32::try_from(v).map_err(|_| bad(format!("{}: token id {v} is not a valid id", path.display()))))
        .collect()
}

/// The window length of a token file holding windows (a 2-D array), `None` for a stream.
pub(crate) fn token_file_window_len(path: &Path) -> Result<Option<usize>> {
    Ok(match read_token_file(path)? {
        TokenArray::Windows { cols, .. } => Some(cols),
        TokenArray::Stream(_) => None,
    })
}

fn read_token_file(path: &Path) -> Result<TokenArray> {
    let bytes = std::fs::read(path).map_err(|e| QuantizeError::io(path, e))?;
    let (shape, vals) = if bytes.starts_with(b"\x93NUMPY") {
        parse_npy(&bytes).map_err(|r| bad(format!("{}: {r}", path.display())))?
    } else {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("{}: not JSON: {e}", path.display())))?;
        json_ids(&v).ok_or_else(|| bad(format!("{}: expected a list of ids or a list of lists", path.display())))?
    };
    let ids = to_ids(vals, path)?;
    match shape[..] {
        [_] => Ok(TokenArray::Stream(ids)),
        [rows, cols] => Ok(TokenArray::Windows { rows, cols, ids }),
        _ => Err(bad(format!("{}: token arrays must be 1-D or 2-D, got shape {shape:?}", path.display()))),
    }
}

fn json_ids(v: &serde_json::Value) -> Option<(Vec<usize>, Vec<i64>)> {
    let arr = v.as_array()?;
    if arr.first().is_some_and(|x| x.is_array()) {
        let cols = arr[0].as_array()?.len();
        let mut out = Vec::with_capacity(arr.len() * cols);
        for row in arr {
            let r = row.as_array()?;
            if r.len() != cols {
                return None;
            }
            for x in r {
                out.push(x.as_i64()?);
            }
        }
        Some((vec![arr.len(), cols], out))
    } else {
        Some((vec![arr.len()], arr.iter().map(|x| x.as_i64()).collect::<Option<Vec<_>>>()?))
    }
}

/// A C-order integer `.npy` (format 1.0-3.0).
fn parse_npy(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<i64>), String> {
    let major = *bytes.get(6).ok_or("truncated header")?;
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = std::str::from_utf8(bytes.get(start..start + hlen).ok_or("truncated header")?)
        .map_err(|_| "header is not text")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start_matches([':', ' ']))
    };
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err("Fortran-order arrays are not supported".into());
    }
    let descr = field("descr").ok_or("no descr")?;
    let descr = descr.trim_start_matches('\'').split('\'').next().unwrap_or("");
    let shape_s = field("shape").ok_or("no shape")?;
    let shape_s = &shape_s[shape_s.find('(').ok_or("bad shape")? + 1..shape_s.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape entry {s:?}")))
        .collect::<std::result::Result<_, String>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let width = match descr {
        "<i8" | "<u8" => 8,
        "<i4" | "<u4" => 4,
        "<i2" | "<u2" => 2,
        "|i1" | "|u1" => 1,
        d => return Err(format!("unsupported dtype {d:?} (need a little-endian integer dtype)")),
    };
    if data.len() < n * width {
        return Err(format!("data holds {} bytes, the shape needs {}", data.len(), n * width));
    }
    let signed = descr.as_bytes()[1] == b'i';
    let vals = data[..n * width]
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            if signed && c[width - 1] & 0x80 != 0 {
                b[width..].fill(0xff);
            }
            i64::from_le_bytes(b)
        })
        .collect();
    Ok((shape, vals))
}

/// The model data-free calibration samples from: `model` with every linear layer, the
/// embedding and the LM head in int8 per output channel (symmetric, f16 scales, as
/// [`TensorScheme::Int`] stores `int8`). A sampling step of a batch is bound by reading the
/// weights (f32: four times the bytes) and, with int8 activations, runs integer dot products;
/// the copy's perplexity is within a fraction of a percent of the model's (benches/README.md).
pub fn int8_sampler(mut model: Model) -> Result<Model> {
    let int8 = TensorScheme::Int { bits: Bits::B8, group: None };
    for layer in model.layers_mut() {
        for (_, lin) in layer.linears_mut() {
            if let Some(q) = int8.apply(lin)? {
                *lin = q;
            }
        }
    }
    crate::roles::apply(&mut model, int8, None)?;
    Ok(model)
}

/// KV-cache bytes data-free sampling may hold at once: sequences beyond it are sampled in a
/// further batch (SmolLM2-135M at 512 tokens needs 24 MB per sequence: 43 in one batch).
const DATA_FREE_KV_BUDGET: usize = 1 << 30;

/// Softmax temperature of data-free sampling. At 1 a small model's own text wanders into
/// token salad; SmolLM2-135M calibrated on it (16 x 512, act-order W4) answered the demo's
/// question wrongly, where WikiText calibration of the same size answers it right.
pub const DATA_FREE_TEMPERATURE: f32 = 0.8;

/// The prompts of data-free sampling: every sequence starts where the model's own documents
/// start, at its BOS token (for a chat model the start of a turn); a model without one starts
/// from a token drawn uniformly from the vocabulary (without the special tokens). Each
/// sequence samples with its own seed, all drawn from one generator seeded by `seed` (so a
/// sequence does not depend on how the batch is cut).
fn data_free_prompts(model: &Model, nsamples: usize, seed: u64) -> Vec<BatchPrompt> {
    let vocab = model.config().vocab_size as u64;
    let tok = model.tokenizer();
    let bos = tok.and_then(|t| t.bos_id());
    let special: Vec<u32> = tok.map(|t| [t.bos_id(), t.eos_id()].into_iter().flatten().collect()).unwrap_or_default();
    let mut rng = Rng::new(seed);
    (0..nsamples)
        .map(|_| {
            let first = bos.unwrap_or_else(|| loop {
                let t = (rng.next_u64() % vocab) as u32;
                if !special.contains(&t) {
                    break t;
                }
            });
            BatchPrompt { prompt: vec![first], seed: rng.next_u64() }
        })
        .collect()
}

/// Sequences of `seqlen` tokens data-free sampling decodes together: as many as
/// [`DATA_FREE_KV_BUDGET`] holds the KV caches of (at least one).
pub fn data_free_batch(model: &Model, seqlen: usize) -> usize {
    let cfg = model.config();
    let kv_bytes = 2 * cfg.num_hidden_layers * cfg.kv_dim() * std::mem::size_of::<f32>() * seqlen;
    (DATA_FREE_KV_BUDGET / kv_bytes.max(1)).max(1)
}

/// Samples `nsamples` sequences of `seqlen` tokens from the model (at
/// [`DATA_FREE_TEMPERATURE`], an end of sequence not a stop: the model goes on to its next turn
/// or document), `batch` at a time decoded together ([`Model::generate_batch`]: one
/// decode step reads the weights once for every sequence). The tokens do not depend on `batch`.
/// Advances `progress` by one unit per sampled token; cancellable at every step.
pub fn data_free_windows(
    model: &Model,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<Vec<u32>> {
    if seqlen == 0 || batch == 0 {
        return Err(bad(format!("seqlen and batch must be positive, got {seqlen} and {batch}")));
    }
    let opts = GenerateOptions {
        max_new_tokens: seqlen - 1,
        temperature: DATA_FREE_TEMPERATURE,
        stop_on_eos: false,
        ..GenerateOptions::default()
    };
    let mut out = Vec::with_capacity(nsamples * seqlen);
    for prompts in data_free_prompts(model, nsamples, seed).chunks(batch) {
        progress.check()?;
        progress.advance(prompts.len() as u64);
        for (p, g) in prompts.iter().zip(model.generate_batch(prompts, &opts, progress)?) {
            out.extend_from_slice(&p.prompt);
            out.extend_from_slice(&g.tokens);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_and_json_ids_parse() {
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
        let mut h = header.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
        npy.extend_from_slice(h.as_bytes());
        for v in [5i32, -1, 70000] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_npy(&npy).unwrap(), (vec![3], vec![5, -1, 70000]));
        let v: serde_json::Value = serde_json::from_str("[[1,2],[3,4]]").unwrap();
        assert_eq!(json_ids(&v).unwrap(), (vec![2, 2], vec![1, 2, 3, 4]));
    }

    #[test]
    fn windows_follow_numpy_offsets() {
        let ids: Vec<u32> = (0..1512).collect();
        // numpy.random.default_rng(0).integers(0, 1000, 5) == [850, 636, 511, 269, 307]
        let w = windows_from_stream(&ids, 5, 512, 0).unwrap();
        assert_eq!(w[0], 850);
        assert_eq!(w[512], 636);
        assert_eq!(w[4 * 512 + 511], 307 + 511);
        assert!(windows_from_stream(&ids[..512], 1, 512, 0).is_err());
        assert!(windows_from_stream(&[], 1, 8, 0).is_err());
    }
}
