//! Tokenizer (the `tokenizers` crate) and chat template (minijinja, Hugging Face conventions).

use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn special_token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

fn template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        // A list of named templates: take "default".
        Value::Array(a) => a.iter().find_map(|t| {
            (t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .then(|| t.get("template").and_then(|x| x.as_str()).map(str::to_string))
                .flatten()
        }),
        _ => None,
    }
}

impl Tokenizer {
    /// Builds from a `tokenizer.json` value and an optional `tokenizer_config.json` value.
    pub fn from_json_values(tokenizer_json: &Value, config: Option<&Value>) -> Result<Self> {
        let json = serde_json::to_string(tokenizer_json).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Self::from_json_str(&json, config)
    }

    /// Builds from the text of a `tokenizer.json` and an optional `tokenizer_config.json` value.
    pub fn from_json_str(json: &str, config: Option<&Value>) -> Result<Self> {
        // tokenizers 0.23 panics (an `expect` in its decoder deserializer) on any JSON error
        // inside `"decoder"`: a syntax error, or a number beyond f64 (which a syntax-only check
        // lets through). Parse the whole text as JSON values first.
        let value: Value = serde_json::from_str(json).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        check_bpe_merges(&value)?;
        let inner: tokenizers::Tokenizer =
            json.parse().map_err(|e: tokenizers::Error| ModelError::Tokenizer(e.to_string()))?;
        let (bos_token, eos_token, add_bos, chat_template) = match config {
            Some(c) => (
                special_token(c.get("bos_token")),
                special_token(c.get("eos_token")),
                c.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false),
                template_of(c.get("chat_template")),
            ),
            None => (None, None, false, None),
        };
        Ok(Tokenizer { inner, json: json.to_string(), bos_token, eos_token, add_bos, chat_template })
    }

    /// Loads `tokenizer.json` (required), `tokenizer_config.json` and `chat_template.jinja`
    /// (optional) from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile { path: path.display().to_string(), what: "the tokenizer".into() });
        }
        let json = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config: Option<Value> = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            )
        } else {
            None
        };
        let mut tok = Self::from_json_str(&json, config.as_ref())?;
        let jinja = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && jinja.is_file() {
            tok.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
        }
        Ok(tok)
    }

    /// The `tokenizer.json` text.
    pub fn to_json_string(&self) -> &str {
        &self.json
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text. With `add_special_tokens`, a BOS is prepended when the tokenizer config asks
    /// for one (`add_bos_token`) and the tokenizer's own post-processor runs.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(bos) = self.bos_id() {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The BOS token text.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }
    /// The EOS token text.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
    /// The BOS id, if the config names a BOS token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
    /// The EOS id, if the config names an EOS token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
    /// The chat template source, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// Replaces the chat template.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// Renders the chat template like Hugging Face's `apply_chat_template(tokenize=False)`: the
    /// template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and can call
    /// `raise_exception(msg)`; Python string methods (`strip`, `startswith`, ...) work.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::ChatTemplate("the tokenizer has no chat template".into()))?;
        render_chat_template(source, messages, add_generation_prompt, self.bos_token(), self.eos_token())
    }
}

/// Renders a Hugging Face chat template (see [`Tokenizer::apply_chat_template`]).
pub fn render_chat_template(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    let err = |e: minijinja::Error| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        ModelError::ChatTemplate(msg)
    };
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    let syntax =
        minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(err)?;
    env.set_syntax(syntax);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", source).map_err(err)?;
    let tmpl = env.get_template("chat").map_err(err)?;
    tmpl.render(minijinja::context! {
        messages => messages
            .iter()
            .map(|m| minijinja::Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
            .collect::<Vec<_>>(),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
    .map_err(err)
}

/// tokenizers 0.23 cuts every BPE merge's second token after the model's
/// `continuing_subword_prefix` without checking that it starts with it: a panic when the token is
/// shorter, and invalid UTF-8 behind an `unsafe` when the cut falls inside a character. Such a
/// file is refused here.
fn check_bpe_merges(tokenizer: &Value) -> Result<()> {
    let model = &tokenizer["model"];
    let Some(prefix) = model.get("continuing_subword_prefix").and_then(Value::as_str) else {
        return Ok(());
    };
    if model.get("type").and_then(Value::as_str).is_some_and(|t| t != "BPE") {
        return Ok(());
    }
    for merge in model.get("merges").and_then(Value::as_array).into_iter().flatten() {
        let second = match merge {
            Value::String(s) => s.split_once(' ').map(|(_, b)| b),
            Value::Array(pair) => pair.get(1).and_then(Value::as_str),
            _ => None,
        };
        if second.is_some_and(|b| !b.starts_with(prefix)) {
            return Err(ModelError::Tokenizer(format!(
                "BPE merge {merge} does not continue with the continuing_subword_prefix {prefix:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_renders_and_raises() {
        let t = "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\
                 <|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let out =
            render_chat_template(t, &[ChatMessage::new("user", " hi ")], true, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(out, "<|user|>hi</s><|assistant|>");
        let e = render_chat_template(t, &[ChatMessage::new("bad", "x")], false, None, None).unwrap_err();
        assert!(e.to_string().contains("no bad roles"), "{e}");
    }
}
