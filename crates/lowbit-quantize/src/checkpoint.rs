//! Per-block checkpoints in `<out>.partial/`, so a killed run continues with `resume` and
//! produces the same bytes as an uninterrupted one.
//!
//! After block `b`: `block-b.safetensors` (its 7 quantized linears, lowbit layout) and
//! `block-b.norms.safetensors` (its RMSNorm weights, which AWQ/SmoothQuant change), then
//! `x.bin` (the block's output activations, raw f32 little-endian: the exact bits the next block
//! starts from), then `state.json` (written last: it is the commit point).

use crate::options::LayerStat;
use crate::{QuantizeError, Result};
use lowbit_core::io;
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::{Layer, Model};
use safetensors::tensor::Dtype;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Reads little-endian f32s.
fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) struct Checkpoint {
    dir: PathBuf,
}

pub(crate) struct CheckpointState {
    pub fingerprint: String,
    pub next_block: usize,
    pub layers: Vec<LayerStat>,
    pub notes: Vec<String>,
    pub x: Vec<f32>,
}

fn corrupt(dir: &std::path::Path, what: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::input("resume", format!("checkpoint {} is unusable: {what}", dir.display()))
}

impl Checkpoint {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Checkpoint { dir }
    }

    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Saves the state after block `b` (`layer`); hands `state.x` back (it is written in place,
    /// never copied: it is the largest buffer of the run).
    pub(crate) fn save(&self, state: CheckpointState, layer: &Layer, b: usize) -> Result<Vec<f32>> {
        std::fs::create_dir_all(&self.dir).map_err(|e| QuantizeError::io(&self.dir, e))?;
        let mut quant = vec![];
        for (name, lin) in layer.linears() {
            match lin.weight() {
                WeightKind::Quant(q) => quant.push((name, q)),
                _ => return Err(QuantizeError::input("quantize", format!("block {b} {name} was not quantized"))),
            }
        }
        io::write_atomic(&self.dir.join(format!("block-{b}.safetensors")), &io::to_bytes(quant, &BTreeMap::new())?)?;
        let norms: Vec<io::RawTensor> =
            [("input_layernorm", &layer.input_norm), ("post_attention_layernorm", &layer.post_attention_norm)]
                .iter()
                .map(|(n, v)| (n.to_string(), Dtype::F32, vec![v.len()], bytemuck::cast_slice(v.as_slice()).to_vec()))
                .collect();
        io::write_atomic(
            &self.dir.join(format!("block-{b}.norms.safetensors")),
            &io::serialize(&norms, &BTreeMap::new())?,
        )?;
        let x_path = self.dir.join("x.bin");
        if cfg!(target_endian = "little") {
            io::write_atomic(&x_path, bytemuck::cast_slice(state.x.as_slice()))?;
        } else {
            io::write_atomic(&x_path, &state.x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        }
        let meta = json!({
            "fingerprint": state.fingerprint,
            "next_block": state.next_block,
            "layers": state.layers,
            "notes": state.notes,
            "x_len": state.x.len(),
        });
        io::write_atomic(&self.dir.join("state.json"), meta.to_string().as_bytes())?;
        Ok(state.x)
    }

    /// Loads the checkpoint when there is one, appending its blocks to `model` (which has none
    /// yet; `original(b)` gives block `b` as loaded, whose linears and norms the checkpoint
    /// replaces); refuses a checkpoint of a different run.
    pub(crate) fn load(
        &self,
        fingerprint: &str,
        model: &mut Model,
        mut original: impl FnMut(usize) -> Result<Layer>,
    ) -> Result<Option<CheckpointState>> {
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
        let xp = self.dir.join("x.bin");
        let bytes = std::fs::read(&xp).map_err(|e| QuantizeError::io(&xp, e))?;
        if bytes.len() != x_len * 4 {
            return Err(corrupt(&self.dir, "x.bin has the wrong size"));
        }
        let x = le_f32(&bytes);
        Ok(Some(CheckpointState { fingerprint: fingerprint.to_string(), next_block, layers, notes, x }))
    }
}
