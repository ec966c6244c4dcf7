"""Operations on the converged pair: HTTPS on the VIP (redirect, TLS versions, HTTP/2,
HSTS, the lab CA's certificate, a Secure session cookie, Prometheus' probe, the page in a browser),
the storage alert rule as Prometheus evaluates it (promtool on ctl), the retention timer (the primary
removes old finished jobs; the standby nothing), and the compact downloads through the VIP."""
import io
import json
import socket
import ssl
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
import soundfile as sf

from lab import LAB_CA, LAB_PASSWORD, LAB_USER, PROMETHEUS, SHARED, VIP, cluster_state, on, script, wait

sys.path.insert(0, str(LAB_CA.parents[1]))              # the project root: tests.browser
from tests.browser import HAVE_CHROMIUM, chromium, submit_and_listen

VIP_HOST = urlsplit(VIP).hostname


def tls_handshake(**context):
    """Handshake with the VIP's nginx, the certificate checked against the lab CA: (version, ALPN, SANs)."""
    ctx = ssl.create_default_context(cafile=str(LAB_CA))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for key, value in context.items():
        setattr(ctx, key, value)
    with socket.create_connection((VIP_HOST, 443), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=VIP_HOST) as tls:
        sans = {value for _kind, value in tls.getpeercert()["subjectAltName"]}
        return tls.version(), tls.selected_alpn_protocol(), sans


def test_plain_http_on_the_vip_only_redirects_to_https():
    res = requests.get(f"http://{VIP_HOST}/api/voices?x=1", allow_redirects=False, timeout=5)
    assert res.status_code == 301 and res.headers["Location"] == f"https://{VIP_HOST}/api/voices?x=1"
    assert "voices" not in res.text


