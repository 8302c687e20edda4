//! HF GPTQ directories as a tensor source: each `{module}.qweight/qzeros/scales/g_idx` becomes
//! lowbit's integer `QTensor` (`{module}.weight`), repacked exactly so it runs through lowbit's
//! packed kernels. The zero-point convention comes from the label (`checkpoint_format` /
//! `format`: `gptq` = v1, stored `z - 1`; `gptq_v2` = stored `z`) and is checked against the
//! stored values: a v1 label over a stored zero of `2^b - 1` (which v1 would read as `2^b`) is
//! refused, and a symmetric checkpoint whose zeros all hold the other convention's symmetric
//! value is read by its values, with a warning naming the tensor. A `g_idx` other than
//! `i / group_size` (act-order without static groups, from other tools) has no lowbit layout:
//! that module is dequantized to f32, with a warning.

use super::layout::{dequantize, per_word, transpose, unpack_qweight, unpack_qzeros};
use crate::hf_quant::{config_error, floats, int_tensor, Warnings};
use crate::safetensors_source::SafetensorsSource;
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The `quantization_config` of a GPTQ checkpoint, as far as the tensors' meaning goes.
#[derive(Clone, Debug)]
pub(crate) struct GptqConfig {
    pub(super) bits: Bits,
    /// `None` for `group_size: -1` (one group per row).
    pub(super) group: Option<usize>,
    pub(super) sym: bool,
    /// The label says `gptq_v2` (stored zeros unchanged).
    pub(super) v2: bool,
}

/// The GPTQ config of the directory `dir` whose `config.json` is `config`: its
/// `quantization_config` when `quant_method` is `gptq`, else `quantize_config.json` (older
/// AutoGPTQ checkpoints) when there is one and `config.json` names no other method.
pub(crate) fn detect(dir: &Path, config: &Value) -> Result<Option<GptqConfig>> {
    let qc = config.get("quantization_config");
    let method = qc.and_then(|q| q.get("quant_method")).and_then(Value::as_str);
    let qc = match (method, qc) {
        (Some("gptq"), Some(qc)) => qc.clone(),
        (None, _) if dir.join("quantize_config.json").is_file() => {
            let p = dir.join("quantize_config.json");
            let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
            serde_json::from_str(&text)
                .map_err(|e| config_error("GPTQ", dir, "(quantize_config.json)", e.to_string()))?
        }
        _ => return Ok(None),
    };
    let bits = match qc.get("bits").and_then(Value::as_u64) {
        Some(b @ (2 | 4 | 8)) => Bits::try_from(b as u32)?,
        Some(3) => {
            return Err(ModelError::QuantUnsupported {
                format: "GPTQ",
                what: "3-bit checkpoints (their qweight spans word boundaries; lowbit reads 2, 4 and 8 bits)".into(),
            })
        }
        other => return Err(config_error("GPTQ", dir, "bits", format!("{other:?} (GPTQ writes 2, 3, 4 or 8)"))),
    };
    let group = match qc.get("group_size").and_then(Value::as_i64) {
        Some(-1) => None,
        Some(g) if g > 0 => Some(g as usize),
        other => return Err(config_error("GPTQ", dir, "group_size", format!("{other:?} (a positive size or -1)"))),
    };
    // GPTQModel writes `format`, AutoGPTQ `checkpoint_format`; both default to v1.
    let label = qc.get("format").or_else(|| qc.get("checkpoint_format")).and_then(Value::as_str).unwrap_or("gptq");
    let v2 = match label {
        "gptq" => false,
        "gptq_v2" => true,
        other => {
            return Err(ModelError::QuantUnsupported {
                format: "GPTQ",
                what: format!("checkpoint format {other:?} (lowbit reads \"gptq\" and \"gptq_v2\")"),
            })
        }
    };
    if let Some(p) = qc.get("pack_dtype").and_then(Value::as_str).filter(|p| *p != "int32") {
        return Err(ModelError::QuantUnsupported {
            format: "GPTQ",
            what: format!("pack_dtype {p:?} (lowbit reads int32 words)"),
        });
    }
    let sym = qc.get("sym").and_then(Value::as_bool).unwrap_or(true);
    Ok(Some(GptqConfig { bits, group, sym, v2 }))
}

/// A safetensors checkpoint whose linears are GPTQ modules.
pub(crate) struct GptqSource {
    inner: SafetensorsSource,
    cfg: GptqConfig,
    warned: Warnings,
}

impl GptqSource {
    pub(crate) fn new(inner: SafetensorsSource, cfg: GptqConfig) -> Self {
        GptqSource { inner, cfg, warned: Warnings::default() }
    }

    /// Takes one part: its dtype, shape and bytes (copied), the file for messages.
    fn part(&mut self, prefix: &str, part: &str) -> Option<(Dtype, Vec<usize>, Vec<u8>, PathBuf)> {
        self.inner.take_raw(&format!("{prefix}.{part}")).map(|(d, s, b, p)| (d, s, b.to_vec(), p.to_path_buf()))
    }

