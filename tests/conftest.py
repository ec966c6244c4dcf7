"""Shared fixtures: a real redis-server for the whole run, a fresh shared folder per test."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import RedisServer, start_pair


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


@pytest.fixture
def pair(shared, tmp_path, redis_url, request):
    """tts-a (primary) and tts-b (standby) as real processes, with the test module's SETTINGS."""
    nodes = start_pair(shared, tmp_path, redis_url, **getattr(request.module, "SETTINGS", {}))
    yield nodes
    for n in nodes:
        n.stop()
