//! GGUF export: every scheme of a tiny lowbit model written to GGUF, read back by lowbit's GGUF
//! loader (which un-permutes q/k) and compared with lowbit's own dequantized weights: bit-exact
//! for the lossless routes, within the reported difference for the others.

mod common;

use common::*;
use lowbit_core::{Bits, Codebook, CodebookScheme, IntScheme, ScaleDtype, Scheme};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::gguf::{export_gguf, ExportPath, GgmlType, GgufExportOptions, GgufFile};
use lowbit_model::{ConvertFormat, ConvertOptions, ConvertReport, Model, ModelError};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A byte-level BPE tokenizer with SmolLM2's pre-tokenizer and three special tokens.
fn write_tokenizer(dir: &Path) {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let special = |id: u32, c: &str| {
        json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true})
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<|endoftext|>"), special(1, "<|im_start|>"), special(2, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "b": 4, "ab": 5, "Ġ": 6, "Ġa": 7},
            "merges": [["a", "b"], ["Ġ", "a"]]},
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({"add_bos_token": false, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "chat_template": "{{ messages }}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// A tiny tied Llama (hidden 64, ffn 96, 4 heads / 2 KV heads) in f32 with a tokenizer.
fn tiny_dir(tag: &str, ffn: usize) -> PathBuf {
    let dir = temp_dir(tag);
    let mut cfg = tiny_config("LlamaForCausalLM", true);
    cfg["hidden_size"] = json!(64);
    cfg["intermediate_size"] = json!(ffn);
    write_tiny_model(&dir, &cfg, 7, Store::F32);
    write_tokenizer(&dir);
    dir
}

/// The model at `src` with every block linear quantized with `scheme`, the embedding with
/// `embed`, saved as a lowbit directory.
fn quantized(src: &Path, scheme: Scheme, embed: Option<Scheme>, tag: &str) -> PathBuf {
    let mut model = Model::load(src).unwrap();
    let q = |lin: &Linear, s: Scheme| {
        let WeightKind::F32(w) = lin.weight() else { panic!("f32 source") };
        let q = lowbit_core::quantize(w, &[lin.rows(), lin.cols()], s).unwrap();
        Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(q)).unwrap()
    };
    for layer in model.layers_mut() {
        for (_, lin) in layer.linears_mut() {
            *lin = q(lin, scheme);
        }
    }
    if let Some(e) = embed {
        let lin = q(model.embedding(), e);
        model.set_embedding(lin).unwrap();
    }
    let out = temp_dir(tag).join("model");
    model.save(&out).unwrap();
    std::fs::copy(src.join("tokenizer_config.json"), out.join("tokenizer_config.json")).unwrap();
    out
}

fn int(bits: Bits, g: usize, symmetric: bool) -> Scheme {
    Scheme::Int(IntScheme { symmetric, ..IntScheme::group(bits, g) })
}

/// lowbit's dequantized matrices, by HF name.
fn weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    let deq = |l: &Linear| match l.weight() {
        WeightKind::F32(v) => v.clone(),
        WeightKind::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        WeightKind::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        WeightKind::Quant(q) => q.dequantize(),
    };
    let mut out = vec![("embed".to_string(), deq(m.embedding()))];
    for (i, l) in m.layers().iter().enumerate() {
        for (n, lin) in l.linears() {
            out.push((format!("{i}.{n}"), deq(lin)));
        }
    }
    out
}

/// Exports `dir`, reloads the GGUF with lowbit and returns (export report, GGUF types by name,
/// largest difference per matrix against lowbit's weights).
fn round_trip(dir: &Path) -> (lowbit_model::gguf::GgufExport, GgufFile, Vec<(String, f32)>) {
    let out = dir.parent().unwrap().join("out.gguf");
    let report = export_gguf(dir, &out, &GgufExportOptions::default()).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let (ours, back) = (Model::load(dir).unwrap(), Model::load(&out).unwrap());
    let diffs = weights(&ours)
        .into_iter()
        .zip(weights(&back))
        .map(|((n, a), (_, b))| (n, a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))))
        .collect();
    (report, file, diffs)
}

