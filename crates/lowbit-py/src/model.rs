//! `Model`: load, generate (streaming), perplexity, tokenizer and chat template.

use crate::errors::PyLowbitResult;
use crate::progress::PySink;
use lowbit_core::progress::phase;
use lowbit_model::{
    BatchPrompt, ChatMessage, GenerateOptions, Generation, LoadOptions, LogitsMode, Model, PerplexityOptions,
    TokenEvent,
};
use numpy::{IntoPyArray, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// The sampling options of `generate` and `generate_batch`: one dict with every key, which
/// `lowbit.Model`'s methods (python/lowbit/model.py, where the defaults live) build.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Sampling {
    max_new_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    seed: u64,
    stop_on_eos: bool,
}

impl Sampling {
    fn options(self, stop_strings: Vec<String>) -> GenerateOptions {
        let Sampling { max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop_on_eos } = self;
        GenerateOptions {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            stop_on_eos,
            stop_strings,
        }
    }
}

/// A loaded Llama-family model.
#[pyclass(name = "Model", module = "lowbit", frozen)]
pub(crate) struct PyModel {
    inner: Model,
}

fn lowbit<T, E: Into<crate::errors::PyLowbitError>>(r: Result<T, E>) -> PyResult<T> {
    let r: PyLowbitResult<T> = r.map_err(Into::into);
    Ok(r?)
}

/// Loads a Hugging Face directory, a lowbit checkpoint or a `.gguf` file, reporting phase `load`
/// to `progress` (a `lowbit.progress` renderer); Ctrl-C stops it.
#[pyfunction]
#[pyo3(signature = (path, progress=None))]
fn load_model(py: Python<'_>, path: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<PyModel> {
    let mut sink = PySink::new(progress.as_ref());
    let r = py.detach(|| Model::load_with_progress(&path, &LoadOptions::default(), &mut sink));
    Ok(PyModel { inner: sink.result(r)? })
}

/// Converts a GGUF file into a Hugging Face-style directory.
#[pyfunction]
fn import_gguf(py: Python<'_>, file: PathBuf, out_dir: PathBuf) -> PyResult<()> {
    lowbit(py.detach(|| lowbit_model::import_gguf(&file, &out_dir)))
}

/// Calls a Python callback from inside `detach` (taking the GIL for the call); `false` when it
/// returned `False` or raised (the error is kept for the caller to re-raise).
fn call_progress<A: for<'py> pyo3::call::PyCallArgs<'py>>(callback: &Option<Py<PyAny>>, args: A) -> bool {
    let Some(cb) = callback else { return true };
    Python::attach(|py| match cb.call1(py, args) {
        Ok(ret) => !matches!(ret.extract::<bool>(py), Ok(false)),
        Err(e) => {
            e.restore(py);
            false
        }
    })
}

/// A generation as the dict `lowbit.Generation` is built from.
fn generation_dict(py: Python<'_>, g: Generation) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("text", g.text)?;
    out.set_item("tokens", g.tokens)?;
    out.set_item("stop_reason", format!("{:?}", g.stop_reason).to_lowercase())?;
    out.set_item("prompt_tokens", g.prompt_tokens)?;
    out.set_item("prefill_seconds", g.prefill_seconds)?;
    out.set_item("decode_seconds", g.decode_seconds)?;
    Ok(out)
}

