//! Perplexity under the project protocol (`shared/PROTOCOL.md`): consecutive windows of the
//! token stream, each scored from an empty context without BOS.

use crate::model::Model;
use crate::ops;
use crate::{ModelError, Result};
use lowbit_core::backend::Backend;
use lowbit_core::par;
use lowbit_core::progress::{phase, Progress};

/// Rows of logits alive at once while scoring a window (`LOGIT_ROWS x vocab` floats: 25 MB
/// for a 49,152-token vocabulary, instead of 400 MB for a whole 2048-token window).
const LOGIT_ROWS: usize = 128;

/// Window length of the protocol.
pub const PROTOCOL_WINDOW: usize = 2048;
/// Windows scored by default.
pub const PROTOCOL_WINDOWS: usize = 32;

/// Reads a text file the way Python's `open(path).read()` does (universal newlines: `\r\n`
/// and lone `\r` become `\n`). The protocol's token count (304,978 for WikiText-2 test) is for
/// text read this way; the shared `test.txt` has CRLF line endings.
pub fn read_text_file(path: &std::path::Path) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    Ok(normalize_newlines(&raw))
}

/// `\r\n` and lone `\r` to `\n`, as Python's text mode reads files.
pub fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Which windows to score.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Tokens per window.
    pub window: usize,
    /// Score at most this many windows (`None` = every full window).
    pub max_windows: Option<usize>,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        PerplexityOptions { window: PROTOCOL_WINDOW, max_windows: Some(PROTOCOL_WINDOWS) }
    }
}

/// Outcome of [`Model::perplexity`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityResult {
    /// `exp(nll / tokens)`.
    pub ppl: f64,
    /// Total negative log-likelihood (nats).
    pub nll: f64,
    /// Predictions scored (`windows * (window - 1)`).
    pub tokens: usize,
    /// Windows scored.
    pub windows: usize,
    /// Wall time.
    pub seconds: f64,
    /// Negative log-likelihood of each window.
    pub window_nll: Vec<f64>,
}

impl<B: Backend> Model<B> {
    /// Perplexity of `ids` in windows `ids[i*w..(i+1)*w]`: the NLL of the `w - 1` next-token
    /// predictions of each window, summed; `ppl = exp(total / (windows * (w - 1)))`.
    ///
    /// Reports phase `perplexity` (one unit per window, metric `ppl` so far) and is cancellable
    /// once per layer.
    pub fn perplexity(
        &self,
        ids: &[u32],
        opts: &PerplexityOptions,
        progress: &mut dyn Progress,
    ) -> Result<PerplexityResult> {
        let w = opts.window;
        if w < 2 {
            return Err(ModelError::input("perplexity", format!("window must be at least 2 tokens, got {w}")));
        }
        let available = ids.len() / w;
        let windows = opts.max_windows.map_or(available, |m| m.min(available));
        if windows == 0 {
            return Err(ModelError::input("perplexity", format!("{} tokens do not fill one window of {w}", ids.len())));
        }
        let start = crate::clock::Instant::now();
        let mut progress = phase(progress, "perplexity", windows as u64);
        let mut total = 0f64;
        let mut window_nll = Vec::with_capacity(windows);
        for i in 0..windows {
            let chunk = &ids[i * w..(i + 1) * w];
            let nll = self.window_nll(chunk, &mut *progress)?;
            total += nll;
            window_nll.push(nll);
            progress.metric("ppl", (total / ((i + 1) * (w - 1)) as f64).exp());
            progress.advance(1);
        }
        let tokens = windows * (w - 1);
        Ok(PerplexityResult {
            ppl: (total / tokens as f64).exp(),
            nll: total,
            tokens,
            windows,
            seconds: start.elapsed().as_secs_f64(),
            window_nll,
        })
    }

    /// NLL of the `len - 1` next-token predictions of `chunk` from an empty context: the LM
    /// head runs [`LOGIT_ROWS`] rows at a time and each row is reduced as soon as it exists.
    fn window_nll(&self, chunk: &[u32], progress: &mut dyn Progress) -> Result<f64> {
        let (h, vocab) = (self.config().hidden_size, self.config().vocab_size);
        let mut cache = self.new_cache();
        let hidden = self.hidden_states(chunk, &mut cache, progress)?;
        let scored = chunk.len() - 1;
        let mut logits = vec![0f32; LOGIT_ROWS.min(scored) * vocab];
        let mut row_nll = vec![0f32; 0];
        let mut total = 0f64;
        for r0 in (0..scored).step_by(LOGIT_ROWS) {
            let rows = LOGIT_ROWS.min(scored - r0);
            let out = &mut logits[..rows * vocab];
            self.lm_head_rows(&hidden[r0 * h..(r0 + rows) * h], rows, out)?;
            let out: &[f32] = out;
            // One f64 per row would do, but `par` splits f32 buffers: carry each row's NLL as
            // the f32 pair (hi, lo) of its f64 value so nothing is lost.
            row_nll.clear();
            row_nll.resize(rows * 2, 0.0);
            par::for_each_chunk(&mut row_nll, 2, true, |i, o| {
                let v = ops::nll(&out[i * vocab..(i + 1) * vocab], chunk[r0 + i + 1] as usize);
                let hi = v as f32;
                o[0] = hi;
                o[1] = (v - hi as f64) as f32;
            });
            total += row_nll.chunks_exact(2).map(|p| p[0] as f64 + p[1] as f64).sum::<f64>();
        }
        Ok(total)
    }
}
