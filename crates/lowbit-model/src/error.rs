//! The single error type of lowbit-model.

use thiserror::Error;

/// Result type of lowbit-model.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a model. The library never panics on
/// user input: bad files, shapes and options all come back as one of these.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file the model needs is not there.
    #[error("missing file {path}: {what}")]
    MissingFile {
        /// Where it was looked for.
        path: String,
        /// What it is for.
        what: String,
    },
    /// An architecture lowbit does not run.
    #[error(
        "unsupported architecture {name:?}: lowbit runs LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM"
    )]
    UnsupportedArchitecture {
        /// The architecture named by the file.
        name: String,
    },
    /// A config value that is missing, of the wrong type or inconsistent.
    #[error("bad config {field}: {reason}")]
    Config {
        /// The config key.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("missing tensor {name}")]
    MissingTensor {
        /// Hugging Face name of the tensor.
        name: String,
    },
    /// A tensor whose shape disagrees with the config.
    #[error("tensor {name} has shape {got:?}, expected {expected:?} from the config")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// A tensor stored in a dtype the runtime does not read.
    #[error("tensor {name} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// Tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A safetensors file that does not parse.
    #[error("corrupt or truncated safetensors file {path}: {reason}")]
    Safetensors {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A GGUF file that does not parse or holds inconsistent data.
    #[error("corrupt or truncated GGUF file {path}: {reason}")]
    Gguf {
        /// The file.
        path: String,
        /// What is wrong, with the byte offset where it applies.
        reason: String,
    },
    /// A GGUF feature lowbit does not read (a tensor type, a tokenizer model, ...).
    #[error("unsupported GGUF content in {path}: {what}")]
    GgufUnsupported {
        /// The file.
        path: String,
        /// What is unsupported.
        what: String,
    },
    /// An HF quantized checkpoint (GPTQ, AWQ, compressed-tensors) whose tensors disagree with
    /// each other or with its config.
    #[error("{format} checkpoint {path}: {tensor}: {reason}")]
    QuantCheckpoint {
        /// The format (`GPTQ`, `AWQ`, `compressed-tensors`).
        format: &'static str,
        /// The file (or directory, for config-level findings).
        path: String,
        /// The tensor (or config key).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Something an HF quantized format's export or import does not handle (a bit width, a
    /// scheme, a shape).
    #[error("unsupported for {format}: {what}")]
    QuantUnsupported {
        /// The format (`GPTQ`, `AWQ`, `compressed-tensors`).
        format: &'static str,
        /// What, and what to do instead.
        what: String,
    },
    /// A conversion that would change weights, refused (nothing written) because requantizing
    /// was not allowed.
    #[error("converting to {format} is lossy for {count} tensors: {first}; nothing was written (--allow-requantize, or allow_requantize=True, converts anyway)")]
    Lossy {
        /// The output format.
        format: String,
        /// How many tensors would change.
        count: usize,
        /// The first few, each with its route and difference.
        first: String,
    },
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The model has no tokenizer but the operation needs one.
    #[error("{op} needs a tokenizer, and this model was loaded without one")]
    NoTokenizer {
        /// The operation.
        op: &'static str,
    },
    /// The chat template failed to compile or render (including `raise_exception` in it).
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    /// Bad input to a model call: token ids, lengths, options.
    #[error("{op}: {reason}")]
    Input {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The device requested is not available in this build.
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: String,
        /// Why.
        reason: String,
    },
    /// The caller's progress sink asked to stop (Ctrl-C).
    #[error(transparent)]
    Cancelled(#[from] lowbit_core::Cancelled),
    /// An error from lowbit-core (quantized tensors, lowbit files).
    #[error(transparent)]
    Core(#[from] lowbit_core::CoreError),
    /// An error from a lowbit-cpu kernel.
    #[error(transparent)]
    Cpu(#[from] lowbit_cpu::CpuError),
    /// An error from another backend (see `lowbit_core::backend`).
    #[error("backend error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl ModelError {
    /// A backend's error: the CPU's keeps its own variant.
    pub(crate) fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        match boxed.downcast::<lowbit_cpu::CpuError>() {
            Ok(cpu) => ModelError::Cpu(*cpu),
            Err(other) => ModelError::Backend(other),
        }
    }
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.as_ref().display().to_string(), source }
    }
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Config { field: field.into(), reason: reason.into() }
    }
    pub(crate) fn input(op: &'static str, reason: impl Into<String>) -> Self {
        ModelError::Input { op, reason: reason.into() }
    }
}
