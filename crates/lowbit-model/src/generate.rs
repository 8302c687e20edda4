//! Text generation: greedy and sampled decoding with a KV cache, stop conditions and streaming.

use crate::model::{KvCache, LogitsMode, Model};
use crate::{ModelError, Result};
use lowbit_core::backend::Backend;
use lowbit_core::par;
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
///
/// Without `top_k`/`top_p` the probabilities are summed in vocabulary order (no sort: a sort of
/// the vocabulary per token would cost more than a decode step of a small model); with them in
/// descending order of probability, ties by token id.
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
    let filtered = opts.top_k > 0 || opts.top_p < 1.0;
    if filtered {
        let order = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
        // The k best in order: a selection, then a sort of those k only.
        if opts.top_k > 0 && opts.top_k < idx.len() {
            idx.select_nth_unstable_by(opts.top_k - 1, order);
            idx.truncate(opts.top_k);
        }
        idx.sort_unstable_by(order);
    }
    let max = if filtered { logits[idx[0]] } else { logits[argmax() as usize] } as f64;
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

/// One sequence of [`Model::generate_batch`]: its prompt and the seed of its own sampler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPrompt {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Seed of this sequence's sampler (`GenerateOptions::seed` is not used in a batch).
    pub seed: u64,
}

/// A sequence of a batch while it decodes.
struct Decoding<B: Backend> {
    rng: Rng,
    history: Vec<u32>,
    prompt_len: usize,
    logits: Vec<f32>,
    cache: KvCache<B>,
    stop: Option<StopReason>,
}

impl<B: Backend> Decoding<B> {
    /// Samples the next token from the current logits and decides whether the sequence goes on,
    /// in the order [`Model::generate_tokens`] does.
    fn step(&mut self, opts: &GenerateOptions, eos: &[u32], context: usize) {
        if self.stop.is_some() {
            return;
        }
        let next = sample(&mut self.logits, &self.history, opts, &mut self.rng);
        if opts.stop_on_eos && eos.contains(&next) {
            self.stop = Some(StopReason::Eos);
            return;
        }
        self.history.push(next);
        if self.history.len() - self.prompt_len >= opts.max_new_tokens {
            self.stop = Some(StopReason::MaxTokens);
        } else if self.cache.len() >= context {
            self.stop = Some(StopReason::ContextFull);
        }
    }
}

impl<B: Backend> Model<B> {
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
        let eos = self.eos_ids();
        let mut rng = Rng::new(opts.seed);
        let mut cache = self.new_cache();
        let mut history = prompt.to_vec();
        let mut out = vec![];
        let mut text = String::new();
        let mut progress = phase(progress, "generate", opts.max_new_tokens as u64);
        progress.check()?;
        let t0 = crate::clock::Instant::now();
        let mut logits = self.forward(prompt, &mut cache, LogitsMode::Last)?.data;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = crate::clock::Instant::now();
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

