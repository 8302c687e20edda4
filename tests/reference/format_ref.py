#!/usr/bin/env python3
"""Independent numpy reader of lowbit tensor files, written from docs/format.md.

It parses the safetensors container itself (json and numpy only, no safetensors package) and
shares no code with the Rust crates, so it checks the writer and the spec, not lowbit's reader.

Usage: format_ref.py FILE prints, as JSON, every quantized tensor of FILE with its metadata and
stored fields: ``codes`` (unpacked, row-major), ``scales`` and ``zeros`` (int formats), and for
codebooks ``absmax`` (decoded) plus, with double quantization, ``absmax_q``, ``dq_scales`` and
``dq_offset``. Every number is exact: f16 scales widen to f32 and print as Python floats.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:
    from reference import rtn_ref
except ImportError:  # run as a script: tests/reference is sys.path[0]
    import rtn_ref  # type: ignore[no-redef]

DTYPES = {"U8": "<u1", "I8": "<i1", "F16": "<f2", "F32": "<f4"}


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the ``__metadata__`` of a safetensors file."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    arrays = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[base + a : base + b], dtype=np.dtype(DTYPES[info["dtype"]]))
        arrays[name] = arr.reshape(info["shape"])
    return arrays, meta


def read(path: str | Path) -> dict[str, dict[str, Any]]:
    """Every quantized tensor of a lowbit file: ``meta`` plus its stored fields as numpy arrays."""
    arrays, meta = read_safetensors(path)
    assert meta.get("lowbit.format_version") == "1", meta.get("lowbit.format_version")
    out: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if not key.startswith("lowbit.") or key == "lowbit.format_version":
            continue
        name = key[len("lowbit.") :]
        m = json.loads(value)
        n = int(np.prod(m["shape"]))
        fields: dict[str, Any] = {"meta": m, "codes": rtn_ref.unpack(arrays[f"{name}.qweight"], m["bits"], n)}
        if m["format"] == "int":
            fields["scales"] = arrays[f"{name}.scales"].astype(np.float32).reshape(-1)
            zeros = arrays.get(f"{name}.zeros")
            fields["zeros"] = None if zeros is None else zeros.reshape(-1)
        elif m["double_quant"]:
            q = arrays[f"{name}.absmax_q"].astype(np.int8)
            s2 = arrays[f"{name}.scales"].astype(np.float32)
            offset = np.float32(m["dq_offset"])
            fields.update(absmax_q=q, dq_scales=s2, dq_offset=offset)
            per_block = np.repeat(s2, 256)[: len(q)]
            fields["absmax"] = (q.astype(np.float32) * per_block + offset).astype(np.float32)
        else:
            fields["absmax"] = arrays[f"{name}.scales"].astype(np.float32)
        out[name] = fields
    return out


def dequantize(fields: dict[str, Any]) -> np.ndarray:
    """The f32 weights of one tensor returned by :func:`read`."""
    m = fields["meta"]
    shape, codes = m["shape"], fields["codes"]
    if m["format"] == "int":
        scale = fields["scales"]
        zeros = fields["zeros"]
        zero = (
            np.full(len(scale), 2 ** (m["bits"] - 1), np.float32)
            if zeros is None
            else zeros.astype(np.float32)
        )
        group = {"tensor": "tensor", "channel": "channel"}.get(m["granularity"], m.get("group_size"))
        return rtn_ref.dequantize(codes.reshape(shape), scale, zero, group)
    table = rtn_ref.NF4 if m["format"] == "nf4" else rtn_ref.FP4
    absmax = np.repeat(fields["absmax"], m["block_size"])[: len(codes)]
    return (table[codes] * absmax).reshape(shape).astype(np.float32)


def main() -> None:
    def plain(v: Any) -> Any:
        return v.tolist() if isinstance(v, (np.ndarray, np.generic)) else v

    tensors = read(sys.argv[1])
    print(json.dumps({name: {k: plain(v) for k, v in f.items()} for name, f in tensors.items()}))


if __name__ == "__main__":
    main()
