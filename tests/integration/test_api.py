"""The JSON API through Flask's test client, against a real redis-server and a real jobs folder."""
import json

import pytest
from tts_service.app import create_app
from tts_service.cluster import Cluster
from tts_service.config import Settings
from tts_service.jobs import JobStore
from tts_service.storage import Storage

from tests.harness import wait_for


def make_settings(shared, tmp_path, redis_url, node="tts-a", **kw):
    return Settings(node=node, redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / f"run-{node}",
                    engine="espeak", **kw)


@pytest.fixture
def cluster(shared):
    c = Cluster(Storage(shared), shared / "cluster")
    c.init("tts-a", "tts-b", by="test")
    return c


@pytest.fixture
def client(shared, tmp_path, redis_url, cluster):
    return create_app(make_settings(shared, tmp_path, redis_url)).test_client()


SCRIPT = "Speaker 1: Hello there.\nSpeaker 2: Hi! How are you?\nSpeaker 1: Fine."


def submit(client, script=SCRIPT, voices=None, json_extra=None, **kw):
    body = {"script": script, **(json_extra or {})}
    if voices is not None:
        body["voices"] = voices
    return client.post("/api/jobs", json=body, **kw)


def test_voices_lists_espeak_voices(client):
    voices = client.get("/api/voices").get_json()["voices"]
    assert len(voices) >= 4
    assert all(v["engine"] == "espeak" and v["id"] and v["name"] for v in voices)


def test_a_voice_preview_is_spoken_once_and_kept_on_shared_storage(client, shared):
    import io

    import soundfile as sf
    first = client.get("/api/voices/espeak-us-f4/preview")
    assert first.status_code == 200 and first.mimetype == "audio/wav"
    data, rate = sf.read(io.BytesIO(first.get_data()))
    assert rate == 22050 and len(data) / rate > 2                        # espeak really spoke the sentence
    kept = shared / "voices" / "previews" / "espeak-espeak-us-f4.wav"
    made = kept.stat().st_mtime_ns
    again = client.get("/api/voices/espeak-us-f4/preview")
    assert again.get_data() == first.get_data() and kept.stat().st_mtime_ns == made   # not made again
    assert client.get("/api/voices/espeak-xx-none/preview").status_code == 404
    assert client.get("/api/voices/up-0123456789abcdef/preview").status_code == 404   # no such upload


def test_the_script_check_names_the_speakers_and_the_first_problem_and_stores_nothing(client, shared):
    ok = client.post("/api/script/check", json={"script": "Alice: Hello there, Bob.\nBob: Hi.\nAlice: Bye."})
    assert ok.status_code == 200 and "Set-Cookie" not in ok.headers           # no session made
    body = ok.get_json()
    assert body["speakers"] == [{"speaker": 1, "name": "Alice", "turns": 2}, {"speaker": 2, "name": "Bob", "turns": 1}]
    assert body["error"] is None and body["estimate_s"] > 0
    assert body["chars"] == len("Alice: Hello there, Bob.\nBob: Hi.\nAlice: Bye.")
    bad = client.post("/api/script/check", json={"script": "Speaker 7: who?"}).get_json()
    assert bad["error"] == "line 1 names Speaker 7; speakers are numbered 1 to 4" and bad["speakers"] == []
    long = client.post("/api/script/check", json={"script": "Speaker 1: " + "a" * bad["max_chars"]}).get_json()
    assert long["error"].startswith(f"the script is {bad['max_chars'] + 11} characters; the limit is")
    assert client.post("/api/script/check", data="Speaker 1: hi").status_code == 400
    assert not (shared / "jobs").exists() or not any((shared / "jobs").iterdir())


def test_a_script_with_names_is_submitted_with_a_voice_per_named_speaker(client):
    voices = [v["id"] for v in client.get("/api/voices").get_json()["voices"]]
    res = submit(client, "Alice: Hello.\nBob: Hi.", voices={"1": voices[0], "2": voices[1]})
    assert res.status_code == 202, res.get_json()
    job = client.get(f"/api/jobs/{res.get_json()['id']}").get_json()
    assert job["segments_total"] == 2


def test_submit_is_durable_before_202_and_visible_to_its_session(client, shared):
    res = submit(client, voices={"1": "espeak-us-m7"})
    assert res.status_code == 202
    job_id = res.get_json()["id"]
    assert res.get_json() == {"id": job_id, "status": "queued"}
    assert len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
    request = json.loads((shared / "jobs" / job_id / "request.json").read_text())
    assert [(s["speaker"], s["voice"]) for s in request["segments"]] == [
        (1, "espeak-us-m7"), (2, "espeak-us-f3"), (1, "espeak-us-m7")]
    assert res.headers["Set-Cookie"].startswith("tts_session=")
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert (job["status"], job["segments_done"], job["segments_total"]) == ("queued", 0, 3)
    assert [j["id"] for j in client.get("/api/jobs").get_json()["jobs"]] == [job_id]


