//! The CUDA check driver behind benches/cuda/run.sh (and its preparation, prepare.sh).
//!
//! ```text
//! cuda_check compile                       NVRTC compiles the kernels (no GPU needed)
//! cuda_check make-model GGUF BLOCKS DIR    SmolLM2's blocks BLOCKS ("0-11,28-29"), W4 g128 RTN
//!                                          (embedding too), a lowbit directory small enough to carry
//! cuda_check reference DIR TEXT OUT.json   CPU: greedy tokens, decode tok/s, perplexity on 4
//!                                          protocol windows (the token ids are saved too)
//! cuda_check bench OUT.json                GPU: INT4 GEMV bandwidth against the copy bandwidth
//! cuda_check model DIR REF.json OUT.json   GPU: the same model run as the CPU reference did
//! ```
//! Each GPU step prints a markdown table and writes its figures as JSON.

use lowbit_core::backend::{Backend, HostWeight};
use lowbit_core::{rtn, Bits, IntScheme, QParams, QTensor, Scales, Scheme};
use lowbit_cuda::{Cuda, CudaError};
use lowbit_model::perplexity::{normalize_newlines, read_text_file};
use lowbit_model::{GenerateOptions, LoadOptions, LogitsMode, Model, PerplexityOptions, SaveExtras};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PROMPT: &str = "Once upon a time";
const GREEDY_TOKENS: usize = 16;
const DECODE_TOKENS: usize = 128;
const WINDOW: usize = 2048;
const WINDOWS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let r = match a(0) {
        "compile" => compile(),
        "make-model" => parse_blocks(a(2)).and_then(|b| make_model(Path::new(a(1)), &b, Path::new(a(3)))),
        "reference" => reference(Path::new(a(1)), Path::new(a(2)), Path::new(a(3))),
        "bench" => bench(Path::new(a(1))),
        "model" => model(Path::new(a(1)), Path::new(a(2)), Path::new(a(3))),
        _ => Err("usage: cuda_check compile | make-model GGUF LAYERS DIR | reference DIR TEXT OUT | bench OUT | model DIR REF OUT".into()),
    };
    if let Err(e) = r {
        eprintln!("cuda_check {}: FAILED: {e}", a(0));
        std::process::exit(1);
    }
}

fn write_json(path: &Path, v: &Value) -> Res<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn compile() -> Res<()> {
    let t = Instant::now();
    let ptx = lowbit_cuda::compile_kernels(9, 0)?;
    println!("NVRTC compiled the kernels for sm_90 in {:.1} s: {} bytes of PTX", t.elapsed().as_secs_f64(), ptx.len());
    Ok(())
}

fn w4(w: &[f32], rows: usize, cols: usize) -> Res<QTensor> {
    Ok(rtn::quantize(w, &[rows, cols], IntScheme::group(Bits::B4, 128))?)
}

/// Block indices from "0-11,28-29".
fn parse_blocks(spec: &str) -> Res<Vec<usize>> {
    let mut out = vec![];
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?);
    }
    if out.is_empty() {
        return Err(format!("no blocks in {spec:?}").into());
    }
    Ok(out)
}

