"""The option table: declared in Rust, validated in Python, the CLI's flags built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

import lowbit
from lowbit.cli import build_parser
from lowbit.pipeline import check_options, option_specs
from test_pipeline import tiny_model  # noqa: F401  (the fixture)

# The Python keywords and CLI flags that README.md and the tests use: they keep their names.
KWARGS = {"method", "bits", "group_size", "sym", "act_order", "static_groups", "mse_clip", "scale_dtype",
          "nsamples", "seqlen", "seed", "percdamp", "awq_samples", "sq_alpha", "resume", "embed",
          "lm_head", "outlier_threshold"}  # fmt: skip
FLAGS = {"--method", "--bits", "--group-size", "--sym", "--act-order", "--clip", "--scale-dtype",
         "--nsamples", "--seqlen", "--seed", "--resume", "--embed", "--lm-head",
         "--outlier-threshold"}  # fmt: skip


def test_table_keeps_the_names_and_defaults() -> None:
    specs = option_specs()
    assert specs.keys() >= KWARGS
    assert {s["cli"] for s in specs.values()} >= FLAGS
    assert specs["method"]["default"] == "gptq"
    assert specs["group_size"]["default"] == 128
    assert specs["mse_clip"]["default"] is None  # on for gptq, off for rtn
    assert specs["act_order"]["methods"] == ["gptq", "spqr"]
    assert specs["embed"]["default"] == "int8"
    assert specs["lm_head"]["default"] is None  # as the embedding
    assert specs["lm_head"]["choices"] == ["embed", *specs["embed"]["choices"]]
    schemes = {"int8", "int4-g32", "int4-g64", "int4-g128", "f16", "f32", "keep"}
    assert set(specs["embed"]["choices"]) == schemes


def test_bad_keywords_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="did you mean 'act_order'"):
        lowbit.quantize_model(tmp_path, tmp_path / "q", actorder=True, method="rtn")
    with pytest.raises(TypeError, match="bits: expected int"):
        check_options({"bits": "4"})
    with pytest.raises(TypeError, match="sym: expected bool"):
        check_options({"sym": 1})
    with pytest.raises(ValueError, match="act_order applies to gptq, spqr, not awq"):
        check_options({"method": "awq", "act_order": True})
    with pytest.raises(ValueError, match="scale_dtype: expected one of f16, f32"):
        check_options({"scale_dtype": "bf16"})
    with pytest.raises(ValueError, match="embed: expected one of keep, f32, f16, int8"):
        check_options({"embed": "int5"})
    check_options({"method": "rtn", "mse_clip": None, "group_size": None})
    # The native function checks too (types and applicability), not only the Python layer.
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        lowbit._lowbit.quantize_model(str(tmp_path), str(tmp_path / "q"), nope=1)
    with pytest.raises(lowbit.LowbitError, match="applies to gptq, spqr, not awq"):
        lowbit._lowbit.quantize_model(str(tmp_path), str(tmp_path / "q"), method="awq", act_order=True)
    assert not (tmp_path / "q").exists()


def test_cli_flags_come_from_the_table() -> None:
    def parse(*flags: str) -> dict[str, object]:
        return vars(build_parser().parse_args(["quantize", "m", "-o", "o", *flags]))

    args = parse("--group-size", "channel", "--clip", "mse", "--act-order")
    assert (args["group_size"], args["mse_clip"], args["act_order"]) == ("channel", True, True)
    args = parse("--group-size", "64", "--no-static-groups")
    assert (args["group_size"], args["static_groups"]) == (64, False)
    args = parse("--embed", "int4-g32", "--lm-head", "embed")
    assert (args["embed"], args["lm_head"]) == ("int4-g32", "embed")
    check_options({"lm_head": "embed"})
    check_options({"lm_head": None})
    assert parse("--lm-head", "f16")["lm_head"] == "f16"
    unset = parse()
    assert "bits" not in unset, "unset flags keep the library's defaults"
    assert "method" not in unset
    for bad in (
        ["--clip", "max"],
        ["--group-size", "x"],
        ["--group-size", "0"],
        ["--scale-dtype", "f8"],
        ["--percdamp", "a"],
        ["--embed", "int6"],
        ["--embed", "embed"],
    ):
        with pytest.raises(SystemExit) as e:
            parse(*bad)
        assert e.value.code == 2


def test_report_is_a_typed_class(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    r = lowbit.quantize_model(tiny_model, tmp_path / "q", method="rtn", bits=4, group_size=32)
    assert type(r) is lowbit.QuantizeReport is lowbit._lowbit.QuantizeReport
    assert (r.method, r.bits, r.group_size, r.params["clip"]) == ("rtn", 4, 32, "minmax")
    assert isinstance(r.layers[0], lowbit.LayerResult)
    assert r.layers[0].name == "self_attn.q_proj"
    assert r.worst_layer is not None
    assert r.mean_loss == pytest.approx(sum(layer.loss for layer in r.layers) / len(r.layers))
    assert r.to_dict()["params"] == r.params
    assert repr(r).startswith('QuantizeReport(method="rtn", bits=4, group_size=32, bits_per_weight=4.')
    assert repr(r.layers[0]).startswith('LayerResult(block=0, name="self_attn.q_proj", loss=')
