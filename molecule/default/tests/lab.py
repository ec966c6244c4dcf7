"""What the suites after test_10_pair share: the pair's addresses, commands inside its containers,
the cluster state, the receiver's history, waiting on real events, the double-primary watcher and
the faults docs/contracts.md defines. The pair is the one its inventory describes (lab/inventory.py):
Molecule's by default; the lab with
    TTS_TEST_INVENTORY=inventory/lab/hosts.yml
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "lab"))
sys.path.insert(0, str(ROOT / "tests"))
from harness import chunk_key, dialogue, wait_for  # noqa: E402  (the one wait loop and script generator of the tests)

from inventory import Lab  # noqa: E402

LAB = Lab.from_env()
SUBNET = LAB.subnet
PREFIX = LAB.prefix
ADDRESS = LAB.address
VIP = LAB.vip
# Clients reach the VIP over HTTPS only (port 80 redirects). Its certificate is checked against the
# lab CA the pki role made on this machine; every requests call of the suites (they talk to the pair
# only) uses it.
LAB_CA = ROOT / ".lab" / "ca.pem"
os.environ["REQUESTS_CA_BUNDLE"] = str(LAB_CA)
# The page and the API behind the VIP want a login (tts_access: basic, as in production): every
# requests call to the VIP logs in as the lab's user (a netrc file); /health and /primary need none.
LAB_USER, LAB_PASSWORD = LAB.log_in()
RECEIVER = f"http://{LAB.ctl}:{LAB.port('receiver')}"
# The account Ansible and the receiver log in as (the inventory's ansible_user; root through sudo).
DEPLOY_USER = LAB.settings()["ansible_user"]
PROMETHEUS = f"http://{LAB.ctl}:{LAB.port('prometheus')}"
ALERTMANAGER = f"http://{LAB.ctl}:{LAB.port('alertmanager')}"
NODES = {node: LAB.node_url(node) for node in LAB.nodes}
SHARED = LAB.shared_on_nas               # tts_shared_dir, on the nas container
COOLDOWN_S = float(LAB.var("alert_receiver_cooldown"))

# The faults docs/contracts.md defines, with the tts-fault command the tts_app role installs (drills use it).
APP_KILLED = "tts-fault app-killed"
APP_BACK = "tts-fault app-back"
REDIS_KILLED = "tts-fault redis-down"
REDIS_BACK = "tts-fault redis-back"


def podman(*args, check=False, timeout=60):
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def on(node, command, timeout=60):
    out = podman("exec", PREFIX + node, "bash", "-c", command, timeout=timeout)
    assert out.returncode == 0, f"{node}: {command}: {out.stderr}\n{out.stdout[-3000:]}"
    return out.stdout


def cut(a, b):
    """Partition a from b, both directions, inside both containers."""
    for x, y in ((a, b), (b, a)):
        on(x, f"iptables -I INPUT -s {ADDRESS[y]} -j DROP && iptables -I OUTPUT -d {ADDRESS[y]} -j DROP")


def heal(a, b):
    for x, y in ((a, b), (b, a)):
        on(x, f"while iptables -D INPUT -s {ADDRESS[y]} -j DROP 2>/dev/null; do :; done; "
              f"while iptables -D OUTPUT -d {ADDRESS[y]} -j DROP 2>/dev/null; do :; done")


def cluster_state():
    return json.loads(on("nas", f"cat {SHARED}/cluster/state.json"))


def redis_cli(node, args):
    return on(node, "REDISCLI_AUTH=$(sed -n 's/^requirepass //p' /etc/redis/redis.conf) "
                    f"redis-cli -p {LAB.port('redis')} {args}").strip()


def redis_hget(node, key, field):
    return redis_cli(node, f"HGET {key} {field}")


def holds_within(predicate, timeout, interval=1):
    """Like wait(), but answers False instead of failing."""
    try:
        return wait(predicate, timeout, "", interval)
    except AssertionError:
        return False


def wait(predicate, timeout, what, interval=0.2):
    """wait_for() on a pair that may not answer yet: a failed request or check counts as "not yet"."""
    def answered():
        try:
            return predicate()
        except (requests.RequestException, ValueError, KeyError, AssertionError):
            return None
    try:
        return wait_for(answered, timeout, interval, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def alert_token():
    return on("ctl", "cat /etc/prometheus/alert-token").strip()


def receiver(path="/runs"):
    """The receiver's history (its /runs wants the webhook's token)."""
    return requests.get(f"{RECEIVER}{path}", headers={"Authorization": f"Bearer {alert_token()}"}, timeout=5).json()


def receiver_runs():
    return receiver()["runs"]


def new_run(before_ids, playbook, target, finished=True):
    for run in receiver_runs():
        if run["id"] not in before_ids and run["playbook"] == playbook and run["target"] == target \
                and (run["result"] != "running" or not finished):
            return run
    return None


def prometheus_value(query):
    result = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def firing(alertname):
    alerts = requests.get(f"{ALERTMANAGER}/api/v2/alerts", params={"filter": f'alertname="{alertname}"'},
                          timeout=5).json()
    return [a for a in alerts if a["status"]["state"] == "active"]


def ready(node):
    res = requests.get(f"{NODES[node]}/ready", timeout=2)
    return res.status_code, res.json()


def pair_in_role():
    """Both nodes serve their roles and agree with the cluster state."""
    state = cluster_state()
    return (requests.get(f"{NODES[state['primary']]}/primary", timeout=2).status_code == 200
            and requests.get(f"{NODES[state['standby']]}/standby", timeout=2).status_code == 200)


def wait_pair_settled(quiet_s=COOLDOWN_S + 5):
    """A healthy pair, the receiver idle and its last failover at least quiet_s ago (out of its
    cooldown by default; a drill's preflight wants 60 s)."""
    wait(pair_in_role, 150, "both nodes in their roles", interval=1)

    def idle():
        runs = receiver_runs()
        if any(r["result"] == "running" for r in runs):
            return False
        ended = [r["ended_at"] for r in runs if r["playbook"] == "failover.yml" and r["ended_at"]]
        return not ended or time.time() - max(ended) > quiet_s
    wait(idle, 150, "the receiver idle and out of its failover cooldown", interval=1)


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

    def finish(self):
        self.stop.set()
        self.join(5)
        assert self.samples > 10
        assert self.double_primary == [], "both nodes acted as unfenced primary at the same time"


def vip_holders():
    """The nodes whose interfaces carry the VIP now."""
    return [node for node in NODES
            if podman("exec", PREFIX + node, "bash", "-c", f"ip -o -4 addr show | grep -qF ' {VIP.split('//')[-1]}/'",
                      timeout=10).returncode == 0]


class VipWatch(threading.Thread):
    """What a client of the VIP lives through: `/primary` through the VIP every 0.2 s (the longest
    stretch without a 200), and which nodes hold the VIP (sampled about once a second)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.holders = []          # (time, [nodes])
        self.gap = 0.0
        self.last_ok = None
        self.samples = 0
        self.started = time.time()

    def run(self):
        last_ok = self.started
        next_holders = 0.0
        while not self.stop.is_set():
            try:
                ok = requests.get(f"{VIP}/primary", timeout=1).status_code == 200
            except requests.RequestException:
                ok = False
            now = time.time()
            self.samples += 1
            if ok:
                last_ok = now
            self.gap = max(self.gap, now - last_ok)
            self.last_ok = ok
            if now >= next_holders:
                try:
                    self.holders.append((now, vip_holders()))
                except subprocess.SubprocessError as exc:   # a slow podman exec: a missing sample, said
                    self.holders.append((now, [f"(not sampled: {type(exc).__name__})"]))
                next_holders = now + 1.0
            self.stop.wait(0.2)

    def finish(self):
        self.stop.set()
        self.join(15)
        assert self.samples > 10, "too few probes of the VIP to say anything"
        return self


def script(turns):
    return dialogue(turns, line="This is line {n}, short and clear.")


def front_door():
    """What each node's front door looked like (for a failure's message): the app's units, its users'
    listener answering, nginx's last errors."""
    api = LAB.port("api")
    return {node: on(node, "systemctl is-active tts-api tts-web tts-worker nginx | xargs; "
                           f"curl -s -m 2 -o /dev/null -w 'tts-api /health %{{http_code}}' http://{ADDRESS[node]}:{api}/health; "
                           "echo; tail -n 4 /var/log/nginx/error.log 2>/dev/null | cut -c1-300") for node in NODES}


