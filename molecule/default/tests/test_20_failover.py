"""The failover chain rehearsed on the converged pair, after test_10_pair (same `molecule verify`):
a job in flight, the primary's app killed ("app killed" in CONTRACTS.md), then the new primary's host
lost (`podman kill`). Waits on real events only (receiver runs, job state, /ready of both nodes);
prints the measured RTO split into its stages. Runs against the lab too:
    TTS_TEST_SUBNET=10.89.60 TTS_TEST_PREFIX= .venv/bin/pytest -s molecule/default/tests/test_20_failover.py
"""
import json
import os
import subprocess
import threading
import time

import pytest
import requests

SUBNET = os.environ.get("TTS_TEST_SUBNET", "10.89.61")
PREFIX = os.environ.get("TTS_TEST_PREFIX", "mol-")
VIP = f"http://{SUBNET}.100"
RECEIVER = f"http://{SUBNET}.10:9095"
PROMETHEUS = f"http://{SUBNET}.10:9090"
NODES = {"tts-a": f"http://{SUBNET}.11:8000", "tts-b": f"http://{SUBNET}.12:8000"}
TURNS = 12
# "App killed" (CONTRACTS.md): kill -9 of the app's processes and the units kept from restarting
# (a runtime drop-in; `systemctl mask --runtime` cannot override units that live in /etc).
APP_KILLED = ("for u in tts-web tts-worker; do mkdir -p /run/systemd/system/$u.service.d; "
              "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/$u.service.d/fault.conf; done; "
              "systemctl daemon-reload; systemctl kill --signal=SIGKILL tts-web tts-worker")
APP_BACK = ("rm -rf /run/systemd/system/tts-web.service.d /run/systemd/system/tts-worker.service.d; "
            "systemctl daemon-reload; systemctl reset-failed tts-web tts-worker; systemctl start tts-worker tts-web")
SCRIPT = "\n".join(f"Speaker {i % 2 + 1}: This is line {i + 1}, short and clear." for i in range(TURNS))


def podman(*args, check=True):
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=60, check=check)


def on(node, command):
    out = podman("exec", PREFIX + node, "bash", "-c", command, check=False)
    assert out.returncode == 0, f"{node}: {command}: {out.stderr}"
    return out.stdout


def cluster_state():
    return json.loads(on("nas", "cat /export/shared/tts/cluster/state.json"))


def redis_hget(node, key, field):
    return on(node, "REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /etc/redis/redis.conf) "
                    f"redis-cli -p 6379 HGET {key} {field}").strip()