def test_another_session_cannot_see_the_job(client, shared, tmp_path, redis_url):
    job_id = submit(client).get_json()["id"]
    stranger = create_app(make_settings(shared, tmp_path, redis_url)).test_client()
    assert stranger.get(f"/api/jobs/{job_id}").status_code == 404
    assert stranger.get(f"/api/jobs/{job_id}/audio").status_code == 404
    assert stranger.delete(f"/api/jobs/{job_id}").status_code == 404
    assert stranger.get("/api/jobs").get_json() == {"jobs": []}
    stranger.set_cookie("tts_session", "forged-token")
    assert stranger.get(f"/api/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize("body, status, message", [
    ({"script": ""}, 400, "the script is empty"),
    ({"script": "just words"}, 400, "does not start with a speaker"),
    ({"script": "Speaker 1: a\nSpeaker 5: b"}, 400, "names Speaker 5"),
    ({"script": SCRIPT, "voices": {"1": "no-such-voice"}}, 400, "unknown voice 'no-such-voice'"),
    ({"script": SCRIPT, "voices": {"7": "espeak-us-m3"}}, 400, "speakers are numbered 1 to 4"),
    ({"script": SCRIPT, "voices": ["espeak-us-m3"]}, 400, "'voices' must be an object"),
    ({"script": 42}, 400, "'script' must be a string"),
    ({"text": SCRIPT}, 400, "'script' must be a string"),
])
def test_bad_submissions_get_a_clear_error_and_leave_nothing(client, shared, redis_server, body, status, message):
    res = client.post("/api/jobs", json=body)
    assert res.status_code == status
    assert message in res.get_json()["error"]
    assert not (shared / "jobs").exists() or list((shared / "jobs").iterdir()) == []
    assert redis_server.client.keys("tts:job:*") == []


def test_malformed_json_is_400(client):
    res = client.post("/api/jobs", data="{not json", content_type="application/json")
    assert res.status_code == 400 and "JSON object" in res.get_json()["error"]


def test_oversize_script_is_413(shared, tmp_path, redis_url, cluster):
    client = create_app(make_settings(shared, tmp_path, redis_url, max_script_chars=1000)).test_client()
    res = submit(client, script="Speaker 1: " + "word " * 400)
    assert res.status_code == 413 and "the limit is 1000" in res.get_json()["error"]
    huge = client.post("/api/jobs", data=b"x" * 200_000, content_type="application/json")
    assert huge.status_code == 413 and "error" in huge.get_json()


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "..%2F..%2Fcluster", "ABC", "0" * 31, "g" * 32])
def test_malformed_job_ids_are_404(client, job_id):
    for method in ("get", "delete"):
        res = getattr(client, method)(f"/api/jobs/{job_id}")
        assert res.status_code == 404 and res.get_json()["error"]
    assert client.get(f"/api/jobs/{job_id}/audio").status_code == 404


def test_standby_refuses_writes_with_503_and_retry_after(shared, tmp_path, redis_url, cluster):
    standby = create_app(make_settings(shared, tmp_path, redis_url, node="tts-b")).test_client()
    res = submit(standby)
    assert res.status_code == 503
    assert res.headers["Retry-After"]
    assert "tts-a is the primary of epoch 1" in res.get_json()["error"]
    assert not (shared / "jobs").exists() or list((shared / "jobs").iterdir()) == []


