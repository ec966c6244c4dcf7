"""No single fault takes the pair down: what a job contains, an I/O error, a transient
engine error, a stale lease, a retried submit. Real redis-server, real jobs folder, real espeak-ng;
the two-node cases run real gunicorn + tts-worker processes (tests/harness.py).

Two stand-ins, named as such: an engine that raises a CUDA-like out-of-memory error (no GPU here),
and an os.stat that answers EIO (no failing NFS mount here)."""
from __future__ import annotations

import errno
import io
import os
import time

import numpy as np
import pytest
import requests
import soundfile as sf
from tts_service import storage as storage_mod
from tts_service.cluster import Cluster
from tts_service.engines import EngineError, EngineInputError
from tts_service.engines.espeak import EspeakEngine
from tts_service.jobs import k
from tts_service.recovery import reconcile
from tts_service.storage import Storage, StorageUnavailable
from tts_service.worker import Worker

from tests.harness import dialogue, wait_for

from .test_api import SCRIPT, submit

# ---- in-process: one worker, driven cycle by cycle ----

class FlakyEngine(EspeakEngine):
    """espeak-ng that fails its first `failures` calls: a stand-in for CUDA out-of-memory (or, with
    input=True, for a text the engine refuses)."""

    def __init__(self, failures: int, input_error: bool = False):
        super().__init__()
        self.failures = failures
        self.input_error = input_error
        self.calls = 0
        self.recovered = 0

    def synthesize(self, text, voice_id):
        self.calls += 1
        if self.calls <= self.failures:
            if self.input_error:
                raise EngineInputError("the engine refuses this text")
            raise EngineError("CUDA out of memory (stand-in)")
        return super().synthesize(text, voice_id)

    def recover(self):
        self.recovered += 1


def accept(rt, client_app, script=SCRIPT) -> str:
    res = submit(client_app)
    assert res.status_code == 202, res.get_json()
    return res.get_json()["id"]


def run_cycles(worker, job_id, rt, until=("done", "failed"), cycles=20):
    for _ in range(cycles):
        worker.cycle()
        status = rt.store.get(job_id)["status"]
        if status in until:
            return status
    return rt.store.get(job_id)["status"]


def test_a_transient_engine_error_does_not_fail_the_job(rt, api):
    job_id = accept(rt, api)
    rt.engine = FlakyEngine(failures=3)            # fails, retried, fails: the attempt is handed back
    worker = Worker(rt)
    worker.engine_loaded = True
    status = run_cycles(worker, job_id, rt)
    assert status == "done", rt.store.get(job_id)
    assert rt.engine.recovered >= 2                 # the cache was freed before each retry
    assert rt.files.failure_count(job_id) == 1      # one attempt charged, on storage
    assert "failed" not in rt.files.markers(job_id)


def test_a_job_that_keeps_failing_ends_failed_with_a_sentence_and_the_worker_goes_on(rt, api):
    bad = accept(rt, api)
    rt.engine = FlakyEngine(failures=10**6)
    worker = Worker(rt)
    worker.engine_loaded = True
    assert run_cycles(worker, bad, rt) == "failed"
    marker = rt.files.markers(bad)["failed"]
    assert "gave up after 3 failed attempts" in marker["error"] and "CUDA out of memory" in marker["error"]
    rt.engine = EspeakEngine()                      # the next job runs as usual on the same worker
    good = submit(api, script="Speaker 1: Another job.").get_json()["id"]
    assert run_cycles(worker, good, rt) == "done"


def test_an_input_error_fails_at_once_but_only_after_a_fresh_primary_check(rt, api, shared):
    job_id = accept(rt, api)
    rt.engine = FlakyEngine(failures=1, input_error=True)
    worker = Worker(rt)
    worker.engine_loaded = True
    assert run_cycles(worker, job_id, rt, cycles=3) == "failed"
    assert "refuses this text" in rt.files.markers(job_id)["failed"]["error"]
    # The same error on a node that lost its primacy meanwhile writes no marker.
    other = submit(api, script="Speaker 1: A second one.").get_json()["id"]
    rt.engine = FlakyEngine(failures=1, input_error=True)
    real_synth = rt.engine.synthesize

    def fenced_then_fail(text, voice):
        Cluster(Storage(shared), shared / "cluster").promote("tts-b", expect_epoch=1, by="test")
        return real_synth(text, voice)

    rt.engine.synthesize = fenced_then_fail
    sentence = worker.cycle()
    assert rt.engine.calls == 1, "the second job's synthesis was never reached"
    assert "fenced" in sentence, sentence
    assert "failed" not in rt.files.markers(other)