def wait(predicate, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, ValueError, AssertionError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def receiver_runs():
    return requests.get(f"{RECEIVER}/runs", timeout=5).json()["runs"]


def new_run(before_ids, playbook, target):
    for run in receiver_runs():
        if run["id"] not in before_ids and run["playbook"] == playbook and run["target"] == target \
                and run["result"] != "running":
            return run
    return None


class RoleWatcher(threading.Thread):
    """Polls both nodes' /ready; records any moment both say role primary and fenced false."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.double_primary = []
        self.samples = 0

    def run(self):
        while not self.stop.is_set():
            primaries = []
            for node, url in NODES.items():
                try:
                    body = requests.get(f"{url}/ready", timeout=0.5).json()
                    if body.get("role") == "primary" and body.get("fenced") is False:
                        primaries.append(node)
                except (requests.RequestException, ValueError):
                    pass
            self.samples += 1
            if len(primaries) > 1:
                self.double_primary.append(time.time())
            self.stop.wait(0.2)


@pytest.fixture
def watcher():
    w = RoleWatcher()
    w.start()
    yield w
    w.stop.set()
    w.join(5)
    assert w.samples > 10
    assert w.double_primary == [], "both nodes acted as unfenced primary at the same time"


def start_job(session):
    res = session.post(f"{VIP}/api/jobs", json={"script": SCRIPT}, timeout=10)
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    wait(lambda: session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json()["segments_done"] >= 3, 60,
         "3 segments before the fault")
    return job_id


def follow_failover(session, job_id, standby, t_fault, runs_before):
    """Wait for the chain; return the stages of the RTO (seconds after the fault)."""
    run = wait(lambda: new_run(runs_before, "failover.yml", standby), 90, f"failover.yml to {standby}")
    assert run["result"] == "succeeded", run
    first_primary = wait(lambda: requests.get(f"{VIP}/primary", timeout=1).status_code == 200 and time.time(),
                         60, "/primary through the VIP", interval=0.1)
    job = wait(lambda: (j := session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json())["status"] == "done" and j,
               180, "the job to finish")
    assert job["node"] == standby and job["segments_done"] == TURNS, job
    names = on("nas", f"ls /export/shared/tts/jobs/{job_id}/segments").split()
    indexes = [n.split(".")[0] for n in names]
    assert sorted(set(indexes)) == [f"{i:05d}" for i in range(TURNS)] and len(indexes) == TURNS, names
    recomputed = int(redis_hget(standby, f"tts:job:{job_id}", "attempts")) - TURNS
    assert recomputed <= 1
    claimed = float(redis_hget(standby, f"tts:job:{job_id}", "claimed_at"))
    assert job_id in [j["id"] for j in session.get(f"{VIP}/api/jobs", timeout=3).json()["jobs"]]
    decided = [d for d in requests.get(f"{RECEIVER}/runs", timeout=5).json()["decisions"]
               if d["action"] == "failover" and d["target"] == standby]
    return {"decision": decided[0]["decided_at"] - t_fault, "playbook_start": run["started_at"] - t_fault,
            "playbook_end": run["ended_at"] - t_fault, "first_primary_via_vip": first_primary - t_fault,
            "job_running_again": claimed - t_fault, "recomputed": recomputed}


def follow_rejoin(node, runs_before):
    run = wait(lambda: new_run(runs_before, "rejoin.yml", node), 150, f"rejoin.yml for {node}")
    assert run["result"] == "succeeded", run
    wait(lambda: requests.get(f"{NODES[node]}/standby", timeout=2).status_code == 200, 60, f"{node} standby")
    return run


def report(case, stages):
    print(f"\nRTO, {case} (seconds after the fault; source design: standby took over after 22 s, job lost):")
    for key, value in stages.items():
        print(f"  {key:24s} {value:7.2f}" if key != "recomputed" else f"  {key:24s} {value:7d}")


def test_app_killed_on_the_primary(watcher):
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    runs_before = {r["id"] for r in receiver_runs()}
    session = requests.Session()
    job_id = start_job(session)
    t_fault = time.time()
    on(primary, APP_KILLED)
    stages = follow_failover(session, job_id, standby, t_fault, runs_before)
    report(f"app killed on {primary}", stages)
    assert cluster_state()["primary"] == standby
    failovers = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] == "failover.yml"]
    assert len(failovers) == 1
    # The app comes back: TTSNodeNotInRole -> rejoin.yml makes it the standby.
    runs_before = {r["id"] for r in receiver_runs()}
    on(primary, APP_BACK)
    follow_rejoin(primary, runs_before)


def test_host_of_the_new_primary_lost(watcher):
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    runs_before = {r["id"] for r in receiver_runs()}
    session = requests.Session()
    job_id = start_job(session)
    t_fault = time.time()
    podman("kill", PREFIX + primary)
    try:
        stages = follow_failover(session, job_id, standby, t_fault, runs_before)
        report(f"host {primary} lost", stages)
        failovers = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] == "failover.yml"]
        assert len(failovers) == 1
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        podman("start", PREFIX + primary)
    follow_rejoin(primary, runs_before)
    assert cluster_state()["primary"] == standby


def test_planned_switchover_loses_nothing(watcher):
    """An operator on ctl runs switchover.yml (as the receiver's user, with its key and inventory)."""
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    runs_before = {r["id"] for r in receiver_runs()}
    session = requests.Session()
    job_id = start_job(session)
    started = time.time()
    on("ctl", "set -a; . /etc/tts-receiver/receiver.env; set +a; cd /opt/tts-receiver/ansible && "
              "runuser -u tts-receiver -- env TTS_LAB_KEY=$TTS_LAB_KEY HOME=$HOME "
              "/opt/tts-receiver/venv/bin/ansible-playbook -i inventory playbooks/switchover.yml "
              f"-e @/etc/tts-receiver/secrets.yml -e tts_target={standby}")
    took = time.time() - started
    assert cluster_state()["primary"] == standby
    job = wait(lambda: (j := session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json())["status"] == "done" and j,
               180, "the job to finish")
    assert job["node"] == standby
    assert int(redis_hget(standby, f"tts:job:{job_id}", "attempts")) == TURNS   # nothing recomputed
    assert requests.get(f"{NODES[primary]}/standby", timeout=2).status_code == 200
    assert [r for r in receiver_runs() if r["id"] not in runs_before] == []     # the receiver kept out
    print(f"\nswitchover {primary} -> {standby}: {took:.1f} s, 0 segments recomputed")
