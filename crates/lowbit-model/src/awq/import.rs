//! AWQ GEMM directories as a tensor source: each `{module}.qweight/qzeros/scales` becomes
//! lowbit's 4-bit integer `QTensor` (`{module}.weight`), repacked exactly so it runs through
//! lowbit's packed kernels. Only AutoAWQ's GEMM layout with zero points is read; other versions
//! (GEMV, GEMV_FAST, Marlin) pack differently and are refused by name.

use super::layout::unpack;
use crate::hf_quant::{config_error, floats, int_tensor, transpose};
use crate::safetensors_source::SafetensorsSource;
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::path::Path;

const NAME: &str = "AWQ";

/// The `quantization_config` of an AWQ checkpoint, as far as the tensors' meaning goes.
#[derive(Clone, Debug)]
pub(crate) struct AwqConfig {
    /// `None` for `group_size: -1` (one group per row).
    pub(super) group: Option<usize>,
}

fn unsupported(what: String) -> ModelError {
    ModelError::QuantUnsupported { format: NAME, what }
}

/// The AWQ config of `config.json`, when its `quant_method` is `awq`. AutoAWQ writes `bits` /
/// `group_size`; vLLM also accepts `w_bit` / `q_group_size`.
pub(crate) fn detect(dir: &Path, config: &Value) -> Result<Option<AwqConfig>> {
    let Some(qc) = config.get("quantization_config").filter(|q| q.get("quant_method") == Some(&"awq".into())) else {
        return Ok(None);
    };
    let key = |a: &str, b: &str| qc.get(a).or_else(|| qc.get(b));
    match key("bits", "w_bit").map(|b| (b, b.as_u64())) {
        Some((_, Some(4))) => {}
        Some((_, Some(b @ (2 | 3 | 8)))) => {
            return Err(unsupported(format!("{b}-bit checkpoints (lowbit reads AutoAWQ's 4-bit GEMM layout)")))
        }
        other => {
            return Err(config_error(NAME, dir, "bits", format!("{:?} (AWQ GEMM stores 4 bits)", other.map(|o| o.0))))
        }
    }
    let group = match key("group_size", "q_group_size").and_then(Value::as_i64) {
        Some(-1) => None,
        Some(g) if g > 0 => Some(g as usize),
        other => return Err(config_error(NAME, dir, "group_size", format!("{other:?} (a positive size or -1)"))),
    };
    let version = qc.get("version").and_then(Value::as_str).unwrap_or("gemm");
    if !version.eq_ignore_ascii_case("gemm") {
        return Err(unsupported(format!(
            "version {version:?}: lowbit reads AutoAWQ's \"gemm\" layout (GEMV, GEMV_FAST and Marlin pack differently)"
        )));
    }
    if qc.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(unsupported(
            "zero_point: false (AutoAWQ's GEMM layout stores zero points; lowbit reads that)".into(),
        ));
    }
    Ok(Some(AwqConfig { group }))
}

/// A safetensors checkpoint whose linears are AWQ GEMM modules.
pub(crate) struct AwqSource {
    inner: SafetensorsSource,
    cfg: AwqConfig,
}

impl AwqSource {
    pub(crate) fn new(inner: SafetensorsSource, cfg: AwqConfig) -> Self {
        AwqSource { inner, cfg }
    }

    fn module(&mut self, prefix: &str) -> Result<Tensor> {
        let take = |src: &mut SafetensorsSource, part: &str| {
            src.take_raw(&format!("{prefix}.{part}")).map(|(d, s, b, p)| (d, s, b.to_vec(), p.to_path_buf()))
        };
        let (dt, qshape, qbytes, file) = take(&mut self.inner, "qweight").expect("checked by take");
        let bad = |part: &str, reason: String| ModelError::QuantCheckpoint {
            format: NAME,
            path: file.display().to_string(),
            tensor: format!("{prefix}.{part}"),
            reason,
        };
        let int32 = |part: &str, dt: Dtype| {
            if dt == Dtype::I32 {
                Ok(())
            } else {
                Err(bad(part, format!("dtype {dt:?}, AWQ packs int32 words")))
            }
        };
        int32("qweight", dt)?;
        let [inn, words] = qshape[..] else { return Err(bad("qweight", format!("shape {qshape:?} is not 2-D"))) };
        // An empty qweight would leave the other dimension unbounded by the file's bytes.
        if inn == 0 || words == 0 {
            return Err(bad("qweight", format!("shape {qshape:?} is empty")));
        }
        let out = words * 8;
        let Some((sdt, sshape, sbytes, _)) = take(&mut self.inner, "scales") else {
            return Err(bad("scales", "missing".into()));
        };
        let Some((zdt, zshape, zbytes, _)) = take(&mut self.inner, "qzeros") else {
            return Err(bad("qzeros", "missing".into()));
        };
        int32("qzeros", zdt)?;
        let groups = match self.cfg.group {
            None => 1,
            Some(g) if inn % g == 0 => inn / g,
            Some(g) => {
                return Err(bad(
                    "qweight",
                    format!("in_features {inn} is not a multiple of group_size {g} (AWQ stores whole groups)"),
                ))
            }
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
        if zshape != [groups, words] {
            return Err(bad("qzeros", format!("shape {zshape:?}, expected [{groups}, {words}]")));
        }
        let Some(scales) = floats(sdt, &sbytes) else {
            return Err(bad("scales", format!("dtype {sdt:?}, expected F16")));
        };
        let codes = transpose(&unpack(&bytemuck::pod_collect_to_vec::<u8, i32>(&qbytes)), inn, out);
        let zeros = transpose(&unpack(&bytemuck::pod_collect_to_vec::<u8, i32>(&zbytes)), groups, out);
        let scales = transpose(&scales, groups, out);
        let q = int_tensor((out, inn), Bits::B4, self.cfg.group, &codes, zeros, scales, sdt)
            .map_err(|e| bad("scales", e.to_string()))?;
        Ok(Tensor { shape: vec![out, inn], data: TensorData::Quant(q) })
    }
}

impl TensorSource for AwqSource {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        if let Some(prefix) = name.strip_suffix(".weight") {
            if self.inner.has(&format!("{prefix}.qweight")) {
                return self.module(prefix).map(Some);
            }
        }
        self.inner.take(name)
    }
}