def start_job(session, turns, before_fault=3, url=VIP):
    res = session.post(f"{url}/api/jobs", json={"script": script(turns)}, timeout=10)
    assert res.status_code == 202, f"{res.status_code} {res.text}; {front_door()}"
    job_id = res.json()["id"]
    wait(lambda: session.get(f"{url}/api/jobs/{job_id}", timeout=3).json()["segments_done"] >= before_fault, 60,
         f"{before_fault} segments before the fault")
    return job_id


def job_segments(job_id):
    """Segment files of a job on shared storage: [(index, epoch, lease generation)]."""
    names = on("nas", f"ls {SHARED}/jobs/{job_id}/segments").split()
    return [chunk_key(n) for n in names if n.endswith(".wav")]


def wait_job_done(session, job_id, turns, timeout=240, url=VIP):
    """The job finished with every segment exactly once on storage; returns the job."""
    job = wait(lambda: (j := session.get(f"{url}/api/jobs/{job_id}", timeout=3).json())["status"] in
               ("done", "failed", "cancelled") and j, timeout, f"job {job_id} to finish", interval=0.5)
    assert job["status"] == "done" and job["segments_done"] == turns, job
    indexes = sorted(i for i, *_ in job_segments(job_id))
    assert indexes == list(range(turns)), indexes
    return job


