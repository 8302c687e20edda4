//! Checkpoints in `<out>.partial/`, so a killed run continues with `resume` and produces the same
//! bytes as an uninterrupted one. The pipeline saves after the run's first block, then at most
//! every `CHECKPOINT_INTERVAL` (30 s), and at `stop_after_block`.
//!
//! After block `b`: `block-b.safetensors` (its 7 quantized linears, lowbit layout) and
//! `block-b.norms.safetensors` (its RMSNorm weights, which AWQ/SmoothQuant change), then
//! `x-{b+1}.bin` (the block's output activations, raw f32 little-endian: the exact bits block
//! `b + 1` starts from), then `state.json` (written last: it is the commit point, and it names
//! its x file, so a run killed between the two leaves the previous state whole). The write runs
//! on a background thread ([`Saver`]) while the next block computes.

use crate::options::LayerStat;
use crate::{QuantizeError, Result};
use lowbit_core::io;
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::{Layer, Model};
use safetensors::tensor::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads little-endian f32s.
fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) struct Checkpoint {
    dir: PathBuf,
}

/// What a checkpoint records besides the blocks and the activations.
#[derive(Clone)]
pub(crate) struct CheckpointState {
    pub fingerprint: String,
    pub next_block: usize,
    pub layers: Vec<LayerStat>,
    pub notes: Vec<String>,
}

fn corrupt(dir: &std::path::Path, what: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::input("resume", format!("checkpoint {} is unusable: {what}", dir.display()))
}

impl Checkpoint {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Checkpoint { dir }
    }

    /// The checkpoint's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The files of block `b` (`layer`), serialized.
    fn block_files(&self, layer: &Layer, b: usize) -> Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut quant = vec![];
        for (name, lin) in layer.linears() {
            match lin.weight() {
                WeightKind::Quant(q) => quant.push((name, q)),
                _ => return Err(QuantizeError::input("quantize", format!("block {b} {name} was not quantized"))),
            }
        }
        let norms: Vec<io::RawTensor> =
            [("input_layernorm", &layer.input_norm), ("post_attention_layernorm", &layer.post_attention_norm)]
                .iter()
                .map(|(n, v)| (n.to_string(), Dtype::F32, vec![v.len()], bytemuck::cast_slice(v.as_slice()).to_vec()))
                .collect();
        Ok(vec![
            (self.dir.join(format!("block-{b}.safetensors")), io::to_bytes(quant, &BTreeMap::new())?),
            (self.dir.join(format!("block-{b}.norms.safetensors")), io::serialize(&norms, &BTreeMap::new())?),
        ])
    }

    /// Loads the checkpoint when there is one, appending its blocks to `model` (which has none
    /// yet; `original(b)` gives block `b` as loaded, whose linears and norms the checkpoint
    /// replaces); refuses a checkpoint of a different run.
    pub(crate) fn load(
        &self,
        fingerprint: &str,
        model: &mut Model,
        mut original: impl FnMut(usize) -> Result<Layer>,
    ) -> Result<Option<(CheckpointState, Vec<f32>)>> {
        let state_path = self.dir.join("state.json");
        if !state_path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&state_path).map_err(|e| QuantizeError::io(&state_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(&self.dir, e))?;
        if v["fingerprint"].as_str() != Some(fingerprint) {
            return Err(QuantizeError::input(
                "resume",
                format!(
                    "the checkpoint in {} belongs to a different model, method, options or calibration data; remove it or run without resume",
                    self.dir.display()
                ),
            ));
        }
        let next_block = v["next_block"].as_u64().ok_or_else(|| corrupt(&self.dir, "no next_block"))? as usize;
        let layers: Vec<LayerStat> = serde_json::from_value(v["layers"].clone()).map_err(|e| corrupt(&self.dir, e))?;
        let notes: Vec<String> = serde_json::from_value(v["notes"].clone()).map_err(|e| corrupt(&self.dir, e))?;
        let x_len = v["x_len"].as_u64().ok_or_else(|| corrupt(&self.dir, "no x_len"))? as usize;
        if next_block > model.config().num_hidden_layers {
            return Err(corrupt(&self.dir, "more blocks than the model has"));
        }
        for b in 0..next_block {
            let loaded = io::load(&self.dir.join(format!("block-{b}.safetensors")))?;
            let mut layer = original(b)?;
            for (name, lin) in layer.linears_mut() {
                let q =
                    loaded.tensors.get(name).ok_or_else(|| corrupt(&self.dir, format!("block {b} lacks {name}")))?;
                *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(q.clone()))?;
            }
            let p = self.dir.join(format!("block-{b}.norms.safetensors"));
            let bytes = std::fs::read(&p).map_err(|e| QuantizeError::io(&p, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&self.dir, e))?;
            for (n, dst) in [
                ("input_layernorm", &mut layer.input_norm),
                ("post_attention_layernorm", &mut layer.post_attention_norm),
            ] {
                let t = st.tensor(n).map_err(|e| corrupt(&self.dir, e))?;
                let vals = le_f32(t.data());
                if vals.len() != dst.len() {
                    return Err(corrupt(&self.dir, format!("block {b} {n} has {} values", vals.len())));
                }
                *dst = vals;
            }
            model.push_layer(layer)?;
        }
        let x_file = v["x_file"].as_str().ok_or_else(|| corrupt(&self.dir, "no x_file"))?;
        if x_file != x_file_name(next_block) {
            return Err(corrupt(&self.dir, format!("x_file {x_file} does not belong to block {next_block}")));
        }
        let xp = self.dir.join(x_file);
        let bytes = std::fs::read(&xp).map_err(|e| QuantizeError::io(&xp, e))?;
        if bytes.len() != x_len * 4 {
            return Err(corrupt(&self.dir, format!("{x_file} has the wrong size")));
        }
        let x = le_f32(&bytes);
        Ok(Some((CheckpointState { fingerprint: fingerprint.to_string(), next_block, layers, notes }, x)))
    }
}

