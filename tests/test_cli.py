"""The command line's contracts: version, ``python -m lowbit``, exit statuses, progress lines
off a terminal, and Ctrl-C (a real SIGINT to a real process)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lowbit
from lowbit.cli import main
from lowbit.progress import Bars
from tiny_llama import write_tiny_llama


def lowbit_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, env=env, timeout=300
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("cli-tiny"))


def test_version_and_python_dash_m() -> None:
    r = lowbit_cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"lowbit {lowbit.__version__}")
    r = lowbit_cli("--help")
    assert r.returncode == 0
    assert "quantize" in r.stdout
    assert "LOWBIT_CALIB_TEXT" in r.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["quantize"],
        ["quantize", "m", "-o", "out", "--group-size", "0"],
        ["quantize", "m", "-o", "out", "--group-size", "-1"],
        ["quantize", "m", "-o", "out", "--group-size", "abc"],
        ["quantize", "m", "-o", "out", "--group-size", "tensor"],
        ["quantize", "m", "-o", "out", "--bits", "5"],
        ["eval", "m"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str]) -> None:
    r = lowbit_cli(*argv)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert "Traceback" not in r.stderr


def test_group_size_zero_says_what_to_write() -> None:
    r = lowbit_cli("quantize", "m", "-o", "out", "--group-size", "0")
    assert "'channel'" in r.stderr


def test_missing_calibration_is_a_usage_error(tiny: Path, tmp_path: Path) -> None:
    r = lowbit_cli("quantize", str(tiny), "-o", str(tmp_path / "q"), env=clean_env())
    assert r.returncode == 2
    assert "LOWBIT_CALIB_TEXT" in r.stderr
    assert not (tmp_path / "q").exists()


def test_calibration_text_from_the_environment(tiny: Path, tmp_path: Path) -> None:
    text = tmp_path / "calib.txt"
    text.write_text("not used: the tiny model has no tokenizer")
    r = lowbit_cli(
        "quantize", str(tiny), "-o", str(tmp_path / "q"), "--nsamples", "2", "--seqlen", "8",
        env=clean_env(LOWBIT_CALIB_TEXT=str(text)),
    )  # fmt: skip
    # The file named by the variable was used: it fails for want of a tokenizer, not of data.
    assert r.returncode == 1
    assert "tokenizer" in r.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "/nonexistent/model", "--text", "x.txt"], "nonexistent"),
        (["generate", "/nonexistent/model", "hi"], "nonexistent"),
        (["quantize", "/nonexistent/model", "-o", "out", "--method", "rtn"], "nonexistent"),
    ],
)
def test_runtime_errors_exit_1_with_one_line(argv: list[str], message: str) -> None:
    r = lowbit_cli(*argv)
    assert r.returncode == 1
    assert r.stderr.startswith("lowbit: error: ")
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_not_a_terminal_prints_one_line_per_phase(tiny: Path, tmp_path: Path) -> None:
    r = lowbit_cli(
        "quantize", str(tiny), "-o", str(tmp_path / "q"), "--calib", str(tiny / "ids.npy"),
        "--nsamples", "4", "--seqlen", "16", "--group-size", "32",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("lowbit: ")]
    assert [line.split(":")[1].strip() for line in lines] == ["calibrate", "blocks", "write"]
    assert "lowbit: blocks: 2/2 done (" in lines[1]
    assert " s, loss " in lines[1]
    assert "\r" not in r.stderr


def test_method_qat_shows_each_stage_with_its_loss(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "qat"
    r = lowbit_cli(
        "quantize", str(tiny), "-o", str(out), "--calib", str(tiny / "ids.npy"), "--method", "qat",
        "--qat-init", "rtn", "--bits", "3", "--nsamples", "4", "--seqlen", "16", "--group-size", "32",
        "--qat-epochs", "1", "--qat-distill-epochs", "1", "--qat-distill-windows", "2", "--qat-batch", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("lowbit: ")]
    phases = [line.split(":")[1].strip() for line in lines]
    assert phases == ["calibrate", "blocks", "teacher", "distill", "write"], r.stderr
    assert " qat loss " in lines[1]
    assert "lowbit: distill: 2/2 done (" in lines[3]
    assert " kl " in lines[3]
    params = json.loads((out / "lowbit_manifest.json").read_text())["parameters"]
    assert params["method"] == "qat"
    assert params["qat"]["init"] == "rtn"
    assert params["qat"]["block_epochs"] == 1
    assert params["qat"]["distill_epochs"] == 1
    # The result is an ordinary lowbit directory.
    model = lowbit.load(out)
    assert model.logits([1, 2, 3]).shape[-1] == model.config["vocab_size"]
    # qat's starting method must be one it can start from; qat_init belongs to qat.
    bad = lowbit_cli(
        "quantize", str(tiny), "-o", str(tmp_path / "bad"), "--method", "qat", "--qat-init", "hqq"
    )
    assert bad.returncode == 2, bad.stderr
    assert "--qat-init" in bad.stderr
    bad = lowbit_cli(
        "quantize",
        str(tiny),
        "-o",
        str(tmp_path / "bad"),
        "--calib",
        str(tiny / "ids.npy"),
        "--qat-init",
        "rtn",
    )
    assert bad.returncode != 0, bad.stderr
    assert "qat" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_bars_print_status_lines_in_long_phases() -> None:
    out = io.StringIO()
    bars = Bars(file=out, tty=False, interval=0.05)
    bars.start("blocks", 3)
    bars.advance(1)
    time.sleep(0.06)
    bars.advance(0)  # the native side's heartbeat
    bars.metric("loss", 0.5)
    bars.advance(2)
    bars.finish()
    bars.finish()  # ending twice prints once
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("lowbit: blocks: 1/3 ... (")
    assert lines[1].startswith("lowbit: blocks: 3/3 done (")
    assert lines[1].endswith(", loss 0.5)")
    quiet = io.StringIO()
    silent = Bars(enabled=False, file=quiet, tty=False, interval=0.0)
    silent.start("load", 1)
    silent.advance(1)
    silent.finish()
    assert quiet.getvalue() == ""


def test_bars_on_a_terminal_use_tqdm() -> None:
    out = io.StringIO()
    bars = Bars(file=out, tty=True)
    bars.start("perplexity", 2)
    bars.advance(1)
    bars.metric("ppl", 12.5)
    bars.advance(1)
    bars.finish()
    text = out.getvalue()
    assert "perplexity" in text
    assert "2/2" in text


def test_cli_main_returns_statuses(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(tiny), "-o", str(tmp_path / "q"), "--method", "rtn", "-q"]) == 0
    assert main(["quantize", str(tiny), "-o", str(tmp_path / "q"), "--method", "rtn", "-q"]) == 1
    assert "lowbit: error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(tiny), "-o", str(tmp_path / "q2"), "--group-size", "0"])
    assert e.value.code == 2


# Big enough that one GPTQ block takes a good fraction of a second on a busy two-core machine,
# with enough blocks after the first that the run is still going when SIGINT arrives.
SLOW = dict(hidden=256, ffn=512, layers=8, heads=4, kv_heads=2, context=256)
SLOW_ARGS = ["--nsamples", "32", "--seqlen", "256", "--group-size", "64", "--act-order"]


def test_ctrl_c_stops_quantize_leaves_no_output_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    model = write_tiny_llama(tmp_path / "model", **SLOW)
    out = tmp_path / "q"
    partial = tmp_path / "q.partial"
    argv = ["quantize", str(model), "-o", str(out), "--calib", str(model / "ids.npy"), *SLOW_ARGS]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowbit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (partial / "state.json").is_file():
        assert proc.poll() is None, f"quantize ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    assert took < 2.0, f"quantize took {took:.2f} s to stop"
    assert (
        stderr.splitlines()[-1] == "lowbit: interrupted (the blocks up to the last checkpoint "
        "(at most 30 s old) are kept: add --resume to continue)"
    )
    assert "Traceback" not in stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".q")] == []  # no temporary output
    assert (partial / "state.json").is_file()

    r = lowbit_cli(*argv, "--resume", "-q", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["resumed_from_block"] >= 1
    assert (out / "lowbit_manifest.json").is_file()
    assert not partial.exists()
