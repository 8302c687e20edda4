//! A testing and inspection hook into `lowbit-train`: one Llama block's forward and backward
//! pass, so that tests can hold the Rust gradients against an independent reference. Not a
//! public API (`lowbit` does not re-export it).

use crate::arrays::{f32_input, F32Input};
use crate::errors::{LowbitError, PyLowbitError, ShapeError};
use lowbit_train::block::{backward, forward, BlockConfig, BlockWeights};
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

const CONFIG_KEYS: [&str; 7] = ["hidden", "ffn", "heads", "kv_heads", "head_dim", "rope_theta", "eps"];
/// The parameters, in [`BlockWeights`]' field order.
const WEIGHT_NAMES: [&str; 9] = ["attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down"];

fn block_config(d: &Bound<'_, PyDict>) -> PyResult<BlockConfig> {
    for key in d.keys() {
        let key: String = key.extract()?;
        if !CONFIG_KEYS.contains(&key.as_str()) {
            return Err(LowbitError::new_err(format!("config: unknown key {key:?}; expected {CONFIG_KEYS:?}")));
        }
    }
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?.ok_or_else(|| LowbitError::new_err(format!("config: missing key {key:?}")))
    };
    let size = |key: &str| -> PyResult<usize> {
        let v: usize = get(key)?.extract()?;
        if v == 0 {
            return Err(ShapeError::new_err(format!("config: {key} must be positive")));
        }
        Ok(v)
    };
    let c = BlockConfig {
        hidden: size("hidden")?,
        ffn: size("ffn")?,
        heads: size("heads")?,
        kv_heads: size("kv_heads")?,
        head_dim: size("head_dim")?,
        rope_theta: get("rope_theta")?.extract()?,
        eps: get("eps")?.extract()?,
    };
    // The kernels assume both; checked here so that bad input raises instead of panicking.
    if c.heads % c.kv_heads != 0 {
        return Err(ShapeError::new_err(format!(
            "config: heads ({}) must be a multiple of kv_heads ({})",
            c.heads, c.kv_heads
        )));
    }
    if c.head_dim % 2 != 0 {
        return Err(ShapeError::new_err(format!("config: head_dim ({}) must be even (rotate-half RoPE)", c.head_dim)));
    }
    Ok(c)
}

/// The `[rows, cols]` (or `[len]`) shape each parameter must have.
fn weight_shape(c: &BlockConfig, name: &str) -> Vec<usize> {
    let (h, f, qd, kvd) = (c.hidden, c.ffn, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    match name {
        "attn_norm" | "mlp_norm" => vec![h],
        "q" => vec![qd, h],
        "k" | "v" => vec![kvd, h],
        "o" => vec![h, qd],
        "gate" | "up" => vec![f, h],
        "down" => vec![h, f],
        _ => unreachable!("only WEIGHT_NAMES are asked for"),
    }
}

fn check_shape(what: &str, a: &F32Input<'_>, expected: &[usize]) -> PyResult<()> {
    if a.shape == expected {
        Ok(())
    } else {
        Err(ShapeError::new_err(format!("{what}: expected shape {expected:?}, got {:?}", a.shape)))
    }
}

/// block_gradients(config, weights, x, dy) -> (y, dx, grads)
///
/// Testing and inspection hook (not a public API): one Llama block (lowbit_train::block)
/// run forward on x[tokens, hidden] (positions 0..tokens) and backward from dy[tokens, hidden]
/// with the f32 weights as given (no quantization). config: {"hidden", "ffn", "heads",
/// "kv_heads", "head_dim", "rope_theta", "eps"}; weights: float32 arrays named attn_norm,
/// mlp_norm [hidden] and q, k, v, o, gate, up, down [out, in]. Returns the block's output y,
/// dx and the parameter gradients, named and shaped as the weights.
#[pyfunction]
#[pyo3(name = "block_gradients")]
fn block_gradients_py<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyDict>,
    weights: &Bound<'py, PyDict>,
    x: &Bound<'py, PyAny>,
    dy: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyDict>)> {
    let c = block_config(config)?;
    for key in weights.keys() {
        let key: String = key.extract()?;
        if !WEIGHT_NAMES.contains(&key.as_str()) {
            return Err(LowbitError::new_err(format!("weights: unknown name {key:?}; expected {WEIGHT_NAMES:?}")));
        }
    }
    let mut inputs = Vec::with_capacity(WEIGHT_NAMES.len());
    for name in WEIGHT_NAMES {
        let obj = weights.get_item(name)?.ok_or_else(|| LowbitError::new_err(format!("weights: missing {name:?}")))?;
        let a = f32_input(&obj)?;
        check_shape(name, &a, &weight_shape(&c, name))?;
        inputs.push(a);
    }
    let (xi, dyi) = (f32_input(x)?, f32_input(dy)?);
    let tokens = xi.shape[0];
    // No tokens would leave the RoPE tables empty; the block has nothing to compute either.
    if tokens == 0 {
        return Err(ShapeError::new_err("x: expected at least one token"));
    }
    check_shape("x", &xi, &[tokens, c.hidden])?;
    check_shape("dy", &dyi, &[tokens, c.hidden])?;
    let data: Vec<&[f32]> = inputs.iter().map(F32Input::data).collect();
    let (xd, dyd) = (xi.data(), dyi.data());
    let (y, dx, g) = py
        .detach(|| {
            let w = BlockWeights {
                attn_norm: data[0].to_vec(),
                q: data[1].to_vec(),
                k: data[2].to_vec(),
                v: data[3].to_vec(),
                o: data[4].to_vec(),
                mlp_norm: data[5].to_vec(),
                gate: data[6].to_vec(),
                up: data[7].to_vec(),
                down: data[8].to_vec(),
            };
            let (y, tape) = forward(&c, &w, xd)?;
            let (dx, g) = backward(&c, &w, &tape, dyd)?;
            Ok::<_, lowbit_train::TrainError>((y, dx, g))
        })
        .map_err(PyLowbitError::from)?;
    let BlockWeights { attn_norm, q, k, v, o, mlp_norm, gate, up, down } = g;
    let grads = PyDict::new(py);
    for (name, grad) in WEIGHT_NAMES.into_iter().zip([attn_norm, q, k, v, o, mlp_norm, gate, up, down]) {
        grads.set_item(name, grad.into_pyarray(py).reshape(weight_shape(&c, name))?)?;
    }
    let shape = [tokens, c.hidden];
    Ok((y.into_pyarray(py).reshape(shape)?.into_any(), dx.into_pyarray(py).reshape(shape)?.into_any(), grads))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(block_gradients_py, m)?)?;
    Ok(())
}
