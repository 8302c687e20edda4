//! How the tensors outside the blocks are stored: the token embedding and the LM head.
//!
//! They are a fifth of SmolLM2-135M's parameters and, in f32, two thirds of its W4 file; the head
//! is also read whole every decode step. Each role takes one [`TensorScheme`], by name (the
//! option rows `embed` and `lm_head` in [`crate::spec`]). A model that ties the two stores one
//! tensor, quantized by `embed`; the head's option then must be unset or the same scheme.

use crate::{QuantizeError, Result};
use half::f16;
use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::Model;

/// The storage of one tensor role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorScheme {
    /// As loaded (a GGUF's quantized tensors load as f32; an HF checkpoint's bf16 stays bf16).
    Keep,
    /// Dense f32.
    F32,
    /// Dense f16.
    F16,
    /// Integer codes by RTN: 8-bit symmetric per output channel (min-max range, as llama.cpp's
    /// Q8_0 but one scale per row), or 4-bit asymmetric groups (least-squares range search).
    /// Scales are f16.
    Int {
        /// Code width.
        bits: Bits,
        /// Weights per scale along the row; `None`: one per row.
        group: Option<usize>,
    },
}

/// Every scheme by name, the option rows' choices. The groups are multiples of 32, the chunk the
/// fast kernels need (SmolLM2's 576-wide rows take g128 as four groups of 128 and one of 64).
pub const TENSOR_SCHEMES: [(&str, TensorScheme); 7] = [
    ("keep", TensorScheme::Keep),
    ("f32", TensorScheme::F32),
    ("f16", TensorScheme::F16),
    ("int8", TensorScheme::Int { bits: Bits::B8, group: None }),
    ("int4-g32", TensorScheme::Int { bits: Bits::B4, group: Some(32) }),
    ("int4-g64", TensorScheme::Int { bits: Bits::B4, group: Some(64) }),
    ("int4-g128", TensorScheme::Int { bits: Bits::B4, group: Some(128) }),
];

/// The names of [`TENSOR_SCHEMES`], in order (the option rows' `Choice`).
pub const TENSOR_SCHEME_NAMES: &[&str] = &names::<7, 7>(&TENSOR_SCHEMES, None);

/// The LM head's choices: [`SAME_AS_EMBED`], then [`TENSOR_SCHEME_NAMES`].
pub const HEAD_SCHEME_NAMES: &[&str] = &names::<7, 8>(&TENSOR_SCHEMES, Some(SAME_AS_EMBED));

/// The LM head's choice that stores it as the embedding (its `None`).
pub const SAME_AS_EMBED: &str = "embed";

