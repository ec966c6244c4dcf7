"""Workers on both nodes of the pair (TTS_WORKER_POOL=1): one queue, jobs fenced by their own lease.

Two real nodes on this machine (gunicorn + tts-worker each), one redis-server, one jobs folder; the
cluster state says tts-a is the primary and never changes here: losing a worker is not a failover."""
import io
import json
import os
import signal
import time

import numpy as np
import requests
import soundfile as sf

from tests.harness import chunk_key, dialogue, wait_for

TURNS = 8
SETTINGS = dict(TTS_WORKER_POOL=1, TTS_ENGINE_PACE=0.3, TTS_LEASE_SECONDS=2, TTS_STATE_MAX_AGE=3,
                TTS_RECONCILE_INTERVAL=2)


def submit(node, session, turns=TURNS) -> str:
    res = session.post(f"{node.url}/api/jobs", json={"script": dialogue(turns)})
    assert res.status_code == 202, res.text
    return res.json()["id"]


def job_of(node, session, job_id) -> dict:
    return session.get(f"{node.url}/api/jobs/{job_id}").json()


def wait_done(node, session, job_id, timeout=120) -> dict:
    return wait_for(lambda: (j := job_of(node, session, job_id))["status"] == "done" and j, timeout, interval=0.2,
                    what=f"job {job_id} done")


def chunks(shared, job_id) -> list[tuple[int, int, int]]:
    return sorted(chunk_key(p.name) for p in (shared / "jobs" / job_id / "segments").iterdir()
                  if p.name.endswith(".wav"))


def samples(node, session, job_id) -> np.ndarray:
    res = session.get(f"{node.url}/api/jobs/{job_id}/audio")
    assert res.status_code == 200
    return sf.read(io.BytesIO(res.content), dtype="int16")[0]


def epoch(shared) -> int:
    return json.loads((shared / "cluster" / "state.json").read_text())["epoch"]


def running_on(node, session, job_id, segments: int) -> str:
    """The node the job runs on, once it has `segments` chunks done."""
    return wait_for(lambda: (j := job_of(node, session, job_id))["status"] == "running"
                    and j["segments_done"] >= segments and j["node"], 60, interval=0.05,
                    what=f"{segments} chunks of {job_id}")


def job_running(pair, segments: int):
    """A job submitted to tts-a, once it runs with `segments` chunks done: (session, job id, its node)."""
    a, b = pair
    session = requests.Session()
    job_id = submit(a, session)
    return session, job_id, {"tts-a": a, "tts-b": b}[running_on(a, session, job_id, segments)]


def assert_as_if_uninterrupted(node, session, job_id):
    """The job's audio equals that of the same script run again, uninterrupted."""
    again = submit(node, session)
    wait_done(node, session, again)
    assert np.array_equal(samples(node, session, job_id), samples(node, session, again))


def test_both_nodes_run_jobs_at_once_from_one_queue(pair, shared):
    a, b = pair
    one, two = requests.Session(), requests.Session()
    first, second = submit(a, one), submit(a, two)
    nodes = wait_for(lambda: {job_of(a, s, j)["node"] for s, j in ((one, first), (two, second))
                              if job_of(a, s, j)["status"] == "running"} == {"tts-a", "tts-b"} or None, 30,
                     interval=0.1, what="both jobs running, one on each node")
    assert nodes
    for session, job_id in ((one, first), (two, second)):
        job = wait_done(a, session, job_id)
        assert (job["segments_done"], job["error"]) == (TURNS, None)
        # one grant each: every chunk of generation 1, none written twice
        assert chunks(shared, job_id) == [(i, 1, 1) for i in range(TURNS)]
    assert epoch(shared) == 1                                 # nobody failed over
    # Both workers spoke in Redis and are shown on the primary's /metrics.
    metrics = requests.get(f"{a.url}/metrics").text
    assert 'tts_worker_last_seen_seconds{worker="tts-a"}' in metrics
    assert 'tts_worker_last_seen_seconds{worker="tts-b"}' in metrics
    assert "tts_workers_taking_jobs 2.0" in metrics


def test_two_workers_racing_for_one_job_never_mix_their_audio(pair, shared):
    """The worker that runs a job freezes holding its lease; the lease lapses, the other worker takes the
    job under a new generation and goes on; the frozen one wakes mid-chunk, believing the job is its own.
    It commits nothing more: its next write finds a newer grant. The audio is what an uninterrupted run
    makes."""
    a, b = pair
    session, job_id, holder = job_running(pair, 3)
    other = b if holder is a else a
    holder_worker = holder.worker.pid
    os.killpg(holder_worker, signal.SIGSTOP)
    frozen = chunks(shared, job_id)
    try:
        wait_for(lambda: any(gen == 2 for _, _, gen in chunks(shared, job_id)), 30, what="the second grant's chunk")
    finally:
        os.killpg(holder_worker, signal.SIGCONT)             # wakes up mid-chunk, its lease long gone
    job = wait_done(a, session, job_id)
    time.sleep(1.5)                                          # every chance to misbehave
    assert job["node"] == other.name
    after = chunks(shared, job_id)
    first_gen2 = min(i for i, _, gen in after if gen == 2)
    late = [c for c in after if c not in frozen and c[2] == 1]
    # At most the one chunk whose check passed before the new grant; none after the new holder's first.
    assert len(late) <= 1 and all(i < first_gen2 + 1 for i, _, _ in late), (late, first_gen2)
    assert holder.worker.poll() is None                      # the woken worker lives on, and idles
    assert epoch(shared) == 1

    assert_as_if_uninterrupted(a, session, job_id)


def test_a_killed_worker_costs_at_most_one_chunk_and_no_failover(pair, shared, redis_server):
    a, b = pair
    session, job_id, victim = job_running(pair, 4)
    victim.worker.kill()                                      # SIGKILL: the host's worker is gone
    os_pid = victim.worker.pid
    victim.worker.wait(5)
    job = wait_done(a, session, job_id)
    assert job["node"] != victim.name and job["segments_done"] == TURNS
    attempts = int(redis_server.client.hget(f"tts:job:{job_id}", "attempts"))
    assert attempts - TURNS <= 1, attempts                    # at most the chunk in hand recomputed
    assert epoch(shared) == 1                                 # a worker lost is not a failover
    assert_as_if_uninterrupted(a, session, job_id)
    # The dead worker is shown as silent (TTSWorkerDown watches this), the live one as fresh.
    survivor = a if victim is b else b
    metrics = requests.get(f"{survivor.url}/metrics").text
    seen = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("tts_worker_last_seen_seconds{")}
    assert seen[victim.name] > 3 and seen[survivor.name] < 3, (seen, os_pid)


def test_a_drained_worker_finishes_its_chunk_hands_the_job_over_and_leaves_the_pool(pair, shared, redis_server):
    a, b = pair
    session, job_id, drained = job_running(pair, 3)
    drained.worker.send_signal(signal.SIGTERM)
    drained.worker.wait(20)
    job = wait_done(a, session, job_id)
    assert job["node"] != drained.name
    assert int(redis_server.client.hget(f"tts:job:{job_id}", "attempts")) == TURNS   # nothing recomputed
    assert drained.name not in redis_server.client.hgetall("tts:workers")