fn ty(file: &GgufFile, name: &str) -> GgmlType {
    file.tensor_info(name).unwrap().ty
}

#[test]
fn symmetric_4_and_8_bit_repack_bit_exact() {
    let src = tiny_dir("export-sym", 96);
    let channel8 = Scheme::Int(IntScheme::per_channel_sym(Bits::B8));
    for (scheme, want) in [(int(Bits::B4, 32, true), GgmlType::Q4_0), (int(Bits::B4, 64, true), GgmlType::Q4_0)] {
        let dir = quantized(&src, scheme, Some(channel8), "export-sym-q");
        let (report, file, diffs) = round_trip(&dir);
        for (n, d) in &diffs {
            assert_eq!(*d, 0.0, "{scheme:?} {n}");
        }
        // down_proj's 96-wide rows at group 64 end in a short group of 32: still whole blocks.
        assert_eq!(ty(&file, "blk.0.attn_q.weight"), want);
        assert_eq!(ty(&file, "blk.0.ffn_down.weight"), want);
        assert_eq!(ty(&file, "token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(ty(&file, "output_norm.weight"), GgmlType::F32);
        assert!(file.tensor_info("output.weight").is_none(), "tied: no output tensor");
        for t in &report.tensors {
            if t.path == ExportPath::Exact {
                assert_eq!(t.max_abs_diff, 0.0, "{}", t.name);
            }
        }
    }
    let dir = quantized(&src, int(Bits::B8, 32, true), None, "export-sym8");
    let (_, file, diffs) = round_trip(&dir);
    assert!(diffs.iter().all(|(_, d)| *d == 0.0), "{diffs:?}");
    assert_eq!(ty(&file, "blk.1.ffn_down.weight"), GgmlType::Q8_0);
    assert_eq!(ty(&file, "token_embd.weight"), GgmlType::F32, "an f32 embedding stays f32");
}

#[test]
fn asymmetric_4_bit_goes_to_q4_1_within_the_min_rounding() {
    let src = tiny_dir("export-asym", 64);
    let dir = quantized(&src, int(Bits::B4, 32, false), None, "export-asym-q");
    let (report, file, diffs) = round_trip(&dir);
    assert_eq!(ty(&file, "blk.0.ffn_up.weight"), GgmlType::Q4_1);
    for t in report.tensors.iter().filter(|t| t.ty == GgmlType::Q4_1) {
        assert_eq!(t.path, ExportPath::MinRounded);
        // One f16 rounding of -z*s (|z*s| <= 15*s) and of the products: a few ulps of the range.
        assert!(t.max_abs_diff > 0.0 && t.max_abs_diff < 1e-3, "{}: {}", t.name, t.max_abs_diff);
    }
    let worst = report.tensors.iter().map(|t| t.max_abs_diff).fold(0f32, f32::max);
    for (n, d) in diffs {
        assert!(d <= worst, "{n}: {d} > reported {worst}");
    }
}

#[test]
fn other_schemes_are_requantized_and_reported() {
    let src = tiny_dir("export-requant", 256);
    let nf4 = Scheme::Codebook(CodebookScheme { codebook: Codebook::Nf4, block_size: 64, double_quant: false });
    let f32_scales = Scheme::Int(IntScheme { scale_dtype: ScaleDtype::F32, ..IntScheme::per_channel_sym(Bits::B4) });
    for (scheme, down, other) in [
        (nf4, GgmlType::Q4K, GgmlType::Q5_0),
        (int(Bits::B3, 32, false), GgmlType::Q4K, GgmlType::Q5_0),
        (int(Bits::B8, 32, false), GgmlType::Q8_0, GgmlType::Q8_0),
        (int(Bits::B4, 16, true), GgmlType::Q4K, GgmlType::Q5_0),
        (f32_scales, GgmlType::Q4K, GgmlType::Q5_0),
    ] {
        let dir = quantized(&src, scheme, None, "export-requant-q");
        let (report, file, diffs) = round_trip(&dir);
        // down_proj rows are 256 wide (Q4_K fits), the rest 64 (llama.cpp's Q5_0 fallback).
        assert_eq!(ty(&file, "blk.0.ffn_down.weight"), down, "{scheme:?}");
        assert_eq!(ty(&file, "blk.0.attn_q.weight"), other, "{scheme:?}");
        for t in report.tensors.iter().filter(|t| t.name.starts_with("blk.") && t.name.ends_with("proj.weight")) {
            assert_eq!(t.path, ExportPath::Requantized, "{}", t.name);
        }
        let reported = |n: &str| report.tensors.iter().find(|t| t.name == n).unwrap().max_abs_diff;
        let (_, d) = diffs.iter().find(|(n, _)| n == "0.mlp.down_proj").unwrap();
        assert_eq!(*d, reported("blk.0.ffn_down.weight"), "{scheme:?}: the report is the measured difference");
        assert!(*d > 0.0 && *d < 0.1, "{scheme:?}: {d}");
    }
}

#[test]
fn dense_type_requantizes_f32_matrices_with_the_reference_quantizer() {
    let src = tiny_dir("export-dense", 96);
    let out = src.join("q8.gguf");
    let opts = GgufExportOptions { dense_type: Some(GgmlType::Q8_0), ..Default::default() };
    let report = export_gguf(&src, &out, &opts).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let model = Model::load(&src).unwrap();
    let WeightKind::F32(w) = model.layers()[0].linears()[6].1.weight() else { panic!() };
    // down_proj is not permuted: its bytes are the reference quantizer's on the f32 rows.
    assert_eq!(
        file.tensor_bytes("blk.0.ffn_down.weight").unwrap(),
        lowbit_model::gguf::quantize(GgmlType::Q8_0, w).unwrap()
    );
    assert!(report.tensors.iter().filter(|t| t.ty == GgmlType::Q8_0).all(|t| t.path == ExportPath::Requantized));
}

#[test]
fn metadata_and_tokenizer_reload() {
    let src = tiny_dir("export-meta", 64);
    let dir = quantized(&src, int(Bits::B4, 32, true), None, "export-meta-q");
    let out = dir.parent().unwrap().join("m.gguf");
    export_gguf(&dir, &out, &GgufExportOptions::default()).unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(f.get_u64("tokenizer.ggml.padding_token_id").unwrap(), Some(2));
    assert_eq!(f.get_u64("tokenizer.ggml.unknown_token_id").unwrap(), Some(0));
    assert_eq!(f.get_u64("llama.rope.dimension_count").unwrap(), Some(16));
    assert_eq!(f.get_str("tokenizer.chat_template"), Some("{{ messages }}"));
    let toks = f.get_strings("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!((toks.len(), toks[7], toks[8]), (61, "Ġa", "[PAD8]"));
    assert_eq!(f.get_strings("tokenizer.ggml.merges").unwrap().unwrap(), ["a b", "Ġ a"]);
    let (a, b) = (Model::load(&dir).unwrap(), Model::load(&out).unwrap());
    let (ta, tb) = (a.tokenizer().unwrap(), b.tokenizer().unwrap());
    for text in ["ab a b", "<|im_start|>ab<|im_end|>"] {
        assert_eq!(ta.encode(text, false).unwrap(), tb.encode(text, false).unwrap(), "{text}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        let cfg = std::fs::metadata(dir.join("config.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, cfg, "the GGUF gets the mode of lowbit's other outputs");
    }
}

#[test]
fn bad_input_is_refused_without_a_file() {
    let src = tiny_dir("export-bad", 64);
    let out = src.join("x.gguf");
    let no_files =
        |d: &Path| std::fs::read_dir(d).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("x.gguf"));
    // Missing model.
    assert!(matches!(export_gguf(src.join("nope"), &out, &Default::default()), Err(ModelError::MissingFile { .. })));
    // A NaN weight.
    let mut model = Model::load(&src).unwrap();
    let lin = &mut model.layers_mut()[1].linears_mut()[3].1;
    let (r, c) = (lin.rows(), lin.cols());
    let WeightKind::F32(w) = lin.weight() else { panic!() };
    let mut w = w.clone();
    w[5] = f32::NAN;
    **lin = Linear::new(r, c, WeightKind::F32(w)).unwrap();
    let nan_dir = temp_dir("export-nan").join("m");
    model.save(&nan_dir).unwrap();
    let e = export_gguf(&nan_dir, nan_dir.join("x.gguf"), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("blk.1.attn_output.weight") && e.to_string().contains("NaN"), "{e}");
    assert!(no_files(&nan_dir));
    // No tokenizer.
    std::fs::remove_file(src.join("tokenizer.json")).unwrap();
    assert!(matches!(export_gguf(&src, &out, &Default::default()), Err(ModelError::NoTokenizer { .. })));
    assert!(no_files(&src));
    // Not the llama architecture.
    let qdir = temp_dir("export-qwen");
    write_tiny_model(&qdir, &tiny_config("Qwen2ForCausalLM", true), 3, Store::F32);
    write_tokenizer(&qdir);
    let e = export_gguf(&qdir, qdir.join("x.gguf"), &Default::default()).unwrap_err();
    assert!(matches!(e, ModelError::UnsupportedArchitecture { .. }), "{e}");
    assert!(no_files(&qdir));
}

#[test]
fn group_of_32_in_rows_of_48_falls_back_to_f32_exactly() {
    let src = tiny_dir("export-odd", 48);
    let dir = quantized(&src, int(Bits::B4, 16, true), None, "export-odd-q");
    let (report, file, diffs) = round_trip(&dir);
    assert_eq!(ty(&file, "blk.0.ffn_down.weight"), GgmlType::F32);
    let (_, d) = diffs.iter().find(|(n, _)| n == "0.mlp.down_proj").unwrap();
    assert_eq!(*d, 0.0);
    let t = report.tensors.iter().find(|t| t.name == "blk.0.ffn_down.weight").unwrap();
    assert_eq!((t.path, t.source.as_str()), (ExportPath::Exact, "int4 g16 sym f16"));
}

#[test]
fn untied_head_and_a_gguf_source() {
    let dir = temp_dir("export-untied");
    let mut cfg = tiny_config("LlamaForCausalLM", false);
    cfg.as_object_mut().unwrap().remove("rope_scaling");
    cfg["hidden_size"] = json!(64);
    cfg["intermediate_size"] = json!(64);
    write_tiny_model(&dir, &cfg, 11, Store::F16);
    write_tokenizer(&dir);
    let channel8 = Scheme::Int(IntScheme::per_channel_sym(Bits::B8));
    let mut model = Model::load(&dir).unwrap();
    let head = model.lm_head();
    let WeightKind::F16(w) = head.weight() else { panic!("f16 source") };
    let q = lowbit_core::quantize(w, &[head.rows(), head.cols()], channel8).unwrap();
    let head = Linear::new(head.rows(), head.cols(), WeightKind::Quant(q)).unwrap();
    model.set_lm_head(head).unwrap();
    let q = temp_dir("export-untied-q").join("m");
    model.save(&q).unwrap();
    let (report, file, diffs) = round_trip(&q);
    assert_eq!(ty(&file, "output.weight"), GgmlType::Q8_0);
    assert_eq!(ty(&file, "token_embd.weight"), GgmlType::F16);
    assert!(diffs.iter().all(|(_, d)| *d == 0.0), "{diffs:?}");
    let (a, b) = (Model::load(&q).unwrap(), Model::load(q.parent().unwrap().join("out.gguf")).unwrap());
    let WeightKind::Quant(qa) = a.lm_head().weight() else { panic!() };
    // Q8_0 comes back packed (int8 g32: the same values as lowbit's per-channel int8).
    let WeightKind::Quant(hb) = b.lm_head().weight() else { panic!("Q8_0 loads packed") };
    assert_eq!(qa.dequantize(), hb.dequantize());
    assert!(report.tensors.iter().all(|t| t.path == ExportPath::Exact));
    // A GGUF in, a GGUF out: the tokenizer (chat template included) comes from the GGUF.
    let again = q.parent().unwrap().join("again.gguf");
    export_gguf(q.parent().unwrap().join("out.gguf"), &again, &Default::default()).unwrap();
    let f = GgufFile::open(&again).unwrap();
    assert_eq!(f.get_str("tokenizer.chat_template"), Some("{{ messages }}"));
    assert_eq!(f.get_strings("tokenizer.ggml.merges").unwrap().unwrap(), ["a b", "Ġ a"]);
}

// ---- Import: GGUF blocks run packed where lowbit has a kernel, exactly ----

/// The model's matrices by HF name (embedding first; the test models are tied).
fn mats(m: &Model) -> Vec<(String, &Linear)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), m.embedding())];
    for (i, l) in m.layers().iter().enumerate() {
        out.extend(l.linears().into_iter().map(|(n, lin)| (format!("model.layers.{i}.{n}.weight"), lin)));
    }
    out
}