def follow_rejoin(node, runs_before, timeout=150):
    run = wait(lambda: new_run(runs_before, "rejoin.yml", node), timeout, f"rejoin.yml for {node}", interval=0.5)
    assert run["result"] == "succeeded", run
    # A rejoin succeeds only in sync: /ready (which requires the replica link) answered 200.
    code, body = ready(node)
    assert code == 200 and body["checks"]["redis"], body
    wait(lambda: requests.get(f"{NODES[node]}/standby", timeout=2).status_code == 200, 60, f"{node} standby")
    return run


# The playbooks that run under the cluster lock, through its keeper (docs/operations.md).
LOCKED = ("switchover.yml", "upgrade.yml")


def operator_command(playbook, target, extra="", locked=None):
    """The shell command an operator on ctl runs a playbook with (the receiver's user, key and inventory;
    switchover.yml and upgrade.yml through `tts-cluster run-locked`, unless locked=False); target None: no
    -e tts_target (upgrade.yml takes none: an extra var would outrank what the playbook works out)."""
    keeper = ("/opt/tts-receiver/venv/bin/tts-cluster run-locked --holder " + playbook + " -- "
              if (playbook in LOCKED if locked is None else locked) else "")
    return ("set -a; . /etc/tts-receiver/receiver.env; set +a; cd /opt/tts-receiver/ansible && "
            f"runuser -u tts-receiver -- env TTS_LAB_KEY=$TTS_LAB_KEY HOME=$HOME {keeper}"
            f"/opt/tts-receiver/venv/bin/ansible-playbook -i inventory playbooks/{playbook} "
            f"-e @/etc/tts-receiver/secrets.yml {f'-e tts_target={target}' if target else ''} {extra}")


def operator_playbook(playbook, target, timeout=300, extra="", locked=None):
    """Run a playbook on ctl as an operator does (operator_command)."""
    return on("ctl", operator_command(playbook, target, extra, locked), timeout=timeout)


def nginx_prefers(node):
    """Which node this node's nginx sends requests to first (its upstream link)."""
    return on(node, "readlink /etc/nginx/tts-upstream.conf").strip().rsplit("/", 1)[-1].removesuffix(".conf")
