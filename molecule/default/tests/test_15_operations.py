"""Operations on the converged pair (issue 14): the storage alert rule as Prometheus evaluates it
(promtool on ctl), the retention timer (the primary removes old finished jobs; the standby nothing),
and the compact downloads through the VIP."""
import io
import json
import time
import uuid

import requests
import soundfile as sf

from lab import SHARED, VIP, cluster_state, on, script, wait

PROMTOOL_TEST = """
rule_files: [/etc/prometheus/tts-rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tts_storage_free_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '10x10'
      - series: 'tts_storage_size_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '100x10'
      - series: 'tts_storage_free_bytes{job="tts_app", node="tts-b", instance="b"}'
        values: '12x10'
      - series: 'tts_storage_size_bytes{job="tts_app", node="tts-b", instance="b"}'
        values: '100x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: TTSStorageLow
        exp_alerts: []
      - eval_time: 6m
        alertname: TTSStorageLow
        exp_alerts:
          - exp_labels: {severity: warning, node: nas}
            exp_annotations:
              summary: "shared storage has 12 % free (threshold 15 %)"
  - interval: 1m
    input_series:
      - series: 'tts_storage_free_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '40x10'
      - series: 'tts_storage_size_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '100x10'
    alert_rule_test:
      - eval_time: 8m
        alertname: TTSStorageLow
        exp_alerts: []
"""


def test_the_storage_alert_fires_below_its_threshold_and_only_then():
    on("ctl", f"cat > /tmp/storage-low-test.yml <<'EOF'\n{PROMTOOL_TEST}\nEOF")
    out = on("ctl", "cd /tmp && promtool test rules storage-low-test.yml")
    assert "SUCCESS" in out, out


def fake_finished_job(days_ago):
    """A finished job as the pair would have left it `days_ago` days ago (owned by the app's user)."""
    job_id = uuid.uuid4().hex
    at = time.time() - days_ago * 86400
    request = {"id": job_id, "session": "0" * 64, "created_at": at, "segments": [
        {"index": 0, "speaker": 1, "text": "old", "voice": "espeak-us-m3"}], "voices": {"1": "espeak-us-m3"}}
    folder = f"{SHARED}/jobs/{job_id}"
    on("nas", f"mkdir -p {folder}/state {folder}/segments && "
              f"echo '{json.dumps(request)}' > {folder}/request.json && "
              f"echo '{json.dumps({'at': at, 'node': 'tts-a'})}' > {folder}/state/done && "
              f"chown -R --reference={SHARED}/jobs {folder}")
    return job_id


def retention(node):
    on(node, "systemctl start tts-retention.service", timeout=120)
    return on(node, "journalctl -u tts-retention.service -n 20 --no-pager -o cat")


def test_retention_removes_old_finished_jobs_on_the_primary_only():
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    for node in (primary, standby):
        assert "active" in on(node, "systemctl is-active tts-retention.timer")
    old, recent = fake_finished_job(45), fake_finished_job(2)
    assert "removed nothing: this node is not the unfenced primary" in retention(standby)
    assert on("nas", f"test -d {SHARED}/jobs/{old} && echo kept").strip() == "kept"
    log = retention(primary)
    assert "removed 1 jobs finished more than 30 days ago" in log, log   # (its timer is set out of the way)
    listing = on("nas", f"ls -a {SHARED}/jobs")
    assert old not in listing and recent in listing
    assert ".trash-" not in listing


def test_compact_downloads_through_the_vip():
    s = requests.Session()
    res = s.post(f"{VIP}/api/jobs", json={"script": script(2)}, timeout=10)
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    wait(lambda: s.get(f"{VIP}/api/jobs/{job_id}", timeout=5).json()["status"] == "done", 120, "job done")
    wav = s.get(f"{VIP}/api/jobs/{job_id}/audio", timeout=30).content
    frames = sf.info(io.BytesIO(wav)).frames
    for fmt in ("flac", "ogg"):
        res = s.get(f"{VIP}/api/jobs/{job_id}/audio?format={fmt}", timeout=60)
        assert res.status_code == 200 and res.headers["Content-Type"] == f"audio/{fmt}", res.text[:200]
        data, _rate = sf.read(io.BytesIO(res.content))
        assert abs(len(data) - frames) < 0.01 * _rate and len(res.content) < len(wav)
