"""Retention (tts-retention) on real shared storage and a real Redis: old finished jobs go, from both;
unfinished jobs stay whatever their age; uploaded voice clips go with their expired session unless an
unfinished job needs them; a fenced node removes nothing."""
from __future__ import annotations

import json
import os
import time

import pytest
from tts_service.cluster import Cluster
from tts_service.config import Settings
from tts_service.jobs import k
from tts_service.retention import purge
from tts_service.runtime import Runtime
from tts_service.storage import Storage
from tts_service.worker import Worker

from .test_api import submit


@pytest.fixture
def rt(shared, tmp_path, redis_url):
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    return Runtime.build(Settings(node="tts-a", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                                  engine="espeak", lease_s=3))


@pytest.fixture
def api(rt):
    from tts_service.app import create_app
    return create_app(rt.settings).test_client()


def finished(rt, api, days_ago: float) -> str:
    job_id = submit(api, script="Speaker 1: A short job.").get_json()["id"]
    worker = Worker(rt)
    worker.engine_loaded = True
    for _ in range(5):
        worker.cycle()
        if rt.store.get(job_id)["status"] == "done":
            break
    marker = rt.files.dir(job_id) / "state" / "done"
    then = time.time() - days_ago * 86400     # the NAS dated the marker then (its mtime)
    os.utime(marker, (then, then))
    return job_id


def test_a_writer_whose_clock_ran_behind_cannot_date_audio_into_the_past(rt, api):
    """The marker's body says 200 days ago (its writer's clock); the NAS wrote it just now: kept."""
    job_id = finished(rt, api, 0)
    marker = rt.files.dir(job_id) / "state" / "done"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "at": time.time() - 200 * 86400}))
    report = purge(rt, days=30)
    assert report.removed == [] and report.kept_recent == 1, report
    assert rt.files.markers(job_id)["done"]


def test_old_finished_jobs_go_from_storage_and_redis_and_nothing_else_does(rt, api, redis_server):
    old = finished(rt, api, 40)
    recent = finished(rt, api, 3)
    queued_long_ago = submit(api, script="Speaker 1: Still waiting.").get_json()["id"]
    request = rt.files.dir(queued_long_ago) / "request.json"
    request.write_text(json.dumps({**json.loads(request.read_text()), "created_at": time.time() - 90 * 86400}))
    running = submit(api, script="Speaker 1: Running now.").get_json()["id"]
    assert rt.store.acquire_lease(running, "tts-a", 1, 30)
    session = rt.store.get(old)["session"]

    report = purge(rt, days=30)
    assert report.removed == [old], report
    assert "removed 1 jobs finished more than 30 days ago" in report.sentence
    assert not rt.files.dir(old).exists()
    assert not [p for p in rt.files.jobs_dir.iterdir() if p.name.startswith(".trash-")]
    r = redis_server.client
    assert not r.exists(k("job", old)) and r.zscore(k("sessjobs", session), old) is None
    for kept in (recent, queued_long_ago, running):
        assert rt.files.dir(kept).exists() and r.exists(k("job", kept)), kept
    assert purge(rt, days=30).removed == []        # a second run finds nothing more


def test_a_fenced_node_removes_nothing(rt, api, shared):
    old = finished(rt, api, 40)
    Cluster(Storage(shared), shared / "cluster").promote("tts-b", expect_epoch=1, by="test")
    time.sleep(0.6)   # past the node's state cache
    report = purge(rt, days=30)
    assert report.removed == [] and "not the unfenced primary" in report.sentence, report.sentence
    assert rt.files.dir(old).exists()


def clip(rt, sid: str, days_ago: float) -> str:
    """An uploaded clip of session sid, as if uploaded days_ago."""
    import numpy as np
    info = rt.voices.save(sid, "my voice", 0.1 * np.sin(np.linspace(0, 2000, 24000 * 3)).astype("float32"), "vibevoice")
    meta = rt.voices.root / sid / f"{info['id']}.json"
    then = time.time() - days_ago * 86400     # the NAS dated it then (its mtime)
    os.utime(meta, (then, then))
    return info["id"]


def test_voice_clips_go_with_their_expired_session_and_only_then(rt, api):
    _token, expired = rt.sessions.create()
    _token, alive = rt.sessions.create()
    _token, recent = rt.sessions.create()
    busy_job = submit(api, script="Speaker 1: Waiting for my voice.").get_json()["id"]   # stays queued
    busy = rt.store.get(busy_job)["session"]
    for sid in (expired, alive, recent, busy):
        clip(rt, sid, 3 if sid == recent else 40)
    for sid in (expired, recent, busy):                      # gone from Redis (TTS_SESSION_TTL)
        rt.redis.delete(k("session", sid))

    report = purge(rt, days=30)
    assert report.voices_removed == [expired], report
    assert "removed the voice clips of 1 expired sessions" in report.sentence
    left = sorted(p.name for p in rt.voices.root.iterdir())
    assert left == sorted([alive, recent, busy])             # no trash left behind either
    assert len(rt.voices.list(busy)) == 1


def test_a_fenced_node_expires_no_voice_clips(rt, shared):
    _token, sid = rt.sessions.create()
    clip(rt, sid, 40)
    rt.redis.delete(k("session", sid))
    Cluster(Storage(shared), shared / "cluster").promote("tts-b", expect_epoch=1, by="test")
    time.sleep(0.6)   # past the node's state cache
    report = purge(rt, days=30)
    assert report.voices_removed == [] and (rt.voices.root / sid).is_dir()


def test_retention_still_reads_the_nas_clock_when_the_nas_is_full(rt, api, monkeypatch):
    """A full NAS cannot take the probe file (stand-in: ENOSPC from creating it); retention is needed
    most then, and asks the NAS's clock through .clock, written in place."""
    import builtins
    import errno

    from tts_service import storage as storage_mod
    finished(rt, api, 40)
    purge(rt, days=30)                    # a first run leaves .clock behind
    assert (rt.files.jobs_dir / ".clock").exists()
    old = finished(rt, api, 40)
    real_open = builtins.open

    def full(path, mode="r", *a, **kw):
        if ".clock-" in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(storage_mod, "open", full, raising=False)
    report = purge(rt, days=30)
    assert report.removed == [old], report.sentence


def test_a_new_primary_whose_handover_is_pending_waits_for_it_then_removes(rt, api, shared, redis_url, tmp_path):
    """tts-retention is a new process each day: on a primary of epoch 2 whose old primary was never
    confirmed fenced (a paused host), its first read finds the handover pending. It waits for the
    handover (bounded by its wait) instead of removing nothing. (Before: "removed nothing: this node is
    not the unfenced primary (taking over as primary of epoch 2 …)" on every run in such an epoch.)"""
    old = finished(rt, api, 40)
    cluster = Cluster(Storage(shared), shared / "cluster")
    cluster.touch_alive("tts-a")                     # the old primary left a mark just now
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    b = Runtime.build(Settings(node="tts-b", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run-b",
                               engine="espeak", lease_s=3, state_max_age_s=1.0))
    report = purge(b, days=30)
    assert report.removed == [old], report.sentence
