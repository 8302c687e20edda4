"""Writes run.sh's markdown summary from its step statuses and JSON figures (argv[1] = $OUT)."""

import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(out):
    lines = ["# lowbit CUDA check", "", "| step | exit | seconds |", "|---|---|---|"]
    try:
        with open(os.path.join(out, "steps.tsv")) as f:
            for row in f:
                name, rc, secs = row.rstrip("\n").split("\t")
                lines.append(f"| {name} | {'ok' if rc == '0' else 'FAILED ' + rc} | {secs} |")
    except OSError:
        lines.append("| (no step record) | | |")
    bench, torch, model = (load(os.path.join(out, n)) for n in ("bench.json", "torch.json", "model.json"))
    if bench:
        copy = bench["copy_gb_per_s"]
        lines += ["", f"Device: {bench['device']}; copy bandwidth {copy:.0f} GB/s (read + write)", ""]
        lines += [
            "| K x N | W4 best us | variant | W4 GB/s | % of copy (target 80) | torch fp16 us "
            "| speedup (target 3.5) |",
            "|---|---|---|---|---|---|---|",
        ]
        tmap = {(r["k"], r["n"]): r for r in (torch or {}).get("rows", [])}
        shapes = sorted({(r["k"], r["n"]) for r in bench["rows"]}, key=lambda s: s[0] * s[1])
        for k, n in shapes:
            w4 = [r for r in bench["rows"] if r["k"] == k and r["n"] == n and "variant" in r]
            if not w4:
                continue
            best = min(w4, key=lambda r: r["seconds"])
            t = tmap.get((k, n))
            tus = f"{t['seconds'] * 1e6:.1f}" if t else "-"
            sp = f"{t['seconds'] / best['seconds']:.2f}x" if t else "-"
            lines.append(
                f"| {k} x {n} | {best['seconds'] * 1e6:.1f} | {best['variant']} | {best['gb_per_s']:.0f} "
                f"| {best['pct_of_copy']:.1f} | {tus} | {sp} |"
            )
        if torch:
            lines.append(f"\ntorch copy bandwidth: {torch['copy_gb_per_s']:.0f} GB/s")
    else:
        lines.append("\nno GEMV figures (see log.txt)")
    if model:
        lines += [
            "",
            "| SmolLM2 W4 check | GPU | CPU | verdict |",
            "|---|---|---|---|",
            f"| greedy 16 tokens | {model['greedy_tokens']} | "
            f"| {'equal' if model['greedy_equal_cpu'] else 'DIFFER'} |",
            f"| perplexity 4 x 2048 | {model['ppl']:.6f} | {model['ppl_cpu']:.6f} "
            f"| rel {model['ppl_rel_diff']:.2e} |",
            f"| greedy, argmax on device | {model.get('device_argmax_tokens')} | "
            f"| {'equal' if model.get('device_argmax_greedy_equal_cpu') else 'DIFFER'} |",
            f"| decode tok/s (logits downloaded) | {model['decode_tokens_per_s']:.1f} "
            f"| {model['decode_tokens_per_s_cpu']:.1f} | |",
            f"| decode tok/s (argmax on device) "
            f"| {model.get('device_argmax_decode_tokens_per_s', 0):.1f} | | |",
            f"| logits at CPU top-5 | max abs diff {model['logit_max_abs_diff_top5']:.2e} "
            f"| min top-1 margin {model['cpu_min_top1_margin']:.2e} | |",
            f"| perplexity seconds | {model['ppl_seconds']:.2f} | | |",
        ]
    else:
        lines.append("\nno model figures (see log.txt)")
    mma = load(os.path.join(out, "model_mma.json"))
    if mma:
        lines.append(
            f"\nWith LOWBIT_CUDA_TENSOR_CORES=1 (f16 prefill): ppl {mma['ppl']:.6f}, "
            f"rel {mma['ppl_rel_diff']:.2e}; greedy {'equal' if mma['greedy_equal_cpu'] else 'DIFFER'}; "
            f"perplexity {mma['ppl_seconds']:.2f} s"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
