//! Quantize a model with the pipeline and optionally evaluate it (protocol perplexity).
//!
//! `cargo run --release -p lowbit-quantize --example quantize -- MODEL OUT METHOD BITS GROUP|0
//!  [--sym] [--act-order] [--mse|--minmax] [--f32-scales] [--calib FILE] [--nsamples N] [--awq-samples N] [--eval FILE] [--eval-base]
//!  [--target-bpw BITS | --max-size BYTES]`
use lowbit_model::{perplexity::read_text_file, Model, PerplexityOptions};
use lowbit_quantize::spec::OptionValue;
use lowbit_quantize::{quantize_model, CalibSource, QuantizeOptions};
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let flag = |f: &str| a.iter().any(|x| x == f);
    let val = |f: &str| a.iter().position(|x| x == f).map(|i| a[i + 1].clone());
    let group: i64 = a[5].parse()?;
    // Through the option table, as Python and the CLI set them.
    let mut pairs = vec![
        ("method".to_string(), OptionValue::Str(a[3].clone())),
        ("bits".to_string(), OptionValue::Int(a[4].parse()?)),
        ("group_size".to_string(), if group > 0 { OptionValue::Int(group) } else { OptionValue::None }),
        ("sym".to_string(), OptionValue::Bool(flag("--sym"))),
        ("scale_dtype".to_string(), OptionValue::Str(if flag("--f32-scales") { "f32" } else { "f16" }.into())),
        ("nsamples".to_string(), OptionValue::Int(val("--nsamples").map_or(Ok(128), |v| v.parse())?)),
    ];
    if flag("--act-order") {
        pairs.push(("act_order".into(), OptionValue::Bool(true)));
    }
    if flag("--mse") || flag("--minmax") {
        pairs.push(("mse_clip".into(), OptionValue::Bool(flag("--mse"))));
    }
    if let Some(s) = val("--embed") {
        pairs.push(("embed".into(), OptionValue::Str(s)));
    }
    if let Some(s) = val("--lm-head") {
        pairs.push(("lm_head".into(), OptionValue::Str(s)));
    }
    if let Some(n) = val("--awq-samples") {
        pairs.push(("awq_samples".into(), OptionValue::Int(n.parse()?)));
    }
    if let Some(t) = val("--target-bpw") {
        pairs.push(("target_bpw".into(), OptionValue::Float(t.parse()?)));
    }
    if let Some(m) = val("--max-size") {
        pairs.push(("max_size".into(), OptionValue::Int(m.parse()?)));
    }
    let mut opts = QuantizeOptions::from_pairs(&pairs)?;
    // gptq, awq and smoothquant need --calib (the protocol's valid.txt).
    opts.calib = val("--calib").map(CalibSource::from_path);
    let t = std::time::Instant::now();
    let rep = quantize_model(Path::new(&a[1]), Path::new(&a[2]), &opts, &mut Log::default())?;
    println!(
        "quantize wall {:.1}s (calib {:.1}s, blocks {:.1}s), peak RSS {:.0} MiB, bits/weight {:.3}, mean loss {:.4}",
        t.elapsed().as_secs_f64(),
        rep.calib_seconds,
        rep.quantize_seconds,
        rep.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0,
        rep.bits_per_weight,
        rep.mean_loss()
    );
    println!(
        "output {} bytes ({:.2} MiB, every file), tensors {} bytes, {:.3} bits per weight over all {} parameters \
         ({:.3} per block-linear weight), embedding {} bytes, head {}",
        rep.out_bytes,
        rep.out_bytes as f64 / 1048576.0,
        rep.tensor_bytes,
        rep.bits_per_weight_all,
        rep.num_params,
        rep.bits_per_weight,
        rep.embed_bytes,
        rep.lm_head_bytes.map_or("tied".to_string(), |b| format!("{b} bytes")),
    );
    if let Some(a) = &rep.allocation {
        println!(
            "allocation: budget {} bytes, block linears {} bytes ({:.4} bpw), sensitivity {:.1}s on {} windows, {:?}",
            a.budget_bytes,
            a.predicted_linear_bytes,
            a.predicted_bits_per_weight,
            a.seconds,
            a.sensitivity_windows,
            a.histogram()
        );
        for l in &a.layers {
            let group = l.group_size.map_or("channel".into(), |g| g.to_string());
            println!("  block {:2} {:18} {}/{} gain {:.4}", l.block, l.name, l.bits, group, l.gain);
        }
    }
    for n in &rep.notes {
        println!("note: {n}");
    }
    if let Some(eval) = val("--eval") {
        let text = read_text_file(Path::new(&eval))?;
        let paths: Vec<&str> = if flag("--eval-base") { vec![&a[1], &a[2]] } else { vec![&a[2]] };
        for p in paths {
            let m = Model::load(p)?;
            let ids = m.tokenizer().ok_or("no tokenizer")?.encode(&text, false)?;
            let r = m.perplexity(&ids, &PerplexityOptions::default(), &mut lowbit_core::NoProgress)?;
            println!("ppl {p}: {:.4} ({} tokens, {:.1}s)", r.ppl, r.tokens, r.seconds);
        }
    }
    Ok(())
}

/// Prints each unit of each phase with the time and the resident memory.
#[derive(Default)]
struct Log {
    phase: String,
    done: u64,
    total: u64,
    loss: f64,
    start: Option<std::time::Instant>,
}

impl lowbit_core::Progress for Log {
    fn start(&mut self, name: &str, total: u64) {
        (self.phase, self.done, self.total) = (name.to_string(), 0, total);
        self.start.get_or_insert_with(std::time::Instant::now);
    }
    fn metric(&mut self, _name: &str, value: f64) {
        self.loss = value;
    }
    fn advance(&mut self, n: u64) {
        self.done += n;
        let rss = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        });
        let elapsed = self.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        eprintln!(
            "{} {}/{} loss {:.4} elapsed {elapsed:.1}s rss {} MiB",
            self.phase,
            self.done,
            self.total,
            self.loss,
            rss.unwrap_or(0) / 1024
        );
    }
}
