//! Every option of the pipeline, declared once: name, type, allowed values, help, the methods
//! it applies to, its command-line spelling, and how it reads and sets [`QuantizeOptions`].
//! Python validates keyword arguments against this table and `lowbit quantize` builds its flags
//! from it (`_lowbit.quantize_option_specs()`); defaults are read from the options' `Default`.
//!
//! Adding an option is one row here (and the field it sets). Calibration *data* (a file, token
//! ids, data-free) is not an option row: it is the pipeline's input, passed separately.

use crate::options::{QuantizeOptions, WeightFormat};
use crate::roles::{TensorScheme, HEAD_SCHEME_NAMES, SAME_AS_EMBED, TENSOR_SCHEME_NAMES};
use crate::{QuantizeError, Result};
use lowbit_core::ScaleDtype;
use lowbit_solvers::{GptqMethod, MethodConfig, RtnMethod, SpqrMethod, SqueezeLlmMethod};

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// `true` / `false` (a `--flag` on the command line).
    Bool,
    /// An integer.
    Int,
    /// A float.
    Float,
    /// One of the listed strings.
    Choice(&'static [&'static str]),
}

/// A value given for an option (or read back).
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// Unset: "the method's default" where the option is optional.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

/// A command-line word that stands for a value (`--clip mse` for `mse_clip=True`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
}

/// One option.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The Python keyword (`act_order`).
    pub name: &'static str,
    /// Its type.
    pub kind: OptionKind,
    /// Whether `None` is accepted.
    pub optional: bool,
    /// One line of help.
    pub help: &'static str,
    /// The methods it applies to; empty: every method.
    pub methods: &'static [&'static str],
    /// The command-line flag; `None`: Python only.
    pub cli: Option<&'static str>,
    /// Command-line words that stand for values instead of the value itself.
    pub cli_aliases: &'static [(&'static str, Alias)],
    /// Reads the option (`OptionValue::None` where it does not apply).
    pub get: fn(&QuantizeOptions) -> OptionValue,
    set: fn(&mut QuantizeOptions, &OptionValue) -> std::result::Result<(), String>,
}

impl OptionSpec {
    /// Whether it applies to `method`.
    pub fn applies_to(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.contains(&method)
    }

    /// The default: what [`QuantizeOptions::default`] holds; for a method's own option, what
    /// each method it applies to holds by default, or `None` where that depends on the method.
    pub fn default_value(&self) -> OptionValue {
        if self.methods.is_empty() {
            return (self.get)(&QuantizeOptions::default());
        }
        let mut seen: Option<OptionValue> = None;
        for m in MethodConfig::all().into_iter().filter(|m| self.applies_to(m.name())) {
            let v = (self.get)(&QuantizeOptions { method: m, ..QuantizeOptions::default() });
            match &seen {
                Some(s) if *s != v => return OptionValue::None,
                _ => seen = Some(v),
            }
        }
        seen.unwrap_or(OptionValue::None)
    }
}

fn bool_of(v: &OptionValue) -> std::result::Result<bool, String> {
    match v {
        OptionValue::Bool(b) => Ok(*b),
        other => Err(format!("expected a bool, got {other:?}")),
    }
}