def test_an_io_error_is_not_a_missing_file(rt, api, monkeypatch):
    """Stand-in for a NAS answering EIO: before the fix, os.path.exists said False and reconcile
    ended every active job `failed` ("request is missing") in Redis only."""
    job_id = accept(rt, api)
    real_stat = os.stat

    def eio(path, *a, **kw):
        if "jobs" in str(path):
            raise OSError(errno.EIO, "Input/output error")
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(storage_mod.os, "stat", eio)
    with pytest.raises(StorageUnavailable):
        rt.storage.exists(rt.files.dir(job_id) / "request.json")
    # The mount itself still answers: one job's files fail; the job is skipped, never ended.
    reconcile(rt.store, rt.files, rt.sessions, rt.engine.sample_rate)
    assert rt.store.get(job_id)["status"] == "queued" and job_id in rt.store.active_ids()
    # The whole mount fails: reconciliation stops and says so (the node fences itself), ends nothing.
    real_listdir = os.listdir

    def eio_listdir(path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage_mod.os, "listdir", eio_listdir)
    with pytest.raises(StorageUnavailable):
        reconcile(rt.store, rt.files, rt.sessions, rt.engine.sample_rate)
    monkeypatch.setattr(storage_mod.os, "listdir", real_listdir)
    assert rt.store.get(job_id)["status"] == "queued"


def test_a_final_status_only_in_redis_never_outranks_storage(rt, api):
    job_id = accept(rt, api)
    rt.store.finish(job_id, "failed", error="the job's request is missing from shared storage")
    report = reconcile(rt.store, rt.files, rt.sessions, rt.engine.sample_rate)
    assert job_id in report.requeued
    assert rt.store.get(job_id)["status"] == "queued" and job_id in rt.store.active_ids()


def test_a_new_epoch_voids_the_old_primarys_lease_and_interrupted_jobs_go_first(rt, api):
    first = accept(rt, api)
    second = submit(api, script="Speaker 1: Queued behind the first.").get_json()["id"]
    # tts-a took the first job in epoch 1, wrote a segment, and died with its lease live.
    assert rt.store.acquire_lease(first, "tts-a", 1, ttl_s=60)
    rt.store.update(first, status="running", segments_done=1, claimed_at=time.time())
    assert rt.store.acquire_lease(first, "tts-b", 1, ttl_s=60) is None   # same epoch: still held
    assert rt.store.claimable() == [first, second]
    # tts-b, primary of epoch 2, takes the interrupted job at once instead of the queued one.
    token = rt.store.acquire_lease(first, "tts-b", 2, ttl_s=60)
    assert token and rt.store.lease_holder(first)["node"] == "tts-b"
    assert rt.store.acquire_lease(first, "tts-a", 1, ttl_s=60) is None   # the old epoch cannot take it back


def test_an_interrupted_job_is_claimed_before_an_older_queued_one(rt, api):
    older = accept(rt, api)
    newer = submit(api, script="Speaker 1: Started first, then interrupted.").get_json()["id"]
    rt.store.update(newer, status="running", segments_done=2, claimed_at=time.time())
    assert rt.store.claimable() == [newer, older]


# ---- the API: Idempotency-Key ----

def test_a_retried_submit_with_the_same_key_returns_the_same_job(api, rt):
    first = submit(api, headers={"Idempotency-Key": "click-1"})
    assert first.status_code == 202
    again = submit(api, headers={"Idempotency-Key": "click-1"})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    other = submit(api, headers={"Idempotency-Key": "click-2"})
    assert other.status_code == 202 and other.get_json()["id"] != first.get_json()["id"]
    assert len(api.get("/api/jobs").get_json()["jobs"]) == 2
    reused = submit(api, script="Speaker 1: Something else.", headers={"Idempotency-Key": "click-1"})
    assert reused.status_code == 202 and reused.get_json()["id"] not in (first.get_json()["id"],
                                                                         other.get_json()["id"])
    assert submit(api, headers={"Idempotency-Key": "x" * 65}).status_code == 400
    assert submit(api, headers={"Idempotency-Key": "bad key; rm"}).status_code == 400


def test_a_retry_whose_first_answer_and_cookie_were_lost_finds_its_job(rt):
    """An API client without a cookie jar (or whose first answer, with its Set-Cookie, never came
    back) retries with the same key: the same job, and the session that owns it."""
    from tts_service.app import create_app
    key = {"Idempotency-Key": "0b6f1f3e-8d1c-4c55-9a43-5f0e2d7c9b11"}
    first = create_app(rt.settings).test_client()
    job_id = submit(first, headers=key).get_json()["id"]
    retry = create_app(rt.settings).test_client()          # no cookie from the first attempt
    again = submit(retry, headers=key)
    assert again.status_code == 200 and again.get_json()["id"] == job_id
    assert [j["id"] for j in retry.get("/api/jobs").get_json()["jobs"]] == [job_id]
    assert retry.get(f"/api/jobs/{job_id}").status_code == 200
    # Another session with the same key and script is never handed that job (nor its session).
    stranger = create_app(rt.settings).test_client()
    submit(stranger, script="Speaker 1: my own first job")            # a session of its own
    taken = submit(stranger, headers=key)
    assert taken.status_code == 409 and "another session" in taken.get_json()["error"]
    assert job_id not in [j["id"] for j in stranger.get("/api/jobs").get_json()["jobs"]]
    # A short key is not enough to find a job without its cookie.
    submit(first, script="Speaker 1: short key", headers={"Idempotency-Key": "k1"})
    short = submit(create_app(rt.settings).test_client(), script="Speaker 1: short key",
                   headers={"Idempotency-Key": "k1"})
    assert short.status_code == 409 and "16 characters" in short.get_json()["error"]


