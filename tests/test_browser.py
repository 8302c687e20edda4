"""The browser tests of the wasm build (wasm/test/run.mjs in headless Chromium), from pytest: the
kernels of both builds against the scalar reference, SmolLM2 W4 greedy tokens (single-thread and
threaded builds) and perplexity against this build's native outputs, bad files refused, loading
through the Cache API (and its quota fallback), in-browser RTN byte-identical to native and GPTQ
close to it, and the demo page (chat and the quantize tab in its worker).

They need the wasm builds and npm packages (``make web``), Debian's Chromium and node; where one
is missing the test is skipped naming it, and under ``LOWBIT_REQUIRE_REFERENCES=1`` (``.ci/run``)
that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, missing_reference, smollm2_gguf

WASM = ROOT / "wasm"
CHROMIUM = Path(os.environ.get("LOWBIT_CHROMIUM", "/usr/bin/chromium"))


def _require_browser_setup() -> str:
    node = shutil.which("node")
    if node is None:
        missing_reference("node (Node.js 18 or newer)")
    if not CHROMIUM.is_file():
        missing_reference(f"Chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)")
    for variant in ("simd128", "relaxed", "threads", "quantize"):
        if not (WASM / "pkg" / variant / "lowbit_wasm_bg.wasm").is_file():
            missing_reference(f"the {variant} wasm build (make web)")
    if not (WASM / "node_modules" / "playwright-core").is_dir():
        missing_reference("playwright-core (make web runs npm ci in wasm/)")
    return node


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    node = _require_browser_setup()
    smollm2_gguf()  # a missing GGUF is a missing reference, not an error in prepare.py
    text = SHARED / "data" / "wikitext2" / "test.txt"
    if not text.is_file():
        missing_reference(f"{text} (the shared data beside the repository, or set LOWBIT_SHARED)")
    out = tmp_path_factory.mktemp("web")
    subprocess.run(
        [sys.executable, str(WASM / "test" / "prepare.py"), str(out), "--text", str(text)],
        check=True,
        timeout=600,
    )
    return node, out


def test_browser(fixtures: tuple[str, Path]) -> None:
    node, out = fixtures
    r = subprocess.run(
        [node, str(WASM / "test" / "run.mjs"), "--fixtures", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    failed = [x for x in results if x.get("status") == "fail"]
    assert not failed, json.dumps(failed, indent=1) + r.stderr[-2000:]
    skipped = [x for x in results if x.get("status") == "skip"]
    if skipped:
        missing_reference("; ".join(x["reason"] for x in skipped))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    passed = {x["test"] for x in results if x.get("status") == "pass"}
    assert {
        "kernels-simd128",
        "kernels-relaxed",
        "refuses-bad-files",
        "smollm2-w4-simd128",
        "smollm2-w4-relaxed",
        "smollm2-w4-threads",
        "model-cache",
        "quantize-rtn",
        "quantize-gptq",
        "demo-page",
    } <= passed
