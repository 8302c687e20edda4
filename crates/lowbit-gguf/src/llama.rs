//! The llama layout in GGUF: tensor names and llama.cpp's q/k row permutation.

/// The GGUF name of a Hugging Face tensor name, for the llama layout
/// (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`).
pub fn gguf_name(hf: &str) -> Option<String> {
    let direct = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let part = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// llama.cpp's `permute(w, n_head)` on the rows of attn_q/attn_k (`convert_hf_to_gguf.py`):
/// row `h*d + 2i + j` of the result (view `[n_head, d/2, 2]`) is Hugging Face row
/// `h*d + j*d/2 + i` (view `[n_head, 2, d/2]`), which turns HF's rotate-half RoPE into ggml's
/// interleaved one. `w` holds whole rows of `cols` elements.
pub fn permute_rows<T: Copy>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    move_rows(w, n_head, cols, false)
}

/// The inverse of [`permute_rows`].
pub fn unpermute_rows<T: Copy>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    move_rows(w, n_head, cols, true)
}

fn move_rows<T: Copy>(w: &[T], n_head: usize, cols: usize, inverse: bool) -> Vec<T> {
    let rows = w.len() / cols.max(1);
    let d = rows / n_head.max(1);
    let mut out = w.to_vec();
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (hf, gg) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // permute as in convert_hf_to_gguf: reshape(n_head, 2, d/2, cols).swapaxes(1, 2)
        let (n_head, d, cols) = (3, 8, 2);
        let hf: Vec<u32> = (0..(n_head * d * cols) as u32).collect();
        let mut permuted = hf.clone();
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + j * (d / 2) + i;
                    let dst = h * d + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(permute_rows(&hf, n_head, cols), permuted);
        assert_eq!(unpermute_rows(&permuted, n_head, cols), hf);
    }

    #[test]
    fn names() {
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_name("model.norm.weight").as_deref(), Some("output_norm.weight"));
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight"), None);
    }
}