/// Every matrix of the GGUF at `path`, dequantized by the block dequantizer and un-permuted as
/// f32 (the reference the packed import must equal), by HF name.
fn gguf_reference(path: &Path, m: &Model) -> Vec<(String, Vec<f32>)> {
    let file = GgufFile::open(path).unwrap();
    let c = m.config();
    mats(m)
        .into_iter()
        .map(|(hf, _)| {
            let g = lowbit_model::gguf::gguf_name(&hf).unwrap();
            let info = file.tensor_info(&g).unwrap();
            let mut v = vec![0f32; info.numel()];
            lowbit_model::gguf::dequantize(info.ty, file.raw(info).unwrap(), &mut v).unwrap();
            let cols = info.shape()[1];
            let v = if g.contains(".attn_q.") {
                lowbit_model::gguf::unpermute_rows(&v, c.num_attention_heads, cols)
            } else if g.contains(".attn_k.") {
                lowbit_model::gguf::unpermute_rows(&v, c.num_key_value_heads, cols)
            } else {
                v
            };
            (hf, v)
        })
        .collect()
}

/// Logits of `tokens` computed as evaluations are (f32 activations).
fn eval_logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let hidden = m.hidden_states(tokens, &mut m.new_cache(), &mut lowbit_core::NoProgress).unwrap();
    let mut out = vec![0f32; tokens.len() * m.config().vocab_size];
    m.lm_head_rows(&hidden, tokens.len(), &mut out).unwrap();
    out
}