/// The activations file that block `next_block` starts from.
fn x_file_name(next_block: usize) -> String {
    format!("x-{next_block}.bin")
}

/// Writes `files`, then `x`, then `state.json` naming it (the commit point); then removes the
/// x files of earlier states.
fn write_checkpoint(dir: &Path, files: Vec<(PathBuf, Vec<u8>)>, state: &CheckpointState, x: &[f32]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| QuantizeError::io(dir, e))?;
    for (path, bytes) in files {
        io::write_atomic(&path, &bytes)?;
    }
    let x_file = x_file_name(state.next_block);
    if cfg!(target_endian = "little") {
        io::write_atomic(&dir.join(&x_file), bytemuck::cast_slice(x))?;
    } else {
        io::write_atomic(&dir.join(&x_file), &x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    }
    let meta = json!({
        "fingerprint": state.fingerprint,
        "next_block": state.next_block,
        "layers": state.layers,
        "notes": state.notes,
        "x_file": x_file,
        "x_len": x.len(),
    });
    io::write_atomic(&dir.join("state.json"), meta.to_string().as_bytes())?;
    let entries = std::fs::read_dir(dir).map_err(|e| QuantizeError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("x-") && name.ends_with(".bin") && name != x_file {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

type Writing = std::thread::JoinHandle<(Vec<f32>, Result<()>)>;

/// Writes checkpoints on a background thread, one at a time, so the next block computes while
/// the last one's files reach the disk. Its buffer for the activations is reused from block to
/// block; dropping it waits for the write in flight, so a stopped run leaves a whole checkpoint.
pub(crate) struct Saver {
    writing: Option<Writing>,
    spare: Vec<f32>,
    /// The first block whose files are not in the checkpoint yet.
    next_block: usize,
}

impl Saver {
    /// A saver for a run whose blocks before `first` are already in the checkpoint.
    pub(crate) fn new(first: usize) -> Self {
        Saver { writing: None, spare: Vec::new(), next_block: first }
    }

    /// Starts writing the state after block `b = done.len()` (`layer`, whose output is `x`) with
    /// the files of every block since the last checkpoint, once the previous write is done; an
    /// error of the previous write is returned here.
    pub(crate) fn save(
        &mut self,
        ckpt: &Checkpoint,
        state: CheckpointState,
        done: &[Layer],
        layer: &Layer,
        x: &[f32],
    ) -> Result<()> {
        self.finish()?;
        // Every block since the last checkpoint: `done` holds blocks 0..b, `layer` is block b.
        let b = done.len();
        let mut files = vec![];
        for (i, l) in done.iter().enumerate().skip(self.next_block) {
            files.extend(ckpt.block_files(l, i)?);
        }
        files.extend(ckpt.block_files(layer, b)?);
        self.next_block = b + 1;
        let mut buf = std::mem::take(&mut self.spare);
        buf.clear();
        buf.extend_from_slice(x);
        let dir = ckpt.dir.clone();
        self.writing = Some(std::thread::spawn(move || {
            let r = write_checkpoint(&dir, files, &state, &buf);
            (buf, r)
        }));
        Ok(())
    }

    /// Waits for the write in flight, if any, and returns its result.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if let Some(w) = self.writing.take() {
            let (buf, r) =
                w.join().map_err(|_| QuantizeError::input("checkpoint", "the checkpoint writer panicked"))?;
            self.spare = buf;
            r?;
        }
        Ok(())
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