def test_the_vip_speaks_tls_12_and_13_with_http2_and_the_lab_certificate():
    version, alpn, sans = tls_handshake()
    assert (version, alpn) == ("TLSv1.3", "h2")
    assert {VIP_HOST, "tts.lab"} <= sans
    assert tls_handshake(maximum_version=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"


def test_the_vip_refuses_tls_11():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((VIP_HOST, 443), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            ctx.wrap_socket(raw, server_hostname=VIP_HOST)
    # The server's alert, not this client failing to offer TLS 1.1 at all.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper(), refused.value


def test_https_answers_carry_hsts_and_a_secure_session_cookie():
    s = requests.Session()
    res = s.post(f"{VIP}/api/jobs", json={"script": script(1)}, timeout=10)
    assert res.status_code == 202, res.text
    assert res.headers["Strict-Transport-Security"].startswith("max-age=")
    cookie = res.headers["Set-Cookie"]
    assert cookie.startswith("tts_session=")
    assert {"Secure", "HttpOnly", "SameSite=Lax"} <= {part.strip() for part in cookie.split(";")}, cookie
    job = f"{VIP}/api/jobs/{res.json()['id']}"
    assert s.get(job, timeout=5).status_code == 200                       # the cookie comes back over HTTPS
    assert s.delete(job, timeout=5).status_code in (202, 400)             # (cancelled, or done already)


def test_prometheus_probes_the_vip_over_https_against_the_lab_ca():
    def probe(metric):
        res = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": f'{metric}{{job="tts_vip"}}'}, timeout=5)
        return [float(r["value"][1]) for r in res.json()["data"]["result"]]
    wait(lambda: probe("probe_success") == [1.0], 15, "the VIP probe succeeding")
    assert probe("probe_http_ssl") == [1.0]


@pytest.mark.skipif(not HAVE_CHROMIUM, reason="chromium-driver is not installed")
def test_the_page_over_https_through_the_vip(tmp_path):
    browser = chromium(tmp_path, trust_ca=LAB_CA, login=(LAB_USER, LAB_PASSWORD, VIP))
    try:
        duration, flac_duration = submit_and_listen(browser, VIP)
        assert browser.current_url.startswith(f"https://{VIP_HOST}/")
        assert duration > 2 and abs(flac_duration - duration) < 0.05, (duration, flac_duration)
    finally:
        browser.quit()

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
  - interval: 1m
    input_series:
      - series: 'tts_redis_used_memory_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '500 600 700 850 850 850 850 850'
      - series: 'tts_redis_maxmemory_bytes{job="tts_app", node="tts-a", instance="a"}'
        values: '1000x8'
      - series: 'tts_redis_used_memory_bytes{job="tts_app", node="tts-b", instance="b"}'
        values: '900x8'
      - series: 'tts_redis_maxmemory_bytes{job="tts_app", node="tts-b", instance="b"}'
        values: '0x8'
    alert_rule_test:
      - eval_time: 4m
        alertname: TTSRedisMemoryHigh
        exp_alerts: []
      - eval_time: 6m
        alertname: TTSRedisMemoryHigh
        exp_alerts:
          - exp_labels: {severity: warning, node: tts-a, job: tts_app, instance: a}
            exp_annotations:
              summary: "Redis on tts-a uses 85 % of its maxmemory (threshold 80 %)"
  - interval: 1m
    input_series:
      - series: 'tts_vip_held{job="tts_app", node="tts-a", instance="a"}'
        values: '1x8'
      - series: 'tts_vip_held{job="tts_app", node="tts-b", instance="b"}'
        values: '0 1 1 1 1 0 0 0 0'
    alert_rule_test:
      - eval_time: 1m
        alertname: TTSVipNotSingle
        exp_alerts: []
      - eval_time: 3m
        alertname: TTSVipNotSingle
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "the VIP is held by 2 nodes (one expected): docs/operations.md, TTSVipNotSingle"
      - eval_time: 6m
        alertname: TTSVipNotSingle
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'tts_vip_held{job="tts_app", node="tts-a", instance="a"}'
        values: '0x8'
      - series: 'tts_vip_held{job="tts_app", node="tts-b", instance="b"}'
        values: '0x8'
    alert_rule_test:
      - eval_time: 2m
        alertname: TTSVipNotSingle
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "the VIP is held by 0 nodes (one expected): docs/operations.md, TTSVipNotSingle"
  - interval: 1m
    input_series:
      - series: 'probe_ssl_earliest_cert_expiry{job="tts_vip", node="vip", instance="https://vip/health"}'
        values: '864000x30'
    alert_rule_test:
      - eval_time: 5m
        alertname: TTSCertificateExpiring
        exp_alerts: []
      - eval_time: 15m
        alertname: TTSCertificateExpiring
        exp_alerts:
          - exp_labels: {severity: warning, node: vip, job: tts_vip}
            exp_annotations:
              summary: "the VIP's certificate expires in 9d 23h 45m 0s (renew it: tts_tls_cert, or the lab CA)"
  - interval: 1m
    input_series:
      - series: 'probe_ssl_earliest_cert_expiry{job="tts_vip", node="vip", instance="https://vip/health"}'
        values: '8640000x30'
    alert_rule_test:
      - eval_time: 15m
        alertname: TTSCertificateExpiring
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'tts_clock_synchronised{job="tts_app", node="tts-a", instance="a"}'
        values: '1x40'
      - series: 'tts_clock_synchronised{job="tts_app", node="tts-b", instance="b"}'
        values: '1 1 1 1 1 0x35'
    alert_rule_test:
      - eval_time: 12m
        alertname: TTSClockNotSynchronised
        exp_alerts: []
      - eval_time: 21m
        alertname: TTSClockNotSynchronised
        exp_alerts:
          - exp_labels: {severity: warning, node: tts-b, job: tts_app, instance: b}
            exp_annotations:
              summary: "the kernel of tts-b says its clock is not synchronised: docs/operations.md, TTSClockNotSynchronised"
  - interval: 15s
    input_series:
      # Both nodes show the pool's workers; tts-c goes silent at 1 min. During the failover at 3 min the
      # standby's copy of the registry ages for everyone (its link is down): min over the nodes holds.
      - series: 'tts_worker_last_seen_seconds{job="tts_app", node="tts-a", instance="a", worker="tts-c"}'
        values: '1 1 1 1 15 30 45 60 75 90 105 120 135 150 165 180 195 210 225 240'
      - series: 'tts_worker_last_seen_seconds{job="tts_app", node="tts-a", instance="a", worker="tts-b"}'
        values: '1x19'
      - series: 'tts_worker_last_seen_seconds{job="tts_app", node="tts-b", instance="b", worker="tts-b"}'
        values: '1x11 15 30 45 60 75 90 105 120'
    alert_rule_test:
      - eval_time: 90s
        alertname: TTSWorkerDown
        exp_alerts: []
      - eval_time: 4m
        alertname: TTSWorkerDown
        exp_alerts:
          - exp_labels: {severity: warning, worker: tts-c}
            exp_annotations:
              summary: "worker tts-c has not spoken for 195 s: its jobs go on on the other workers;
                docs/operations.md, TTSWorkerDown"
"""


def test_the_storage_certificate_vip_clock_and_worker_alerts_fire_past_their_thresholds_and_only_then():
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
              f"touch -d @{int(at)} {folder}/state/done && "      # the NAS's date of it: what retention reads
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