#[test]
fn every_llama_block_type_loads_like_its_dequantized_reference() {
    // 256-wide rows so that the K-quants apply without llama.cpp's fallbacks.
    let src = tiny_dir("import-types", 256);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = json!(256);
    std::fs::write(src.join("config.json"), cfg.to_string()).unwrap();
    write_safetensors(&src.join("model.safetensors"), &tiny_weights(&cfg, 5), Store::F32);
    let toks = [3u32, 5, 7, 4, 6, 3, 3, 5];
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let dir = src.parent().unwrap().join(format!("import-{}", ty.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("m.gguf");
        let report =
            export_gguf(&src, &out, &GgufExportOptions { dense_type: Some(ty), ..Default::default() }).unwrap();
        assert!(report.tensors.iter().filter(|t| t.name.ends_with("attn_q.weight")).all(|t| t.ty == ty));
        let m = Model::load(&out).unwrap();
        // Weights: the packed tensors hold exactly the values of the blocks (q/k un-permuted).
        let packed = matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0);
        for ((name, want), (_, lin)) in gguf_reference(&out, &m).into_iter().zip(mats(&m)) {
            match lin.weight() {
                WeightKind::Quant(q) => {
                    assert!(packed, "{ty:?} {name} came back packed");
                    assert_eq!(q.dequantize(), want, "{ty:?} {name}");
                }
                WeightKind::F32(v) => {
                    assert!(!packed, "{ty:?} {name} was dequantized");
                    assert_eq!(v, &want, "{ty:?} {name}");
                }
                other => panic!("{ty:?} {name}: {other:?}"),
            }
        }
        // One warning names the dequantized type and how many tensors (7 per block + embedding).
        let w = m.load_warnings();
        if packed {
            assert!(w.is_empty(), "{ty:?}: {w:?}");
        } else {
            assert_eq!(w.len(), 1, "{ty:?}: {w:?}");
            assert!(w[0].contains(&format!("{} x15", ty.name())) && w[0].contains("15 tensors"), "{}", w[0]);
        }
        // Logits: the same as the f32 model holding the dequantized weights.
        let reference = dir.join("reference");
        lowbit_model::import_gguf(&out, &reference).unwrap();
        let (a, b) = (eval_logits(&m, &toks), eval_logits(&Model::load(&reference).unwrap(), &toks));
        let scale = b.iter().fold(0f32, |s, x| s.max(x.abs()));
        let worst = a.iter().zip(&b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
        if packed {
            assert!(worst <= 1e-5 * scale, "{ty:?}: packed logits differ by {worst} (scale {scale})");
        } else {
            assert_eq!(a, b, "{ty:?}");
        }
    }
}

#[test]
fn lowbit_to_gguf_to_lowbit_gives_identical_qtensors() {
    let src = tiny_dir("import-rt", 96);
    for scheme in [int(Bits::B4, 32, true), int(Bits::B8, 32, true)] {
        let dir = quantized(&src, scheme, Some(scheme), "import-rt-q");
        let out = dir.parent().unwrap().join("out.gguf");
        let report = export_gguf(&dir, &out, &GgufExportOptions::default()).unwrap();
        assert!(report.tensors.iter().all(|t| t.path == ExportPath::Exact));
        let (a, b) = (Model::load(&dir).unwrap(), Model::load(&out).unwrap());
        assert!(b.load_warnings().is_empty(), "{:?}", b.load_warnings());
        for ((name, x), (_, y)) in mats(&a).into_iter().zip(mats(&b)) {
            let (WeightKind::Quant(x), WeightKind::Quant(y)) = (x.weight(), y.weight()) else {
                panic!("{scheme:?} {name}: not packed");
            };
            assert_eq!(x, y, "{scheme:?} {name}");
        }
    }
}

// ---- convert ----

fn convert_to(input: &Path, out: &Path, format: ConvertFormat, allow: bool) -> lowbit_model::Result<ConvertReport> {
    let opts = ConvertOptions { format, allow_requantize: allow, gguf: GgufExportOptions::default() };
    lowbit_model::convert(input, out, &opts)
}

/// The raw bytes of every tensor of a GGUF file, by name.
fn gguf_tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors().iter().map(|t| (t.name.clone(), f.raw(t).unwrap().to_vec())).collect()
}

