"""Verify the converged pair (testinfra, run by `molecule verify`): services on the right hosts,
Redis replicating, shared storage writable and shared, the VIP answering, and one real 2-speaker
job through the VIP finishing with audio."""
import io
import json
import time
import uuid
import wave

import pytest
import requests

from lab import ADDRESS, LAB, LAB_CA, LAB_USER, NODES, PROMETHEUS, SHARED, VIP


def name(host):
    return host.ansible.get_variables()["inventory_hostname"]


def redis_cli(host, *args):
    cmd = host.run("REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /etc/redis/redis.conf) redis-cli -p 6379 "
                   + " ".join(args))
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


def test_services_run_where_they_belong(host):
    services = {
        "tts-a": ["redis-server", "tts-web", "tts-api", "tts-worker", "nginx", "keepalived", "chrony"],
        "tts-b": ["redis-server", "tts-web", "tts-api", "tts-worker", "nginx", "keepalived", "chrony"],
        "ctl": ["prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter", "tts-operators-sink",
                "chrony"],
        "nas": ["ssh"],
        "tts-c": ["tts-worker", "chrony"],          # a worker host (tts_workers): the worker only
    }[name(host)]
    for service in services:
        assert host.service(service).is_running, f"{service} is not running on {name(host)}"
        assert host.service(service).is_enabled, f"{service} is not enabled on {name(host)}"
    if name(host) == "tts-c":   # nothing of the pair's here, and nothing listening for others but SSH
        for service in ("redis-server", "tts-web", "tts-api", "nginx", "keepalived"):
            assert not host.service(service).is_running, f"{service} runs on the worker host"


def test_chrony_measures_the_clock_from_the_configured_sources(host):
    """The time_sync role: chronyd runs with the inventory's sources; in the lab it may not set the
    clock the containers share (-x, time_sync_set_clock: false), production's does."""
    if name(host) == "nas":
        pytest.skip("the NAS keeps its own time")
    assert "pool 2.debian.pool.ntp.org iburst" in host.file("/etc/chrony/chrony.conf").content_string
    tracking = host.run("chronyc -n tracking")
    assert tracking.rc == 0 and "Leap status" in tracking.stdout, tracking.stdout + tracking.stderr
    assert "-x" in host.run("ps -o args= -C chronyd").stdout


def test_redis_primary_is_writable_and_the_standby_replicates(host):
    if name(host) not in ("tts-a", "tts-b"):
        pytest.skip("TTS nodes only")
    info = redis_cli(host, "INFO", "replication")
    if name(host) == "tts-a":
        assert "role:master" in info and "connected_slaves:1" in info
    else:
        assert "role:slave" in info and "master_link_status:up" in info
        assert f"master_host:{ADDRESS['tts-a']}" in info
    assert "requirepass" not in host.run("redis-cli -p 6379 PING").stdout  # needs the password
    assert "NOAUTH" in host.run("redis-cli -p 6379 PING").stdout
    config = host.file("/etc/redis/redis.conf")
    assert config.mode == 0o640 and config.contains("^appendonly yes")


def test_shared_storage_is_mounted_writable_and_shared(host):
    if name(host) == "nas":
        pytest.skip("clients only")
    assert host.mount_point("/mnt/nas").exists
    assert host.mount_point("/mnt/nas").filesystem == "fuse.sshfs"
    marker = f"{LAB.var('tts_shared_dir')}/.verify-{name(host)}-{uuid.uuid4().hex[:6]}"
    user = "tts" if name(host) != "ctl" else "root"
    assert host.run("runuser -u %s -- sh -c 'echo %s > %s'", user, name(host), marker).rc == 0
    # The NAS itself sees what the client wrote (the export is the truth for every client).
    nas = host.get_host("ansible://nas?force_ansible=true", ansible_inventory=host.backend.ansible_inventory)
    assert nas.file(marker.replace(LAB.var("tts_shared_dir"), SHARED)).content_string.strip() == name(host)
    host.run("rm -f %s", marker)


def test_cluster_state_names_the_primary(host):
    if name(host) != "tts-a":
        pytest.skip("once")
    state = json.loads(host.check_output("tts-cluster --shared-dir /mnt/nas/tts status"))
    assert (state["primary"], state["standby"]) == ("tts-a", "tts-b")


def test_nodes_are_ready_for_their_roles(host):
    if name(host) != "ctl":
        pytest.skip("probe from the control host, as Prometheus does")
    for node, role in (("tts-a", "primary"), ("tts-b", "standby")):
        body = json.loads(host.check_output("curl -s -m 3 %s/ready", NODES[node]))
        assert (body["node"], body["role"], body["checks"]["redis"]) == (node, role, True), body
    targets = json.loads(host.check_output("curl -s %s/api/v1/targets", PROMETHEUS))
    jobs = {t["labels"]["job"] for t in targets["data"]["activeTargets"]}
    assert {"tts_ready", "tts_health", "tts_vip", "tts_app"} <= jobs


def test_the_page_and_the_api_want_a_login_and_the_role_and_liveness_do_not(host):
    """tts_access: basic, as production: without a login (or with a wrong one) the page and the API
    answer 401; /health and /primary (the VIP probe, the playbooks' wait) need none. Every other test
    logs in (lab.py: a netrc for the VIP)."""
    if name(host) != "tts-a":
        pytest.skip("once")
    anonymous = requests.Session()
    anonymous.trust_env, anonymous.verify = False, str(LAB_CA)       # no netrc: no login
    for path in ("/", "/api/jobs"):
        assert anonymous.get(f"{VIP}{path}", timeout=5).status_code == 401, path
    assert anonymous.post(f"{VIP}/api/jobs", json={"script": "Speaker 1: hi"}, timeout=5).status_code == 401
    assert anonymous.get(f"{VIP}/api/jobs", auth=(LAB_USER, "not-the-password"), timeout=5).status_code == 401
    for path in ("/health", "/primary"):
        assert anonymous.get(f"{VIP}{path}", timeout=5).status_code == 200, path
    assert requests.get(f"{VIP}/api/jobs", timeout=5).status_code == 200      # logged in


def test_a_two_speaker_job_through_the_vip_finishes_with_audio(host):
    if name(host) != "tts-a":
        pytest.skip("once")
    s = requests.Session()
    ready = s.get(f"{VIP}/primary", timeout=5)
    assert ready.status_code == 200 and ready.json()["role"] == "primary"
    assert s.get(f"{VIP}/ready", timeout=5).status_code == 404      # the node's probes are not public
    res = s.post(f"{VIP}/api/jobs", timeout=10, json={
        "script": "Speaker 1: Hello from the molecule pair.\nSpeaker 2: And hello back from the second voice.",
        "voices": {"1": "espeak-us-m3", "2": "espeak-us-f3"}})
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = s.get(f"{VIP}/api/jobs/{job_id}", timeout=5).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert job["status"] == "done" and job["segments_done"] == 2, job
    audio = s.get(f"{VIP}/api/jobs/{job_id}/audio", timeout=10)
    with wave.open(io.BytesIO(audio.content)) as w:
        assert w.getframerate() == 22050
        assert abs(w.getnframes() / w.getframerate() - job["duration_s"]) < 0.01
    # The standby refuses writes even when asked directly; nginx would retry on the primary.
    direct = s.post(f"{NODES['tts-b']}/api/jobs", json={"script": "Speaker 1: hi"}, timeout=5)
    assert direct.status_code == 503 and direct.headers["Retry-After"]
