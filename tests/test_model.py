"""The model runtime through Python: the real SmolLM2 model where installed, bad inputs always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lowbit
from conftest import smollm2_gguf, wikitext

# PROTOCOL.md: greedy continuation of "Once upon a time" (no BOS) with the FP32 baseline.
GREEDY_REFERENCE = [
    28,
    260,
    2240,
    282,
    23324,
    27108,
    436,
    253,
    15114,
    39228,
    28,
    351,
    25854,
    41658,
    284,
    14055,
]


@pytest.fixture(scope="module")
def smollm2() -> lowbit.Model:
    return lowbit.Model.load(smollm2_gguf())


def test_greedy_continuation_matches_protocol_reference(smollm2: lowbit.Model) -> None:
    out = smollm2.generate("Once upon a time", max_new_tokens=len(GREEDY_REFERENCE), stop_on_eos=False)
    assert out.tokens == GREEDY_REFERENCE
    assert out.text == smollm2.decode(GREEDY_REFERENCE)
    assert out.stop_reason == "maxtokens"


def test_stream_yields_the_same_text(smollm2: lowbit.Model) -> None:
    pieces = list(smollm2.stream("Once upon a time", max_new_tokens=8))
    assert "".join(pieces) == smollm2.generate("Once upon a time", max_new_tokens=8).text


def test_callback_can_stop_generation(smollm2: lowbit.Model) -> None:
    seen: list[int] = []

    def on_token(token: int, _text: str) -> bool:
        seen.append(token)
        return len(seen) < 3

    out = smollm2.generate("Once upon a time", max_new_tokens=20, on_token=on_token)
    assert len(seen) == 3
    assert out.stop_reason == "callback"


def test_stop_strings_and_sampling_are_seeded(smollm2: lowbit.Model) -> None:
    out = smollm2.generate("Once upon a time", max_new_tokens=16, stop=["Nova"])
    assert "Nova" not in out.text
    assert out.stop_reason == "stopstring"
    a = smollm2.generate("The sky", max_new_tokens=8, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    b = smollm2.generate("The sky", max_new_tokens=8, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    assert a.tokens == b.tokens


def test_chat_template_renders(smollm2: lowbit.Model) -> None:
    text = smollm2.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert "Hi" in text
    assert text.rstrip().endswith("assistant")


def test_perplexity_small_window(smollm2: lowbit.Model) -> None:
    result = smollm2.perplexity(path=wikitext("test"), window=128, windows=2)
    assert result.windows == 2
    assert result.tokens == 2 * 127
    assert 5 < result.perplexity < 200


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lowbit.Model.load(tmp_path / "nothing-here")


def test_unknown_architecture_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(lowbit.UnsupportedError, match="GPT2LMHeadModel"):
        lowbit.Model.load(tmp_path)


def test_truncated_gguf_is_an_error(tmp_path: Path) -> None:
    with open(smollm2_gguf(), "rb") as f:
        head = f.read(1 << 20)
    bad = tmp_path / "cut.gguf"
    for cut in (3, 100, len(head)):
        bad.write_bytes(head[:cut])
        with pytest.raises(lowbit.CorruptFileError):
            lowbit.Model.load(bad)


def test_generate_batch_matches_one_at_a_time(smollm2: lowbit.Model) -> None:
    prompts: list[str | list[int]] = ["The sky", smollm2.encode("Once upon a time"), "In mathematics,"]
    for options in ({}, {"temperature": 1.0}, {"temperature": 0.9, "top_k": 40, "top_p": 0.9}):
        together = smollm2.generate_batch(prompts, max_new_tokens=10, seed=5, **options)  # type: ignore[arg-type]
        for i, (prompt, out) in enumerate(zip(prompts, together)):
            alone = smollm2.generate(prompt, max_new_tokens=10, seed=5 + i, **options)  # type: ignore[arg-type]
            assert out.tokens == alone.tokens, (options, prompt)
            assert out.text == alone.text
            assert out.stop_reason == alone.stop_reason
    explicit = smollm2.generate_batch(["The sky"], max_new_tokens=4, temperature=1.0, seeds=[6])
    assert explicit[0].tokens == smollm2.generate("The sky", max_new_tokens=4, temperature=1.0, seed=6).tokens
    with pytest.raises(lowbit.ShapeError):
        smollm2.generate_batch(["a", "b"], seeds=[1])
