"""`lowbit demo`, the README's main job, end to end on SmolLM2 with small settings (a minute)."""

from __future__ import annotations

import math
from pathlib import Path

from conftest import smollm2_gguf
from lowbit.demo import DemoSettings, run_demo, side_by_side


def test_side_by_side_wraps_both_columns() -> None:
    lines = side_by_side("a " * 30, "b", ("left", "right"), width=10).splitlines()
    assert lines[0].startswith("left")
    assert "right" in lines[0]
    assert all(len(line) <= 10 + 3 + 10 for line in lines)
    assert sum(line.count("a") for line in lines) == 30


def test_demo_quantizes_evaluates_and_answers(tmp_path: Path) -> None:
    smollm2_gguf()
    said: list[str] = []
    settings = DemoSettings(nsamples=2, seqlen=64, eval_windows=1, eval_window=256, max_new_tokens=8)
    out = tmp_path / "q"
    figures = run_demo(settings, out=out, say=said.append)
    assert (out / "config.json").is_file()
    assert (out / "lowbit_manifest.json").is_file()
    before = float(figures["perplexity_before"])  # type: ignore[arg-type]
    after = float(figures["perplexity_after"])  # type: ignore[arg-type]
    assert math.isfinite(after)
    assert before > 1.0
    assert after < before * 1.5, (before, after)
    assert 4.0 < float(figures["bits_per_weight"]) < 4.5  # type: ignore[arg-type]
    answers = figures["answers"]
    assert isinstance(answers, list)
    assert len(answers) == 2
    assert all(answers)
    text = "\n".join(said)
    for expected in ("original (f32)", "GPTQ 4-bit", "perplexity"):
        assert expected in text
