//! Hugging Face GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum / vLLM): export of a lowbit
//! quantized model ([`export_gptq`]) and loading of GPTQ directories through [`crate::Model::load`]
//! (v1 and v2 zero points, checked against the stored values). The layout is in [`layout`]'s
//! doc comment and `docs/format.md`.

mod export;
pub(crate) mod import;
mod layout;

pub use export::{export_gptq, GptqExport, GptqTensorExport};
