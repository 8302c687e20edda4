//! compressed-tensors `pack-quantized` directories as a tensor source: each
//! `{module}.weight_packed/weight_scale/weight_zero_point/weight_shape` becomes lowbit's integer
//! `QTensor` (`{module}.weight`), repacked exactly, for the `group` and `channel` strategies (and
//! `tensor`, its scale repeated per row). What lowbit's layout cannot hold is dequantized to f32
//! with a warning naming the module: the `block` strategy, `actorder: "group"` with a `g_idx`
//! other than `i / group_size`, zero points stored as floats that are not integers.

use super::layout::{per_word, unpack_rows};
use crate::hf_quant::{config_error, floats, int_tensor, transpose, Warnings};
use crate::safetensors_source::SafetensorsSource;
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::path::{Path, PathBuf};

const NAME: &str = "compressed-tensors";

/// Which weights share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// `group_size` consecutive inputs of a row (the last group may be shorter).
    Group(usize),
    /// One per row.
    Channel,
    /// One for the tensor.
    Tensor,
    /// `[rows, cols]` tiles (`block_structure`).
    Block(usize, usize),
}

/// The weights' quantization args every config group shares.
#[derive(Clone, Debug)]
pub(crate) struct CtConfig {
    pub(super) bits: Bits,
    pub(super) symmetric: bool,
    pub(super) strategy: Strategy,
}

fn unsupported(what: String) -> ModelError {
    ModelError::QuantUnsupported { format: NAME, what }
}

