"""No client takes the pair down: what a client sends costs only that client. Real redis-server, real
jobs folder, real espeak-ng, Flask's test client or real gunicorn processes (tests/harness.py)."""
from __future__ import annotations

import json

import pytest
from tts_service.cluster import Cluster
from tts_service.config import Settings
from tts_service.engines.espeak import EspeakEngine
from tts_service.storage import Storage
from tts_service.worker import Worker

from .test_api import submit
from .test_safety import run_cycles


def post_raw(api, body: bytes, **kw):
    return api.post("/api/jobs", data=body, content_type="application/json", **kw)


# ---- text checked at the door ----

@pytest.mark.parametrize("escaped, why", [
    ("\\ud800", "surrogate"),            # valid JSON, not valid Unicode: no encoding can write it
    ("ok\\u0007bell", "control character U+0007"),
    ("ok\\u001b[31m", "control character U+001B"),
    ("\\uffff", "U+FFFF"),
])
def test_text_no_engine_can_take_is_refused_at_submit_with_a_sentence(api, rt, escaped, why):
    res = post_raw(api, b'{"script": "Speaker 1: ' + escaped.encode() + b'"}')
    assert res.status_code == 400, res.get_json()
    assert why in res.get_json()["error"] and "line 1" in res.get_json()["error"]
    assert rt.store.active_ids() == []                  # no job was made


def test_text_is_stored_in_nfc(api, rt):
    res = post_raw(api, json.dumps({"script": "Speaker 1: Cafe\u0301 au lait.\tTab and\r\nSpeaker 2: fin."}).encode())
    assert res.status_code == 202, res.get_json()
    request = rt.files.request(res.get_json()["id"])
    assert request["segments"][0]["text"] == "Caf\u00e9 au lait.\tTab and"
    assert "Caf\u00e9" in request["script"]


# ---- an input error costs its job, never the node ----

def _smuggle(rt, api, text: str) -> str:
    """A job whose stored text never passed the door (written by an older release, or by hand)."""
    job_id = submit(api, script="Speaker 1: placeholder").get_json()["id"]
    path = rt.files.dir(job_id) / "request.json"
    request = json.loads(path.read_text())
    request["segments"][0]["text"] = text
    path.write_text(json.dumps(request))
    return job_id


class UnicodeChokingEngine(EspeakEngine):
    """espeak-ng behind a text encoding that chokes on one word: an input error the engine raises as
    a plain exception (not an EngineError), as the real one did with a lone surrogate."""

    def synthesize(self, text, voice_id):
        if "poison" in text:
            "poison \ud800".encode("utf-8")
        return super().synthesize(text, voice_id)


def test_bad_input_fails_its_job_at_once_and_never_makes_the_node_unfit(rt, api):
    worker = Worker(rt)
    worker.engine_loaded = True
    smuggled = [_smuggle(rt, api, f"turn {n} \ud800") for n in range(3)]
    for job_id in smuggled:
        assert run_cycles(worker, job_id, rt, cycles=3) == "failed"
        error = rt.files.markers(job_id)["failed"]["error"]
        assert "surrogate" in error and "gave up" not in error        # at once, with its reason
    rt.engine = UnicodeChokingEngine()
    choking = [submit(api, script=f"Speaker 1: poison {n}").get_json()["id"] for n in range(3)]
    for job_id in choking:
        assert run_cycles(worker, job_id, rt, cycles=3) == "failed"
        assert "UnicodeEncodeError" in rt.files.markers(job_id)["failed"]["error"]
    assert worker.engine_loaded and worker.engine_error is None, worker.engine_error
    good = submit(api, script="Speaker 1: After six bad jobs, a good one.").get_json()["id"]
    assert run_cycles(worker, good, rt) == "done"


class BrokenEngine(EspeakEngine):
    """An engine whose device failed (a stand-in for a CUDA error: no GPU here)."""
    broken = True

    def synthesize(self, text, voice_id):
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (stand-in)")
        return super().synthesize(text, voice_id)


def test_engine_faults_on_several_jobs_make_the_node_unfit_and_a_success_clears_the_count(rt, api):
    worker = Worker(rt)
    worker.engine_loaded = True
    rt.engine = BrokenEngine()
    first = submit(api, script="Speaker 1: one").get_json()["id"]
    second = submit(api, script="Speaker 1: two").get_json()["id"]
    worker.cycle()                     # an attempt at the first job: the engine's fault, charged to both
    rt.engine.broken = False
    assert run_cycles(worker, second, rt) == "done"      # a success: the count starts again
    assert run_cycles(worker, first, rt) == "done"
    assert worker.failed_in_a_row == []
    rt.engine.broken = True
    for n in range(3):
        submit(api, script=f"Speaker 1: job {n}")
    for _ in range(9):
        if not worker.engine_loaded:
            break
        worker.cycle()
    assert not worker.engine_loaded
    assert "unfit" in worker.engine_error and "CUDA error" in worker.engine_error


