//! `Model::to_backend` and `Model::forward_last_on_device` on the CPU backend: a model copied
//! to another backend computes the same logits, and the device-side last-token logits are the
//! last row of `forward`'s (what lowbit-cuda's greedy decoding relies on).

mod common;

use common::*;
use lowbit_cpu::Cpu;
use lowbit_model::{Device, LogitsMode, Model};

#[test]
fn a_model_on_another_backend_computes_the_same_logits() {
    for arch in ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"] {
        let dir = temp_dir("to-backend");
        write_tiny_model(&dir, &tiny_config(arch, true), 7, Store::F16);
        let model = Model::load(&dir).unwrap();
        let copy = model.to_backend(Cpu::unsplit(), Device::Cpu).unwrap();
        let tokens = [3u32, 17, 42, 5, 60, 9, 1];
        let want = model.forward(&tokens, &mut model.new_cache(), LogitsMode::All).unwrap();
        let got = copy.forward(&tokens, &mut copy.new_cache(), LogitsMode::All).unwrap();
        assert_eq!(got, want, "{arch}");
        assert_eq!(copy.layers().len(), model.layers().len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_last_logits_stay_on_the_backend_and_match_forward() {
    let dir = temp_dir("last-on-device");
    write_tiny_model(&dir, &tiny_config("LlamaForCausalLM", false), 11, Store::F32);
    let model = Model::load(&dir).unwrap();
    let (prompt, next) = ([3u32, 17, 42, 5], 60u32);
    let mut cache = model.new_cache();
    let want = model.forward(&prompt, &mut cache, LogitsMode::Last).unwrap();
    let want_next = model.forward(&[next], &mut cache, LogitsMode::Last).unwrap();
    let mut cache = model.new_cache();
    let got = model.forward_last_on_device(&prompt, &mut cache).unwrap();
    assert_eq!(got, want.data);
    let got_next = model.forward_last_on_device(&[next], &mut cache).unwrap();
    assert_eq!(got_next, want_next.data);
    assert_eq!(cache.len(), prompt.len() + 1);
    let _ = std::fs::remove_dir_all(&dir);
}