/// Blocks `blocks` of the model at `gguf` (in that order), every linear and the (tied)
/// embedding quantized W4 g128 asymmetric RTN, saved as a lowbit directory. Skipping blocks
/// keeps the file small enough to carry to the GPU machine; GPU and CPU run the same model.
fn make_model(gguf: &Path, blocks: &[usize], dir: &Path) -> Res<()> {
    let layers = blocks.len();
    let saved = Model::open_blocks(gguf, &LoadOptions::default(), |mut model, reader| -> Res<Model> {
        for &i in blocks {
            let mut layer = reader.block(i)?;
            for (_, lin) in layer.linears_mut() {
                let q = w4(&lin.weight().to_f32(), lin.rows(), lin.cols())?;
                *lin = lowbit_cpu::Linear::new(lin.rows(), lin.cols(), lowbit_cpu::WeightKind::Quant(q))?;
            }
            model.push_layer(layer)?;
        }
        Ok(model)
    })?;
    let mut extras = SaveExtras::default();
    extras.config.insert("num_hidden_layers".into(), json!(layers));
    extras.config.insert(
        "quantization_config".into(),
        json!({"quant_method": "lowbit", "method": "rtn", "bits": 4, "group_size": 128, "sym": false,
               "note": format!("cuda_check: blocks {blocks:?} of SmolLM2-135M, embedding W4 g128 too")}),
    );
    saved.save_with(dir, &extras)?;
    // Move the embedding from the dense shard into the quantized one, quantized: the f32 table
    // alone (113 MB) would not travel to the GPU machine.
    let dense_path = dir.join("model-00001-of-00002.safetensors");
    let quant_path = dir.join("model-00002-of-00002.safetensors");
    let name = "model.embed_tokens.weight";
    let dense_bytes = std::fs::read(&dense_path)?;
    let st = safetensors::SafeTensors::deserialize(&dense_bytes)?;
    let emb = saved.embedding();
    let q = w4(&emb.weight().to_f32(), emb.rows(), emb.cols())?;
    let keep: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(n, _)| n != name).collect();
    safetensors::serialize_to_file(keep, None, &dense_path)?;
    let mut loaded = lowbit_core::io::load(&quant_path)?;
    loaded.tensors.insert(name.to_string(), q);
    let bytes = lowbit_core::io::to_bytes(loaded.tensors.iter().map(|(n, t)| (n.as_str(), t)), &loaded.extra)?;
    std::fs::write(&quant_path, bytes)?;
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path)?)?;
    index["weight_map"][name] = json!("model-00002-of-00002.safetensors");
    write_json(&index_path, &index)?;
    let check = Model::load(dir)?;
    let size: u64 = std::fs::read_dir(dir)?.flatten().map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    println!(
        "wrote {} ({} blocks, embedding quantized: {}), {:.1} MiB",
        dir.display(),
        check.layers().len(),
        matches!(check.embedding().weight(), lowbit_cpu::WeightKind::Quant(_)),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Greedy tokens, prefill and decode timings, and the 4-window perplexity of `model` on `ids`.
fn evaluate<B: Backend>(model: &Model<B>, ids: &[u32]) -> Res<Value> {
    let tok = model.tokenizer().ok_or("the model has no tokenizer")?;
    let prompt = tok.encode(PROMPT, false)?;
    let greedy = GenerateOptions { max_new_tokens: GREEDY_TOKENS, stop_on_eos: false, ..GenerateOptions::default() };
    let g = model.generate_tokens(&prompt, &greedy, &mut |_| true, &mut lowbit_core::NoProgress)?;
    let long = GenerateOptions { max_new_tokens: DECODE_TOKENS, stop_on_eos: false, ..GenerateOptions::default() };
    let d = model.generate_tokens(&prompt, &long, &mut |_| true, &mut lowbit_core::NoProgress)?;
    // generate_tokens times the steps after the prefill: DECODE_TOKENS - 1 forward passes.
    let decode_tps = (d.tokens.len().saturating_sub(1)) as f64 / d.decode_seconds;
    let opts = PerplexityOptions { window: WINDOW, max_windows: Some(WINDOWS) };
    let p = model.perplexity(ids, &opts, &mut lowbit_core::NoProgress)?;
    let mut seq = prompt.clone();
    seq.extend(&g.tokens);
    let top5 = teacher_forced_top5(model, &seq, prompt.len())?;
    Ok(json!({
        "backend": model.backend().name(),
        "prompt": PROMPT,
        "prompt_ids": prompt,
        "greedy_tokens": g.tokens,
        "greedy_text": g.text,
        "decode_tokens": d.tokens.len(),
        "decode_tokens_per_s": decode_tps,
        "decode_text_head": d.text.chars().take(200).collect::<String>(),
        "ppl": p.ppl,
        "nll": p.nll,
        "window_nll": p.window_nll,
        "ppl_tokens": p.tokens,
        "ppl_seconds": p.seconds,
        "teacher_forced_top5": top5,
    }))
}

/// The five largest logits `[id, logit]` of each position from `from - 1` on, with `seq` fed
/// whole: the logits behind each greedy step, comparable across backends even where a near-tie
/// makes the greedy tokens diverge.
fn teacher_forced_top5<B: Backend>(model: &Model<B>, seq: &[u32], from: usize) -> Res<Vec<Vec<(u32, f32)>>> {
    let mut cache = model.new_cache();
    let lg = model.forward(seq, &mut cache, LogitsMode::All)?;
    Ok((from - 1..seq.len())
        .map(|r| {
            let mut idx: Vec<(u32, f32)> = lg.row(r).iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            idx.sort_by(|a, b| b.1.total_cmp(&a.1));
            idx.truncate(5);
            idx
        })
        .collect())
}

/// The largest difference between the CPU's and this model's logits at the CPU's top-5 ids,
/// on the CPU's greedy sequence, and the smallest top-1 margin the CPU saw.
fn logit_check<B: Backend>(model: &Model<B>, refv: &Value) -> Res<(f64, f64)> {
    let prompt: Vec<u32> = serde_json::from_value(refv["prompt_ids"].clone())?;
    let greedy: Vec<u32> = serde_json::from_value(refv["greedy_tokens"].clone())?;
    let cpu: Vec<Vec<(u32, f32)>> = serde_json::from_value(refv["teacher_forced_top5"].clone())?;
    let mut seq = prompt.clone();
    seq.extend(&greedy);
    let mut cache = model.new_cache();
    let lg = model.forward(&seq, &mut cache, LogitsMode::All)?;
    let (mut diff, mut margin) = (0f64, f64::INFINITY);
    for (k, row) in cpu.iter().enumerate() {
        let got = lg.row(prompt.len() - 1 + k);
        for &(id, v) in row {
            diff = diff.max((f64::from(got[id as usize]) - f64::from(v)).abs());
        }
        if row.len() > 1 {
            margin = margin.min(f64::from(row[0].1 - row[1].1));
        }
    }
    Ok((diff, margin))
}

fn reference(dir: &Path, text: &Path, out: &Path) -> Res<()> {
    let model = Model::load(dir)?;
    let tok = model.tokenizer().ok_or("the model has no tokenizer")?;
    let t = Instant::now();
    let all = tok.encode(&normalize_newlines(&read_text_file(text)?), false)?;
    let ids = &all[..(WINDOW * WINDOWS).min(all.len())];
    println!("tokenized {} ({} tokens) in {:.1} s", text.display(), all.len(), t.elapsed().as_secs_f64());
    let mut v = evaluate(&model, ids)?;
    v["text_tokens"] = json!(all.len());
    v["ids"] = json!(ids);
    v["layers"] = json!(model.layers().len());
    v["threads"] = json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    write_json(out, &v)?;
    println!("CPU reference: ppl {:.4}, greedy {:?}", v["ppl"], v["greedy_tokens"]);
    Ok(())
}

/// A random INT4 g128 asymmetric tensor with f16 scales, built directly (quantizing 235M f32
/// values on the host would take longer than the whole GPU run).
fn random_w4(rows: usize, cols: usize, seed: u64) -> Res<QTensor> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let codes: Vec<u8> = (0..rows * cols / 2).map(|_| next() as u8).collect();
    let groups = rows * cols.div_ceil(128);
    let scales = Scales::F16((0..groups).map(|_| half::f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5)).collect());
    let zeros = Some(lowbit_core::ZeroPoints::Codes((0..groups).map(|_| (next() % 16) as u8).collect()));
    let scheme = Scheme::Int(IntScheme::group(Bits::B4, 128));
    Ok(QTensor::from_parts(vec![rows, cols], scheme, codes, QParams::Int { scales, zeros })?)
}