/// The names of `table` (after `first`, when given); `M` is `N` plus one for `first`.
const fn names<const N: usize, const M: usize>(
    table: &[(&'static str, TensorScheme); N],
    first: Option<&'static str>,
) -> [&'static str; M] {
    let mut out = [""; M];
    let skip = match first {
        Some(f) => {
            out[0] = f;
            1
        }
        None => 0,
    };
    let mut i = 0;
    while i < N {
        out[i + skip] = table[i].0;
        i += 1;
    }
    out
}

impl TensorScheme {
    /// The scheme called `name` (one of [`TENSOR_SCHEME_NAMES`]).
    pub fn from_name(name: &str) -> Result<Self> {
        TENSOR_SCHEMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).ok_or_else(|| {
            QuantizeError::input(
                "options",
                format!("unknown tensor scheme {name:?}; expected one of {}", TENSOR_SCHEME_NAMES.join(", ")),
            )
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        TENSOR_SCHEMES.iter().find(|(_, s)| *s == self).map_or("keep", |(n, _)| n)
    }

    /// The integer scheme RTN applies, if any.
    pub fn int_scheme(self) -> Option<IntScheme> {
        let TensorScheme::Int { bits, group } = self else { return None };
        Some(match group {
            None => IntScheme {
                bits,
                symmetric: true,
                granularity: Granularity::PerChannel,
                scale_dtype: ScaleDtype::F16,
                clip: ClipSearch::MinMax,
            },
            Some(g) => IntScheme {
                bits,
                symmetric: false,
                granularity: Granularity::Group(g),
                scale_dtype: ScaleDtype::F16,
                clip: ClipSearch::MSE_DEFAULT,
            },
        })
    }

    /// `lin` stored this way (`None`: unchanged).
    pub fn apply(self, lin: &Linear) -> Result<Option<Linear>> {
        let (rows, cols) = (lin.rows(), lin.cols());
        let weight = match self {
            TensorScheme::Keep => return Ok(None),
            TensorScheme::F32 => WeightKind::F32(lin.weight().to_f32()),
            TensorScheme::F16 => WeightKind::F16(lin.weight().to_f32().into_iter().map(f16::from_f32).collect()),
            TensorScheme::Int { .. } => {
                let scheme = self.int_scheme().expect("an integer scheme");
                WeightKind::Quant(rtn::quantize(&lin.weight().to_f32(), &[rows, cols], scheme)?)
            }
        };
        Ok(Some(Linear::new(rows, cols, weight)?))
    }
}

/// Stores the embedding by `embed` and the LM head by `head` (`None`: as the embedding). A tied
/// model keeps one tensor: `head` must then be `None` or `embed`.
pub(crate) fn apply(model: &mut Model, embed: TensorScheme, head: Option<TensorScheme>) -> Result<()> {
    let tied = model.config().tie_word_embeddings;
    if tied && head.is_some_and(|h| h != embed) {
        return Err(QuantizeError::input(
            "quantize",
            format!(
                "the model ties its embedding and LM head (one tensor): lm_head {:?} differs from embed {:?}; \
                 leave lm_head unset",
                head.map(TensorScheme::name).unwrap_or_default(),
                embed.name()
            ),
        ));
    }
    if !tied {
        if let Some(h) = head.unwrap_or(embed).apply(model.lm_head())? {
            model.set_lm_head(h)?;
        }
    }
    if let Some(e) = embed.apply(model.embedding())? {
        model.set_embedding(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (n, s) in TENSOR_SCHEMES {
            assert_eq!(TensorScheme::from_name(n).unwrap(), s);
            assert_eq!(s.name(), n);
        }
        assert!(TensorScheme::from_name("int5").is_err());
        assert_eq!(HEAD_SCHEME_NAMES[0], SAME_AS_EMBED);
        assert_eq!(&HEAD_SCHEME_NAMES[1..], TENSOR_SCHEME_NAMES);
    }

    #[test]
    fn each_scheme_stores_what_it_says() {
        let (rows, cols) = (3, 96);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let lin = Linear::new(rows, cols, WeightKind::F32(w.clone())).unwrap();
        assert!(TensorScheme::Keep.apply(&lin).unwrap().is_none());
        for (name, s) in TENSOR_SCHEMES.iter().skip(1) {
            let got = s.apply(&lin).unwrap().unwrap();
            let back = got.weight().to_f32();
            let max = back.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let rms = (back.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
            // The values span [-1.25, 1.25]: int8 is within half a step (f16 scales add a
            // little); the 4-bit groups clip by least squares, so their mean error is bounded.
            let (err, bound, bytes) = match s {
                TensorScheme::F32 => (max, 0.0, rows * cols * 4),
                TensorScheme::F16 => (max, 2e-3, rows * cols * 2),
                TensorScheme::Int { bits: Bits::B8, .. } => (max, 1.26 / 127.0 * 0.51, rows * cols + rows * 2),
                TensorScheme::Int { group: Some(g), .. } => {
                    (rms, 2.5 / 15.0 * 0.4, rows * cols / 2 + rows * cols.div_ceil(*g) * 3)
                }
                _ => unreachable!(),
            };
            assert!(err <= bound, "{name}: {err} > {bound}");
            assert_eq!(got.nbytes(), bytes, "{name}");
        }
    }
}