/// The compressed-tensors config of `config.json`, when its `quant_method` is
/// `compressed-tensors` and some config group quantizes weights.
pub(crate) fn detect(dir: &Path, config: &Value) -> Result<Option<CtConfig>> {
    let Some(qc) =
        config.get("quantization_config").filter(|q| q.get("quant_method") == Some(&"compressed-tensors".into()))
    else {
        return Ok(None);
    };
    if let Some(f) = qc.get("sparsity_config").and_then(|s| s.get("format")).and_then(Value::as_str) {
        if f != "dense" {
            return Err(unsupported(format!("sparsity format {f:?} (lowbit reads dense pack-quantized weights)")));
        }
    }
    let Some(groups) = qc.get("config_groups").and_then(Value::as_object) else {
        return Err(config_error(NAME, dir, "config_groups", "missing or not an object"));
    };
    let mut found: Option<(CtConfig, String)> = None;
    for (gname, g) in groups {
        let Some(w) = g.get("weights").filter(|w| !w.is_null()) else { continue };
        let key = format!("config_groups.{gname}.weights");
        let format = g.get("format").or_else(|| qc.get("format")).and_then(Value::as_str).unwrap_or("");
        if format != "pack-quantized" {
            return Err(unsupported(format!("format {format:?} in {gname} (lowbit reads \"pack-quantized\")")));
        }
        match w.get("type").and_then(Value::as_str) {
            Some("int") => {}
            other => return Err(unsupported(format!("weights of type {other:?} in {gname} (lowbit reads \"int\")"))),
        }
        let bits = match w.get("num_bits").and_then(Value::as_u64) {
            Some(b @ (2 | 4 | 8)) => Bits::try_from(b as u32)?,
            // 3 bits: ten per word before compressed-tensors 0.20, a dense bit stream since.
            Some(b) => return Err(unsupported(format!("{b}-bit weights in {gname} (lowbit reads 2, 4 and 8)"))),
            None => return Err(config_error(NAME, dir, &format!("{key}.num_bits"), "missing")),
        };
        let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
        let size = |k: &str| w.get(k).and_then(Value::as_u64).filter(|&g| g > 0).map(|g| g as usize);
        let strategy = match w.get("strategy").and_then(Value::as_str) {
            Some("group") => Strategy::Group(
                size("group_size")
                    .ok_or_else(|| config_error(NAME, dir, &format!("{key}.group_size"), "a positive size"))?,
            ),
            Some("channel") => Strategy::Channel,
            Some("tensor") => Strategy::Tensor,
            Some("block") => {
                let bs = w.get("block_structure").and_then(Value::as_array).and_then(|a| {
                    let v: Vec<usize> =
                        a.iter().filter_map(Value::as_u64).filter(|&x| x > 0).map(|x| x as usize).collect();
                    (v.len() == 2).then(|| (v[0], v[1]))
                });
                let (r, c) =
                    bs.ok_or_else(|| config_error(NAME, dir, &format!("{key}.block_structure"), "two positive sizes"))?;
                Strategy::Block(r, c)
            }
            other => {
                return Err(unsupported(format!(
                    "strategy {other:?} in {gname} (lowbit reads group, channel, tensor, block)"
                )))
            }
        };
        if !symmetric && matches!(strategy, Strategy::Tensor | Strategy::Block(..)) {
            return Err(unsupported(format!("asymmetric {strategy:?} weights in {gname} (their zero points are not packed; lowbit reads asymmetric group and channel)")));
        }
        let cfg = CtConfig { bits, symmetric, strategy };
        match &found {
            None => found = Some((cfg, gname.clone())),
            Some((f, first)) if (f.bits, f.symmetric, f.strategy) != (cfg.bits, cfg.symmetric, cfg.strategy) => {
                return Err(unsupported(format!(
                    "config groups {first} and {gname} quantize weights differently (lowbit reads one weight scheme per checkpoint)"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(c, _)| c))
}

/// A safetensors checkpoint whose linears are `pack-quantized` modules.
pub(crate) struct CtSource {
    inner: SafetensorsSource,
    cfg: CtConfig,
    warned: Warnings,
}

type Part = (Dtype, Vec<usize>, Vec<u8>, PathBuf);

impl CtSource {
    pub(crate) fn new(inner: SafetensorsSource, cfg: CtConfig) -> Self {
        CtSource { inner, cfg, warned: Warnings::default() }
    }

    fn part(&mut self, prefix: &str, part: &str) -> Option<Part> {
        self.inner.take_raw(&format!("{prefix}.{part}")).map(|(d, s, b, p)| (d, s, b.to_vec(), p.to_path_buf()))
    }

    fn module(&mut self, prefix: &str) -> Result<Tensor> {
        let (bits, strategy) = (self.cfg.bits, self.cfg.strategy);
        let p = per_word(bits);
        let (dt, pshape, pbytes, file) = self.part(prefix, "weight_packed").expect("checked by take");
        let bad = |part: &str, reason: String| ModelError::QuantCheckpoint {
            format: NAME,
            path: file.display().to_string(),
            tensor: format!("{prefix}.{part}"),
            reason,
        };
        if dt != Dtype::I32 {
            return Err(bad("weight_packed", format!("dtype {dt:?}, pack-quantized packs int32 words")));
        }
        let [out, words] = pshape[..] else { return Err(bad("weight_packed", format!("shape {pshape:?} is not 2-D"))) };
        // An empty weight_packed would leave the other dimension unbounded by the file's bytes.
        if out == 0 || words == 0 {
            return Err(bad("weight_packed", format!("shape {pshape:?} is empty")));
        }
        let Some((shdt, shshape, shbytes, _)) = self.part(prefix, "weight_shape") else {
            return Err(bad("weight_shape", "missing".into()));
        };
        let dims: Vec<i64> = match (shdt, &shshape[..]) {
            (Dtype::I64, [2]) => bytemuck::pod_collect_to_vec(&shbytes),
            (Dtype::I32, [2]) => bytemuck::pod_collect_to_vec::<u8, i32>(&shbytes).into_iter().map(i64::from).collect(),
            _ => return Err(bad("weight_shape", format!("dtype {shdt:?} shape {shshape:?}, expected 2 integers"))),
        };
        let inn = usize::try_from(dims[1]).unwrap_or(0);
        if dims[0] != out as i64 || inn == 0 || inn.div_ceil(p) != words {
            return Err(bad(
                "weight_shape",
                format!(
                    "{dims:?} disagrees with weight_packed {pshape:?} ({p} {}-bit codes per int32 along in_features)",
                    bits.get()
                ),
            ));
        }
        // Rows and columns of the scale (and zero point) grid, and each weight's cell.
        let (srows, scols) = match strategy {
            Strategy::Group(g) => (out, inn.div_ceil(g)),
            Strategy::Channel => (out, 1),
            Strategy::Tensor => (1, 1),
            Strategy::Block(r, c) => (out.div_ceil(r), inn.div_ceil(c)),
        };
        let Some((sdt, sshape, sbytes, _)) = self.part(prefix, "weight_scale") else {
            return Err(bad("weight_scale", "missing".into()));
        };
        if sshape.len() > 2 || sshape.first() != Some(&srows) || sshape.iter().product::<usize>() != srows * scols {
            return Err(bad(
                "weight_scale",
                format!("shape {sshape:?}, expected [{srows}, {scols}] for weight [{out}, {inn}], {strategy:?}"),
            ));
        }
        let Some(scales) = floats(sdt, &sbytes) else {
            return Err(bad("weight_scale", format!("dtype {sdt:?}, expected F16, BF16 or F32")));
        };
        let half = f32::from(bits.symmetric_zero());
        let zp = self.part(prefix, "weight_zero_point");
        let zeros: Vec<f32> = match (self.cfg.symmetric, zp) {
            (true, _) => vec![half; srows * scols],
            (false, None) => return Err(bad("weight_zero_point", "missing (the config says asymmetric)".into())),
            (false, Some((zdt, zshape, zbytes, _))) => {
                let rows = out.div_ceil(p);
                match zdt {
                    // Packed along dim 0 ([ceil(out/p), G]); stored zp + 2^(b-1), lowbit's zero.
                    Dtype::I32 if zshape == [rows, scols] => {
                        let w = transpose(&bytemuck::pod_collect_to_vec::<u8, i32>(&zbytes), rows, scols);
                        transpose(&unpack_rows(&w, out, bits), scols, out).into_iter().map(f32::from).collect()
                    }
                    // Older checkpoints: one signed zero point per group, unpacked.
                    Dtype::I8 if zshape == [out, scols] => zbytes.iter().map(|&z| f32::from(z as i8) + half).collect(),
                    _ if zshape == [out, scols] => match floats(zdt, &zbytes) {
                        Some(z) => z.into_iter().map(|z| z + half).collect(),
                        None => return Err(bad("weight_zero_point", format!("dtype {zdt:?}, expected I32 (packed)"))),
                    },
                    _ => {
                        return Err(bad(
                            "weight_zero_point",
                            format!("{zdt:?} shape {zshape:?}, expected I32 [{rows}, {scols}] (packed along dim 0)"),
                        ))
                    }
                }
            }
        };
        let maxq = f32::from(bits.maxq());
        if let Some(z) = zeros.iter().find(|z| !(0.0..=maxq).contains(*z)) {
            return Err(bad(
                "weight_zero_point",
                format!("zero point {} outside the {}-bit range", z - half, bits.get()),
            ));
        }
        let g_idx = match self.part(prefix, "weight_g_idx") {
            None => None,
            Some((gdt, gshape, gbytes, _)) => {
                if gdt != Dtype::I32 || gshape != [inn] {
                    return Err(bad("weight_g_idx", format!("{gdt:?} shape {gshape:?}, expected I32 [{inn}]")));
                }
                let gi: Vec<i32> = bytemuck::pod_collect_to_vec(&gbytes);
                if let Some(g) = gi.iter().find(|&&g| g < 0 || g as usize >= scols) {
                    return Err(bad("weight_g_idx", format!("group {g} outside 0..{scols}")));
                }
                let trivial = match strategy {
                    Strategy::Group(gs) => gi.iter().enumerate().all(|(i, &g)| g as usize == i / gs),
                    _ => gi.iter().all(|&g| g == 0),
                };
                (!trivial).then(|| gi.into_iter().map(|g| g as usize).collect::<Vec<_>>())
            }
        };
        let codes = unpack_rows(&bytemuck::pod_collect_to_vec::<u8, i32>(&pbytes), inn, bits);
        let integral = zeros.iter().all(|z| z.fract() == 0.0);
        let lowbit_group = match strategy {
            Strategy::Group(g) => Some(Some(g)),
            Strategy::Channel | Strategy::Tensor => Some(None),
            Strategy::Block(..) => None,
        };
        if let (Some(group), true, None) = (lowbit_group, integral, &g_idx) {
            // Per-row scales: the tensor strategy's one scale repeated.
            let (scales, zeros) = if srows == 1 && out > 1 {
                (vec![scales[0]; out], vec![zeros[0] as u8; out])
            } else {
                (scales, zeros.iter().map(|&z| z as u8).collect())
            };
            let q = int_tensor((out, inn), bits, group, &codes, zeros, scales, sdt)
                .map_err(|e| bad("weight_scale", e.to_string()))?;
            return Ok(Tensor { shape: vec![out, inn], data: TensorData::Quant(q) });
        }
        let why = if g_idx.is_some() {
            "weight_g_idx is not i / group_size (act-order groups)"
        } else if !integral {
            "its zero points are not integers"
        } else {
            "the block strategy (scales per 2-D tile)"
        };
        self.warned.warn(
            why,
            format!(
                "compressed-tensors {prefix}: {why}, which lowbit's integer layout cannot hold: dequantized to f32"
            ),
        );
        let cell = |n: usize, i: usize| match strategy {
            Strategy::Group(gs) => n * scols + g_idx.as_ref().map_or(i / gs, |g| g[i]),
            Strategy::Channel => n,
            Strategy::Tensor => 0,
            Strategy::Block(r, c) => (n / r) * scols + i / c,
        };
        let mut w = vec![0f32; out * inn];
        for n in 0..out {
            for i in 0..inn {
                let k = cell(n, i);
                w[n * inn + i] = (f32::from(codes[n * inn + i]) - zeros[k]) * scales[k];
            }
        }
        Ok(Tensor { shape: vec![out, inn], data: TensorData::F32(w) })
    }
}

impl TensorSource for CtSource {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        if let Some(prefix) = name.strip_suffix(".weight") {
            if self.inner.has(&format!("{prefix}.weight_packed")) {
                return self.module(prefix).map(Some);
            }
        }
        self.inner.take(name)
    }

    fn warnings(&self) -> Vec<String> {
        self.warned.messages()
    }
}
