"""LLM.int8()'s outlier columns per block linear, as a Markdown table.

    python benches/llm_int8_outliers.py EVAL.json          # the report of `lowbit eval --outliers --json`
    python benches/llm_int8_outliers.py MODEL --text FILE  # or evaluate here (protocol windows)

Each cell is the fraction of (batch x input column) pairs the decomposition ran in f32: the
columns holding any |x| >= threshold in the batch (one batch = one 2048-token window of the
perplexity protocol), summed over batches, over batches x columns.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

# Layers sharing an input see the same outlier columns: one column each.
GROUPS = {"q/k/v": "q_proj", "o": "o_proj", "gate/up": "gate_proj", "down": "down_proj"}
LINEARS = list(GROUPS.values())


def counts_from(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    if args.source.endswith(".json"):
        with open(args.source) as f:
            report = json.load(f)
        if "outliers" not in report:
            raise SystemExit(f"{args.source}: no 'outliers' (run `lowbit eval --outliers --json`)")
        return report["outliers"], f"perplexity {report['perplexity']:.4f}"
    import lowbit

    if args.text is None:
        raise SystemExit("give --text FILE to evaluate a model")
    model = lowbit.Model.load(args.source)
    result = model.perplexity(path=args.text, windows=args.windows)
    return model.outlier_counts(), f"perplexity {result.perplexity:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a `lowbit eval --outliers --json` report, or an LLM.int8() model")
    p.add_argument("--text", help="evaluation text (with a model)")
    p.add_argument("--windows", type=int, default=32)
    args = p.parse_args()
    counts, summary = counts_from(args)
    if not counts:
        raise SystemExit("no layer runs the decomposition (not an LLM.int8() model with a finite threshold)")
    table: dict[int, dict[str, float]] = {}
    totals: dict[str, list[int]] = {name: [0, 0] for name in LINEARS}
    for c in counts:
        m = re.fullmatch(r"model\.layers\.(\d+)\.\w+\.(\w+)", c["name"])
        if m is None:
            continue
        block, linear = int(m.group(1)), m.group(2)
        if linear not in LINEARS:
            continue
        table.setdefault(block, {})[linear] = 100.0 * c["fraction"]
        totals[linear][0] += c["outlier_columns"]
        totals[linear][1] += c["batches"] * c["columns"]
    batches = counts[0]["batches"]
    print(f"{summary}; {batches} batches per layer; % of input columns in f32 per batch\n")
    print("| block | " + " | ".join(GROUPS) + " |")
    print("|---:|" + "---:|" * len(GROUPS))
    for block in sorted(table):
        print(f"| {block} | " + " | ".join(f"{table[block].get(n, 0.0):.2f}" for n in LINEARS) + " |")
    mean = [100.0 * o / n if n else 0.0 for o, n in totals.values()]
    print("| all | " + " | ".join(f"**{v:.2f}**" for v in mean) + " |")


if __name__ == "__main__":
    main()