fn bench(out: &Path) -> Res<()> {
    let cu = Cuda::new(0)?;
    println!("device: {}", cu.describe());
    let copy = cu.copy_bandwidth(1 << 30, 20)?;
    println!("device-to-device copy: {:.0} GB/s (read + write)", copy);
    // (in_features K, out_features N): the weight is [N, K].
    let shapes = [(4096usize, 4096usize), (8192, 8192), (8192, 28672), (28672, 8192)];
    let mut rows_out = vec![];
    println!("\n| K x N (in x out) | variant | time us | GB/s | % of copy | weight MiB |");
    println!("|---|---|---|---|---|---|");
    for &(k, n) in &shapes {
        let q = random_w4(n, k, (k * 31 + n) as u64)?;
        let first = cu.load_linear(n, k, HostWeight::Quant(&q))?;
        let bytes_w = first.device_bytes();
        // Rotate over enough copies that they do not fit in L2 together (H200: 60 MB).
        let copies = (256usize << 20).div_ceil(bytes_w).clamp(1, 32);
        let mut ws = vec![first];
        for _ in 1..copies {
            ws.push(cu.load_linear(n, k, HostWeight::Quant(&q))?);
        }
        drop(q);
        let x = cu.upload(&(0..k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<_>>())?;
        let mut y = cu.zeros(n)?;
        let bytes = (bytes_w + 4 * k + 4 * n) as f64;
        let mut best = (f64::MAX, "");
        for &r in lowbit_cuda::W4_GEMV_VARIANTS {
            let mut i = 0;
            let t = cu.time(50, || {
                i = (i + 1) % ws.len();
                let (xv, yv) = (cu.view(&x, 0..k), cu.view_mut(&mut y, 0..n));
                cu.linear_with(&ws[i], xv, 1, yv, r)
            })?;
            let gbs = bytes / t / 1e9;
            println!(
                "| {k} x {n} | {r} | {:.1} | {gbs:.0} | {:.1} | {:.1} |",
                t * 1e6,
                100.0 * gbs / copy,
                bytes_w as f64 / (1 << 20) as f64
            );
            rows_out.push(json!({"k": k, "n": n, "variant": r, "seconds": t, "gb_per_s": gbs,
                                 "pct_of_copy": 100.0 * gbs / copy, "weight_bytes": bytes_w, "copies": copies}));
            if t < best.0 {
                best = (t, r);
            }
        }
        // The other storage formats at the same shape, for scale (one copy: f16 is 4x the bytes).
        let wdense: Vec<half::f16> =
            (0..n * k).map(|i| half::f16::from_f32(((i % 977) as f32 - 488.0) * 1e-4)).collect();
        let wf16 = cu.load_linear(n, k, HostWeight::F16(&wdense))?;
        drop(wdense);
        let t = cu.time(20, || cu.linear(&wf16, cu.view(&x, 0..k), 1, cu.view_mut(&mut y, 0..n)))?;
        let gbs = (wf16.device_bytes() + 4 * k + 4 * n) as f64 / t / 1e9;
        println!(
            "| {k} x {n} | f16 GEMV | {:.1} | {gbs:.0} | {:.1} | {:.1} |",
            t * 1e6,
            100.0 * gbs / copy,
            wf16.device_bytes() as f64 / (1 << 20) as f64
        );
        rows_out.push(json!({"k": k, "n": n, "format": "f16", "seconds": t, "gb_per_s": gbs, "best_w4_seconds": best.0, "best_w4_variant": best.1}));
        // Prefill: the tiled GEMM at M = 64 and 512 on the INT4 weight.
        for m in [64usize, 512] {
            let xm = cu.zeros(m * k)?;
            let mut ym = cu.zeros(m * n)?;
            let t = cu.time(5, || cu.linear(&ws[0], cu.view(&xm, 0..m * k), m, cu.view_mut(&mut ym, 0..m * n)))?;
            let tflops = 2.0 * (m * n * k) as f64 / t / 1e12;
            println!("| {k} x {n} | W4 GEMM fp32 M={m} | {:.1} | {tflops:.2} TFLOP/s | | |", t * 1e6);
            rows_out.push(json!({"k": k, "n": n, "format": "w4 gemm", "m": m, "seconds": t, "tflops": tflops}));
            let t = cu.time(5, || {
                cu.linear_tensor_cores(&ws[0], cu.view(&xm, 0..m * k), m, cu.view_mut(&mut ym, 0..m * n))
            })?;
            let tflops = 2.0 * (m * n * k) as f64 / t / 1e12;
            println!("| {k} x {n} | W4 GEMM mma.sync M={m} | {:.1} | {tflops:.2} TFLOP/s | | |", t * 1e6);
            rows_out.push(json!({"k": k, "n": n, "format": "w4 gemm mma", "m": m, "seconds": t, "tflops": tflops}));
        }
    }
    write_json(out, &json!({"device": cu.describe(), "copy_gb_per_s": copy, "rows": rows_out}))?;
    Ok(())
}

/// Greedy decoding with the argmax on the device: per step only the token id comes back.
/// Returns the tokens and the tokens per second of the steps after the prompt.
fn device_greedy(model: &Model<Cuda>, prompt: &[u32], steps: usize) -> Res<(Vec<u32>, f64)> {
    let cu = model.backend();
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache();
    let mut logits = model.forward_last_on_device(prompt, &mut cache)?;
    let mut out = Vec::with_capacity(steps);
    let t = Instant::now();
    loop {
        let id = cu.argmax(cu.view(&logits, 0..vocab), 1, vocab)?[0];
        out.push(id);
        if out.len() == steps {
            break;
        }
        logits = model.forward_last_on_device(&[id], &mut cache)?;
    }
    Ok((out, (steps.max(2) - 1) as f64 / t.elapsed().as_secs_f64()))
}

fn model(dir: &Path, reference: &Path, out: &Path) -> Res<()> {
    let refv: Value = serde_json::from_str(&std::fs::read_to_string(reference)?)?;
    let ids: Vec<u32> = serde_json::from_value(refv["ids"].clone())?;
    let t = Instant::now();
    let model = lowbit_cuda::load_model(dir, 0)?;
    let load_s = t.elapsed().as_secs_f64();
    let cu = model.backend().clone();
    println!("device: {}; loaded {} blocks in {load_s:.1} s", cu.describe(), model.layers().len());
    let host = Model::load(dir)?;
    let host_ids = host.tokenizer().ok_or("no tokenizer")?.encode(refv["prompt"].as_str().unwrap_or(PROMPT), false)?;
    let mut v = evaluate(&model, &ids)?;
    cu.synchronize().map_err(|e: CudaError| e.to_string())?;
    let greedy_equal = v["greedy_tokens"] == refv["greedy_tokens"];
    let (logit_diff, margin) = logit_check(&model, &refv)?;
    let prompt: Vec<u32> = serde_json::from_value(refv["prompt_ids"].clone())?;
    let _ = device_greedy(&model, &prompt, 8)?; // warm-up
    let (dev_tokens, dev_tps) = device_greedy(&model, &prompt, DECODE_TOKENS)?;
    let dev_equal = json!(dev_tokens[..GREEDY_TOKENS]) == refv["greedy_tokens"];
    v["device_argmax_tokens"] = json!(dev_tokens[..GREEDY_TOKENS]);
    v["device_argmax_greedy_equal_cpu"] = json!(dev_equal);
    v["device_argmax_decode_tokens_per_s"] = json!(dev_tps);
    v["logit_max_abs_diff_top5"] = json!(logit_diff);
    v["cpu_min_top1_margin"] = json!(margin);
    let (gp, cp) = (v["ppl"].as_f64().unwrap_or(f64::NAN), refv["ppl"].as_f64().unwrap_or(f64::NAN));
    let rel = (gp - cp).abs() / cp;
    v["load_seconds"] = json!(load_s);
    v["greedy_equal_cpu"] = json!(greedy_equal);
    v["ppl_cpu"] = json!(cp);
    v["ppl_rel_diff"] = json!(rel);
    v["prompt_ids_equal_cpu"] = json!(json!(host_ids) == refv["prompt_ids"]);
    v["decode_tokens_per_s_cpu"] = refv["decode_tokens_per_s"].clone();
    write_json(out, &v)?;
    println!("\n| check | GPU | CPU reference | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| greedy {GREEDY_TOKENS} tokens | {} | {} | {} |",
        v["greedy_tokens"],
        refv["greedy_tokens"],
        if greedy_equal { "equal" } else { "DIFFER" }
    );
    println!(
        "| perplexity, {WINDOWS} x {WINDOW} | {gp:.6} | {cp:.6} | rel diff {rel:.2e} ({}) |",
        if rel <= 1e-3 { "within 1e-3" } else { "OVER 1e-3" }
    );
    println!(
        "| greedy, argmax on the device | {} | | {} |",
        v["device_argmax_tokens"],
        if dev_equal { "equal" } else { "DIFFER" }
    );
    println!("| decode tok/s, argmax on the device | {dev_tps:.1} | | |");
    println!(
        "| decode tok/s ({DECODE_TOKENS} tokens) | {:.1} | {:.1} | |",
        v["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
        refv["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
    );
    println!("| logits at the CPU's top-5 (teacher-forced) | max abs diff {logit_diff:.2e} | min top-1 margin {margin:.2e} | |");
    println!(
        "| perplexity seconds | {:.2} | {:.2} | |",
        v["ppl_seconds"].as_f64().unwrap_or(0.0),
        refv["ppl_seconds"].as_f64().unwrap_or(0.0)
    );
    if !greedy_equal || !dev_equal || rel.is_nan() || rel > 1e-3 {
        return Err("the GPU model does not match the CPU reference".into());
    }
    Ok(())
}