    fn module(&mut self, prefix: &str) -> Result<Tensor> {
        let bits = self.cfg.bits;
        let p = per_word(bits);
        let (dt, qshape, qbytes, file) = self.part(prefix, "qweight").expect("checked by take");
        let bad = |part: &str, reason: String| ModelError::QuantCheckpoint {
            format: "GPTQ",
            path: file.display().to_string(),
            tensor: format!("{prefix}.{part}"),
            reason,
        };
        let int32 = |part: &str, dt: Dtype| {
            if dt == Dtype::I32 {
                Ok(())
            } else {
                Err(bad(part, format!("dtype {dt:?}, GPTQ packs int32 words")))
            }
        };
        int32("qweight", dt)?;
        let [rows, out] = qshape[..] else { return Err(bad("qweight", format!("shape {qshape:?} is not 2-D"))) };
        // An empty qweight would leave the other dimension unbounded by the file's bytes.
        if rows == 0 || out == 0 {
            return Err(bad("qweight", format!("shape {qshape:?} is empty")));
        }
        let inn = rows * p;
        let Some((sdt, sshape, sbytes, _)) = self.part(prefix, "scales") else {
            return Err(bad("scales", "missing".into()));
        };
        let Some((zdt, zshape, zbytes, _)) = self.part(prefix, "qzeros") else {
            return Err(bad("qzeros", "missing".into()));
        };
        int32("qzeros", zdt)?;
        let groups = match self.cfg.group {
            None => 1,
            Some(g) => inn.div_ceil(g),
        };
        if sshape != [groups, out] {
            return Err(bad(
                "scales",
                format!(
                    "shape {sshape:?}, expected [{groups}, {out}] for in_features {inn}, group size {:?}",
                    self.cfg.group
                ),
            ));
        }
        if out % p != 0 || zshape != [groups, out / p] {
            return Err(bad("qzeros", format!("shape {zshape:?}, expected [{groups}, {out} / {p}]")));
        }
        let Some(scales) = floats(sdt, &sbytes) else {
            return Err(bad("scales", format!("dtype {sdt:?}, expected F16")));
        };
        let g_idx: Vec<usize> = match self.part(prefix, "g_idx") {
            None => (0..inn).map(|i| self.cfg.group.map_or(0, |g| i / g)).collect(),
            Some((gdt, gshape, gbytes, _)) => {
                int32("g_idx", gdt)?;
                if gshape != [inn] {
                    return Err(bad("g_idx", format!("shape {gshape:?}, expected [{inn}]")));
                }
                let gi: Vec<i32> = bytemuck::pod_collect_to_vec(&gbytes);
                if let Some(g) = gi.iter().find(|&&g| g < 0 || g as usize >= groups) {
                    return Err(bad("g_idx", format!("group {g} outside 0..{groups}")));
                }
                gi.into_iter().map(|g| g as usize).collect()
            }
        };
        let words: Vec<i32> = bytemuck::pod_collect_to_vec(&qbytes);
        let codes = unpack_qweight(&words, out, inn, bits);
        let stored = unpack_qzeros(&bytemuck::pod_collect_to_vec::<u8, i32>(&zbytes), bits);
        let v2 = self.convention(prefix, &stored, &file)?;
        let zeros: Vec<u8> = stored.iter().map(|&z| z + u8::from(!v2)).collect();
        let trivial = g_idx.iter().enumerate().all(|(i, &g)| g == self.cfg.group.map_or(0, |gs| i / gs));
        if !trivial {
            self.warned.warn(
                "g_idx",
                format!(
                    "GPTQ {prefix}: g_idx is not i / group_size (act-order without static groups), which lowbit's layout cannot hold: dequantized to f32"
                ),
            );
            let w = dequantize(&codes, &zeros, &scales, &g_idx, out);
            return Ok(Tensor { shape: vec![out, inn], data: TensorData::F32(w) });
        }
        let q = int_tensor(
            (out, inn),
            bits,
            self.cfg.group,
            &codes,
            transpose(&zeros, groups, out),
            transpose(&scales, groups, out),
            sdt,
        )
        .map_err(|e| bad("scales", e.to_string()))?;
        Ok(Tensor { shape: vec![out, inn], data: TensorData::Quant(q) })
    }

    /// Whether the stored zeros of `prefix` are read as v2 (unchanged) rather than v1 (`+ 1`):
    /// the label's convention unless the values contradict it.
    fn convention(&mut self, prefix: &str, stored: &[u8], file: &Path) -> Result<bool> {
        let bits = self.cfg.bits;
        let (maxq, half) = (bits.maxq(), bits.symmetric_zero());
        let all = |v: u8| stored.iter().all(|&z| z == v);
        if !self.cfg.v2 {
            if stored.contains(&maxq) {
                return Err(ModelError::QuantCheckpoint {
        format: "GPTQ",
                    path: file.display().to_string(),
                    tensor: format!("{prefix}.qzeros"),
                    reason: format!(
                        "a stored zero of {maxq} under the v1 label (checkpoint_format \"gptq\") would be zero point {}, beyond {maxq}: either a gptq_v2 checkpoint mislabelled as v1 (set \"format\"/\"checkpoint_format\" to \"gptq_v2\" in its quantization_config) or an asymmetric v1 export whose zero of 0 overflowed into its neighbours",
                        u32::from(maxq) + 1
                    ),
                });
            }
            if self.cfg.sym && all(half) {
                self.warned.warn(
                    "v1-label-v2-values",
                    format!(
                        "GPTQ {prefix}: labelled v1 (\"gptq\", stored z - 1) but every stored zero is {half}, the gptq_v2 symmetric value (v1 would store {}): read as gptq_v2",
                        half - 1
                    ),
                );
                return Ok(true);
            }
            return Ok(false);
        }
        if self.cfg.sym && all(half - 1) {
            self.warned.warn(
                "v2-label-v1-values",
                format!(
                    "GPTQ {prefix}: labelled gptq_v2 (stored z) but every stored zero is {}, the v1 symmetric value (v2 would store {half}): read as v1",
                    half - 1
                ),
            );
            return Ok(false);
        }
        Ok(true)
    }
}

impl TensorSource for GptqSource {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        if let Some(prefix) = name.strip_suffix(".weight") {
            if self.inner.has(&format!("{prefix}.qweight")) {
                return self.module(prefix).map(Some);
            }
        }
        self.inner.take(name)
    }

    fn warnings(&self) -> Vec<String> {
        self.warned.messages()
    }
}
