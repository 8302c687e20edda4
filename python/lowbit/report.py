"""``lowbit report``: how much smaller, how much faster, how much worse, for several quantizations
of one model, measured in one run and shown as a table and a perplexity-against-size plot.

Each configuration runs in a child process (so its peak RAM is its own and Ctrl-C stops it
cleanly): quantize, evaluate perplexity on the test text (and optionally on held-out text),
time greedy decoding. Results are cached per configuration under ``OUT/runs`` (keyed by the model
file, the options, the texts and lowbit's version), so a second report with one more method runs
only that one. The FP32 model and, with ``include_llamacpp``, llama.cpp's own quantizations of
it (through ``llama-cpp-python``: ``llama_model_quantize`` from an F32 GGUF that lowbit exports,
scored on lowbit's token ids) are measured the same way.

>>> r = lowbit.report("smollm2", "out", methods=["rtn", "hqq"], bits=[3, 4], text="t.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _lowbit
from ._api import write_text_atomic
from .model import PROTOCOL_WINDOW, Model, PathLike
from .pipeline import check_options, option_specs

#: Methods that produce W8A8 models: bits 8, one scale per output channel, symmetric.
W8A8_METHODS = ("smoothquant", "llm-int8")
#: llama.cpp types measured by ``include_llamacpp`` (its usual ladder, 2 to 8 bits).
LLAMACPP_TYPES = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
#: Tokens of the prompt and of the greedy continuation timed for decode speed.
PROMPT_TOKENS = 16


@dataclass(frozen=True)
class Config:
    """One measured point: ``kind`` "lowbit" (``options`` for :func:`lowbit.quantize_model`),
    "fp32" (the model as loaded, f32) or "llamacpp" (``options["type"]``)."""

    label: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """What :func:`report` measured: one dict per configuration (``results.json``'s rows) and
    the files it wrote."""

    rows: list[dict[str, Any]]
    markdown: Path
    html: Path
    results: Path
    plot: Path | None


def parse_methods(methods: Sequence[str], bits: Sequence[int], group_size: int | str | None) -> list[Config]:
    """Configurations from method items ``name[+key=value...]`` crossed with ``bits`` (an item
    that sets ``bits`` itself is not crossed). W8A8 methods take only bits 8, per channel,
    symmetric, and the NF4/FP4 formats only bits 4; ``group_size`` applies to the others."""
    specs = option_specs()
    out: list[Config] = []
    for item in methods:
        name, *extras = item.split("+")
        options: dict[str, Any] = {"method": name}
        for extra in extras:
            key, sep, value = extra.partition("=")
            if not sep or key not in specs:
                raise ValueError(
                    f"{item!r}: expected method+option=value with a quantize option, got {extra!r}"
                )
            options[key] = _parse_value(specs[key], value)
        widths = [options["bits"]] if "bits" in options else list(bits)
        for b in widths:
            o = {**options, "bits": b}
            if name in W8A8_METHODS:
                if b != 8:
                    continue
                o.update(group_size="channel", sym=True)
            if o.get("format", "int") != "int" and b != 4:
                continue  # the 4-bit codebooks
            elif "group_size" not in o:
                o["group_size"] = group_size
            check_options(o)
            out.append(Config(_label(o), "lowbit", o))
    return out


def _parse_value(spec: dict[str, Any], text: str) -> Any:
    kind = spec["type"]
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{spec['name']}: expected true or false, got {text!r}")
    if kind == "int":
        return text if spec["name"] == "group_size" and text == "channel" else int(text)
    if kind == "float":
        return float(text)
    return text


def _label(options: dict[str, Any]) -> str:
    g = options.get("group_size")
    group = "" if g in (None, "channel") else f"-g{g}"
    extra = "".join(
        f"-{k}" if v is True else f"-{k}={v}"
        for k, v in sorted(options.items())
        if k not in ("method", "bits", "group_size", "sym", "format") and v is not False
    )
    fmt = options.get("format", "int")
    width = fmt if fmt != "int" else f"w{options['bits']}"
    return f"{options['method']}-{width}{group}{extra}"


def _resolved_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the default of every other option that applies to its method (the table
    gives the defaults of the method's own settings)."""
    from .pipeline import solver_method

    method = solver_method(options)
    return {
        name: options.get(name, spec["default"])
        for name, spec in option_specs().items()
        if not spec["methods"] or method in spec["methods"] or name in options
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_identity(model: Path) -> str:
    files = [model] if model.is_file() else sorted(p for p in model.rglob("*") if p.is_file())
    return json.dumps([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a Llama-architecture model from its config (the size FP32 would take)."""
    h, v, ffn, layers = (
        config[k] for k in ("hidden_size", "vocab_size", "intermediate_size", "num_hidden_layers")
    )
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    block = attention + 3 * h * ffn + 2 * h
    head = 0 if config.get("tie_word_embeddings") else v * h
    return int(v * h + layers * block + h + head)


def _save_ids(runs: Path, name: str, ids: list[int]) -> str:
    """``ids`` as ``runs/NAME-<sha>.npy`` (named by content, so the cache key follows the text)."""
    arr = np.asarray(ids, dtype=np.int64)
    path = runs / f"{name}-{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}.npy"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    return str(path)


def _read_ids(model: Model, path: Path) -> list[int]:
    """Token ids of a text file (the model's tokenizer, tokenized whole) or of a ``.npy``."""
    if path.suffix == ".npy":
        return [int(t) for t in np.load(path).reshape(-1)]
    return model.encode(path.read_text(encoding="utf-8"))


def heldout_windows(ids: list[int], window: int, calib: dict[str, Any] | None) -> list[int]:
    """The ``window``-token windows of ``ids`` that no calibration window touches, concatenated.
    ``calib`` = ``{"nsamples", "seqlen", "seed"}`` when ``ids`` is the calibration text (the
    windows :func:`lowbit.calibration_windows` takes start at ``default_rng(seed).integers(0,
    len(ids) - seqlen, nsamples)``); ``None`` keeps every window."""
    used = np.zeros(len(ids) + 1, dtype=np.int64)
    if calib is not None and len(ids) > calib["seqlen"]:
        starts = np.random.default_rng(calib["seed"]).integers(
            0, len(ids) - calib["seqlen"], calib["nsamples"]
        )
        np.add.at(used, starts, 1)
        np.add.at(used, starts + calib["seqlen"], -1)
    touched = np.cumsum(used)[: len(ids)] > 0
    out: list[int] = []
    for w in range(len(ids) // window):
        if not touched[w * window : (w + 1) * window].any():
            out.extend(ids[w * window : (w + 1) * window])
    return out


# ---------------------------------------------------------------------------------------------
# The child: one configuration, measured in its own process.


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    cfg = Config(**job["config"])
    model_path = Path(job["model"])
    work = Path(job["work"])
    start = time.perf_counter()
    row: dict[str, Any] = {"label": cfg.label, "kind": cfg.kind, "options": cfg.options}
    num_params = job["num_params"]
    model: Model | None
    if cfg.kind == "fp32":
        model = Model.load(model_path)
        row.update(size_bytes=4 * num_params, bpw_linears=32.0, bpw_all=32.0, quantize_seconds=0.0)
    elif cfg.kind == "lowbit":
        from .pipeline import quantize_model

        out = work / "model"
        # quantization-aware refinement calibrates whatever the method
        needs_calib = (
            _lowbit.method_calibrated(cfg.options["method"])
            or cfg.options.get("qat_epochs")
            or cfg.options.get("qat_distill_epochs")
        )
        calib = job["calib"] if needs_calib else None
        q = quantize_model(model_path, out, calib=calib, **cfg.options)
        model = Model.load(out)
        row.update(
            size_bytes=q.out_bytes,
            bpw_linears=q.bits_per_weight,
            bpw_all=q.bits_per_weight_all,
            quantize_seconds=q.wall_seconds,
        )
    else:
        row.update(_llamacpp_quantize(job, cfg.options["type"], work))
        row["bpw_all"] = row["size_bytes"] * 8 / num_params
        model = None
    window = job["window"]

    def scorer(ids: list[int]) -> float:
        if model is None:
            return _llamacpp_perplexity(row["gguf"], ids, window)
        return model.perplexity(ids=ids, window=window, windows=None).perplexity

    test_ids = [int(t) for t in np.load(job["test_ids"])]
    row["perplexity"] = scorer(test_ids)
    row["heldout_perplexity"] = None
    if job["heldout_ids"]:
        held = [int(t) for t in np.load(job["heldout_ids"])]
        row["heldout_perplexity"] = scorer(held) if held else None
    prompt = test_ids[:PROMPT_TOKENS]
    if model is None:
        row["decode_tok_s"] = _llamacpp_decode(row["gguf"], prompt, job["decode_tokens"])
    else:
        gen = model.generate(prompt, max_new_tokens=job["decode_tokens"], stop_on_eos=False)
        row["decode_tok_s"] = gen.decode_tokens_per_second
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row["seconds"] = time.perf_counter() - start
    row.pop("gguf", None)  # in the child's work directory, gone with it
    return row


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise _lowbit.UnsupportedError(
            f"include_llamacpp needs llama-cpp-python ({e}): `make loaders` builds it into .venv"
        ) from e
    return llama_cpp


def _llamacpp_quantize(job: dict[str, Any], ty: str, work: Path) -> dict[str, Any]:
    import ctypes

    module = _llama_cpp()
    ftype = getattr(module, f"LLAMA_FTYPE_MOSTLY_{ty}", None)
    if ftype is None:
        raise _lowbit.UnsupportedError(f"llama.cpp has no type {ty!r} (LLAMA_FTYPE_MOSTLY_{ty})")
    dst = work / f"model.{ty}.gguf"
    params = module.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    start = time.perf_counter()
    rc = module.llama_model_quantize(job["f32_gguf"].encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise _lowbit.LowbitError(f"llama_model_quantize({ty}) returned {rc}")
    return {
        "size_bytes": dst.stat().st_size,
        "bpw_linears": None,
        "quantize_seconds": time.perf_counter() - start,
        "gguf": str(dst),
    }


def _llamacpp_model(path: str, window: int, logits_all: bool) -> Any:
    module = _llama_cpp()
    return module.Llama(
        model_path=path, n_ctx=window, n_batch=512, n_threads=2, logits_all=logits_all, verbose=False
    )


def _llamacpp_perplexity(path: str, ids: list[int], window: int) -> float:
    """llama.cpp's perplexity of consecutive ``window``-token windows, each from an empty cache,
    scored like lowbit's (every position after the first)."""
    model = _llamacpp_model(path, window, logits_all=True)
    nll, count = 0.0, 0
    for w in range(len(ids) // window):
        chunk = ids[w * window : (w + 1) * window]
        model.reset()
        model.eval(chunk)
        logits = np.asarray(model.scores[: window - 1], dtype=np.float32)
        top = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
        targets = np.asarray(chunk[1:])
        nll -= float((logits[np.arange(window - 1), targets].astype(np.float64) - lse).sum())
        count += window - 1
    return math.exp(nll / count)


def _llamacpp_decode(path: str, prompt: list[int], n: int) -> float:
    model = _llamacpp_model(path, PROTOCOL_WINDOW, logits_all=False)
    model.reset()
    model.eval(prompt)
    token = int(np.argmax(model.scores[model.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(n - 1):
        model.eval([token])
        token = int(np.argmax(model.scores[model.n_tokens - 1]))
    return (n - 1) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# The parent: configurations, cache, table, plot.


def report(
    model: PathLike,
    out: PathLike,
    *,
    methods: Sequence[str] = ("rtn", "gptq", "awq"),
    bits: Sequence[int] = (2, 3, 4, 8),
    group_size: int | str | None = 128,
    text: PathLike,
    heldout: PathLike | None = None,
    calib: PathLike | None = None,
    windows: int | None = None,
    window: int = PROTOCOL_WINDOW,
    include_fp32: bool = True,
    include_llamacpp: bool = False,
    llamacpp_types: Sequence[str] = LLAMACPP_TYPES,
    decode_tokens: int = 64,
    log: Any = print,
) -> Report:
    """Measure every configuration (cached in ``out/runs``) and write ``out/report.md``,
    ``out/report.html``, ``out/results.json`` and ``out/pareto.png`` (with the ``plot`` extra:
    ``pip install 'lowbit[plot]'``).

    ``methods``: items ``name[+option=value...]`` (e.g. ``"gptq+act_order=true"``,
    ``"rtn+format=nf4+double_quant=true+group_size=64"``), each crossed with ``bits``.
    ``text``: the evaluation text (or a ``.npy`` of token ids); ``windows`` of ``window`` tokens
    (all when None). ``heldout``: a second text scored the same way; when it is the calibration
    file, only its windows that no calibration window touches (the default ``nsamples``,
    ``seqlen`` and ``seed``; a method item that changes them may see other windows).
    ``calib``: calibration for the calibrated methods (default ``$LOWBIT_CALIB_TEXT``). Failed
    configurations are reported as such and the others still run; Ctrl-C stops the current child
    and raises.
    """
    model_path = Path(os.fspath(model))
    if str(model_path) == "smollm2":
        from .model import smollm2_gguf

        model_path = smollm2_gguf()
    out_dir = Path(os.fspath(out))
    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    calib_path = calib if calib is not None else os.environ.get("LOWBIT_CALIB_TEXT")
    configs = parse_methods(methods, bits, group_size)
    if include_fp32:
        configs.insert(0, Config("fp32", "fp32"))
    if include_llamacpp:
        import importlib.util

        # found here, imported only by the children (its import leaves /dev/null handles open)
        if importlib.util.find_spec("llama_cpp") is None:
            raise _lowbit.UnsupportedError(
                "include_llamacpp needs llama-cpp-python: `make loaders` builds it into .venv"
            )
        configs += [Config(f"llama.cpp-{t}", "llamacpp", {"type": t}) for t in llamacpp_types]
    text_path = Path(os.fspath(text))
    heldout_path = Path(os.fspath(heldout)) if heldout is not None else None
    heldout_calib = None
    if (
        heldout_path is not None
        and calib_path is not None
        and heldout_path.resolve() == Path(calib_path).resolve()
    ):
        specs = option_specs()
        heldout_calib = {k: specs[k]["default"] for k in ("nsamples", "seqlen", "seed")}
    reference = Model.load(model_path)
    num_params = parameter_count(reference.config)
    # Tokenized once here; the children read the ids.
    test_ids = _read_ids(reference, text_path)
    test_ids = test_ids[: (windows or len(test_ids) // window) * window]
    if not test_ids:
        raise _lowbit.ShapeError(f"{text_path}: fewer than {window} tokens, no window to score")
    ids_files: dict[str, str | None] = {"test_ids": _save_ids(runs, "test", test_ids), "heldout_ids": None}
    if heldout_path is not None:
        held = heldout_windows(_read_ids(reference, heldout_path), window, heldout_calib)
        held = held[: (windows or len(held) // window) * window]
        ids_files["heldout_ids"] = _save_ids(runs, "heldout", held)
    del reference
    common = {
        "model": str(model_path),
        "calib": str(calib_path) if calib_path else None,
        "window": window,
        "decode_tokens": decode_tokens,
        "num_params": num_params,
        **ids_files,
    }
    identity = {
        **common,
        "model": _model_identity(model_path),
        "test_ids": Path(str(ids_files["test_ids"])).stem,
        "heldout_ids": Path(ids_files["heldout_ids"]).stem if ids_files["heldout_ids"] else None,
        "calib": _sha256(Path(calib_path)) if calib_path else None,
        "version": _lowbit.__version__,
    }
    f32_gguf = runs / "fp32.gguf"
    rows: list[dict[str, Any]] = []
    for i, cfg in enumerate(configs, 1):
        # every option the method reads, defaults included, so a changed default is a new key
        resolved = _resolved_options(cfg.options) if cfg.kind == "lowbit" else cfg.options
        config = {**cfg.__dict__, "options": resolved}
        key = hashlib.sha256(json.dumps({**identity, "config": config}, sort_keys=True).encode()).hexdigest()
        cached = runs / f"{cfg.label}.{key[:12]}.json"
        if cached.is_file():
            row = json.loads(cached.read_text())
            row["status"] = "cached"
            log(f"[{i}/{len(configs)}] {cfg.label}: cached")
            rows.append(row)
            continue
        if cfg.kind == "llamacpp" and not f32_gguf.is_file():
            from .export import export

            log(f"[{i}/{len(configs)}] exporting the F32 GGUF llama.cpp quantizes from")
            export(model_path, f32_gguf, dense_type="F32")
        log(f"[{i}/{len(configs)}] {cfg.label}: quantize, evaluate, time decoding ...")
        row = _run_child({**common, "config": cfg.__dict__, "f32_gguf": str(f32_gguf)}, runs)
        if row.get("status") == "ok":
            write_text_atomic(cached, json.dumps(row, indent=2))
            ppl, bpw, speed = row["perplexity"], row["bpw_all"], row["decode_tok_s"]
            log(f"    perplexity {ppl:.4f}, {bpw:.3f} bpw, {speed:.1f} tok/s")
        else:
            log(f"    failed: {row['error']}")
        rows.append(row)
    return _write(out_dir, rows, num_params)


def _run_child(job: dict[str, Any], runs: Path) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(dir=runs, prefix=".work-") as work:
        job = {**job, "work": work}
        spec = Path(work) / "job.json"
        spec.write_text(json.dumps(job))
        proc = subprocess.Popen(
            [sys.executable, "-m", "lowbit.report", str(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            stdout, stderr = proc.communicate()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    label = job["config"]["label"]
    if proc.returncode != 0:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        return {
            "label": label,
            "kind": job["config"]["kind"],
            "status": "failed",
            "error": last[-1] if last else f"exit {proc.returncode}",
        }
    return {**json.loads(stdout.strip().splitlines()[-1]), "status": "ok"}


def pareto(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Labels of the rows no other row beats in both size and perplexity, smallest first."""
    done = sorted(
        (r for r in rows if r.get("perplexity") is not None), key=lambda r: (r["size_bytes"], r["perplexity"])
    )
    front: list[str] = []
    best = math.inf
    for r in done:
        if r["perplexity"] < best:
            front.append(r["label"])
            best = r["perplexity"]
    return front


COLUMNS = (
    ("label", "configuration", "{}"),
    ("bpw_linears", "bpw (block linears)", "{:.3f}"),
    ("bpw_all", "bpw (all)", "{:.3f}"),
    ("size_bytes", "size MiB", "{:.1f}"),
    ("perplexity", "perplexity", "{:.4f}"),
    ("heldout_perplexity", "held-out ppl", "{:.4f}"),
    ("decode_tok_s", "decode tok/s", "{:.1f}"),
    ("quantize_seconds", "quantize s", "{:.1f}"),
    ("peak_rss_bytes", "peak RAM MiB", "{:.0f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key in ("size_bytes", "peak_rss_bytes"):
        v = v / 2**20
    return fmt.format(v)


def _write(out_dir: Path, rows: list[dict[str, Any]], num_params: int) -> Report:
    front = set(pareto(rows))
    ok = [r for r in rows if r.get("status") in ("ok", "cached")]
    failed = [r for r in rows if r.get("status") == "failed"]
    head = [title for _, title, _ in COLUMNS] + ["Pareto"]
    body = [[_cell(r, k, f) for k, _, f in COLUMNS] + ["*" if r["label"] in front else ""] for r in ok]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(cells) + " |" for cells in body]
    md += [""] + [f"- {r['label']}: failed: {r['error']}" for r in failed]
    md.append(
        f"\n{num_params:,} parameters; size = every file of the output (FP32: the f32 weights); "
        "perplexity = exp(mean NLL) over the windows; * = on the Pareto front of perplexity against size."
    )
    plot = _plot(out_dir / "pareto.png", ok, front)
    if plot is None:
        md.append("\n(no plot: matplotlib is missing; `pip install 'lowbit[plot]'`)")
    else:
        md.append(f"\n![perplexity against size]({plot.name})")
    markdown = out_dir / "report.md"
    write_text_atomic(markdown, "\n".join(md) + "\n")
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>\n" for cells in body
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>lowbit report</title>\n<table border=1>\n<tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>\n"
        + table
        + "</table>\n"
        + (f'<p><img src="{plot.name}" alt="perplexity against size"></p>\n' if plot else "")
    )
    page_path = out_dir / "report.html"
    write_text_atomic(page_path, page)
    results = out_dir / "results.json"
    write_text_atomic(
        results, json.dumps({"num_params": num_params, "pareto": sorted(front), "rows": rows}, indent=2)
    )
    return Report(rows=rows, markdown=markdown, html=page_path, results=results, plot=plot)


def _plot(path: Path, rows: list[dict[str, Any]], front: set[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = {
        "lowbit": ("o", "tab:blue", "lowbit"),
        "llamacpp": ("s", "tab:orange", "llama.cpp"),
        "fp32": ("*", "black", "FP32"),
    }
    for kind, (marker, color, name) in styles.items():
        pts = [r for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter(
                [r["size_bytes"] / 2**20 for r in pts],
                [r["perplexity"] for r in pts],
                marker=marker,
                color=color,
                label=name,
                s=60 if kind == "fp32" else 30,
                zorder=3,
            )
            for r in pts:
                ax.annotate(
                    r["label"],
                    (r["size_bytes"] / 2**20, r["perplexity"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    line = sorted((r for r in rows if r["label"] in front), key=lambda r: r["size_bytes"])
    ax.plot(
        [r["size_bytes"] / 2**20 for r in line],
        [r["perplexity"] for r in line],
        color="tab:green",
        lw=1,
        label="Pareto front",
        zorder=2,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("size (MiB, every file)")
    ax.set_ylabel("perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    # The child process: one configuration, its JSON row on the last line of stdout.
    print(json.dumps(_measure(json.loads(Path(sys.argv[1]).read_text()))))