# ---- no state for nothing ----

def test_3000_cookieless_requests_leave_a_bounded_handful_of_redis_keys(rt, api, redis_server):
    job_id = submit(api, script="Speaker 1: a job to look at").get_json()["id"]
    before = redis_server.client.dbsize()
    paths = ["/api/jobs", "/api/voices", f"/api/jobs/{job_id}", "/api/jobs/" + "0" * 32, "/ready", "/health"]
    api.delete_cookie("tts_session")
    for n in range(3000):   # no cookie jar: every request arrives without one
        res = api.get(paths[n % len(paths)], headers={"Cookie": ""})
        assert res.status_code in (200, 404, 503), (paths[n % len(paths)], res.status_code)
        assert "Set-Cookie" not in res.headers
    assert redis_server.client.dbsize() - before <= 3, sorted(redis_server.client.keys("*"))


def test_a_redis_that_refuses_writes_makes_the_primary_unready_and_is_measured(rt, api, redis_server):
    assert api.get("/ready").get_json()["checks"]["redis"] is True   # (no worker here: /ready is 503 anyway)
    metrics = api.get("/metrics").get_data(as_text=True)
    assert "tts_redis_used_memory_bytes" in metrics and "tts_redis_maxmemory_bytes" in metrics
    client = redis_server.client
    client.config_set("maxmemory-policy", "noeviction")
    for n in range(100):        # as a poller leaving sessions would have, until Redis is over its maxmemory
        client.set(f"filler:{n}", "x" * 4096)
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) // 2))
    try:
        res = api.get("/ready").get_json()
        assert res["checks"]["redis"] is False
        assert "refuses writes" in res["reason"] and "maxmemory" in res["reason"]
    finally:
        client.config_set("maxmemory", "0")
    assert api.get("/ready").get_json()["checks"]["redis"] is True


# ---- queue caps ----

def test_a_session_and_a_client_cannot_queue_more_than_their_share(shared, tmp_path, redis_url):
    from dataclasses import replace

    from tts_service.app import create_app
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    settings = replace(Settings(node="tts-a", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                                engine="espeak"),
                       queue_jobs_per_session=2, queue_jobs_per_client=3, queue_audio_s_per_session=60)
    app = create_app(settings)
    alice, bob = app.test_client(), app.test_client()
    assert [submit(alice, script=f"Speaker 1: short {n}").status_code for n in range(2)] == [202, 202]
    third = submit(alice, script="Speaker 1: one too many")
    assert third.status_code == 429 and "2 jobs waiting or running" in third.get_json()["error"]
    assert int(third.headers["Retry-After"]) > 0
    long = submit(bob, script="Speaker 1: " + "word " * 200)        # about 80 s of audio: past 60 s
    assert long.status_code == 429 and "minutes of audio" in long.get_json()["error"]
    assert submit(bob, script="Speaker 1: fine").status_code == 202
    crowd = submit(app.test_client(), script="Speaker 1: same address, new session")
    assert crowd.status_code == 429 and "client address has 3 jobs" in crowd.get_json()["error"]
    # A finished job frees its place.
    first = [j["id"] for j in alice.get("/api/jobs").get_json()["jobs"]][0]
    assert alice.delete(f"/api/jobs/{first}").status_code == 202
    assert submit(alice, script="Speaker 1: now there is room").status_code == 202


# ---- uploads ----

def _clip(seconds: float, rate: int, channels: int, fmt: str = "FLAC") -> bytes:
    import io

    import numpy as np
    import soundfile as sf
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.repeat(tone[:, None], channels, axis=1), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def test_a_long_fast_stereo_clip_decodes_in_bounded_memory_and_as_a_whole_decode_would():
    import io
    import tracemalloc

    import numpy as np
    import soundfile as sf
    from tts_service import audio
    from tts_service.voices import SAMPLE_RATE, decode_clip
    data = _clip(60, 192000, 2)
    tracemalloc.start()
    samples = decode_clip(data)
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # One mono float32 copy of 60 s at 192 kHz is 46 MB; every channel in float32 (92 MB), then the
    # FFT of it all in float64 (another 90+ MB), is what a whole decode costs.
    assert peak < 100e6, f"decoding peaked at {peak / 1e6:.0f} MB"   # 68 MB here; 323 MB decoded whole
    whole, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    reference = audio.resample(whole.mean(axis=1), rate, SAMPLE_RATE)
    assert samples.shape == reference.shape
    assert np.abs(samples - reference).max() < 1e-4


