"""The drill's own parts against a real node: the canary watcher (through HTTP, as from ctl), the
verification of the canary's files and Redis record, and the report published from them. The
switch itself is rehearsed on containers (molecule/default/tests/test_30_drill.py)."""
import json
import subprocess
import sys
import threading

import pytest
from tts_service.config import Settings
from tts_service.drill import report as drill_report
from tts_service.drill import run as drill_run
from tts_service.drill import verify as drill_verify
from tts_service.drill.watch import Watcher

from tests.harness import Node, cluster_cli, node_env, wait_for

TURNS = 6


@pytest.fixture
def node(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    n = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run-a", TTS_ENGINE_PACE=0.1),
             tmp_path / "logs").start()
    wait_for(lambda: n.ready()[0] == 200, 20, what="tts-a ready")
    yield n
    n.stop()


@pytest.fixture
def node_settings(node, monkeypatch):
    for key, value in node.env.items():
        if key.startswith("TTS_"):
            monkeypatch.setenv(key, value)
    return Settings()


def test_the_watcher_sees_the_canary_in_flight_then_done_on_the_target(node, tmp_path):
    out = tmp_path / "watch.json"
    watcher = Watcher(node.url, "tts-a", out, turns=TURNS, interval=0.1, timeout=120)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    early = wait_for(lambda: out.exists() and (o := json.loads(out.read_text()))["in_flight"] and o, 60,
                     what="the canary in flight")
    assert early["job"]["status"] in ("running", "done") and early["job"]["segments_done"] >= 2
    thread.join(120)
    obs = json.loads(out.read_text())
    assert obs["finished"] and obs["error"] == ""
    assert obs["job"]["status"] == "done" and obs["job"]["segments_done"] == TURNS
    assert obs["submitted_at"] <= obs["in_flight_at"] <= obs["job_done_at"]
    assert obs["job_on_target_at"] is not None and obs["vip_target_at"] is not None


def test_the_watcher_reports_a_refused_canary(node, tmp_path):
    # A standby refuses writes (503) for longer than the watcher waits: the drill gets a reason.
    assert cluster_cli(node.env["TTS_SHARED_DIR"], "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    wait_for(lambda: node.ready()[1]["fenced"], 20, what="tts-a fenced")
    out = tmp_path / "watch.json"
    obs = Watcher(node.url, "tts-b", out, turns=TURNS, interval=0.1, timeout=5, submit_timeout=2).run()
    assert obs.finished and "refused: HTTP 503" in obs.error and not obs.in_flight
    assert json.loads(out.read_text())["error"] == obs.error


def finished_canary(node, tmp_path) -> str:
    obs = Watcher(node.url, "tts-a", tmp_path / "watch.json", turns=TURNS, interval=0.1, timeout=120).run()
    assert obs.error == "" and obs.job["status"] == "done"
    return obs.job_id


def test_verify_accepts_a_complete_canary_and_counts_recomputed_segments(node, node_settings, tmp_path):
    job_id = finished_canary(node, tmp_path)
    verdict = drill_verify.verify(job_id, node_settings)
    assert verdict.ok, verdict.reason
    assert (verdict.segments_total, verdict.segments_found, verdict.recomputed) == (TURNS, TURNS, 0)
    assert abs(verdict.audio_duration_s - verdict.segments_duration_s) <= drill_verify.TOLERANCE_S


def test_verify_names_a_missing_segment(node, node_settings, shared, tmp_path):
    job_id = finished_canary(node, tmp_path)
    for seg in (shared / "jobs" / job_id / "segments").glob("00003.*.wav"):
        seg.unlink()
    verdict = drill_verify.verify(job_id, node_settings)
    assert not verdict.ok and "segments [3] are missing" in verdict.reason


def test_verify_catches_audio_that_is_not_the_sum_of_its_segments(node, node_settings, shared, tmp_path):
    job_id = finished_canary(node, tmp_path)
    first = sorted((shared / "jobs" / job_id / "segments").glob("00000.*.wav"))[0]
    (shared / "jobs" / job_id / "audio.wav").write_bytes(first.read_bytes())
    verdict = drill_verify.verify(job_id, node_settings)
    assert not verdict.ok and "but its segments add up to" in verdict.reason


def test_the_cli_verifies_with_the_app_env_file_and_writes_the_report(node, shared, tmp_path):
    job_id = finished_canary(node, tmp_path)
    env_file = tmp_path / "tts.env"
    env_file.write_text("# the app's environment\n" + "".join(
        f"{k}={v}\n" for k, v in node.env.items() if k.startswith("TTS_")))
    out = subprocess.run([sys.executable, "-m", "tts_service.drill", "verify", job_id, "--env-file", str(env_file)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    verdict = json.loads(out.stdout)
    assert out.returncode == 0 and verdict["ok"], out.stderr
    meta = {"id": "20261125T120000Z", "mode": "switchover", "started_at": 1.0, "fault_at": 2.0,
            "playbook_started_at": 2.0, "playbook_ended_at": 9.0,
            "before": {"primary": "tts-b", "standby": "tts-a", "epoch": 1},
            "after": {"primary": "tts-a", "standby": "tts-b", "epoch": 2}}
    watched = json.loads((tmp_path / "watch.json").read_text())
    rep = drill_report.build(meta, watched, verdict, None)
    drill_run.publish(rep, tmp_path / "drills")
    assert rep["result"] == "succeeded"
    report = json.loads((tmp_path / "drills" / "20261125T120000Z.json").read_text())
    assert report["canary"]["segments_recomputed"] == 0 and report["canary"]["job_id"] == job_id
    assert "SUCCEEDED" in (tmp_path / "drills" / "20261125T120000Z.md").read_text()