fn int_of(v: &OptionValue) -> std::result::Result<i64, String> {
    match v {
        OptionValue::Int(i) => Ok(*i),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

fn usize_of(v: &OptionValue) -> std::result::Result<usize, String> {
    usize::try_from(int_of(v)?).map_err(|_| "expected a non-negative integer".to_string())
}

fn float_of(v: &OptionValue) -> std::result::Result<f64, String> {
    match v {
        OptionValue::Float(f) => Ok(*f),
        OptionValue::Int(i) => Ok(*i as f64),
        other => Err(format!("expected a number, got {other:?}")),
    }
}

fn str_of(v: &OptionValue) -> std::result::Result<&str, String> {
    match v {
        OptionValue::Str(s) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn opt<T>(
    v: &OptionValue,
    f: impl Fn(&OptionValue) -> std::result::Result<T, String>,
) -> std::result::Result<Option<T>, String> {
    match v {
        OptionValue::None => Ok(None),
        v => f(v).map(Some),
    }
}

fn some_or_none<T>(v: Option<T>, f: impl Fn(T) -> OptionValue) -> OptionValue {
    v.map_or(OptionValue::None, f)
}

fn gptq(o: &QuantizeOptions) -> Option<&GptqMethod> {
    match &o.method {
        MethodConfig::Gptq(g) => Some(g),
        _ => None,
    }
}

fn spqr(o: &QuantizeOptions) -> Option<&SpqrMethod> {
    match &o.method {
        MethodConfig::Spqr(m) => Some(m),
        _ => None,
    }
}

fn spqr_mut(o: &mut QuantizeOptions) -> std::result::Result<&mut SpqrMethod, String> {
    match &mut o.method {
        MethodConfig::Spqr(m) => Ok(m),
        _ => Err("applies to spqr only".into()),
    }
}

fn squeeze(o: &QuantizeOptions) -> Option<&SqueezeLlmMethod> {
    match &o.method {
        MethodConfig::SqueezeLlm(m) => Some(m),
        _ => None,
    }
}

fn squeeze_mut(o: &mut QuantizeOptions) -> std::result::Result<&mut SqueezeLlmMethod, String> {
    match &mut o.method {
        MethodConfig::SqueezeLlm(m) => Ok(m),
        _ => Err("applies to squeezellm only".into()),
    }
}

fn gptq_mut(o: &mut QuantizeOptions) -> std::result::Result<&mut GptqMethod, String> {
    match &mut o.method {
        MethodConfig::Gptq(g) => Ok(g),
        _ => Err("applies to gptq only".into()),
    }
}

/// The methods' names, as [`MethodConfig::all`] lists them (a test checks).
#[cfg(test)]
const METHODS: &[&str] = &["rtn", "gptq", "awq", "smoothquant", "llm-int8", "hqq", "spqr", "squeezellm"];

/// What `method` accepts: the methods, and `qat` (quantization-aware training from one of them).
const METHOD_CHOICES: &[&str] = &["rtn", "gptq", "awq", "smoothquant", "llm-int8", "hqq", "spqr", "squeezellm", "qat"];

/// The methods quantization-aware training starts from.
const QAT_INITS: &[&str] = &["rtn", "gptq", "awq"];

/// `method="qat"`'s training defaults: four passes of end-to-end distillation over the
/// calibration windows (on SmolLM2 W3 g128 this met the protocol target in 33 minutes, see
/// benches/README.md); the block-wise stage stays off unless `qat_epochs` is given (an epoch of
/// it lowered each block's output error by about 1%), with scales and zeros trained beside the
/// weights when it runs.
const QAT_SCALE_LR: f32 = 1e-5;
const QAT_DISTILL_EPOCHS: usize = 4;

/// The table. `method` comes first: setting it resets the method's own settings.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "method",
        kind: OptionKind::Choice(METHOD_CHOICES),
        optional: false,
        help: "rtn, gptq, awq, smoothquant, llm-int8 (these two W8A8: bits 8, per-channel, symmetric), hqq (calibration-free, float zero points), spqr (group size 16 unless given), squeezellm (3/4-bit codebook per output row, dense-and-sparse; no groups) or qat (quantization-aware training without PyTorch: qat_init's result, then end-to-end distillation of the scales, and with qat_epochs block-wise training of weights, scales and zeros before it)",
        methods: &[],
        cli: Some("--method"),
        cli_aliases: &[],
        get: |o| OptionValue::Str(if o.qat { "qat" } else { o.method.name() }.into()),
        set: |o, v| {
            let name = str_of(v)?;
            o.qat = name == "qat";
            if o.qat {
                // Both stages on, from GPTQ unless qat_init says otherwise.
                o.method = MethodConfig::from_name("gptq").map_err(|e| e.to_string())?;
                o.qat_scale_lr = QAT_SCALE_LR;
                o.qat_distill_epochs = Some(QAT_DISTILL_EPOCHS);
                return Ok(());
            }
            o.method = MethodConfig::from_name(name).map_err(|e| e.to_string())?;
            // SpQR's small groups: its default where the group size is still everyone's (the
            // method is set first, so a group size given with it still applies).
            if matches!(o.method, MethodConfig::Spqr(_)) && o.group_size == QuantizeOptions::default().group_size {
                o.group_size = Some(lowbit_solvers::spqr::DEFAULT_GROUP_SIZE);
            }
            Ok(())
        },
    },
    OptionSpec {
        name: "bits",
        kind: OptionKind::Int,
        optional: false,
        help: "code width: 2, 3, 4 or 8",
        methods: &[],
        cli: Some("--bits"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.bits.into()),
        set: |o, v| {
            o.bits = u32::try_from(int_of(v)?).map_err(|_| "expected 2, 3, 4 or 8".to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        name: "group_size",
        kind: OptionKind::Int,
        optional: true,
        help: "weights per scale along the input dimension (a positive int); None or 'channel' = one scale per output channel",
        methods: &[],
        cli: Some("--group-size"),
        cli_aliases: &[("channel", Alias::None)],
        get: |o| some_or_none(o.group_size, |g| OptionValue::Int(g as i64)),
        set: |o, v| {
            o.group_size = opt(v, usize_of)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "sym",
        kind: OptionKind::Bool,
        optional: false,
        help: "symmetric codes (no zero point)",
        methods: &[],
        cli: Some("--sym"),
        cli_aliases: &[],
        get: |o| OptionValue::Bool(o.sym),
        set: |o, v| {
            o.sym = bool_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "format",
        kind: OptionKind::Choice(WeightFormat::NAMES),
        optional: false,
        help: "codes: int (with scales and zero points), or QLoRA's 4-bit codebooks nf4 / fp4 (bits 4, group_size = the absmax block, 64 in QLoRA; rtn and gptq)",
        methods: &[],
        cli: Some("--format"),
        cli_aliases: &[],
        get: |o| OptionValue::Str(o.format.name().into()),
        set: |o, v| {
            o.format = WeightFormat::from_name(str_of(v)?)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "double_quant",
        kind: OptionKind::Bool,
        optional: false,
        help: "nf4/fp4: quantize the block absmax values to 8 bits in blocks of 256 (QLoRA's double quantization)",
        methods: &[],
        cli: Some("--double-quant"),
        cli_aliases: &[],
        get: |o| OptionValue::Bool(o.double_quant),
        set: |o, v| {
            o.double_quant = bool_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "scale_dtype",
        kind: OptionKind::Choice(&["f16", "f32"]),
        optional: false,
        help: "storage of the group scales",
        methods: &[],
        cli: Some("--scale-dtype"),
        cli_aliases: &[],
        get: |o| {
            OptionValue::Str(
                match o.scale_dtype {
                    ScaleDtype::F16 => "f16",
                    ScaleDtype::F32 => "f32",
                }
                .into(),
            )
        },
        set: |o, v| {
            o.scale_dtype = match str_of(v)? {
                "f16" => ScaleDtype::F16,
                "f32" => ScaleDtype::F32,
                other => return Err(format!("expected \"f16\" or \"f32\", got {other:?}")),
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "embed",
        kind: OptionKind::Choice(TENSOR_SCHEME_NAMES),
        optional: false,
        help: "token embedding storage: int8 (per channel, symmetric), int4-g32/g64/g128 (asymmetric groups), f16, f32 or keep (as loaded)",
        methods: &[],
        cli: Some("--embed"),
        cli_aliases: &[],
        get: |o| OptionValue::Str(o.embed.name().into()),
        set: |o, v| {
            o.embed = TensorScheme::from_name(str_of(v)?).map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        name: "lm_head",
        kind: OptionKind::Choice(HEAD_SCHEME_NAMES),
        optional: true,
        help: "LM head storage, as embed; 'embed' or None = as the embedding (a tied model stores one tensor, by embed)",
        methods: &[],
        cli: Some("--lm-head"),
        cli_aliases: &[],
        get: |o| some_or_none(o.lm_head, |s| OptionValue::Str(s.name().into())),
        set: |o, v| {
            o.lm_head = match v {
                OptionValue::Str(s) if s == SAME_AS_EMBED => None,
                v => opt(v, |v| TensorScheme::from_name(str_of(v)?).map_err(|e| e.to_string()))?,
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "act_order",
        kind: OptionKind::Bool,
        optional: false,
        help: "GPTQ, SpQR: quantize columns by descending Hessian diagonal (GPTQ: with static groups)",
        methods: &["gptq", "spqr"],
        cli: Some("--act-order"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Gptq(g) => OptionValue::Bool(g.act_order),
            MethodConfig::Spqr(m) => OptionValue::Bool(m.act_order),
            _ => OptionValue::None,
        },
        set: |o, v| {
            match &mut o.method {
                MethodConfig::Spqr(m) => m.act_order = bool_of(v)?,
                _ => gptq_mut(o)?.act_order = bool_of(v)?,
            }
            Ok(())
        },
    },
    OptionSpec {
        name: "static_groups",
        kind: OptionKind::Bool,
        optional: true,
        help: "GPTQ: group parameters from the original weights (default: with act-order)",
        methods: &["gptq"],
        cli: Some("--static-groups"),
        cli_aliases: &[],
        get: |o| some_or_none(gptq(o).and_then(|g| g.static_groups), OptionValue::Bool),
        set: |o, v| {
            gptq_mut(o)?.static_groups = opt(v, bool_of)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "mse_clip",
        kind: OptionKind::Bool,
        optional: true,
        help: "group ranges by least squared error instead of min-max (default: mse for gptq, minmax for rtn)",
        methods: &["gptq", "rtn"],
        cli: Some("--clip"),
        cli_aliases: &[("minmax", Alias::Bool(false)), ("mse", Alias::Bool(true))],
        get: |o| match &o.method {
            MethodConfig::Gptq(g) => OptionValue::Bool(g.mse_clip),
            MethodConfig::Rtn(r) => OptionValue::Bool(r.mse_clip),
            _ => OptionValue::None,
        },
        set: |o, v| {
            let given = opt(v, bool_of)?;
            match &mut o.method {
                MethodConfig::Gptq(g) => g.mse_clip = given.unwrap_or(GptqMethod::default().mse_clip),
                MethodConfig::Rtn(r) => r.mse_clip = given.unwrap_or(RtnMethod::default().mse_clip),
                _ => return Err("applies to gptq and rtn (awq has its own clip search)".into()),
            }
            Ok(())
        },
    },
    OptionSpec {
        name: "percdamp",
        kind: OptionKind::Float,
        optional: false,
        help: "GPTQ, SpQR: damping relative to the Hessian's mean diagonal",
        methods: &["gptq", "spqr"],
        cli: Some("--percdamp"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Gptq(g) => OptionValue::Float(g.percdamp),
            MethodConfig::Spqr(m) => OptionValue::Float(m.percdamp),
            _ => OptionValue::None,
        },
        set: |o, v| {
            match &mut o.method {
                MethodConfig::Spqr(m) => m.percdamp = float_of(v)?,
                _ => gptq_mut(o)?.percdamp = float_of(v)?,
            }
            Ok(())
        },
    },
    OptionSpec {
        name: "awq_samples",
        kind: OptionKind::Int,
        optional: false,
        help: "AWQ: calibration windows (the first ones) the scale and clip searches see",
        methods: &["awq"],
        cli: Some("--awq-samples"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Awq(a) => OptionValue::Int(a.samples as i64),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::Awq(a) => {
                a.samples = usize_of(v)?;
                Ok(())
            }
            _ => Err("applies to awq only".into()),
        },
    },
    OptionSpec {
        name: "sq_alpha",
        kind: OptionKind::Float,
        optional: false,
        help: "SmoothQuant: migration strength alpha in [0, 1]",
        methods: &["smoothquant"],
        cli: Some("--sq-alpha"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::SmoothQuant(s) => OptionValue::Float(f64::from(s.alpha)),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::SmoothQuant(s) => {
                s.alpha = float_of(v)? as f32;
                Ok(())
            }
            _ => Err("applies to smoothquant only".into()),
        },
    },
    OptionSpec {
        name: "outlier_threshold",
        kind: OptionKind::Float,
        optional: false,
        help: "LLM.int8(): input columns with any |x| >= this in a batch run in f32 (6.0; inf: plain W8A8); SpQR: weights whose error^2 / [H^-1]_cc exceeds this times the layer's mean are kept in f16 (0.2; inf: none)",
        methods: &["llm-int8", "spqr"],
        cli: Some("--outlier-threshold"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::LlmInt8(m) => OptionValue::Float(f64::from(m.outlier_threshold)),
            MethodConfig::Spqr(m) => OptionValue::Float(f64::from(m.outlier_threshold)),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::LlmInt8(m) => {
                m.outlier_threshold = float_of(v)? as f32;
                Ok(())
            }
            MethodConfig::Spqr(m) => {
                m.outlier_threshold = float_of(v)? as f32;
                Ok(())
            }
            _ => Err("applies to llm-int8 and spqr".into()),
        },
    },
    OptionSpec {
        name: "outlier_max_percent",
        kind: OptionKind::Float,
        optional: false,
        help: "SpQR: most outlier weights, percent of each layer's (0 to 100)",
        methods: &["spqr"],
        cli: Some("--outlier-max-percent"),
        cli_aliases: &[],
        get: |o| some_or_none(spqr(o), |m| OptionValue::Float(m.outlier_max_percent)),
        set: |o, v| {
            spqr_mut(o)?.outlier_max_percent = float_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "stats_bits",
        kind: OptionKind::Int,
        optional: false,
        help: "SpQR: bits of the quantized group scales and zeros (2, 3, 4 or 8)",
        methods: &["spqr"],
        cli: Some("--stats-bits"),
        cli_aliases: &[],
        get: |o| some_or_none(spqr(o), |m| OptionValue::Int(m.stats_bits.into())),
        set: |o, v| {
            spqr_mut(o)?.stats_bits = u32::try_from(int_of(v)?).map_err(|_| "expected 2, 3, 4 or 8".to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        name: "stats_group",
        kind: OptionKind::Int,
        optional: false,
        help: "SpQR: output rows per second-level group of the quantized scales and zeros",
        methods: &["spqr"],
        cli: Some("--stats-group"),
        cli_aliases: &[],
        get: |o| some_or_none(spqr(o), |m| OptionValue::Int(m.stats_group as i64)),
        set: |o, v| {
            spqr_mut(o)?.stats_group = usize_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "squeeze_outlier_percent",
        kind: OptionKind::Float,
        optional: false,
        help: "SqueezeLLM: largest-magnitude weights kept in f16, percent of each layer's (0 to 100; the paper's 0.45)",
        methods: &["squeezellm"],
        cli: Some("--squeeze-outlier-percent"),
        cli_aliases: &[],
        get: |o| some_or_none(squeeze(o), |m| OptionValue::Float(m.outlier_percent)),
        set: |o, v| {
            squeeze_mut(o)?.outlier_percent = float_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "squeeze_sensitive_percent",
        kind: OptionKind::Float,
        optional: false,
        help: "SqueezeLLM: then the most sensitive weights (Hessian diagonal x w^2) kept in f16, percent of each layer's",
        methods: &["squeezellm"],
        cli: Some("--squeeze-sensitive-percent"),
        cli_aliases: &[],
        get: |o| some_or_none(squeeze(o), |m| OptionValue::Float(m.sensitive_percent)),
        set: |o, v| {
            squeeze_mut(o)?.sensitive_percent = float_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "squeeze_error_feedback",
        kind: OptionKind::Bool,
        optional: false,
        help: "SqueezeLLM: choose the codes by GPTQ's sweep onto the fitted codebooks (full Hessian, act-order; not in the paper)",
        methods: &["squeezellm"],
        cli: Some("--squeeze-error-feedback"),
        cli_aliases: &[],
        get: |o| some_or_none(squeeze(o), |m| OptionValue::Bool(m.error_feedback)),
        set: |o, v| {
            squeeze_mut(o)?.error_feedback = bool_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "hqq_lp_norm",
        kind: OptionKind::Float,
        optional: false,
        help: "HQQ: p of the lp error the zero points minimize, in (0, 1] (0.7)",
        methods: &["hqq"],
        cli: Some("--hqq-lp-norm"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Hqq(m) => OptionValue::Float(f64::from(m.lp_norm)),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::Hqq(m) => {
                m.lp_norm = float_of(v)? as f32;
                Ok(())
            }
            _ => Err("applies to hqq only".into()),
        },
    },
    OptionSpec {
        name: "hqq_iters",
        kind: OptionKind::Int,
        optional: false,
        help: "HQQ: most half-quadratic iterations (20; it stops early once the error stops falling)",
        methods: &["hqq"],
        cli: Some("--hqq-iters"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Hqq(m) => OptionValue::Int(i64::from(m.iters)),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::Hqq(m) => {
                m.iters = u32::try_from(int_of(v)?).map_err(|_| "expected a positive integer".to_string())?;
                Ok(())
            }
            _ => Err("applies to hqq only".into()),
        },
    },
    OptionSpec {
        name: "hqq_optimize_scale",
        kind: OptionKind::Bool,
        optional: false,
        help: "HQQ: also refit each group's scale at every step (least squares on the de-noised weights), not only its zero as published",
        methods: &["hqq"],
        cli: Some("--hqq-optimize-scale"),
        cli_aliases: &[],
        get: |o| match &o.method {
            MethodConfig::Hqq(m) => OptionValue::Bool(m.optimize_scale),
            _ => OptionValue::None,
        },
        set: |o, v| match &mut o.method {
            MethodConfig::Hqq(m) => {
                m.optimize_scale = bool_of(v)?;
                Ok(())
            }
            _ => Err("applies to hqq only".into()),
        },
    },
    OptionSpec {
        name: "target_bpw",
        kind: OptionKind::Float,
        optional: true,
        help: "mixed precision (rtn, gptq): bits and group size per layer from measured sensitivity so the block linears take this many stored bits per weight (bits and group_size are then unused)",
        methods: &["rtn", "gptq"],
        cli: Some("--target-bpw"),
        cli_aliases: &[],
        get: |o| some_or_none(o.target_bpw, OptionValue::Float),
        set: |o, v| {
            o.target_bpw = opt(v, float_of)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "max_size",
        kind: OptionKind::Int,
        optional: true,
        help: "mixed precision (rtn, gptq): as target_bpw, with the whole output directory at most this many bytes (the CLI takes 70MB, 64MiB, ...)",
        methods: &["rtn", "gptq"],
        cli: Some("--max-size"),
        cli_aliases: &[],
        get: |o| some_or_none(o.max_size, |m| OptionValue::Int(i64::try_from(m).unwrap_or(i64::MAX))),
        set: |o, v| {
            o.max_size = opt(v, |v| u64::try_from(int_of(v)?).map_err(|_| "expected a positive number of bytes".to_string()))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "nsamples",
        kind: OptionKind::Int,
        optional: false,
        help: "calibration windows",
        methods: &[],
        cli: Some("--nsamples"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.nsamples as i64),
        set: |o, v| {
            o.nsamples = usize_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "seqlen",
        kind: OptionKind::Int,
        optional: false,
        help: "tokens per calibration window",
        methods: &[],
        cli: Some("--seqlen"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.seqlen as i64),
        set: |o, v| {
            o.seqlen = usize_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "seed",
        kind: OptionKind::Int,
        optional: false,
        help: "seed of the window offsets and of data-free sampling (0 is the protocol)",
        methods: &[],
        cli: Some("--seed"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.seed as i64),
        set: |o, v| {
            o.seed = u64::try_from(int_of(v)?).map_err(|_| "expected a non-negative integer".to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        name: "resume",
        kind: OptionKind::Bool,
        optional: false,
        help: "continue an interrupted run from OUT.partial",
        methods: &[],
        cli: Some("--resume"),
        cli_aliases: &[],
        get: |o| OptionValue::Bool(o.resume),
        set: |o, v| {
            o.resume = bool_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_init",
        kind: OptionKind::Choice(QAT_INITS),
        optional: true,
        help: "method qat: the post-training method it starts from (gptq by default); its own options apply",
        methods: &[],
        cli: Some("--qat-init"),
        cli_aliases: &[],
        get: |o| if o.qat { OptionValue::Str(o.method.name().into()) } else { OptionValue::None },
        set: |o, v| {
            if *v == OptionValue::None {
                return Ok(());
            }
            if !o.qat {
                return Err("applies to method qat only".into());
            }
            let name = str_of(v)?;
            if !QAT_INITS.contains(&name) {
                return Err(format!("qat starts from {}, not {name:?}", QAT_INITS.join(", ")));
            }
            o.method = MethodConfig::from_name(name).map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_epochs",
        kind: OptionKind::Int,
        optional: true,
        help: "quantization-aware refinement: after the method solves each block, train its weights on the method's grids for this many passes over the calibration windows to reproduce the full-precision block's output (lowbit-train; off by default)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-epochs"),
        cli_aliases: &[],
        get: |o| some_or_none(o.qat_epochs, |e| OptionValue::Int(e as i64)),
        set: |o, v| {
            o.qat_epochs = opt(v, usize_of)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_lr",
        kind: OptionKind::Float,
        optional: false,
        help: "quantization-aware refinement: AdamW's peak learning rate (cosine decay to 0)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-lr"),
        cli_aliases: &[],
        get: |o| OptionValue::Float(f64::from(o.qat_lr)),
        set: |o, v| {
            o.qat_lr = float_of(v)? as f32;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_batch",
        kind: OptionKind::Int,
        optional: false,
        help: "quantization-aware refinement: calibration windows per AdamW step (computed side by side)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-batch"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.qat_batch as i64),
        set: |o, v| {
            o.qat_batch = usize_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_scale_lr",
        kind: OptionKind::Float,
        optional: false,
        help: "quantization-aware refinement: learning rate of the grids' scales and zero points, trained with the weights (LSQ straight-through gradients); 0 keeps the method's grids",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-scale-lr"),
        cli_aliases: &[],
        get: |o| OptionValue::Float(f64::from(o.qat_scale_lr)),
        set: |o, v| {
            o.qat_scale_lr = float_of(v)? as f32;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_distill_epochs",
        kind: OptionKind::Int,
        optional: true,
        help: "quantization-aware training's end-to-end stage: after every block is quantized, tune only the scales for this many passes so the model's next-token distributions approach the full-precision model's (KL distillation; needs the model on disk; off by default)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-distill-epochs"),
        cli_aliases: &[],
        get: |o| some_or_none(o.qat_distill_epochs, |e| OptionValue::Int(e as i64)),
        set: |o, v| {
            o.qat_distill_epochs = opt(v, usize_of)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_distill_lr",
        kind: OptionKind::Float,
        optional: false,
        help: "quantization-aware training's end-to-end stage: AdamW's peak learning rate on the scales (cosine decay to 0)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-distill-lr"),
        cli_aliases: &[],
        get: |o| OptionValue::Float(f64::from(o.qat_distill_lr)),
        set: |o, v| {
            o.qat_distill_lr = float_of(v)? as f32;
            Ok(())
        },
    },
    OptionSpec {
        name: "qat_distill_windows",
        kind: OptionKind::Int,
        optional: false,
        help: "quantization-aware training's end-to-end stage: how many of the calibration windows it trains on (the first ones)",
        methods: &["rtn", "gptq", "awq"],
        cli: Some("--qat-distill-windows"),
        cli_aliases: &[],
        get: |o| OptionValue::Int(o.qat_distill_windows as i64),
        set: |o, v| {
            o.qat_distill_windows = usize_of(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "stop_after_block",
        kind: OptionKind::Int,
        optional: true,
        help: "testing hook: stop after checkpointing this block (0-based)",
        methods: &[],
        cli: None,
        cli_aliases: &[],
        get: |o| some_or_none(o.stop_after_block, |b| OptionValue::Int(b as i64)),
        set: |o, v| {
            o.stop_after_block = opt(v, usize_of)?;
            Ok(())
        },
    },
];

/// The row called `name`.
pub fn option_spec(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|s| s.name == name)
}

impl QuantizeOptions {
    /// Sets one option by name (see [`OPTIONS`]); it must apply to the method already chosen.
    pub fn set_option(&mut self, name: &str, value: &OptionValue) -> Result<()> {
        let spec = option_spec(name).ok_or_else(|| {
            QuantizeError::input("options", format!("unknown option {name:?}; options are {}", names().join(", ")))
        })?;
        let bad = |why: String| QuantizeError::input("options", format!("{name}: {why}"));
        if *value == OptionValue::None && !spec.optional {
            return Err(bad("must not be None".into()));
        }
        if !spec.applies_to(self.method.name()) {
            return Err(bad(format!("applies to {}, not {}", spec.methods.join(", "), self.method.name())));
        }
        (spec.set)(self, value).map_err(bad)
    }

    /// Options from `(name, value)` pairs over [`QuantizeOptions::default`]; `method` is applied
    /// first wherever it appears.
    pub fn from_pairs(pairs: &[(String, OptionValue)]) -> Result<Self> {
        let mut o = QuantizeOptions::default();
        // The method, then qat's starting method (each resets the method's own settings).
        let (method, rest): (Vec<_>, Vec<_>) = pairs.iter().partition(|(k, _)| k == "method");
        let (init, rest): (Vec<_>, Vec<_>) = rest.into_iter().partition(|(k, _)| k == "qat_init");
        for (k, v) in method.into_iter().chain(init).chain(rest) {
            o.set_option(k, v)?;
        }
        Ok(o)
    }
}

fn names() -> Vec<&'static str> {
    OPTIONS.iter().map(|s| s.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_solvers::{AwqMethod, SmoothQuantMethod};

    #[test]
    fn every_row_round_trips_through_get_and_set() {
        for spec in OPTIONS {
            for m in MethodConfig::all().into_iter().filter(|m| spec.applies_to(m.name())) {
                let mut o = QuantizeOptions { method: m, ..QuantizeOptions::default() };
                let v = (spec.get)(&o);
                if spec.name != "method" {
                    o.set_option(spec.name, &v).unwrap();
                    assert_eq!((spec.get)(&o), v, "{}", spec.name);
                }
            }
        }
        let names: Vec<_> = MethodConfig::all().iter().map(|m| m.name()).collect();
        assert_eq!(names, METHODS);
    }

    #[test]
    fn method_qat_starts_from_a_method_with_distillation_on() {
        let pair = |k: &str, v: OptionValue| (k.to_string(), v);
        let o = QuantizeOptions::from_pairs(&[pair("method", OptionValue::Str("qat".into()))]).unwrap();
        assert!(o.qat && o.method.name() == "gptq");
        assert_eq!((o.qat_epochs, o.qat_distill_epochs), (None, Some(QAT_DISTILL_EPOCHS)));
        assert!(o.qat_scale_lr > 0.0);
        assert_eq!(o.params_json()["method"], "qat");
        assert_eq!(o.params_json()["qat"]["init"], "gptq");
        // qat_init's own options apply, wherever they come in the list; qat's settings can be changed.
        let o = QuantizeOptions::from_pairs(&[
            pair("percdamp", OptionValue::Float(0.05)),
            pair("qat_distill_epochs", OptionValue::None),
            pair("method", OptionValue::Str("qat".into())),
            pair("qat_init", OptionValue::Str("gptq".into())),
        ])
        .unwrap();
        assert_eq!(o.qat_distill_epochs, None);
        assert_eq!(option_spec("percdamp").map(|s| (s.get)(&o)), Some(OptionValue::Float(0.05)));
        assert_eq!(option_spec("qat_init").map(|s| (s.get)(&o)), Some(OptionValue::Str("gptq".into())));
        let awq = QuantizeOptions::from_pairs(&[
            pair("method", OptionValue::Str("qat".into())),
            pair("qat_init", OptionValue::Str("awq".into())),
        ])
        .unwrap();
        assert_eq!(awq.method.name(), "awq");
        assert!(QuantizeOptions::from_pairs(&[
            pair("method", OptionValue::Str("qat".into())),
            pair("qat_init", OptionValue::Str("hqq".into())),
        ])
        .is_err());
        // qat_init belongs to qat.
        let err = QuantizeOptions::from_pairs(&[pair("qat_init", OptionValue::Str("rtn".into()))]).unwrap_err();
        assert!(err.to_string().contains("method qat"), "{err}");
    }

    #[test]
    fn defaults_come_from_the_options() {
        let d = |n: &str| option_spec(n).unwrap().default_value();
        assert_eq!(d("method"), OptionValue::Str("gptq".into()));
        assert_eq!(d("group_size"), OptionValue::Int(128));
        assert_eq!(d("embed"), OptionValue::Str("int8".into()));
        assert_eq!(d("lm_head"), OptionValue::None, "as the embedding");
        let o = QuantizeOptions::from_pairs(&[("lm_head".into(), OptionValue::Str("embed".into()))]).unwrap();
        assert_eq!(o.lm_head, None);
        assert_eq!(d("awq_samples"), OptionValue::Int(AwqMethod::default().samples as i64));
        assert_eq!(d("sq_alpha"), OptionValue::Float(f64::from(SmoothQuantMethod::default().alpha)));
        assert_eq!(d("outlier_threshold"), OptionValue::None, "6.0 for llm-int8, 0.2 for spqr");
        assert_eq!(d("stats_bits"), OptionValue::Int(3));
        let spqr = |pairs: &[(&str, OptionValue)]| {
            let pairs: Vec<(String, OptionValue)> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            QuantizeOptions::from_pairs(&pairs)
        };
        let o = spqr(&[("method", OptionValue::Str("spqr".into()))]).unwrap();
        assert_eq!(o.group_size, Some(16));
        let o = spqr(&[("group_size", OptionValue::Int(32)), ("method", OptionValue::Str("spqr".into()))]).unwrap();
        assert_eq!(o.group_size, Some(32));
        for (k, v) in
            [("outlier_max_percent", 101.0), ("outlier_max_percent", f64::NAN), ("outlier_threshold", f64::NAN)]
        {
            let o = spqr(&[("method", OptionValue::Str("spqr".into())), (k, OptionValue::Float(v))]).unwrap();
            let e = o.scheme().unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        assert_eq!(d("mse_clip"), OptionValue::None, "depends on the method");
        assert_eq!(d("static_groups"), OptionValue::None);
    }

    #[test]
    fn method_first_and_misplaced_options_refused() {
        let o = QuantizeOptions::from_pairs(&[
            ("act_order".into(), OptionValue::Bool(true)),
            ("method".into(), OptionValue::Str("gptq".into())),
        ])
        .unwrap();
        assert!(matches!(o.method, MethodConfig::Gptq(g) if g.act_order));
        let e = QuantizeOptions::from_pairs(&[
            ("method".into(), OptionValue::Str("awq".into())),
            ("act_order".into(), OptionValue::Bool(true)),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("applies to gptq, spqr, not awq"), "{e}");
        assert!(QuantizeOptions::from_pairs(&[("bitz".into(), OptionValue::Int(4))]).is_err());
        assert!(QuantizeOptions::from_pairs(&[("bits".into(), OptionValue::None)]).is_err());
    }
}