def test_rate_limit_per_session_answers_429(shared, tmp_path, redis_url, cluster):
    client = create_app(make_settings(shared, tmp_path, redis_url, rate_limit_per_session=3)).test_client()
    codes = [submit(client).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    res = submit(client)
    assert int(res.headers["Retry-After"]) > 0 and "too many jobs" in res.get_json()["error"]


def test_cancel_is_durable_on_shared_storage(client, shared):
    job_id = submit(client).get_json()["id"]
    res = client.delete(f"/api/jobs/{job_id}")
    assert res.status_code == 202 and res.get_json()["status"] == "cancelled"
    assert (shared / "jobs" / job_id / "state" / "cancelled").exists()
    assert client.get(f"/api/jobs/{job_id}").get_json()["status"] == "cancelled"
    again = client.delete(f"/api/jobs/{job_id}")
    assert again.status_code == 400 and "already cancelled" in again.get_json()["error"]


def test_a_job_has_a_title_given_or_made_from_its_first_words(client):
    named = submit(client, json_extra={"title": "Episode 12: keeping services alive"})
    assert client.get(f"/api/jobs/{named.get_json()['id']}").get_json()["title"] == "Episode 12: keeping services alive"
    plain = client.get(f"/api/jobs/{submit(client).get_json()['id']}").get_json()
    assert plain["title"] == "Hello there."
    for bad in ("", " ", "x" * 121, "two\nlines", 7, "half \ud800 a pair", "evil \u202e reversed"):
        res = client.post("/api/jobs", json={"script": SCRIPT, "title": bad})
        assert (res.status_code == 400 and "'title' must be" in res.get_json()["error"]) or bad == "", (bad, res.get_json())


def test_run_again_reads_what_was_asked_and_only_the_session_may(client, tmp_path, shared, redis_url):
    voices = [v["id"] for v in client.get("/api/voices").get_json()["voices"]]
    job_id = client.post("/api/jobs", json={"script": SCRIPT, "voices": {"1": voices[1]}, "seed": 42,
                                            "title": "Take two"}).get_json()["id"]
    asked = client.get(f"/api/jobs/{job_id}/request").get_json()
    assert asked["script"] == SCRIPT and asked["seed"] == 42 and asked["title"] == "Take two"
    assert asked["voices"]["1"] == voices[1]
    stranger = create_app(make_settings(shared, tmp_path, redis_url)).test_client()
    assert stranger.get(f"/api/jobs/{job_id}/request").status_code == 404


def test_a_finished_job_is_deleted_from_the_history_and_from_storage(client, shared, redis_server):
    job_id = submit(client).get_json()["id"]
    early = client.delete(f"/api/jobs/{job_id}?purge=1")
    assert early.status_code == 400 and "cancel it first" in early.get_json()["error"]
    assert client.delete(f"/api/jobs/{job_id}").status_code == 202             # cancelled: final now
    # ... but a worker still holds its lease (it stops at its next chunk boundary): not yet
    store = JobStore(redis_server.client)
    token = store.acquire_lease(job_id, "tts-a", 1, 30)
    held = client.delete(f"/api/jobs/{job_id}?purge=1")
    assert held.status_code == 409 and "still stopping" in held.get_json()["error"]
    assert store.release_lease(job_id, token)
    gone = client.delete(f"/api/jobs/{job_id}?purge=1")
    assert gone.status_code == 200 and gone.get_json() == {"id": job_id, "deleted": True}
    assert job_id not in [j["id"] for j in client.get("/api/jobs").get_json()["jobs"]]
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert not (shared / "jobs" / job_id).exists()                            # renamed aside at once
    assert client.delete(f"/api/jobs/{job_id}?purge=1").status_code == 404    # a second click
    wait_for(lambda: not any(p.name.startswith(".trash") or job_id in p.name for p in (shared / "jobs").iterdir()),
             10, what="the files deleted")


def test_audio_of_an_unfinished_job_is_404_with_a_reason(client):
    job_id = submit(client).get_json()["id"]
    res = client.get(f"/api/jobs/{job_id}/audio")
    assert res.status_code == 404 and "queued" in res.get_json()["error"]


def test_ready_without_a_worker_is_503_and_says_why(client):
    res = client.get("/ready")
    body = res.get_json()
    assert res.status_code == 503
    assert (body["node"], body["role"], body["epoch"], body["fenced"]) == ("tts-a", "primary", 1, False)
    assert body["checks"]["worker"] is False and body["checks"]["redis"] and body["checks"]["storage"]
    assert "worker has not started" in body["reason"]
    assert client.get("/health").status_code == 200


def test_page_is_served(client):
    res = client.get("/")
    assert res.status_code == 200 and b"Speaker 1:" in res.data and b"app.js" in res.data


def test_a_stopping_worker_keeps_the_primary_serving_but_not_a_standby(shared, tmp_path, redis_url, cluster):
    """SIGTERM makes the worker finish its chunk and hand its job back (a planned switchover): the
    primary keeps answering /primary meanwhile (jobs wait on storage); a standby whose worker stops is
    not fit for promotion."""
    import time as _time

    from tts_service import heartbeat
    apps = {}
    for node in ("tts-a", "tts-b"):
        settings = make_settings(shared, tmp_path, redis_url, node=node)
        heartbeat.write(heartbeat.heartbeat_path(settings.run_dir, node),
                        {"ts": _time.time(), "engine_loaded": True, "stopping": True})
        apps[node] = create_app(settings).test_client()
    res = apps["tts-a"].get("/primary")
    assert res.status_code == 200 and res.get_json()["checks"]["worker"] is True, res.get_json()
    body = apps["tts-b"].get("/ready").get_json()
    assert body["role"] == "standby" and body["checks"]["worker"] is False