def test_clips_are_stored_compressed_and_uploads_are_capped_per_client_address(shared, tmp_path, redis_url):
    from dataclasses import replace

    from tts_service.app import create_app
    from tts_service.engines.base import Engine
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    settings = replace(Settings(node="tts-a", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                                engine="espeak"), uploads_per_client_hour=2)
    app = create_app(settings)
    app.extensions["tts"].engine.takes_reference_clips = True   # espeak stands in for an engine that takes clips
    assert isinstance(app.extensions["tts"].engine, Engine)
    clients = [app.test_client() for _ in range(3)]             # new sessions, one address

    def upload(client):
        import io
        return client.post("/api/voices", data={"clip": (io.BytesIO(_clip(10, 48000, 2, "WAV")), "c.wav"),
                                                "name": "Ann"}, content_type="multipart/form-data")

    first = upload(clients[0])
    assert first.status_code == 201, first.get_json()
    stored = list((shared / "voices").rglob("*.flac"))
    assert len(stored) == 1 and not list((shared / "voices").rglob("*.wav"))
    assert stored[0].stat().st_size < 10 * 24000 * 2 / 2        # well under the PCM a WAV would take
    assert upload(clients[1]).status_code == 201
    third = upload(clients[2])
    assert third.status_code == 429 and "client address" in third.get_json()["error"]


# ---- a chunk that cannot be read ----

