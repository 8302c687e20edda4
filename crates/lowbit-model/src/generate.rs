//! Text generation: greedy and sampled decoding with a KV cache, stop conditions and streaming.

use crate::model::{LogitsMode, Model};
use crate::{ModelError, Result};
use lowbit_core::progress::{phase, Progress};

/// A small deterministic generator: xoshiro256** seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the generator; equal seeds give equal streams on every platform.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How to pick tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (`1.0` = all).
    pub top_p: f32,
    /// CTRL-style penalty on tokens already present (`1.0` = none): positive logits are divided
    /// by it, negative ones multiplied.
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop when an end-of-sequence token is produced (it is not included in the output).
    pub stop_on_eos: bool,
    /// Stop when the generated text contains any of these (the text is cut before it).
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_on_eos: true,
            stop_strings: vec![],
        }
    }
}

impl GenerateOptions {
    fn validate(&self) -> Result<()> {
        let bad = |r: String| Err(ModelError::input("generate", r));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` reached.
    MaxTokens,
    /// An end-of-sequence token was produced.
    Eos,
    /// A stop string appeared.
    StopString,
    /// The callback asked to stop.
    Callback,
    /// The context length was reached.
    ContextFull,
}

/// What [`Model::generate`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New token ids (without the prompt, without a final EOS).
    pub tokens: Vec<u32>,
    /// Their text (cut before a stop string); empty when the model has no tokenizer.
    pub text: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prefill_seconds: f64,
    /// Seconds spent generating after the prefill.
    pub decode_seconds: f64,
}

/// One streamed step: the new token and the text it completed (may be empty while a multi-byte
/// character is incomplete). Return `false` from the callback to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent<'a> {
    /// The token id.
    pub token: u32,
    /// New text since the previous event.
    pub text: &'a str,
}

/// Picks the next token from `logits` (modified in place) under `opts`.
pub fn sample(logits: &mut [f32], previous: &[u32], opts: &GenerateOptions, rng: &mut Rng) -> u32 {
    if opts.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in previous {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / opts.repetition_penalty } else { *l * opts.repetition_penalty };
                }
            }
        }
    }
    let argmax = || {
        logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
            as u32
    };
    if opts.temperature == 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if opts.top_k > 0 {
        idx.truncate(opts.top_k);
    }
    let max = logits[idx[0]] as f64;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= opts.top_p as f64
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (p, &i) in probs.iter().zip(&idx) {
        r -= p;
        if r < 0.0 {
            return i as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

impl Model {
    /// Generates from prompt token ids, calling `on_token` for every new token. Reports phase
    /// `generate` (one unit per new token) to `progress`, and is cancellable before each token.
    pub fn generate_tokens(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
        progress: &mut dyn Progress,
    ) -> Result<Generation> {
        opts.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::input("generate", "the prompt has no tokens"));
        }
        let tok = self.tokenizer();
        let mut eos: Vec<u32> = self.config().eos_token_ids.clone();
        eos.extend(tok.and_then(|t| t.eos_id()));
        let mut rng = Rng::new(opts.seed);
        let mut cache = self.new_cache();
        let mut history = prompt.to_vec();
        let mut out = vec![];
        let mut text = String::new();
        let mut progress = phase(progress, "generate", opts.max_new_tokens as u64);
        progress.check()?;
        let t0 = std::time::Instant::now();
        let mut logits = self.forward(prompt, &mut cache, LogitsMode::Last)?.data;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let mut reason = StopReason::MaxTokens;
        while out.len() < opts.max_new_tokens {
            progress.check()?;
            let next = sample(&mut logits, &history, opts, &mut rng);
            if opts.stop_on_eos && eos.contains(&next) {
                reason = StopReason::Eos;
                break;
            }
            out.push(next);
            history.push(next);
            progress.advance(1);
            let mut piece = String::new();
            if let Some(t) = tok {
                let full = t.decode(&out, true)?;
                if !full.ends_with('\u{FFFD}') && full.len() >= text.len() && full.starts_with(text.as_str()) {
                    piece = full[text.len()..].to_string();
                    text = full;
                }
            }
            let mut stop_at = None;
            for s in opts.stop_strings.iter().filter(|s| !s.is_empty()) {
                if let Some(at) = text.find(s.as_str()) {
                    stop_at = Some(stop_at.map_or(at, |b: usize| b.min(at)));
                }
            }
            if let Some(at) = stop_at {
                let shown = text.len() - piece.len();
                let visible = if at > shown { &text[shown..at] } else { "" };
                on_token(TokenEvent { token: next, text: visible });
                text.truncate(at);
                reason = StopReason::StopString;
                break;
            }
            if !on_token(TokenEvent { token: next, text: &piece }) {
                reason = StopReason::Callback;
                break;
            }
            if out.len() >= opts.max_new_tokens {
                break;
            }
            if cache.len() >= self.config().max_position_embeddings {
                reason = StopReason::ContextFull;
                break;
            }
            logits = self.forward(&[next], &mut cache, LogitsMode::Last)?.data;
        }
        if let (Some(t), StopReason::MaxTokens | StopReason::Eos | StopReason::Callback | StopReason::ContextFull) =
            (tok, reason)
        {
            text = t.decode(&out, true)?;
        }
        Ok(Generation {
            tokens: out,
            text,
            stop_reason: reason,
            prompt_tokens: prompt.len(),
            prefill_seconds,
            decode_seconds: t1.elapsed().as_secs_f64(),
        })
    }

    /// Generates from a text prompt (encoded without special tokens unless the tokenizer config
    /// asks for a BOS), streaming to `on_token`.
    pub fn generate(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
        progress: &mut dyn Progress,
    ) -> Result<Generation> {
        let tok = self.tokenizer().ok_or(ModelError::NoTokenizer { op: "generate" })?;
        let ids = tok.encode(prompt, true)?;
        self.generate_tokens(&ids, opts, on_token, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<f64> = (0..10000).map(|_| a.next_f64()).collect();
        assert!(xs.iter().zip((0..10000).map(|_| b.next_f64())).all(|(x, y)| *x == y));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02);
    }

    #[test]
    fn sampling_rules() {
        let mut rng = Rng::new(1);
        let logits = vec![0.0, 5.0, 4.9, -1.0];
        let greedy = GenerateOptions::default();
        assert_eq!(sample(&mut logits.clone(), &[], &greedy, &mut rng), 1);
        // The penalty on token 1 makes token 2 the greedy choice.
        let pen = GenerateOptions { repetition_penalty: 1.5, ..GenerateOptions::default() };
        assert_eq!(sample(&mut logits.clone(), &[1], &pen, &mut rng), 2);
        // top_k = 2 never yields tokens 0 or 3.
        let topk = GenerateOptions { temperature: 5.0, top_k: 2, ..GenerateOptions::default() };
        for _ in 0..200 {
            let t = sample(&mut logits.clone(), &[], &topk, &mut rng);
            assert!(t == 1 || t == 2);
        }
        // A tiny top_p keeps only the best token.
        let topp = GenerateOptions { temperature: 1.0, top_p: 0.01, ..GenerateOptions::default() };
        for _ in 0..50 {
            assert_eq!(sample(&mut logits.clone(), &[], &topp, &mut rng), 1);
        }
    }
}
