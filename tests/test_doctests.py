"""The examples in the Python package's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["lowbit", "lowbit.pipeline", "lowbit.progress", "lowbit.model", "lowbit._api", "lowbit.cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_package_docstring_has_examples() -> None:
    assert doctest.testmod(importlib.import_module("lowbit")).attempted >= 4
