//! Runs AWQ on raw little-endian files, for the pytest comparison with the numpy reference when
//! the Python bindings do not (yet) expose `awq_search`.
//!
//! `awq_files DIR TOKENS COLS BITS GROUP SYM ROWS...` reads `DIR/x.f32` (`[tokens, cols]`) and
//! `DIR/w{i}.f32` (`[rows_i, cols]`), writes `DIR/alpha.txt`, `DIR/scales.f32`, `DIR/losses.f64`
//! and `DIR/clip{i}.f32`. `GROUP <= 0` means per channel.

use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_solvers::awq::{awq_quantize, AwqConfig, AwqLayer};
use std::error::Error;
use std::path::Path;

fn read_f32(p: &Path) -> Result<Vec<f32>, Box<dyn Error>> {
    Ok(std::fs::read(p)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn main() -> Result<(), Box<dyn Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        return Err("usage: awq_files DIR TOKENS COLS BITS GROUP SYM ROWS...".into());
    }
    let dir = Path::new(&a[0]);
    let (tokens, cols): (usize, usize) = (a[1].parse()?, a[2].parse()?);
    let group: i64 = a[4].parse()?;
    let granularity = if group <= 0 { Granularity::PerChannel } else { Granularity::Group(group as usize) };
    let scheme = IntScheme {
        bits: Bits::try_from(a[3].parse::<u32>()?)?,
        symmetric: a[5] == "1",
        granularity,
        scale_dtype: ScaleDtype::F16,
        clip: ClipSearch::MinMax,
    };
    let x = read_f32(&dir.join("x.f32"))?;
    let ws: Vec<(Vec<f32>, usize)> = a[6..]
        .iter()
        .enumerate()
        .map(|(i, r)| Ok((read_f32(&dir.join(format!("w{i}.f32")))?, r.parse()?)))
        .collect::<Result<_, Box<dyn Error>>>()?;
    let layers: Vec<AwqLayer> = ws.iter().map(|(w, rows)| AwqLayer { w, rows: *rows }).collect();
    let out = awq_quantize(&x, tokens, cols, &layers, &AwqConfig::new(scheme))?;
    std::fs::write(dir.join("alpha.txt"), format!("{}", out.alpha))?;
    std::fs::write(dir.join("scales.f32"), out.scales.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    std::fs::write(dir.join("losses.f64"), out.grid_losses.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    for (i, c) in out.clip.iter().enumerate() {
        std::fs::write(dir.join(format!("clip{i}.f32")), c.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    }
    Ok(())
}
