"""One real node: gunicorn + tts-worker processes, real redis-server, espeak really speaking."""
import io
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.harness import Node, cluster_cli, dialogue, node_env, wait_for


@pytest.fixture
def node(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    n = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run-a"), tmp_path / "logs").start()
    wait_for(lambda: n.ready()[0] == 200, 20, what="tts-a ready")
    yield n
    n.stop()


def test_ten_turn_dialogue_end_to_end(node, shared):
    s = requests.Session()
    started = time.monotonic()
    res = s.post(f"{node.url}/api/jobs", json={"script": dialogue(10),
                                               "voices": {"1": "espeak-us-m3", "2": "espeak-us-f3"}})
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    job = wait_for(lambda: (j := s.get(f"{node.url}/api/jobs/{job_id}").json())["status"] == "done" and j,
                   60, what="job done")
    elapsed = time.monotonic() - started
    print(f"\n10-turn 2-speaker espeak job: {elapsed:.2f} s end to end, {job['duration_s']:.1f} s of audio")
    assert (job["segments_done"], job["segments_total"], job["node"], job["error"]) == (10, 10, "tts-a", None)

    audio = s.get(f"{node.url}/api/jobs/{job_id}/audio")
    assert audio.status_code == 200 and audio.headers["Content-Type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 22050 and abs(len(data) / rate - job["duration_s"]) < 0.01
    segments = sorted((shared / "jobs" / job_id / "segments").iterdir())
    # index, epoch 1, the first grant of the job's lease (generation 1)
    assert [p.name for p in segments] == [f"{i:05d}.1.1.wav" for i in range(10)]
    assert sum(sf.info(str(p)).frames for p in segments) == len(data)
    # Speakers really sound different: espeak's m3 and f3 differ in pitch, so the turns differ.
    assert sf.read(str(segments[0]))[0].std() > 0.01
    assert (shared / "jobs" / job_id / "state" / "done").exists()

    download = s.get(f"{node.url}/api/jobs/{job_id}/audio?download=1")
    assert "attachment" in download.headers["Content-Disposition"]
    wav_frames = len(sf.read(io.BytesIO(audio.content))[0])
    for fmt, mime in (("flac", "audio/flac"), ("ogg", "audio/ogg")):
        compact = s.get(f"{node.url}/api/jobs/{job_id}/audio?format={fmt}&download=1")
        assert compact.status_code == 200 and compact.headers["Content-Type"] == mime, compact.text[:200]
        assert f'tts-{job_id}.{fmt}' in compact.headers["Content-Disposition"]
        assert len(compact.content) < len(audio.content)
        decoded, compact_rate = sf.read(io.BytesIO(compact.content))
        assert compact_rate == rate and abs(len(decoded) - wav_frames) <= 0.01 * rate, (fmt, len(decoded), wav_frames)
        if fmt == "flac":   # lossless: the very samples
            assert np.array_equal(sf.read(io.BytesIO(compact.content), dtype="int16")[0],
                                  sf.read(io.BytesIO(audio.content), dtype="int16")[0])
    bad = s.get(f"{node.url}/api/jobs/{job_id}/audio?format=mp3")
    assert bad.status_code == 400 and "wav, flac, ogg" in bad.json()["error"]

    # The worker publishes its histogram with its heartbeat, once a second.
    metrics = wait_for(lambda: (m := s.get(f"{node.url}/metrics").text)
                       and "tts_segment_synthesis_seconds_count 10.0" in m and m, 5, what="histogram")
    assert 'tts_jobs_finished_total{status="done"} 1.0' in metrics
    assert 'tts_engine_loaded{engine="espeak"} 1.0' in metrics

    code, ready = node.ready()
    assert code == 200 and ready["reason"] == "healthy primary of epoch 1"
    assert requests.get(f"{node.url}/primary").status_code == 200
    assert requests.get(f"{node.url}/standby").status_code == 503


def test_pacing_makes_jobs_take_as_long_as_their_audio(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    n = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.5),
             tmp_path / "logs").start()
    try:
        wait_for(lambda: n.ready()[0] == 200, 20, what="ready")
        assert n.ready()[1]["engine_pace"] == 0.5
        s = requests.Session()
        job_id = s.post(f"{n.url}/api/jobs", json={"script": dialogue(3)}).json()["id"]
        started = time.monotonic()
        job = wait_for(lambda: (j := s.get(f"{n.url}/api/jobs/{job_id}").json())["status"] == "done" and j,
                       60, what="job done")
        assert time.monotonic() - started >= 0.5 * job["duration_s"] * 0.9
    finally:
        n.stop()


def test_cancel_stops_a_running_job(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    n = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=1.0),
             tmp_path / "logs").start()
    try:
        wait_for(lambda: n.ready()[0] == 200, 20, what="ready")
        s = requests.Session()
        job_id = s.post(f"{n.url}/api/jobs", json={"script": dialogue(8)}).json()["id"]
        wait_for(lambda: s.get(f"{n.url}/api/jobs/{job_id}").json()["segments_done"] >= 1, 30, what="1 segment")
        assert s.delete(f"{n.url}/api/jobs/{job_id}").status_code == 202
        time.sleep(3)
        job = s.get(f"{n.url}/api/jobs/{job_id}").json()
        assert job["status"] == "cancelled"
        assert job["segments_done"] < 8
        assert not (shared / "jobs" / job_id / "audio.wav").exists()
        assert len(list((shared / "jobs" / job_id / "segments").iterdir())) <= job["segments_done"] + 1
    finally:
        n.stop()
