//! The kernel checks of `lowbit-cpu`'s tests/kernels.rs, runnable inside the module (a browser
//! has no `cargo test`): every weight format at this module's level against the scalar
//! reference on random shapes, odd ones included. f32 activations may differ from the reference
//! by reassociation only (a named multiple of Σ|x·w|); int8 activations must equal
//! `forward_int8_reference` bit for bit.

use half::{bf16, f16};
use lowbit_core::{
    codebook, rtn, Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, QParams, QTensor, ScaleDtype,
    Scales, ZeroPoints,
};
use lowbit_cpu::{Activations, KernelLevel, Linear, WeightKind};

/// Allowed |fast - reference| / Σ|x·w| (as in lowbit-cpu's tests).
const F32_SUM_TOL: f32 = 1e-5;
const MS: [usize; 5] = [1, 2, 5, 12, 17];

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale).collect()
    }
}

struct Checker {
    level: KernelLevel,
    rng: Rng,
    cases: usize,
    exact: usize,
}

impl Checker {
    fn check(&mut self, lin: &Linear, dense: &[f32], what: &str) -> Result<(), String> {
        let (rows, cols) = (lin.rows(), lin.cols());
        for m in MS {
            // activations up to ±4 so int8 blocks use their whole range
            let x = self.rng.vec(m * cols, 4.0);
            let mut want = vec![0.0; m * rows];
            lin.forward_scalar(&x, m, &mut want);
            let mut want8 = vec![0.0; m * rows];
            if lin.forward_int8_reference(&x, m, &mut want8).is_ok() {
                let mut got = vec![f32::NAN; m * rows];
                lin.forward_activations(self.level, Activations::Int8, &x, m, &mut got).map_err(|e| e.to_string())?;
                if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want8[i].to_bits()) {
                    return Err(format!(
                        "{what} int8 activations [{rows}x{cols}] m={m} out[{i}]: got {}, want {}",
                        got[i], want8[i]
                    ));
                }
                self.exact += 1;
            }
            let mut got = vec![f32::NAN; m * rows];
            lin.forward_activations(self.level, Activations::F32, &x, m, &mut got).map_err(|e| e.to_string())?;
            for i in 0..m {
                for r in 0..rows {
                    let mag: f32 =
                        x[i * cols..][..cols].iter().zip(&dense[r * cols..][..cols]).map(|(a, b)| (a * b).abs()).sum();
                    let (g, w) = (got[i * rows + r], want[i * rows + r]);
                    if (g - w).abs() > F32_SUM_TOL * mag + f32::MIN_POSITIVE || g.is_nan() {
                        return Err(format!(
                            "{what} [{rows}x{cols}] m={m} out[{i},{r}]: got {g}, want {w} (Σ|xw| {mag})"
                        ));
                    }
                }
            }
            self.cases += 1;
        }
        Ok(())
    }

    fn int(
        &mut self,
        rows: usize,
        cols: usize,
        bits: Bits,
        symmetric: bool,
        g: Granularity,
        dt: ScaleDtype,
    ) -> Result<(), String> {
        let w = self.rng.vec(rows * cols, 1.0);
        let scheme = IntScheme { bits, symmetric, granularity: g, scale_dtype: dt, clip: ClipSearch::MinMax };
        let q = rtn::quantize(&w, &[rows, cols], scheme).map_err(|e| e.to_string())?;
        let dense = q.dequantize();
        let lin = Linear::new(rows, cols, WeightKind::Quant(q)).map_err(|e| e.to_string())?;
        self.check(&lin, &dense, &format!("int{} sym={symmetric} {g:?} {dt:?}", bits.get()))
    }

    /// [`Checker::int`] with float zero points (HQQ's): RTN's moved by up to half a step.
    fn float_zeros(
        &mut self,
        rows: usize,
        cols: usize,
        bits: Bits,
        g: Granularity,
        dt: ScaleDtype,
    ) -> Result<(), String> {
        let w = self.rng.vec(rows * cols, 1.0);
        let scheme = IntScheme { bits, symmetric: false, granularity: g, scale_dtype: dt, clip: ClipSearch::MinMax };
        let q = rtn::quantize(&w, &[rows, cols], scheme).map_err(|e| e.to_string())?;
        let QParams::Int { scales, zeros: Some(z) } = q.params().clone() else {
            return Err("asymmetric RTN has zeros".into());
        };
        let moved: Vec<f32> = (0..z.len()).map(|i| z.get(i) + (self.rng.next() % 1024) as f32 / 1024.0 - 0.5).collect();
        let zeros = ZeroPoints::Float(Scales::from_f32(moved.into_iter(), dt));
        let parts = QParams::Int { scales, zeros: Some(zeros) };
        let q = QTensor::from_parts(q.shape().to_vec(), *q.scheme(), q.codes().to_vec(), parts)
            .map_err(|e| e.to_string())?;
        let dense = q.dequantize();
        let lin = Linear::new(rows, cols, WeightKind::Quant(q)).map_err(|e| e.to_string())?;
        self.check(&lin, &dense, &format!("int{} float zeros {g:?} {dt:?}", bits.get()))
    }
}

