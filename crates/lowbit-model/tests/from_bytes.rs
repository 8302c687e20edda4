//! `Model::from_bytes`: a single-file lowbit model (a packed directory) and a GGUF in memory load
//! as the same model as from disk; what is not a model is refused with a clear error.

mod common;

use common::{temp_dir, tiny_config, write_tiny_model, Store};
use lowbit_core::progress::NoProgress;
use lowbit_core::{rtn, Bits, IntScheme};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::bytes::{pack_dir, runtime_bytes_estimate};
use lowbit_model::{LoadOptions, LogitsMode, Model};

fn logits(model: &Model) -> Vec<f32> {
    let mut cache = model.new_cache();
    model.forward(&[3, 17, 5, 60, 0, 9], &mut cache, LogitsMode::All).unwrap().data
}

fn load(bytes: Vec<u8>) -> lowbit_model::Result<Model> {
    Model::from_bytes(bytes, &LoadOptions::default(), &mut NoProgress)
}

#[test]
fn a_packed_quantized_directory_loads_as_the_directory() {
    let dir = temp_dir("bytes-src");
    write_tiny_model(&dir, &tiny_config("LlamaForCausalLM", true), 5, Store::F32);
    let mut model = Model::load(&dir).unwrap();
    for l in model.layers_mut() {
        for (_, a) in l.linears_mut() {
            let (rows, cols) = (a.rows(), a.cols());
            let WeightKind::F32(w) = a.weight() else { panic!("f32 expected") };
            let q = rtn::quantize(w, &[rows, cols], IntScheme::group(Bits::B4, 16)).unwrap();
            *a = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
        }
    }
    let out = temp_dir("bytes-out").join("ckpt");
    model.save(&out).unwrap();
    let from_dir = Model::load(&out).unwrap();
    let packed = pack_dir(&out).unwrap();
    assert!(runtime_bytes_estimate(&packed).unwrap() >= packed.len() as u64);
    let from_bytes = load(packed.clone()).unwrap();
    assert_eq!(from_bytes.config(), from_dir.config());
    assert_eq!(logits(&from_bytes), logits(&from_dir));
    for l in from_bytes.layers() {
        for (name, lin) in l.linears() {
            assert!(matches!(lin.weight(), WeightKind::Quant(_)), "{name} was not loaded packed");
        }
    }
}

#[test]
fn corrupt_and_foreign_bytes_are_refused_clearly() {
    let dir = temp_dir("bytes-bad");
    write_tiny_model(&dir, &tiny_config("LlamaForCausalLM", true), 6, Store::F16);
    let packed = pack_dir(&dir).unwrap();
    let e = load(packed[..packed.len() / 2].to_vec()).unwrap_err().to_string();
    assert!(e.contains("corrupt or truncated lowbit pack") && e.contains("beyond the end"), "{e}");
    let mut flipped = packed.clone();
    flipped[20] ^= 0x55; // inside the JSON index
    let e = load(flipped).unwrap_err().to_string();
    assert!(e.contains("corrupt or truncated lowbit pack"), "{e}");
    let e = load(b"<html>not a model</html>".to_vec()).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file or a single-file lowbit model"), "{e}");
    let plain = std::fs::read(dir.join("model.safetensors")).unwrap();
    let e = load(plain).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file or a single-file lowbit model"), "{e}");
    let e = load(b"GGUF\x03\x00\x00\x00".to_vec()).unwrap_err().to_string();
    assert!(e.contains("GGUF"), "{e}");
}
