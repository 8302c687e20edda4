"""The ``lowbit`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import quantize

# (label, keyword arguments of lowbit.quantize)
DEMO_SCHEMES: list[tuple[str, dict[str, object]]] = [
    ("int8 per-channel sym", {"bits": 8, "group_size": "channel", "symmetric": True}),
    ("int8 g128 asym", {"bits": 8, "group_size": 128}),
    ("int4 per-channel asym", {"bits": 4, "group_size": "channel"}),
    ("int4 g128 asym", {"bits": 4, "group_size": 128}),
    ("int4 g128 sym", {"bits": 4, "group_size": 128, "symmetric": True}),
    ("int4 g128 asym mse-clip", {"bits": 4, "group_size": 128, "clip": "mse"}),
    ("int4 g32 asym", {"bits": 4, "group_size": 32}),
    ("int3 g128 asym", {"bits": 3, "group_size": 128}),
    ("int3 g128 asym mse-clip", {"bits": 3, "group_size": 128, "clip": "mse"}),
    ("int2 g64 asym", {"bits": 2, "group_size": 64}),
    ("nf4 b64", {"format": "nf4", "bits": 4}),
    ("nf4 b64 double-quant", {"format": "nf4", "bits": 4, "double_quant": True}),
    ("fp4 b64", {"format": "fp4", "bits": 4}),
]


def demo_weight(rows: int = 1536, cols: int = 576, seed: int = 0) -> np.ndarray:
    """A synthetic weight matrix with the heavy tails of real LLM weights (Student-t, 4 dof).

    The default is SmolLM2-135M's MLP shape, 576 wide: group 128 gives a shorter last group.
    """
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, size=(rows, cols)) * 0.02).astype(np.float32)


def scheme_table(weights: np.ndarray) -> list[dict[str, float | str]]:
    """Quantize ``weights`` with every demo scheme; size and error of each."""
    rows = []
    energy = float(np.mean(weights.astype(np.float64) ** 2))
    for label, kwargs in DEMO_SCHEMES:
        start = time.perf_counter()
        q = quantize(weights, allow_partial_group=True, **kwargs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        err = q.dequantize().astype(np.float64) - weights
        mse = float(np.mean(err**2))
        rows.append(
            {
                "scheme": label,
                "bits/weight": q.bits_per_weight,
                "KiB": q.nbytes / 1024,
                "ratio vs f32": weights.nbytes / q.nbytes,
                "rel. MSE": mse / energy,
                "SQNR dB": 10 * np.log10(energy / mse) if mse > 0 else float("inf"),
                "ms": seconds * 1e3,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, float | str]]) -> str:
    """A plain-text table."""
    headers = list(rows[0])
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join([line, "-" * len(line), *body])


def cmd_demo(args: argparse.Namespace) -> int:
    weights = demo_weight(args.rows, args.cols, args.seed)
    size = f"{args.rows}x{args.cols} float32 weight matrix ({weights.nbytes / 1024:.0f} KiB)"
    print(f"lowbit demo: quantizing a {size}\n")
    print(format_table(scheme_table(weights)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description="Make large language models small and fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantize a weight matrix with every scheme and print size and error")
    demo.add_argument("--rows", type=int, default=1536)
    demo.add_argument("--cols", type=int, default=576)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
