"""`lowbit demo`, the README's main job, end to end on SmolLM2 with small settings (a minute)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from conftest import smollm2_gguf
from lowbit.demo import HELD_OUT_OPENINGS, DemoSettings, held_out_ids, run_demo, side_by_side
from lowbit.model import Model
from lowbit.progress import Bars


def test_side_by_side_wraps_both_columns() -> None:
    lines = side_by_side("a " * 30, "b", ("left", "right"), width=10).splitlines()
    assert lines[0].startswith("left")
    assert "right" in lines[0]
    assert all(len(line) <= 10 + 3 + 10 for line in lines)
    assert sum(line.count("a") for line in lines) == 30


def test_held_out_texts_are_windows_of_their_own() -> None:
    model = Model.load(smollm2_gguf())
    ids = held_out_ids(model, 5, 24)
    assert len(ids) == 5 * 24
    for i in range(5):
        opening = model.encode(HELD_OUT_OPENINGS[i % len(HELD_OUT_OPENINGS)])
        assert ids[i * 24 : i * 24 + len(opening)] == opening
    assert held_out_ids(model, 5, 24) == ids, "seeded"
    with pytest.raises(ValueError, match="no longer than their openings"):
        held_out_ids(model, 2, 3)


def test_demo_quantizes_evaluates_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smollm2_gguf()
    # A new user's machine: no WikiText, so data-free calibration and held-out text.
    monkeypatch.delenv("LOWBIT_CALIB_TEXT", raising=False)
    monkeypatch.delenv("LOWBIT_EVAL_TEXT", raising=False)
    said: list[str] = []
    log = io.StringIO()
    settings = DemoSettings(nsamples=4, seqlen=128, held_out=2, held_out_tokens=64, max_new_tokens=8)
    out = tmp_path / "q"
    figures = run_demo(settings, out=out, progress=Bars(file=log, tty=False), say=said.append)
    assert (out / "config.json").is_file()
    assert (out / "lowbit_manifest.json").is_file()
    before = float(figures["perplexity_before"])  # type: ignore[arg-type]
    after = float(figures["perplexity_after"])  # type: ignore[arg-type]
    assert math.isfinite(after)
    assert before > 1.0
    # 512 calibration tokens make a rough GPTQ (17.3 -> 29.5 here); a broken one is in the hundreds.
    assert after < before * 2, (before, after)
    assert 4.0 < float(figures["bits_per_weight"]) < 4.5  # type: ignore[arg-type]
    answers = figures["answers"]
    assert isinstance(answers, list)
    assert len(answers) == 2
    assert all(answers)
    text = "\n".join(said)
    for expected in ("original (f32)", "GPTQ 4-bit", "perplexity", "data-free", "held-out", "done in"):
        assert expected in text
    # Off a terminal every phase says when it is done, with its time (data-free calibration
    # loads the whole model once more to sample from it).
    phases = [line.split(":")[1].strip() for line in log.getvalue().splitlines() if " done (" in line]
    assert (
        phases
        == ["load", "load", "calibrate", "blocks", "write", "load", "generate"]
        + ["perplexity"] * 2
        + ["generate"] * 2
    ), log.getvalue()
    seconds = figures["seconds"]
    assert isinstance(seconds, dict)
    assert set(seconds) == {"total", "calibration", "GPTQ", "held-out sampling", "perplexity", "answers"}