def test_a_chunk_that_cannot_be_read_while_joining_is_generated_again_not_charged(rt, api, monkeypatch):
    """Stand-in for an EIO inside one segment's data (no failing disk here): reading that one file
    raises once the header has been read; the mount itself keeps answering."""
    import errno

    import soundfile as sf

    job_id = submit(api, script="Speaker 1: One.\nSpeaker 2: Two.\nSpeaker 1: Three.").get_json()["id"]
    real_blocks = sf.SoundFile.blocks
    hits = []

    def eio_in_segment_1(self, *a, **kw):
        if self.name.endswith(".wav") and "/segments/00001." in self.name and not hits:
            hits.append(self.name)
            raise OSError(errno.EIO, "Input/output error")
        return real_blocks(self, *a, **kw)

    monkeypatch.setattr(sf.SoundFile, "blocks", eio_in_segment_1)
    worker = Worker(rt)
    worker.engine_loaded = True
    assert run_cycles(worker, job_id, rt) == "done"
    assert hits, "the stand-in never struck"
    assert rt.files.failure_count(job_id) == 0                 # nothing charged to the job
    aside = [p.name for p in (rt.files.dir(job_id) / "segments").iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("00001."), aside
    frames = sum(sf.info(str(rt.files.segment_path(job_id, s))).frames for s in rt.files.segments(job_id).values())
    assert sf.info(str(rt.files.audio_path(job_id))).frames == frames


# ---- downloads: a finished file, sent by nginx ----

def test_downloads_are_finished_files_encoded_once_and_handed_to_nginx(rt, api):
    import io

    import soundfile as sf
    job_id = submit(api, script="Speaker 1: Hello there.\nSpeaker 2: And goodbye.").get_json()["id"]
    worker = Worker(rt)
    worker.engine_loaded = True
    assert run_cycles(worker, job_id, rt) == "done"
    folder = rt.files.dir(job_id)
    assert (folder / "audio.flac").is_file() and (folder / "audio.ogg").is_file()   # encoded when it ended
    wav_frames = sf.info(str(folder / "audio.wav")).frames
    assert sf.info(str(folder / "audio.flac")).frames == wav_frames
    behind_nginx = {"X-Sendfile-Type": "X-Accel-Redirect"}
    for fmt, mime in (("wav", "audio/wav"), ("flac", "audio/flac"), ("ogg", "audio/ogg")):
        res = api.get(f"/api/jobs/{job_id}/audio?format={fmt}&download=1", headers=behind_nginx)
        assert res.status_code == 200 and res.data == b""
        assert res.headers["X-Accel-Redirect"] == f"/_tts_files/jobs/{job_id}/audio.{fmt}"
        assert res.headers["Content-Type"].startswith(mime)
        assert res.headers["Content-Disposition"] == f'attachment; filename="tts-{job_id}.{fmt}"'
    chunk = api.get(f"/api/jobs/{job_id}/chunks/0", headers=behind_nginx)
    assert chunk.headers["X-Accel-Redirect"].startswith(f"/_tts_files/jobs/{job_id}/segments/00000.")
    # Without nginx in front (make serve, the tests): the same file, from the app.
    (folder / "audio.ogg").unlink()                  # and a copy that is missing is made on request
    direct = api.get(f"/api/jobs/{job_id}/audio?format=ogg")
    assert direct.status_code == 200 and "X-Accel-Redirect" not in direct.headers
    assert sf.info(io.BytesIO(direct.data)).frames == wav_frames and (folder / "audio.ogg").is_file()


def test_a_job_must_come_as_json(api, rt):
    """A cross-site form can post text/plain or form bodies, never application/json."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        res = api.post("/api/jobs", data='{"script": "Speaker 1: hi"}', content_type=content_type)
        assert res.status_code == 415 and "application/json" in res.get_json()["error"]
    assert rt.store.active_ids() == []


def test_a_node_whose_users_listener_takes_no_connections_is_not_ready(rt):
    """The users' listener (tts-api) is a process of its own: /ready (on the internal one) says so when
    it is gone, by a TCP connect that a busy listener still accepts."""
    import socket
    from dataclasses import replace

    from tts_service.app import create_app
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)                      # accepts connections, never answers: as a flooded listener
    up = create_app(replace(rt.settings, api_address=f"127.0.0.1:{listening.getsockname()[1]}")).test_client()
    assert up.get("/ready").get_json()["checks"]["api"] is True
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))            # bound, not listening: connections refused
    down = create_app(replace(rt.settings, api_address=f"127.0.0.1:{closed.getsockname()[1]}")).test_client()
    body = down.get("/ready").get_json()
    assert body["checks"]["api"] is False and "users' listener" in body["reason"], body
    listening.close()
    closed.close()


class PickyEngine(EspeakEngine):
    """An engine that fails every time on one word (a stand-in for a text that crashes a real one):
    a job's own text, raised as an engine error, not an input error."""

    def synthesize(self, text, voice_id):
        from tts_service.engines import EngineError
        if "crash" in text:
            raise EngineError("the engine's process died on this text (stand-in)")
        return super().synthesize(text, voice_id)


def test_jobs_crafted_to_make_the_engine_fail_do_not_make_the_node_unfit(rt, api):
    """Engine errors on several jobs in a row mark the node unfit only if the engine also fails a plain
    sentence (its self-check): here it speaks one, so the crafted jobs fail alone."""
    worker = Worker(rt)
    worker.engine_loaded = True
    rt.engine = PickyEngine()
    crafted = [submit(api, script=f"Speaker 1: crash {n}").get_json()["id"] for n in range(3)]
    for _ in range(15):
        worker.cycle()
    assert worker.engine_loaded and worker.engine_error is None, worker.engine_error
    assert all("failed" in rt.files.markers(j) for j in crafted)
    good = submit(api, script="Speaker 1: A good job after the crafted ones.").get_json()["id"]
    assert run_cycles(worker, good, rt) == "done"


def test_the_queue_caps_still_count_a_clients_jobs_after_redis_is_rebuilt(shared, tmp_path, redis_url, redis_server):
    from dataclasses import replace

    from tts_service.app import create_app
    from tts_service.recovery import reconcile
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    settings = replace(Settings(node="tts-a", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                                engine="espeak"), queue_jobs_per_client=2)
    app = create_app(settings)
    for n in range(2):
        assert submit(app.test_client(), script=f"Speaker 1: job {n}").status_code == 202
    redis_server.client.flushall()                       # Redis lost everything; storage is the truth
    rt = app.extensions["tts"]
    reconcile(rt.store, rt.files, rt.sessions, rt.engine.sample_rate)
    refused = submit(app.test_client(), script="Speaker 1: a third")
    assert refused.status_code == 429 and "client address has 2 jobs" in refused.get_json()["error"]


def test_the_users_listener_has_done_the_handover_before_its_first_user(shared, tmp_path, redis_url):
    """A new primary's process waits for the old primary's belief to expire (the handover) from the
    moment it first sees the new epoch. The users' listener sees it by itself (TTS_KEEP_BELIEF), so
    its first user after a promotion, or after its own restart, is served, not answered 503."""
    from dataclasses import replace

    from tts_service.app import create_app
    cluster = Cluster(Storage(shared), shared / "cluster")
    cluster.init("tts-a", "tts-b", by="test")
    cluster.promote("tts-b", expect_epoch=1, by="test")          # epoch 2, the old primary never confirmed
    base = replace(Settings(node="tts-b", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                            engine="espeak"), state_max_age_s=1.0, state_timeout_s=0.3, state_cache_s=0.1)
    kept = create_app(replace(base, keep_belief_s=0.1)).test_client()
    idle = create_app(base).test_client()
    wait_s = base.state_max_age_s + base.state_timeout_s + base.state_cache_s
    import time
    time.sleep(wait_s + 0.5)                                     # nobody asks either process meanwhile
    assert submit(kept).status_code == 202
    first = submit(idle)                                          # meets the new epoch only now
    assert first.status_code == 503 and "writes" in first.get_json()["error"], first.get_json()
