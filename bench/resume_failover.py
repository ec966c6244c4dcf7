#!/usr/bin/env python3
"""Benchmark: how fast a job in flight resumes on the standby after the primary's worker dies.

Two real local nodes (gunicorn + tts-worker), one redis-server, one jobs folder, espeak with lab
pacing. Each run: submit a 12-turn job to tts-a, kill -9 its worker after K segments, promote tts-b
with `tts-cluster promote` (as failover.yml does), and measure
  - kill -> job claimed on tts-b (lease expiry + the worker's next cycle)
  - kill -> first new segment committed by tts-b
  - segments recomputed (syntheses beyond one per segment)
The promotion here is immediate: detection and the playbook come on top (see bench/failover_rto.py
once the failover chain exists). Prints numbers; asserts nothing.

    python bench/resume_failover.py [--runs 5] [--lease 6] [--pace 0.3]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import Node, RedisServer, cluster_cli, dialogue, node_env, wait_for

TURNS = 12


def one_run(workdir: Path, redis: RedisServer, lease: float, pace: float, kill_after: int) -> dict:
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    redis.client.flushall()
    cluster_cli(shared, "init", "tts-a", "--standby", "tts-b")
    extra = dict(TTS_ENGINE_PACE=pace, TTS_LEASE_SECONDS=lease, TTS_STATE_MAX_AGE=max(3, lease))
    a, b = (Node(n, node_env(n, redis.url, shared, workdir / f"run-{n}", **extra), workdir / "logs").start()
            for n in ("tts-a", "tts-b"))
    try:
        for n in (a, b):
            wait_for(lambda n=n: n.ready()[0] == 200, 30, what="ready")
        s = requests.Session()
        job_id = s.post(f"{a.url}/api/jobs", json={"script": dialogue(TURNS)}).json()["id"]
        seg_dir = shared / "jobs" / job_id / "segments"

        def names(seg_dir=seg_dir):
            return [p.name for p in seg_dir.iterdir() if not p.name.startswith(".")]
        wait_for(lambda: len(names()) >= kill_after, 120, what="segments")
        os.killpg(a.worker.pid, signal.SIGKILL)
        killed = time.time()
        cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1")
        promoted = time.time()
        claimed = float(wait_for(lambda: redis.client.hget(f"tts:job:{job_id}", "node") == "tts-b"
                                 and redis.client.hget(f"tts:job:{job_id}", "claimed_at"), 60, 0.01))
        wait_for(lambda: any(n.endswith(".wav") and n.split(".")[1] == "2" for n in names()), 60, 0.01, what="B segment")
        first_segment = time.time()
        wait_for(lambda: s.get(f"{b.url}/api/jobs/{job_id}").json()["status"] == "done", 180, 0.1)
        attempts = int(redis.client.hget(f"tts:job:{job_id}", "attempts"))
        return {"promote_s": promoted - killed, "claim_s": claimed - killed,
                "first_segment_s": first_segment - killed, "recomputed": attempts - TURNS}
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease", type=float, default=6.0, help="TTS_LEASE_SECONDS (default: the service default)")
    parser.add_argument("--pace", type=float, default=0.3, help="TTS_ENGINE_PACE")
    parser.add_argument("--kill-after", type=int, default=4, help="segments committed before the kill")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        try:
            results = []
            for i in range(args.runs):
                r = one_run(Path(tmp) / f"run{i}", redis, args.lease, args.pace, args.kill_after)
                results.append(r)
                print(f"run {i + 1}: kill->claimed on B {r['claim_s']:.2f} s, kill->first new segment "
                      f"{r['first_segment_s']:.2f} s, segments recomputed {r['recomputed']}", flush=True)
        finally:
            redis.stop()
    print(f"\nlease {args.lease:g} s, pace {args.pace:g}, {TURNS}-turn job killed after {args.kill_after} segments, "
          f"{args.runs} runs (promotion immediate after the kill)")
    for key, label in (("claim_s", "kill -> job running again on B (s)"),
                       ("first_segment_s", "kill -> first new segment on B (s)"),
                       ("recomputed", "segments recomputed")):
        values = sorted(r[key] for r in results)
        print(f"  {label:38s} median {statistics.median(values):6.2f}   max {values[-1]:6.2f}")
    print("  reference: the source design's standby took over after 22 s and the job lost all progress")


if __name__ == "__main__":
    main()
