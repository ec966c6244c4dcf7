"""Real processes for tests and benchmarks: a redis-server on a free port and TTS nodes (gunicorn +
tts-worker) with their own node names, all sharing one jobs folder. Nothing here is a fake."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class RedisServer:
    def __init__(self, workdir: Path, password: str = "test-redis-password"):
        self.port = free_port()
        self.password = password
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--requirepass", password, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        self.client = redis.Redis(port=self.port, password=password, decode_responses=True)
        wait_for(self._pong, 10, what="redis-server")

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _pong(self) -> bool:
        try:
            return self.client.ping()
        except Exception:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def node_env(node: str, redis_url: str, shared: Path, run_dir: Path, **extra: object) -> dict:
    env = dict(os.environ)
    env.update({
        "TTS_NODE": node, "TTS_REDIS_URL": redis_url, "TTS_SHARED_DIR": str(shared),
        "TTS_RUN_DIR": str(run_dir), "TTS_ENGINE": "espeak", "PYTHONUNBUFFERED": "1",
    })
    env.update({key: str(value) for key, value in extra.items()})
    return env


@dataclass
class Node:
    """One TTS node: gunicorn serving the app and a tts-worker, as separate processes."""
    name: str
    env: dict
    logdir: Path
    port: int = field(default_factory=free_port)
    web: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Node:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.start_worker()
        self.web = subprocess.Popen(
            [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
             "--worker-class", "gthread", "--threads", "8", "tts_service.app:create_app()"],
            env=self.env, stdout=open(self.logdir / f"{self.name}-web.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        if wait:
            wait_for(self._healthy, 30, what=f"{self.name} /health")
        return self

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [str(BIN / "tts-worker")], env=self.env,
            stdout=open(self.logdir / f"{self.name}-worker.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def ready(self) -> tuple[int, dict]:
        r = requests.get(f"{self.url}/ready", timeout=5)
        return r.status_code, r.json()

    def stop(self) -> None:
        for proc in (self.worker, self.web):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def cluster_cli(shared: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tts-cluster"), "--shared-dir", str(shared), *args],
                          capture_output=True, text=True, timeout=30)


def start_pair(shared: Path, tmp_path: Path, redis_url: str, **settings: object) -> list[Node]:
    """tts-a (primary) and tts-b (standby) on one jobs folder and one Redis, both ready."""
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    nodes = [Node(name, node_env(name, redis_url, shared, tmp_path / f"run-{name}", **settings),
                  tmp_path / "logs").start() for name in ("tts-a", "tts-b")]
    for n in nodes:
        wait_for(lambda n=n: n.ready()[0] == 200, 20, what=f"{n.name} ready")
    return nodes


def chunk_key(name: str) -> tuple[int, int, int]:
    """(index, epoch, lease generation) of a chunk's file name, 00003.2.5.wav (the generation is 0 in a
    name written before leases had one, 00003.2.wav)."""
    index, epoch, *rest = name.split(".")[:-1]
    return int(index), int(epoch), int(rest[0]) if rest else 0


def dialogue(turns: int, speakers: int = 2,
             line: str = "This is turn number {n} of the conversation. It has two short sentences.") -> str:
    """The tests' scripts (Molecule's too): `turns` lines, the speakers in turn; {n} is the line's number."""
    return "\n".join(f"Speaker {i % speakers + 1}: {line.format(n=i + 1)}" for i in range(turns))
