"""``lowbit report`` on a tiny random Llama: the table's values are those of the underlying runs,
results are cached per configuration, the plot is a PNG, failures are reported, not fatal."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import lowbit
from conftest import missing_reference
from lowbit.cli import main
from lowbit.report import heldout_windows, parameter_count, pareto, parse_methods
from test_export_gguf import write_tokenizer
from tiny_llama import write_tiny_llama

WINDOW, WINDOWS, GROUP = 16, 4, 16
GPTQ = "gptq+nsamples=2+seqlen=16"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_tiny_llama(tmp_path_factory.mktemp("tiny"))
    np.save(d / "text.npy", np.load(d / "ids.npy").reshape(-1))
    return d


@pytest.fixture(scope="module")
def first(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, lowbit.Report, list[str]]:
    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    r = lowbit.report(
        tiny,
        out,
        methods=["rtn", "hqq", GPTQ],
        bits=[4, 8],
        group_size=GROUP,
        text=tiny / "text.npy",
        heldout=tiny / "text.npy",
        calib=tiny / "ids.npy",
        window=WINDOW,
        windows=WINDOWS,
        decode_tokens=8,
        log=lines.append,
    )
    return out, r, lines


def test_table_values_are_those_of_the_runs(tiny: Path, first: tuple[Path, lowbit.Report, list[str]]) -> None:
    out, r, _ = first
    rows = {row["label"]: row for row in r.rows}
    assert set(rows) == {"fp32", "rtn-w4-g16", "rtn-w8-g16", "hqq-w4-g16", "hqq-w8-g16"} | {
        f"gptq-w{b}-g16-nsamples=2-seqlen=16" for b in (4, 8)
    }
    assert all(row["status"] == "ok" for row in r.rows), [row.get("error") for row in r.rows]
    ids = np.load(tiny / "text.npy").reshape(-1)[: WINDOW * WINDOWS].tolist()

    # Redo one configuration by hand: same file size, bits per weight and perplexity.
    q = lowbit.quantize_model(tiny, out / "by-hand", method="hqq", bits=4, group_size=GROUP)
    row = rows["hqq-w4-g16"]
    # every file counts; the manifest's timings may differ by a few digits between two runs
    assert abs(row["size_bytes"] - q.out_bytes) < 64
    assert row["bpw_all"] == q.bits_per_weight_all
    assert row["bpw_linears"] == q.bits_per_weight
    ppl = lowbit.Model.load(out / "by-hand").perplexity(ids=ids, window=WINDOW, windows=None)
    assert row["perplexity"] == ppl.perplexity
    fp32 = lowbit.Model.load(tiny).perplexity(ids=ids, window=WINDOW, windows=None)
    assert rows["fp32"]["perplexity"] == fp32.perplexity
    assert rows["fp32"]["size_bytes"] == 4 * parameter_count(lowbit.Model.load(tiny).config)
    # every row measured decoding and its own peak RAM
    assert all(row["decode_tok_s"] > 0 and row["peak_rss_bytes"] > 2**20 for row in r.rows)

    # The table shows those numbers; the Pareto marks match pareto().
    md = r.markdown.read_text()
    assert f"| hqq-w4-g16 | {q.bits_per_weight:.3f} | {q.bits_per_weight_all:.3f} |" in md
    assert f"{ppl.perplexity:.4f}" in md
    front = set(json.loads(r.results.read_text())["pareto"])
    assert front == set(pareto(r.rows))
    assert front
    for label in rows:
        line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
        assert line.endswith("| * |") == (label in front), line
    assert "<td>hqq-w4-g16</td>" in r.html.read_text()


def test_heldout_skips_calibration_windows() -> None:
    ids = list(range(100))
    # one calibration window of 10 tokens starting where default_rng(0) puts it
    start = int(np.random.default_rng(0).integers(0, 90, 1)[0])
    kept = heldout_windows(ids, 10, {"nsamples": 1, "seqlen": 10, "seed": 0})
    touched = {start // 10, (start + 9) // 10}
    assert kept == [t for w in range(10) if w not in touched for t in range(w * 10, w * 10 + 10)]
    assert heldout_windows(ids, 10, None) == ids


def test_plot_is_a_png(first: tuple[Path, lowbit.Report, list[str]]) -> None:
    _, r, _ = first
    assert r.plot is not None
    assert r.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.plot.stat().st_size > 10_000
    assert f"]({r.plot.name})" in r.markdown.read_text()


def test_second_report_reuses_the_cache(tiny: Path, first: tuple[Path, lowbit.Report, list[str]]) -> None:
    out, r, _ = first
    lines: list[str] = []
    again = lowbit.report(
        tiny,
        out,
        methods=["rtn", "hqq", GPTQ, "rtn+format=nf4"],
        bits=[4, 8],
        group_size=GROUP,
        text=tiny / "text.npy",
        heldout=tiny / "text.npy",
        calib=tiny / "ids.npy",
        window=WINDOW,
        windows=WINDOWS,
        decode_tokens=8,
        log=lines.append,
    )
    status = {row["label"]: row["status"] for row in again.rows}
    assert status.pop("rtn-nf4-g16") == "ok"  # the one new configuration (bits 4 only)
    assert set(status.values()) == {"cached"}
    old = {row["label"]: row["perplexity"] for row in r.rows}
    assert all(row["perplexity"] == old[row["label"]] for row in again.rows if row["status"] == "cached")


def test_failures_are_reported_and_missing_matplotlib_is_named(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    r = lowbit.report(
        tiny,
        tmp_path,
        methods=["gptq", "rtn"],  # gptq's default 512-token windows exceed the tiny context
        bits=[4],
        group_size=GROUP,
        text=tiny / "text.npy",
        calib=tiny / "ids.npy",
        window=WINDOW,
        windows=2,
        include_fp32=False,
        decode_tokens=4,
        log=lambda _: None,
    )
    status = {row["label"]: row["status"] for row in r.rows}
    assert status == {"gptq-w4-g16": "failed", "rtn-w4-g16": "ok"}
    md = r.markdown.read_text()
    assert "gptq-w4-g16: failed: " in md
    assert "context" in md
    assert r.plot is None
    assert "lowbit[plot]" in md
    assert not list(tmp_path.glob("runs/gptq*.json")), "a failure is not cached"


def test_method_items_and_bad_input() -> None:
    cfgs = parse_methods(["rtn", "smoothquant", "gptq+act_order=true+bits=3"], [4, 8], 128)
    assert [c.label for c in cfgs] == [
        "rtn-w4-g128",
        "rtn-w8-g128",
        "smoothquant-w8",
        "gptq-w3-g128-act_order",
    ]
    assert cfgs[2].options == {"method": "smoothquant", "bits": 8, "group_size": "channel", "sym": True}
    with pytest.raises(ValueError, match="option=value"):
        parse_methods(["gptq+nonsense=1"], [4], 128)
    with pytest.raises(ValueError, match="method"):
        parse_methods(["nosuchmethod"], [4], 128)
    with pytest.raises(ValueError, match="true or false"):
        parse_methods(["gptq+act_order=maybe"], [4], 128)


def test_cli(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["report", str(tiny), "--out", str(tmp_path), "--methods", "rtn", "--bits", "4,8"]
    args += ["--group-size", str(GROUP), "--text", str(tiny / "text.npy"), "--window", str(WINDOW)]
    assert main([*args, "--windows", "2", "--decode-tokens", "4", "--no-fp32"]) == 0
    out = capsys.readouterr().out
    assert "| rtn-w4-g16 |" in out
    assert "| rtn-w8-g16 |" in out
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--bits", "4,x"])
    assert exit_.value.code == 2
    assert "--bits: expected comma-separated integers" in capsys.readouterr().err


def test_llama_cpp_points(tiny: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        missing_reference("llama-cpp-python (`make loaders` builds it)")
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    write_tokenizer(model)  # the GGUF llama.cpp quantizes carries the tokenizer
    r = lowbit.report(
        model,
        tmp_path / "out",
        methods=[],
        text=tiny / "text.npy",
        window=WINDOW,
        windows=WINDOWS,
        decode_tokens=8,
        include_llamacpp=True,
        llamacpp_types=["Q8_0", "Q4_0"],
        log=lambda _: None,
    )
    rows = {row["label"]: row for row in r.rows}
    assert set(rows) == {"fp32", "llama.cpp-Q8_0", "llama.cpp-Q4_0"}
    assert all(row["status"] == "ok" for row in r.rows), [row.get("error") for row in r.rows]
    params = parameter_count(lowbit.Model.load(tiny).config)
    for ty in ("Q8_0", "Q4_0"):
        row = rows[f"llama.cpp-{ty}"]
        assert row["bpw_all"] == row["size_bytes"] * 8 / params
        assert row["decode_tok_s"] > 0
    # Q8_0 (8.5 bits) scores the same windows as FP32 within a percent; Q4_0 is smaller
    assert rows["llama.cpp-Q8_0"]["perplexity"] == pytest.approx(rows["fp32"]["perplexity"], rel=1e-2)
    assert (
        rows["llama.cpp-Q4_0"]["size_bytes"]
        < rows["llama.cpp-Q8_0"]["size_bytes"]
        < rows["fp32"]["size_bytes"]
    )