def test_a_refused_submit_leaves_no_session(rt):
    """Sessions are made once what they store is durable: a refused submit (here the address's queue
    cap) answers without a cookie and leaves no session in Redis."""
    from dataclasses import replace

    from tts_service.app import create_app
    app = create_app(replace(rt.settings, queue_jobs_per_client=1))

    def sessions():
        return len(rt.redis.keys("tts:session:*"))
    before = sessions()
    assert submit(app.test_client()).status_code == 202           # the first one makes its session
    for _ in range(5):
        refused = submit(app.test_client(), script="Speaker 1: over the cap")
        assert refused.status_code == 429 and "Set-Cookie" not in refused.headers
    assert sessions() == before + 1


def test_a_submit_whose_first_attempt_reached_storage_but_not_redis_is_found_again(api, rt, redis_server):
    first = submit(api, headers={"Idempotency-Key": "lost-answer"}).get_json()["id"]
    redis_server.client.delete(k("job", first))      # as if the first answer (and Redis write) were lost
    again = submit(api, headers={"Idempotency-Key": "lost-answer"})
    assert again.status_code == 200 and again.get_json()["id"] == first
    assert rt.store.get(first)["status"] == "queued"
    from tts_service.app import create_app
    stranger = create_app(rt.settings).test_client()   # another key is another job, whoever sends it
    mine = submit(stranger, headers={"Idempotency-Key": "lost-answer-2"})
    assert mine.status_code == 202 and mine.get_json()["id"] != first


# ---- two real nodes: a damaged segment on storage in the middle of a run ----

SETTINGS = dict(TTS_ENGINE_PACE=0.15, TTS_LEASE_SECONDS=2, TTS_STATE_MAX_AGE=3, TTS_RECONCILE_INTERVAL=1,
                TTS_FAILURE_BACKOFF=1)


def test_a_damaged_segment_mid_run_neither_stops_the_worker_nor_the_pair(pair, shared):
    a, b = pair
    s = requests.Session()
    damaged_job = s.post(f"{a.url}/api/jobs", json={"script": dialogue(10)}).json()["id"]
    other_job = s.post(f"{a.url}/api/jobs", json={"script": dialogue(3)}).json()["id"]
    seg_dir = shared / "jobs" / damaged_job / "segments"
    wait_for(lambda: len([p for p in seg_dir.iterdir() if p.name.endswith(".wav")]) >= 3, 60, what="3 segments")
    victim = sorted(p for p in seg_dir.iterdir() if p.name.endswith(".wav"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])         # truncated, as a NAS that lost data would leave it
    first = sorted(p for p in seg_dir.iterdir() if p.name.endswith(".wav"))[0]
    first.write_bytes(b"RIFF\x00garbage")                      # and one not a WAV at all

    ready_seen = []
    deadline = time.monotonic() + 120
    statuses = {}
    while time.monotonic() < deadline:
        ready_seen.append((a.ready()[0], b.ready()[0]))
        assert a.worker.poll() is None, "the primary's worker died"
        statuses = {j: s.get(f"{a.url}/api/jobs/{j}").json()["status"] for j in (damaged_job, other_job)}
        if all(v in ("done", "failed") for v in statuses.values()):
            break
        time.sleep(0.3)
    assert statuses[other_job] == "done"
    assert all(r == (200, 200) for r in ready_seen), "the pair left its roles"
    job = s.get(f"{a.url}/api/jobs/{damaged_job}").json()
    assert job["status"] == "done", job
    # The damaged files were moved aside and generated again; the audio is every segment, whole.
    aside = [p.name for p in seg_dir.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 2, aside
    audio = s.get(f"{a.url}/api/jobs/{damaged_job}/audio")
    samples, rate = sf.read(io.BytesIO(audio.content))
    winners = sorted(p for p in seg_dir.iterdir() if p.name.endswith(".wav"))
    assert len(winners) == 10
    assert len(samples) == sum(sf.info(str(p)).frames for p in winners)
    assert np.isfinite(samples).all()
