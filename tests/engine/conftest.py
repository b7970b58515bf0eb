"""Fixtures of the tiny-LLM tests (test_llm_*.py): one model directory per module, and torch on
one thread while a module's tests run (the tiny model's many small ops are slower on a team)."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.tiny_llm import build_tiny_llm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
