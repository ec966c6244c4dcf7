"""Shared fixtures: a real redis-server for the whole run, a fresh shared folder per test."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import RedisServer  # noqa: E402


def pytest_configure(config):
    missing = [tool for tool in ("redis-server", "espeak-ng") if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run the tests through `make test`")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.client.flushall()
    return redis_server.url


@pytest.fixture
def shared(tmp_path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    return path
