"""The worker's heartbeat: a small JSON file in the node-local run folder, rewritten every second.

The web app reads it for /ready (is the worker alive, is the engine loaded) and /metrics (segment
synthesis histogram, GPU utilisation). Node-local on purpose: the standby's Redis is a read-only
replica, so the standby's worker could not announce itself there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def heartbeat_path(run_dir: Path, node: str) -> Path:
    return Path(run_dir) / f"worker-{node}.json"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.n += 1

    def to_dict(self) -> dict:
        return {"buckets": list(BUCKETS), "counts": self.counts, "sum": self.total, "count": self.n}


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read(path: Path, max_age_s: float = 5.0) -> tuple[dict | None, str]:
    """(heartbeat, reason): None with a reason if it is missing, unreadable or stale."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "the worker has not started (no heartbeat)"
    except (OSError, ValueError) as exc:
        return None, f"the worker heartbeat is unreadable: {exc}"
    age = time.time() - float(data.get("ts", 0))
    if age > max_age_s:
        return None, f"the worker's last heartbeat is {age:.0f} s old"
    return data, "ok"


def gpu_utilisation() -> float | None:
    """Percent busy of GPU 0, or None where there is no NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=2, check=True).stdout
        return float(out.split()[0])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None