#[test]
fn convert_q4_0_gguf_and_lowbit_int4_g32_both_ways_exactly() {
    let src = tiny_dir("convert-lossless", 96);
    let s = int(Bits::B4, 32, true);
    let dir = quantized(&src, s, Some(s), "convert-lossless-q");
    let root = dir.parent().unwrap();
    let gguf = root.join("a.gguf");
    let r = convert_to(&dir, &gguf, ConvertFormat::Gguf, false).unwrap();
    assert!(r.tensors.iter().all(|t| !t.lossy()), "{:?}", r.tensors);
    assert_eq!(r.tensors.iter().filter(|t| t.target == "Q4_0").count(), 15);
    assert_eq!(r.bytes, std::fs::metadata(&gguf).unwrap().len());
    // GGUF -> lowbit: the very QTensors lowbit started from.
    let back = root.join("back");
    let r = convert_to(&gguf, &back, ConvertFormat::Lowbit, false).unwrap();
    assert!(r.tensors.iter().all(|t| t.max_abs_diff == 0.0 && t.target == "int4 g32 sym f16"), "{:?}", r.tensors);
    let (a, b) = (Model::load(&dir).unwrap(), Model::load(&back).unwrap());
    for ((n, x), (_, y)) in mats(&a).into_iter().zip(mats(&b)) {
        let (WeightKind::Quant(x), WeightKind::Quant(y)) = (x.weight(), y.weight()) else { panic!("{n}") };
        assert_eq!(x, y, "{n}");
    }
    // lowbit -> GGUF again: the same blocks, byte for byte.
    let again = root.join("again.gguf");
    convert_to(&back, &again, ConvertFormat::Gguf, false).unwrap();
    assert_eq!(gguf_tensor_bytes(&gguf), gguf_tensor_bytes(&again));
}

