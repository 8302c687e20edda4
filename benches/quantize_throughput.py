"""Quantize / dequantize throughput of lowbit against the `gguf` package's numpy quantizers.

GB/s counts the f32 input (quantize) or the f32 output (dequantize): 4 bytes per weight.
Run: `make bench` (or `.venv/bin/python benches/quantize_throughput.py [--repeat N]`).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from typing import Callable

import numpy as np

import lowbit

SHAPES = [(4096, 4096), (4096, 11008)]


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (page faults, thread pool start)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(w: np.ndarray, repeat: int) -> list[tuple[str, str, int, float]]:
    """(op, implementation, bits, seconds) for every case on one matrix."""
    from gguf import GGMLQuantizationType, quants

    q4_0, q8_0 = GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0
    lowbit_int4 = functools.partial(lowbit.quantize, w, bits=4, group_size=128)
    lowbit_int8 = functools.partial(lowbit.quantize, w, bits=8, group_size="channel", symmetric=True)
    g4, g8 = quants.quantize(w, q4_0), quants.quantize(w, q8_0)
    cases = [
        ("quantize", "lowbit int4 g128 asym", 4, lowbit_int4),
        ("quantize", "lowbit int8 per-channel sym", 8, lowbit_int8),
        ("quantize", "gguf Q4_0 (numpy)", 4, functools.partial(quants.quantize, w, q4_0)),
        ("quantize", "gguf Q8_0 (numpy)", 8, functools.partial(quants.quantize, w, q8_0)),
        ("dequantize", "lowbit int4 g128 asym", 4, lowbit_int4().dequantize),
        ("dequantize", "lowbit int8 per-channel sym", 8, lowbit_int8().dequantize),
        ("dequantize", "gguf Q4_0 (numpy)", 4, functools.partial(quants.dequantize, g4, q4_0)),
        ("dequantize", "gguf Q8_0 (numpy)", 8, functools.partial(quants.dequantize, g8, q8_0)),
    ]
    return [(op, name, bits, best_seconds(fn, repeat)) for op, name, bits, fn in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, lowbit {lowbit.__version__}"
    )
    print("| op | shape | implementation | GB/s (f32) | speed vs gguf at the same bits |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        w = (np.random.default_rng(0).standard_normal(shape) * 0.02).astype(np.float32)
        results = measure(w, args.repeat)
        peer = {(op, bits): s for op, name, bits, s in results if name.startswith("gguf")}
        for op, name, bits, seconds in results:
            ratio = peer[(op, bits)] / seconds
            print(
                f"| {op} | {shape[0]}x{shape[1]} | {name} | {w.nbytes / 1e9 / seconds:.2f} | {ratio:.1f}x |"
            )


if __name__ == "__main__":
    main()
