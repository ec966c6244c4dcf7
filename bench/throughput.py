#!/usr/bin/env python3
"""Benchmark: what a pool of workers does with a burst (workers on every GPU host, one queue).

Real processes on this machine: one redis-server, one jobs folder, a cluster with tts-a primary and
tts-b standby, tts-a's web app, and N pool workers (tts-a, tts-b, then hosts outside the pair: tts-c),
espeak paced at PACE wall s per audio s (the lab's 1.0: the GPU engine's speed). For N = 1, 2, 3:
  - a burst of JOBS jobs from SESSIONS sessions (each session's jobs submitted together, one session
    after the other: the first session's burst arrives first);
  - audio seconds made per wall second, burst submitted -> last job done (goal: >= 0.9 x N);
  - queue wait (created -> claimed) median and p95; each session's first start after the burst.
Then, with 2 workers: a job's worker is killed (SIGKILL) after 3 chunks; the time until another worker
runs it again and until its first new chunk. Prints numbers; asserts nothing.

    python bench/throughput.py [--workers 1,2,3] [--jobs 20] [--sessions 4] [--turns 3] [--pace 1.0]
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

NAMES = ["tts-a", "tts-b", "tts-c", "tts-d"]


def pool(workdir: Path, redis: RedisServer, workers: int, pace: float, lease: float) -> tuple[Node, list[Node]]:
    """tts-a's web app and `workers` pool workers; returns (the web node, every worker's node)."""
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    redis.client.flushall()
    cluster_cli(shared, "init", "tts-a", "--standby", "tts-b")
    extra = dict(TTS_ENGINE_PACE=pace, TTS_WORKER_POOL=1, TTS_LEASE_SECONDS=lease, TTS_STATE_MAX_AGE=max(3, lease),
                 TTS_QUEUE_JOBS_SESSION=50, TTS_QUEUE_JOBS_CLIENT=200, TTS_RATE_LIMIT_SESSION=600,
                 TTS_RATE_LIMIT_CLIENT=600)
    nodes = [Node(n, node_env(n, redis.url, shared, workdir / f"run-{n}", **extra), workdir / "logs")
             for n in NAMES[:workers]]
    nodes[0].start()
    for n in nodes[1:]:
        n.start_worker()
    wait_for(lambda: len(redis.client.hgetall("tts:workers")) == workers, 60, what=f"{workers} workers in the pool")
    return nodes[0], nodes


def burst(web: Node, redis: RedisServer, jobs: int, sessions: int, turns: int) -> dict:
    clients = [requests.Session() for _ in range(sessions)]
    owner = {}
    started = time.time()
    for i, client in enumerate(clients):
        for _ in range(jobs // sessions):
            res = client.post(f"{web.url}/api/jobs", json={"script": dialogue(turns)})
            assert res.status_code == 202, res.text
            owner[res.json()["id"]] = i
    done = wait_for(lambda: all(redis.client.hget(f"tts:job:{j}", "status") == "done" for j in owner)
                    and time.time(), 1800, interval=0.2, what="the burst done")
    rows = {j: redis.client.hgetall(f"tts:job:{j}") for j in owner}
    audio = sum(float(r["duration_s"]) for r in rows.values())
    waits = sorted(float(r["claimed_at"]) - float(r["created_at"]) for r in rows.values())
    first = [min(float(rows[j]["claimed_at"]) for j in owner if owner[j] == i) - started for i in range(sessions)]
    nodes = sorted({r["node"] for r in rows.values()})
    return {"audio_s": audio, "wall_s": done - started, "rate": audio / (done - started),
            "wait_median": statistics.median(waits), "wait_p95": waits[max(0, round(0.95 * len(waits)) - 1)],
            "first_start": first, "nodes": nodes}


def killed_worker(web: Node, nodes: list[Node], redis: RedisServer, turns: int) -> dict:
    client = requests.Session()
    job_id = client.post(f"{web.url}/api/jobs", json={"script": dialogue(turns)}).json()["id"]
    key = f"tts:job:{job_id}"
    holder = wait_for(lambda: int(redis.client.hget(key, "segments_done") or 0) >= 3 and redis.client.hget(key, "node"),
                      120, interval=0.02, what="3 chunks")
    victim = next(n for n in nodes if n.name == holder)
    os.killpg(victim.worker.pid, signal.SIGKILL)
    killed = time.time()
    claimed = float(wait_for(lambda: redis.client.hget(key, "node") != holder and redis.client.hget(key, "claimed_at"),
                             120, interval=0.02, what="claimed again"))
    moved = wait_for(lambda: int(redis.client.hget(key, "segments_done") or 0) >= 4 and time.time(), 120,
                     interval=0.02, what="a new chunk")
    wait_for(lambda: redis.client.hget(key, "status") == "done", 300, interval=0.2, what="the job done")
    return {"claim_s": claimed - killed, "chunk_s": moved - killed,
            "recomputed": int(redis.client.hget(key, "attempts")) - turns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3, help="turns per job (about 2 s of audio each)")
    parser.add_argument("--pace", type=float, default=1.0, help="TTS_ENGINE_PACE (the lab's: 1.0)")
    parser.add_argument("--lease", type=float, default=6.0, help="TTS_LEASE_SECONDS (the deploy's: 6)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        try:
            for n in (int(x) for x in args.workers.split(",")):
                web, nodes = pool(Path(tmp) / f"pool{n}", redis, n, args.pace, args.lease)
                try:
                    results[n] = r = burst(web, redis, args.jobs, args.sessions, args.turns)
                finally:
                    for node in nodes:
                        node.stop()
                print(f"{n} worker(s): {r['audio_s']:.1f} s of audio in {r['wall_s']:.1f} s = {r['rate']:.2f} audio s "
                      f"per wall s; queue wait median {r['wait_median']:.1f} s, p95 {r['wait_p95']:.1f} s; each "
                      f"session's first start {', '.join(f'{s:.1f}' for s in r['first_start'])} s; "
                      f"on {', '.join(r['nodes'])}", flush=True)
            web, nodes = pool(Path(tmp) / "kill", redis, 2, args.pace, args.lease)
            try:
                k = killed_worker(web, nodes, redis, 12)
            finally:
                for node in nodes:
                    node.stop()
        finally:
            redis.stop()
    print(f"\nburst of {args.jobs} jobs ({args.turns} turns each) from {args.sessions} sessions, pace {args.pace:g}, "
          f"lease {args.lease:g} s; processes on this machine ({os.cpu_count()} cores)")
    base = results.get(1)
    for n, r in results.items():
        scale = f"{r['rate'] / base['rate']:.2f}x one worker" if base else ""
        print(f"  {n} worker(s): {r['rate']:.2f} audio s/wall s {scale}; queue wait p95 {r['wait_p95']:.1f} s; "
              f"first start per session max {max(r['first_start']):.1f} s")
    print(f"  a worker killed after 3 chunks (2 workers): running again on the other after {k['claim_s']:.2f} s, "
          f"its first new chunk after {k['chunk_s']:.2f} s, {k['recomputed']} chunk(s) recomputed")


if __name__ == "__main__":
    main()