#[test]
fn lossy_convert_is_refused_before_writing_unless_allowed() {
    let src = tiny_dir("convert-lossy", 64);
    // Asymmetric 4-bit at group 64: Q4_1 with each minimum rounded to f16 (lossy).
    let dir = quantized(&src, int(Bits::B4, 64, false), None, "convert-lossy-q");
    let out = dir.parent().unwrap().join("lossy.gguf");
    let e = convert_to(&dir, &out, ConvertFormat::Gguf, false).unwrap_err();
    let ModelError::Lossy { count, first, .. } = &e else { panic!("{e}") };
    assert_eq!(*count, 14, "{e}");
    assert!(first.starts_with("blk.0.attn_q.weight (int4 g64 asym f16 -> Q4_1, min-rounded"), "{e}");
    assert!(!out.exists(), "nothing is written");
    let r = convert_to(&dir, &out, ConvertFormat::Gguf, true).unwrap();
    assert!(out.is_file());
    // The report's differences are what the file holds: recomputed from the blocks here.
    let (ours, back) = (Model::load(&dir).unwrap(), Model::load(&out).unwrap());
    let report: std::collections::HashMap<_, _> =
        r.tensors.iter().map(|t| (t.name.clone(), (t.max_abs_diff, t.lossy()))).collect();
    for ((hf, a), (_, b)) in mats(&ours).into_iter().zip(mats(&back)) {
        let (x, y) = (a.weight().to_f32(), b.weight().to_f32());
        let d = x.iter().zip(&y).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let (reported, lossy) = report[&lowbit_model::gguf::gguf_name(&hf).unwrap()];
        assert_eq!(d, reported, "{hf}");
        assert_eq!(lossy, d > 0.0, "{hf}");
    }
    // Requantizing f32 weights to Q8_0 is lossy too; to a lowbit directory nothing changes.
    let opts = ConvertOptions {
        format: ConvertFormat::Gguf,
        allow_requantize: false,
        gguf: GgufExportOptions { dense_type: Some(GgmlType::Q8_0), ..Default::default() },
    };
    let out8 = dir.parent().unwrap().join("q8.gguf");
    assert!(matches!(lowbit_model::convert(&src, &out8, &opts), Err(ModelError::Lossy { count: 15, .. })));
    assert!(!out8.exists());
    let r = convert_to(&src, &dir.parent().unwrap().join("dense"), ConvertFormat::Lowbit, false).unwrap();
    assert!(r.tensors.iter().all(|t| t.target == "f32" && t.max_abs_diff == 0.0));
}