    /// Generates from several prompts at once: every decode step runs the next token of all
    /// unfinished sequences as one batch ([`Model::forward_batch`]: the weight products see one
    /// row per sequence, so each weight is read once per step for all of them; attention stays
    /// within each sequence's own KV cache). Each sequence samples with its own generator seeded
    /// by [`BatchPrompt::seed`], so its tokens are those [`Model::generate_tokens`] gives it alone
    /// with that seed (up to the float rounding of a batched product).
    ///
    /// Stops each sequence as `generate_tokens` does (`max_new_tokens`, end of sequence, context
    /// full); stop strings are not supported here. Opens no phase: `progress` is advanced by the
    /// tokens each step adds, and polled for cancellation once per step.
    pub fn generate_batch(
        &self,
        prompts: &[BatchPrompt],
        opts: &GenerateOptions,
        progress: &mut dyn Progress,
    ) -> Result<Vec<Generation>> {
        opts.validate()?;
        if !opts.stop_strings.is_empty() {
            return Err(ModelError::input("generate_batch", "stop strings are not supported in a batch"));
        }
        if let Some(i) = prompts.iter().position(|p| p.prompt.is_empty()) {
            return Err(ModelError::input("generate_batch", format!("prompt {i} has no tokens")));
        }
        let (eos, context) = (self.eos_ids(), self.config().max_position_embeddings);
        let mut seqs: Vec<Decoding<B>> = prompts
            .iter()
            .map(|p| Decoding {
                rng: Rng::new(p.seed),
                history: p.prompt.clone(),
                prompt_len: p.prompt.len(),
                logits: vec![],
                cache: self.new_cache(),
                stop: (opts.max_new_tokens == 0).then_some(StopReason::MaxTokens),
            })
            .collect();
        progress.check()?;
        let t0 = crate::clock::Instant::now();
        // The prompts as one batch (prefill), then one token of every live sequence per step.
        let feed = |seqs: &mut [Decoding<B>], prefill: bool| -> Result<()> {
            let mut live: Vec<&mut Decoding<B>> = seqs.iter_mut().filter(|s| prefill || s.stop.is_none()).collect();
            if live.is_empty() {
                return Ok(());
            }
            let mut batch: Vec<(&[u32], &mut KvCache<B>)> = live
                .iter_mut()
                .map(|s| {
                    let Decoding { history, cache, .. } = &mut **s;
                    let from = if prefill { 0 } else { history.len() - 1 };
                    (&history[from..], cache)
                })
                .collect();
            let logits = self.forward_batch(&mut batch, LogitsMode::Last)?;
            for (s, l) in live.into_iter().zip(logits) {
                s.logits = l.data;
            }
            Ok(())
        };
        feed(&mut seqs, true)?;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = crate::clock::Instant::now();
        while seqs.iter().any(|s| s.stop.is_none()) {
            progress.check()?;
            // Sampling sorts or sums over the vocabulary per sequence: side by side.
            let before: usize = seqs.iter().map(|s| s.history.len()).sum();
            let split = par::ENABLED && seqs.len() > 1;
            par::for_each_chunk(&mut seqs, 1, split, |_, s| s[0].step(opts, &eos, context));
            progress.advance((seqs.iter().map(|s| s.history.len()).sum::<usize>() - before) as u64);
            feed(&mut seqs, false)?;
        }
        let decode_seconds = t1.elapsed().as_secs_f64();
        let tok = self.tokenizer();
        seqs.into_iter()
            .map(|s| {
                let tokens = s.history[s.prompt_len..].to_vec();
                let text = match tok {
                    Some(t) => t.decode(&tokens, true)?,
                    None => String::new(),
                };
                Ok(Generation {
                    tokens,
                    text,
                    stop_reason: s.stop.unwrap_or(StopReason::MaxTokens),
                    prompt_tokens: s.prompt_len,
                    prefill_seconds,
                    decode_seconds,
                })
            })
            .collect()
    }

    /// The ids that end a sequence: the config's and the tokenizer's.
    fn eos_ids(&self) -> Vec<u32> {
        let mut eos: Vec<u32> = self.config().eos_token_ids.clone();
        eos.extend(self.tokenizer().and_then(|t| t.eos_id()));
        eos
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
        // Unfiltered sampling follows the softmax: logits (0, ln 3) give token 1 three times in four.
        let plain = GenerateOptions { temperature: 1.0, ..GenerateOptions::default() };
        let ones = (0..4000).filter(|_| sample(&mut [0.0, 3f32.ln()], &[], &plain, &mut rng) == 1).count();
        assert!((2850..3150).contains(&ones), "{ones}");
        // top_k selects the k best with ties broken by token id, as a full sort would.
        let ties = [1.0, 2.0, 2.0, 2.0, 0.5];
        let top2 = GenerateOptions { temperature: 1.0, top_k: 2, ..GenerateOptions::default() };
        for _ in 0..100 {
            let t = sample(&mut ties.clone(), &[], &top2, &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
        // A tiny top_p keeps only the best token.
        let topp = GenerateOptions { temperature: 1.0, top_p: 0.01, ..GenerateOptions::default() };
        for _ in 0..50 {
            assert_eq!(sample(&mut logits.clone(), &[], &topp, &mut rng), 1);
        }
    }
}
