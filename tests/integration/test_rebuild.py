"""Redis is a cache the pair rebuilds whole from shared storage: after Redis loses its data (a restart
without its files, a FLUSHALL) the same browser session lists, shows and downloads every one of its jobs
within one worker cycle, and its uploaded voices are still its own."""
import time

from tts_service.worker import Worker


def run_until(worker, rt, job_id, status, cycles=20):
    for _ in range(cycles):
        worker.cycle()
        if rt.store.get(job_id).get("status") == status:
            return
    raise AssertionError(f"job {job_id} never reached {status}: {rt.store.get(job_id)}")


def test_after_redis_loses_everything_the_same_session_lists_and_downloads_every_job(rt, api, redis_server):
    worker = Worker(rt)
    worker.engine_loaded = True
    ids = []
    for n in range(3):
        r = api.post("/api/jobs", json={"script": f"Speaker 1: Job number {n}.\nSpeaker 2: Its second turn."})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    run_until(worker, rt, ids[0], "done")                   # one done, two not yet
    assert {j["id"] for j in api.get("/api/jobs").get_json()["jobs"]} == set(ids)

    redis_server.client.flushall()                          # Redis lost everything; storage is the truth
    assert api.get("/api/jobs").get_json()["jobs"] == []    # (what the owner saw until it was rebuilt)
    worker.cycle()                                          # the next cycle notices and rebuilds at once

    listed = api.get("/api/jobs").get_json()["jobs"]
    assert {j["id"] for j in listed} == set(ids), listed
    for job_id in ids:
        assert api.get(f"/api/jobs/{job_id}").status_code == 200
    assert api.get(f"/api/jobs/{ids[0]}").get_json()["status"] == "done"
    assert api.get(f"/api/jobs/{ids[0]}/audio").status_code == 200
    for job_id in ids[1:]:
        run_until(worker, rt, job_id, "done")
        assert api.get(f"/api/jobs/{job_id}/audio").status_code == 200


def test_a_rebuild_is_noticed_at_once_not_at_the_next_periodic_scan(rt, api, redis_server):
    """The periodic scan (TTS_RECONCILE_INTERVAL, 15 s) is for drift; an emptied Redis is noticed by the
    next cycle (a marker key it left there is gone)."""
    worker = Worker(rt)
    worker.engine_loaded = True
    job_id = api.post("/api/jobs", json={"script": "Speaker 1: Hello."}).get_json()["id"]
    run_until(worker, rt, job_id, "done")
    worker.cycle()
    redis_server.client.flushall()
    started = time.monotonic()
    worker.cycle()
    assert time.monotonic() - started < rt.settings.reconcile_interval_s
    assert api.get(f"/api/jobs/{job_id}").status_code == 200


def test_a_session_that_only_uploaded_voices_is_rebuilt_too(rt, api, redis_server):
    import numpy as np
    from tts_service.api import COOKIE
    api.post("/api/jobs", json={"script": "Speaker 1: Hello."})          # the session's cookie
    token = api.get_cookie(COOKIE).value
    sid = rt.sessions.lookup(token)
    other = "f" * 64                                                        # a session with voices only
    rt.voices.save(other, "my voice", np.full(24000, 0.1, np.float32), "vibevoice")
    worker = Worker(rt)
    worker.engine_loaded = True
    worker.cycle()
    redis_server.client.flushall()
    worker.cycle()
    assert rt.sessions.lookup(token) == sid
    assert redis_server.client.exists(f"tts:session:{other}")


def test_a_submit_before_the_rebuild_keeps_the_owners_session(rt, api, redis_server):
    """Redis emptied, and the owner submits before the worker's next cycle has rebuilt it: the submit
    must not hand out a new session (its cookie replaced the owner's, and every earlier job was out of
    its reach for good: seen in the soak)."""
    worker = Worker(rt)
    worker.engine_loaded = True
    first = api.post("/api/jobs", json={"script": "Speaker 1: Before the wipe."}).get_json()["id"]
    run_until(worker, rt, first, "done")
    redis_server.client.flushall()
    r = api.post("/api/jobs", json={"script": "Speaker 1: During the rebuild."})
    assert r.status_code == 202, r.get_json()
    assert "tts_session" not in r.headers.get("Set-Cookie", ""), r.headers.get("Set-Cookie")
    second = r.get_json()["id"]
    worker.cycle()
    assert {j["id"] for j in api.get("/api/jobs").get_json()["jobs"]} == {first, second}
    assert api.get(f"/api/jobs/{first}/audio").status_code == 200


def test_after_the_rebuild_an_unknown_cookie_still_gets_a_session_of_its_own(rt, api, redis_server):
    """Keeping a cookie's session is only for the window before the rebuild: afterwards a cookie Redis
    does not know (expired, forged) gets a new session, as before."""
    worker = Worker(rt)
    worker.engine_loaded = True
    worker.cycle()                                         # rebuilt: the marker is there
    api.set_cookie("tts_session", "a-forged-token", domain="localhost")
    r = api.post("/api/jobs", json={"script": "Speaker 1: Hello."})
    assert r.status_code == 202
    assert "tts_session=" in r.headers.get("Set-Cookie", ""), r.headers


def test_reads_before_the_rebuild_leave_no_session_behind(rt, api, redis_server):
    """Keeping a cookie's session in that window writes nothing for a mere read: a flood of made-up
    cookies must not fill Redis (noeviction) with sessions, nor fail on a read-only replica."""
    redis_server.client.flushall()
    for n in range(20):
        api.set_cookie("tts_session", f"made-up-{n}", domain="localhost")
        assert api.get("/api/jobs").status_code == 200
    assert list(redis_server.client.scan_iter("tts:session:*")) == []
