//! Imports a GGUF file into a Hugging Face-style directory.
//!
//! ```text
//! cargo run --release -p lowbit-model --example import -- FILE.gguf OUT_DIR
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, out] = args.as_slice() else { return Err("usage: import FILE.gguf OUT_DIR".into()) };
    lowbit_model::import_gguf(file, out)?;
    Ok(())
}
