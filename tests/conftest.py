"""Shared fixtures: tiny offline models, one embedded broker per test run, settings bound to it.

Fixtures are split by concern in tests/fixtures/; this file only wires them up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from streams.broker import EmbeddedBroker, free_port  # noqa: E402
from tests.fixtures.tiny_models import build_tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Where the real Rampart checkpoint is converted; shared with `make` via the env."""
    configured = os.environ.get("STREAMS_MODEL_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One tansu broker per test run, on a free port, stopped by PID at the end."""
    port = free_port()
    embedded = EmbeddedBroker(port, log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    embedded.start()
    yield embedded
    embedded.stop()


def pytest_addoption(parser):
    parser.addoption("--source", choices=["faust", "librdkafka"], default=None,
                     help="STREAMS_SOURCE for the workers the tests start (default: the setting's)")


def pytest_configure(config):
    source = config.getoption("--source", None)
    if source:
        os.environ["STREAMS_SOURCE"] = source


def pytest_report_header(config):
    return f"worker source: {os.environ.get('STREAMS_SOURCE', 'default')}"