/// Runs the checks at the module's level; a summary, or the first mismatch.
pub(crate) fn run() -> Result<String, String> {
    let level = lowbit_cpu::kernel_level();
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if let Some((a, b, c)) = lowbit_cpu::check_fma(200_000) {
        return Err(format!("the exact fused multiply-add differs from fmaf at ({a:e}, {b:e}, {c:e})"));
    }
    let mut c = Checker { level, rng: Rng(7), cases: 0, exact: 0 };
    // dense rows, odd lengths included
    for (rows, cols) in [(1, 7), (3, 64), (17, 100), (33, 576), (5, 1030)] {
        let w = c.rng.vec(rows * cols, 1.0);
        let lin = Linear::new(rows, cols, WeightKind::F32(w.clone())).map_err(|e| e.to_string())?;
        c.check(&lin, &w, "f32")?;
        let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let dense: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        c.check(&Linear::new(rows, cols, WeightKind::F16(h)).map_err(|e| e.to_string())?, &dense, "f16")?;
        let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let dense: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        c.check(&Linear::new(rows, cols, WeightKind::Bf16(b)).map_err(|e| e.to_string())?, &dense, "bf16")?;
    }
    for bits in [Bits::B2, Bits::B3, Bits::B4, Bits::B8] {
        for symmetric in [false, true] {
            for (i, (rows, cols, g)) in
                [(1, 64, 32), (3, 128, 64), (17, 384, 128), (33, 576, 128), (16, 96, 64), (5, 192, 32)]
                    .into_iter()
                    .enumerate()
            {
                let dt = if i % 2 == 0 { ScaleDtype::F16 } else { ScaleDtype::F32 };
                c.int(rows, cols, bits, symmetric, Granularity::Group(g), dt)?;
            }
            for (rows, cols) in [(1, 8), (3, 96), (17, 100), (33, 256)] {
                c.int(rows, cols, bits, symmetric, Granularity::PerChannel, ScaleDtype::F16)?;
                c.int(rows, cols, bits, symmetric, Granularity::PerTensor, ScaleDtype::F32)?;
            }
            // groups that are not a multiple of the kernel chunk take the generic path
            c.int(17, 48, bits, symmetric, Granularity::Group(16), ScaleDtype::F16)?;
        }
        for (rows, cols, g) in [(3, 64, 32), (17, 256, 64), (33, 576, 128), (5, 120, 24)] {
            let dt = if rows % 2 == 0 { ScaleDtype::F32 } else { ScaleDtype::F16 };
            c.float_zeros(rows, cols, bits, Granularity::Group(g), dt)?;
        }
        c.float_zeros(17, 100, bits, Granularity::PerChannel, ScaleDtype::F16)?;
    }
    // long rows blocked over k, and a GEMM-sized m
    c.int(40, 4096 + 128, Bits::B4, false, Granularity::Group(128), ScaleDtype::F16)?;
    for cb in [Codebook::Nf4, Codebook::Fp4] {
        for (rows, cols, block_size) in [(1, 64, 64), (17, 128, 64), (33, 192, 128), (5, 50, 64)] {
            let w = c.rng.vec(rows * cols, 1.0);
            let scheme = CodebookScheme { codebook: cb, block_size, double_quant: false };
            let q = codebook::quantize(&w, &[rows, cols], scheme).map_err(|e| e.to_string())?;
            let dense = q.dequantize();
            let lin = Linear::new(rows, cols, WeightKind::Quant(q)).map_err(|e| e.to_string())?;
            c.check(&lin, &dense, &format!("{cb:?} block {block_size}"))?;
        }
    }
    let fma = if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) { "exact fma ok, " } else { "" };
    Ok(format!(
        "level {}: {fma}{} weight/m cases within the f32 tolerance, {} int8-activation cases bit-exact",
        level.name(),
        c.cases,
        c.exact
    ))
}

#[cfg(test)]
mod tests {
    /// The same checks at the native level (the browser tests run them at simd128).
    #[test]
    fn kernels_pass_natively() {
        let summary = super::run().unwrap();
        assert!(summary.contains("bit-exact"), "{summary}");
    }
}
