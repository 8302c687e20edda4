//! Runs GPTQ on raw little-endian files, for the pytest comparison with the numpy reference when
//! the Python bindings do not (yet) expose `gptq_quantize`.
//!
//! `gptq_files DIR ROWS COLS BITS GROUP SYM ACT STATIC PERCDAMP BLOCK` reads `DIR/w.f32`
//! (`[rows, cols]`) and `DIR/h.f64` (`[cols, cols]`), writes `DIR/codes.u8` (unpacked, row-major),
//! `DIR/scales.f32`, `DIR/zeros.u8` (`[rows, groups]`; the implied zero when symmetric) and
//! `DIR/loss.txt`. `GROUP <= 0` means per channel.

use lowbit_core::pack::unpack;
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_solvers::{gptq_quantize, DampingConfig, GptqConfig, Hessian};
use std::error::Error;
use std::path::Path;

fn main() -> Result<(), Box<dyn Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 10 {
        return Err("usage: gptq_files DIR ROWS COLS BITS GROUP SYM ACT STATIC PERCDAMP BLOCK".into());
    }
    let dir = Path::new(&a[0]);
    let (rows, cols): (usize, usize) = (a[1].parse()?, a[2].parse()?);
    let bits = Bits::try_from(a[3].parse::<u32>()?)?;
    let group: i64 = a[4].parse()?;
    let flag = |s: &str| s == "1" || s == "true";
    let w: Vec<f32> =
        std::fs::read(dir.join("w.f32"))?.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let h: Vec<f64> =
        std::fs::read(dir.join("h.f64"))?.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
    let granularity = if group <= 0 { Granularity::PerChannel } else { Granularity::Group(group as usize) };
    let scheme =
        IntScheme { bits, symmetric: flag(&a[5]), granularity, scale_dtype: ScaleDtype::F16, clip: ClipSearch::MinMax };
    let cfg = GptqConfig {
        scheme,
        act_order: flag(&a[6]),
        static_groups: flag(&a[7]),
        block_size: a[9].parse()?,
        damping: DampingConfig { percdamp: a[8].parse()?, ..Default::default() },
    };
    let hess = Hessian::from_matrix(cols, &h, 1)?;
    let out = gptq_quantize(&w, rows, cols, &hess, &cfg)?;
    let codes = unpack(out.qtensor.codes(), bits, rows * cols)?;
    let params = out.qtensor.group_params().ok_or("integer tensor expected")?;
    std::fs::write(dir.join("codes.u8"), &codes)?;
    std::fs::write(dir.join("scales.f32"), params.iter().flat_map(|p| p.scale.to_le_bytes()).collect::<Vec<u8>>())?;
    std::fs::write(dir.join("zeros.u8"), params.iter().map(|p| p.zero).collect::<Vec<u8>>())?;
    std::fs::write(dir.join("loss.txt"), format!("{:e}", out.report.loss))?;
    Ok(())
}
