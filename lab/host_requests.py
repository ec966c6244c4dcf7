#!/usr/bin/env python3
"""The lab machine's side of host-lost drills: ctl's `tts-lab-host kill|start NODE` leaves a request
in .lab/<prefix>host-requests/ (shared with ctl as /srv/lab-host); this serves it with `podman kill` /
`podman start` of that node's container and answers with the unix time it was done (for a kill: the
moment just before the kill, so a drill's RTO is never flattered).

    python lab/host_requests.py [--prefix ''] -- COMMAND...   serve requests while COMMAND runs
`make drill` and `make bench` use it (serve_while); nothing else ever kills a container this way.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


def folder(prefix: str) -> Path:
    return ROOT / ".lab" / f"{prefix}host-requests"


def serve_one(request: Path, prefix: str) -> None:
    try:
        action, node = request.read_text().split()
    except (OSError, ValueError):
        request.unlink(missing_ok=True)
        return
    request.unlink(missing_ok=True)
    if action not in ("kill", "start") or not NODE_RE.match(node):
        return
    at = time.time()
    res = subprocess.run(["podman", action, prefix + node], capture_output=True, text=True, timeout=120)
    done_at = at if action == "kill" else time.time()
    print(f"lab host: podman {action} {prefix}{node}: exit {res.returncode} {res.stderr.strip()[:200]}",
          file=sys.stderr, flush=True)
    answer = request.with_suffix(".done")
    tmp = request.with_suffix(".answer")
    tmp.write_text(f"{done_at:.3f}\n" if res.returncode == 0 else f"failed: {res.stderr.strip()[:200]}\n")
    tmp.rename(answer)


def serve(prefix: str, stop: threading.Event, poll_s: float = 0.05) -> None:
    where = folder(prefix)
    while not stop.is_set():
        for request in sorted(where.glob("*.req")) if where.is_dir() else []:
            serve_one(request, prefix)
        for answer in where.glob("*.done") if where.is_dir() else []:   # read by now
            try:
                if time.time() - answer.stat().st_mtime > 60:
                    answer.unlink()
            except OSError:
                pass
        stop.wait(poll_s)


class serve_while:
    """with serve_while(prefix): ... — requests are served in a thread for the block's duration."""

    def __init__(self, prefix: str = ""):
        self.prefix, self.stop = prefix, threading.Event()
        self.thread = threading.Thread(target=serve, args=(prefix, self.stop), daemon=True)

    def __enter__(self) -> serve_while:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run while serving requests")
    with serve_while(args.prefix):
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