#[pymethods]
impl PyModel {
    /// The Hugging Face `config.json` of the model, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.inner.config().to_hf_json().to_string();
        py.import("json")?.call_method1("loads", (json,))
    }
    /// Bytes of weights (as stored: quantized layers count their packed size).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }
    /// Number of transformer blocks.
    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.layers().len()
    }
    /// What loading found worth a warning (GGUF types dequantized to f32, GPTQ zero-point
    /// findings), one line each; `lowbit.Model.load` raises them as `warnings.warn`.
    #[getter]
    fn load_warnings(&self) -> Vec<String> {
        self.inner.load_warnings().to_vec()
    }
    /// LLM.int8(): per block linear running the mixed-precision decomposition, `(name, batches,
    /// outlier_columns, columns)` counted since loading or `reset_outlier_counts`.
    fn outlier_counts(&self) -> Vec<(String, u64, u64, u64)> {
        self.inner.outlier_counts().into_iter().map(|(n, c)| (n, c.batches, c.outlier_columns, c.columns)).collect()
    }
    /// Sets the outlier counts back to zero.
    fn reset_outlier_counts(&self) {
        self.inner.reset_outlier_counts();
    }
    /// Whether a tokenizer was loaded with the model.
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer().is_some()
    }
    /// The chat template, if the checkpoint has one.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.tokenizer().and_then(|t| t.chat_template().map(str::to_string))
    }

    /// Token ids of `text`.
    #[pyo3(signature = (text, add_special_tokens=false))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let tok = lowbit(self.inner.tokenizer().ok_or(lowbit_model::ModelError::NoTokenizer { op: "encode" }))?;
        lowbit(py.detach(|| tok.encode(text, add_special_tokens)))
    }

    /// Text of token ids.
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        let tok = lowbit(self.inner.tokenizer().ok_or(lowbit_model::ModelError::NoTokenizer { op: "decode" }))?;
        lowbit(tok.decode(&ids, skip_special_tokens))
    }

    /// Renders `messages` (dicts with `role` and `content`) with the chat template.
    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn apply_chat_template(&self, messages: Vec<Bound<'_, PyDict>>, add_generation_prompt: bool) -> PyResult<String> {
        let tok = lowbit(self.inner.tokenizer().ok_or(lowbit_model::ModelError::NoTokenizer { op: "chat" }))?;
        let messages = messages
            .iter()
            .map(|m| {
                let get = |k: &str| -> PyResult<String> {
                    m.get_item(k)?
                        .ok_or_else(|| crate::errors::ShapeError::new_err(format!("chat message without {k:?}")))?
                        .extract()
                };
                Ok(ChatMessage::new(get("role")?, get("content")?))
            })
            .collect::<PyResult<Vec<_>>>()?;
        lowbit(tok.apply_chat_template(&messages, add_generation_prompt))
    }

    /// Generates from `prompt` (text, or a list of token ids). `on_token(token_id, text)` is
    /// called for each new token (with the GIL); returning False stops generation. `progress`
    /// (a `lowbit.progress` renderer) sees phase `generate`; Ctrl-C stops it.
    #[pyo3(signature = (prompt, sampling, *, stop=Vec::new(), on_token=None, progress=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        sampling: Sampling,
        stop: Vec<String>,
        on_token: Option<Py<PyAny>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let opts = sampling.options(stop);
        let text_prompt: Option<String> = prompt.extract().ok();
        let id_prompt: Option<Vec<u32>> = if text_prompt.is_none() { Some(prompt.extract()?) } else { None };
        let mut callback = |ev: TokenEvent<'_>| call_progress(&on_token, (ev.token, ev.text.to_string()));
        let mut sink = PySink::new(progress.as_ref());
        let result = py.detach(|| match (&text_prompt, &id_prompt) {
            (Some(text), _) => self.inner.generate(text, &opts, &mut callback, &mut sink),
            (None, Some(ids)) => self.inner.generate_tokens(ids, &opts, &mut callback, &mut sink),
            (None, None) => unreachable!("one of the two extracted"),
        });
        if let Some(err) = PyErr::take(py) {
            return Err(err);
        }
        generation_dict(py, sink.result(result)?)
    }

    /// Generates from several prompts (texts, or lists of token ids) decoded together: each step
    /// computes the next token of every unfinished sequence as one batch. Sequence `i` samples
    /// with its own generator seeded by `seeds[i]` (default `seed + i`), so it gets the tokens
    /// `generate` gives it alone with that seed. `progress` sees phase `generate`, one unit per
    /// new token of any sequence; Ctrl-C stops it.
    #[pyo3(signature = (prompts, sampling, *, seeds=None, progress=None))]
    fn generate_batch<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Bound<'py, PyAny>>,
        sampling: Sampling,
        seeds: Option<Vec<u64>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let opts = sampling.options(vec![]);
        let seeds = seeds.unwrap_or_else(|| (0..prompts.len() as u64).map(|i| opts.seed.wrapping_add(i)).collect());
        if seeds.len() != prompts.len() {
            return Err(crate::errors::ShapeError::new_err(format!(
                "{} prompts but {} seeds",
                prompts.len(),
                seeds.len()
            )));
        }
        let mut batch = Vec::with_capacity(prompts.len());
        for (p, seed) in prompts.iter().zip(seeds) {
            let prompt = match p.extract::<String>() {
                Ok(text) => {
                    let tok =
                        lowbit(self.inner.tokenizer().ok_or(lowbit_model::ModelError::NoTokenizer { op: "generate" }))?;
                    lowbit(tok.encode(&text, true))?
                }
                Err(_) => p.extract::<Vec<u32>>()?,
            };
            batch.push(BatchPrompt { prompt, seed });
        }
        let mut sink = PySink::new(progress.as_ref());
        let result = py.detach(|| {
            let mut p = phase(&mut sink, "generate", (batch.len() * opts.max_new_tokens) as u64);
            self.inner.generate_batch(&batch, &opts, &mut *p)
        });
        sink.result(result)?.into_iter().map(|g| generation_dict(py, g)).collect()
    }

    /// Perplexity of token ids under the evaluation protocol (windows scored independently).
    /// `progress` (a `lowbit.progress` renderer) sees phase `perplexity`, one unit per window and
    /// metric `ppl`; Ctrl-C stops it within a layer.
    #[pyo3(signature = (ids, *, window=2048, max_windows=Some(32), progress=None))]
    fn perplexity_ids<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        window: usize,
        max_windows: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let opts = PerplexityOptions { window, max_windows };
        let mut sink = PySink::new(progress.as_ref());
        let result = py.detach(|| self.inner.perplexity(&ids, &opts, &mut sink));
        let r = sink.result(result)?;
        let out = PyDict::new(py);
        out.set_item("perplexity", r.ppl)?;
        out.set_item("nll", r.nll)?;
        out.set_item("tokens", r.tokens)?;
        out.set_item("windows", r.windows)?;
        out.set_item("window", window)?;
        out.set_item("seconds", r.seconds)?;
        out.set_item("window_nll", r.window_nll)?;
        Ok(out)
    }

    /// Logits of every position of `ids`, `[len(ids), vocab]` f32, from one prefill on an empty
    /// cache (what other runtimes' logits are compared with).
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let logits = lowbit(py.detach(|| self.inner.forward(&ids, &mut self.inner.new_cache(), LogitsMode::All)))?;
        logits.data.into_pyarray(py).reshape([logits.rows, logits.vocab])
    }

    /// Writes the model as a Hugging Face-style directory (quantized layers as lowbit tensors).
    fn save(&self, py: Python<'_>, out_dir: PathBuf) -> PyResult<()> {
        lowbit(py.detach(|| self.inner.save(&out_dir)))
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Model({}, {} layers, hidden {}, {:.1} MiB of weights)",
            c.arch.hf_name(),
            c.num_hidden_layers,
            c.hidden_size,
            self.inner.weight_bytes() as f64 / (1 << 20) as f64
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(import_gguf, m)?)?;
    Ok(())
}
