"""The fault matrix, on the pair the earlier suites leave (same `molecule verify`, no new converge).
Each case starts from a healthy pair (both nodes in role, the receiver idle and out of its cooldown)
with a job in flight through the VIP, injects one fault the way docs/contracts.md defines it (iptables
DROP inside the containers, both directions; kill -9 with the unit kept down; podman pause), asserts
the outcome on real state (both nodes' /ready, the receiver's decisions and runs, the cluster state,
the job and its segment files), heals, and waits for the pair to be healthy again. Every case also
watches both nodes' /ready for two unfenced primaries. Runs against the lab too:
    TTS_TEST_INVENTORY=inventory/lab/hosts.yml .venv/bin/pytest -s molecule/default/tests/test_40_faults.py
"""
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from lab import (
    ADDRESS,
    ALERTMANAGER,
    APP_BACK,
    APP_KILLED,
    DEPLOY_USER,
    LAB_PASSWORD,
    LAB_USER,
    NODES,
    PREFIX,
    RECEIVER,
    REDIS_BACK,
    REDIS_KILLED,
    ROOT,
    SHARED,
    VIP,
    RoleWatcher,
    VipWatch,
    alert_token,
    cluster_state,
    cut,
    firing,
    follow_rejoin,
    heal,
    holds_within,
    job_segments,
    new_run,
    on,
    operator_command,
    operator_playbook,
    pair_in_role,
    podman,
    prometheus_value,
    receiver,
    receiver_runs,
    redis_cli,
    script,
    start_job,
    wait,
    wait_job_done,
    wait_pair_settled,
)

TURNS = 10
MATRIX = []        # (fault, observed) lines printed at the end of the suite


def note(fault, observed):
    MATRIX.append((fault, observed))
    print(f"\n[fault] {fault}: {observed}")


def decisions_since(t, alert=None, node=None):
    return [d for d in receiver()["decisions"] if d["decided_at"] >= t
            and (alert is None or d["alert"] == alert) and (node is None or d["node"] == node)]


def runs_since(before_ids, playbook=None):
    return [r for r in receiver_runs() if r["id"] not in before_ids and (playbook is None or r["playbook"] == playbook)]


def webhook(alertname, node, status="firing"):
    return {"version": "4", "status": status, "receiver": "failover", "groupKey": f"{alertname}/{node}",
            "alerts": [{"status": status, "labels": {"alertname": alertname, "node": node},
                        "annotations": {}, "fingerprint": f"{alertname}-{node}"}]}


class Case:
    """One fault case: a settled pair, the cluster state, a job in flight, the double-primary watcher."""

    def __init__(self, quiet_s):
        wait_pair_settled(quiet_s=quiet_s)
        self.state = cluster_state()
        self.primary, self.standby = self.state["primary"], self.state["standby"]
        self.runs_before = {r["id"] for r in receiver_runs()}
        self.session = requests.Session()
        self.watcher = RoleWatcher()
        self.watcher.start()
        self.job = start_job(self.session, TURNS)
        self.t0 = time.time()

    def finish_job(self, node):
        """The job done, every chunk on storage once. `node` is the primary at the end. Every worker takes
        jobs (the pool), the old primary's too once failover.yml has started it again, fenced: a job may
        finish on any worker; what a stale worker could have written is fenced by its lease generation
        (wait_job_done: each chunk once, no older holder's copy beside it)."""
        return wait_job_done(self.session, self.job, TURNS)

    def job_on(self, node):
        """The job as one node's app sees it (asked directly, with the session's cookie)."""
        return requests.get(f"{NODES[node]}/api/jobs/{self.job}", timeout=10,
                            cookies={"tts_session": self.session.cookies.get("tts_session")}).json()

    def recomputed(self, node):
        return int(redis_cli(node, f"HGET tts:job:{self.job} attempts")) - TURNS


@pytest.fixture
def case(request):
    """Cases that need a failover wait out the receiver's cooldown; the others only need it idle."""
    made = []

    def make(needs_failover=False):
        made.append(Case(quiet_s=35 if needs_failover else 0))
        return made[-1]
    yield make
    for c in made:
        c.watcher.finish()


def reachable(from_node, address, port):
    """A TCP connection from inside one container (bash's /dev/tcp; a reset or a timeout is False)."""
    return podman("exec", PREFIX + from_node, "timeout", "3", "bash", "-c",
                  f"echo > /dev/tcp/{address}/{port}").returncode == 0


def test_00_host_keys_are_pinned_for_the_receiver_and_the_nas_mount():
    """ctl's receiver checks the nodes' host keys against the ones the deploy pinned; each mount
    checks the NAS's. Compared with the keys the hosts really have (read through podman)."""
    def key(node):
        return " ".join(podman("exec", PREFIX + node, "cat", "/etc/ssh/ssh_host_ed25519_key.pub",
                               check=True).stdout.split()[:2])
    pinned = on("ctl", "cat /var/lib/tts-receiver/.ssh/known_hosts")
    for node in NODES:
        assert f"{ADDRESS[node]} {key(node)}" in pinned, (node, pinned)
        ssh = ("runuser -u tts-receiver -- ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no "
               "-o LogLevel=ERROR -i /var/lib/tts-receiver/.ssh/id_ed25519")
        assert on("ctl", f"{ssh} {DEPLOY_USER}@{ADDRESS[node]} 'sudo -n hostname'").strip() == node
        # The receiver is the deploy user, root only through sudo: its key does not log in as root.
        assert "denied" in on("ctl", f"{ssh} root@{ADDRESS[node]} hostname 2>&1 || true"), node
        # Nor does the lab's own key (Ansible's, from this machine): deploy only, as on production hosts.
        lab_ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
                   "-o", f"UserKnownHostsFile={ROOT / '.lab/mol-known_hosts'}", "-i", str(ROOT / ".lab/ssh/id_ed25519")]
        as_root = subprocess.run([*lab_ssh, f"root@{ADDRESS[node]}", "true"], capture_output=True, text=True, timeout=30)
        assert as_root.returncode != 0 and "denied" in as_root.stderr, (node, as_root.stderr)
        as_deploy = subprocess.run([*lab_ssh, f"{DEPLOY_USER}@{ADDRESS[node]}", "sudo -n id -u"], capture_output=True,
                                   text=True, timeout=30)
        assert as_deploy.stdout.strip() == "0", (node, as_deploy.stderr)
        options = on(node, "findmnt -n -o OPTIONS --target /mnt/nas; grep ' /mnt/nas ' /etc/fstab")
        assert "StrictHostKeyChecking=yes" in options and "accept-new" not in options, options
        assert key("nas") in on(node, "cat /root/.ssh/tts_nas_known_hosts")


def test_00_hardening_redis_and_monitoring_apis_only_for_those_who_need_them():
    # Redis: the pair only (replication), and a password even then.
    for node, peer in (("tts-a", "tts-b"), ("tts-b", "tts-a")):
        assert reachable(peer, ADDRESS[node], 6379)
        for outsider in ("nas", "ctl"):
            assert not reachable(outsider, ADDRESS[node], 6379), f"{outsider} reaches Redis on {node}"
        assert "NOAUTH" in on(node, "redis-cli -p 6379 PING 2>&1")
    # Prometheus and Alertmanager: ctl, the pair and the lab's host; not the NAS (anyone who can post
    # to Alertmanager could forge a TTSNodeDown).
    for port in (9090, 9093):
        assert not reachable("nas", ADDRESS["ctl"], port), f"the NAS reaches ctl:{port}"
        assert reachable("tts-a", ADDRESS["ctl"], port)
    assert requests.get(f"{ALERTMANAGER}/api/v2/status", timeout=5).status_code == 200
    # The services run unprivileged and cannot gain privileges or write the system.
    units = {"tts-a": ["tts-web", "tts-api", "tts-worker"], "tts-b": ["tts-web", "tts-api", "tts-worker"],
             "ctl": ["tts-receiver"]}
    for node, names in units.items():
        for unit in names:
            props = dict(line.split("=", 1) for line in
                         on(node, f"systemctl show {unit} -p User -p NoNewPrivileges -p ProtectSystem").split())
            assert props["User"] not in ("", "root") and props["NoNewPrivileges"] == "yes" \
                and props["ProtectSystem"] in ("full", "strict"), (node, unit, props)
    # nginx refuses bodies over its limit itself, with a JSON error.
    res = requests.post(f"{VIP}/api/jobs", data=b"x" * (3 * 1024 * 1024), timeout=10,
                        headers={"Content-Type": "application/json"})
    assert res.status_code == 413 and res.json()["error"], res.text[:200]
    note("hardening", "Redis only from the peer (reset for ctl and the NAS), NOAUTH without the password; "
                      "Prometheus/Alertmanager refused to the NAS; units unprivileged, NoNewPrivileges, "
                      "ProtectSystem; nginx 413 JSON over 2 MiB")


def test_05_unauthenticated_wrong_token_and_malformed_webhooks_run_nothing(case):
    c = case()
    token = alert_token()
    stored = receiver("/health")["notifications"]
    good = webhook("TTSNodeDown", c.primary)
    bad = [
        ("no token", {}, json.dumps(good), 401),
        ("wrong token", {"Authorization": "Bearer " + "x" * len(token)}, json.dumps(good), 401),
        ("token in the wrong scheme", {"Authorization": "Basic " + token}, json.dumps(good), 401),
        ("not JSON", {"Authorization": f"Bearer {token}"}, "{not json", 400),
        ("wrong version", {"Authorization": f"Bearer {token}"}, json.dumps({**good, "version": "3"}), 400),
        ("no alerts", {"Authorization": f"Bearer {token}"}, json.dumps({**good, "alerts": []}), 400),
        ("shell in the node label", {"Authorization": f"Bearer {token}"},
         json.dumps(webhook("TTSNodeDown", "tts-a; touch /tmp/pwned")), 400),
        ("playbook code in the alert name", {"Authorization": f"Bearer {token}"},
         json.dumps(webhook("{{ lookup('pipe','id') }}", c.primary)), 400),
        ("5 MiB body", {"Authorization": f"Bearer {token}"}, "x" * (5 * 1024 * 1024), 413),
    ]
    for what, headers, body, expected in bad:
        res = requests.post(f"{RECEIVER}/alerts", data=body, timeout=10,
                            headers={"Content-Type": "application/json", **headers})
        assert res.status_code == expected, (what, res.status_code, res.text)
        assert "error" in res.json(), what
    # Nothing stored that could run later, nothing decided, nothing run, nothing executed.
    assert receiver("/health")["notifications"] == stored
    assert decisions_since(c.t0) == [] and runs_since(c.runs_before) == []
    assert podman("exec", PREFIX + "ctl", "test", "-e", "/tmp/pwned").returncode != 0
    c.finish_job(c.primary)
    note("5 bad webhooks", f"{len(bad)} requests answered 401/400/413, 0 stored, 0 decisions, 0 runs")


def test_12_bad_input_through_the_vip_gets_clear_errors(case):
    c = case()
    s = requests.Session()

    def post(body, **kw):
        return s.post(f"{VIP}/api/jobs", json=body, timeout=10, **kw) if body is not None else \
            s.post(f"{VIP}/api/jobs", timeout=10, **kw)
    checks = [
        ("oversize script", post({"script": "Speaker 1: " + "word " * 400_000}), 413),
        ("malformed JSON", post(None, data="{oops", headers={"Content-Type": "application/json"}), 400),
        ("five speakers", post({"script": "\n".join(f"Speaker {i}: hello" for i in range(1, 6))}), 400),
        ("unknown voice", post({"script": "Speaker 1: hi", "voices": {"1": "no-such-voice"}}), 400),
        ("empty script", post({"script": ""}), 400),
    ]
    for job_id in ("..%2f..%2fcluster%2fstate.json", "../../cluster/state.json", "ABC", "0" * 31, "0" * 32):
        checks.append((f"job id {job_id!r}", s.get(f"{VIP}/api/jobs/{job_id}", timeout=5), 404))
    for what, res, expected in checks:
        assert res.status_code == expected, (what, res.status_code, res.text[:300])
        assert res.headers.get("Content-Type", "").startswith("application/json"), what
        assert res.json().get("error"), what
    # A flood from one session: 429 with Retry-After once the per-session limit is reached.
    flood = [post({"script": "Speaker 1: flood."}) for _ in range(40)]
    codes = [res.status_code for res in flood]
    assert 429 in codes and set(codes) <= {202, 429}, codes
    limited = post({"script": "Speaker 1: flood."})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    accepted = codes.count(202)
    for res in flood:      # cancel what the flood queued so the next cases' jobs do not wait behind it
        if res.status_code == 202:
            assert s.delete(f"{VIP}/api/jobs/{res.json()['id']}", timeout=5).status_code in (200, 202)
    assert cluster_state() == c.state
    c.finish_job(c.primary)
    note("12 bad input via the VIP", f"{len(checks)} bad requests answered 4xx with a JSON error; flood: "
                                     f"{accepted} accepted then 429 with Retry-After")


def test_01_monitor_cut_off_from_the_primary_does_not_fail_over(case):
    c = case()
    cut("ctl", c.primary)
    try:
        # TTSNodeDown fires for the primary; the standby's witness probe still reaches it.
        first = wait(lambda: [d for d in decisions_since(c.t0, "TTSNodeDown", c.primary)
                              if d["alert_status"] == "firing"], 60, "a decision on TTSNodeDown", interval=0.5)
        assert first[-1]["action"] == "none" and "still reaches a ready primary" in first[-1]["reason"], first
        # Reconsidered at Alertmanager's repeat interval: still no failover.
        again = wait(lambda: len([d for d in decisions_since(c.t0, "TTSNodeDown", c.primary)
                                  if d["alert_status"] == "firing"]) >= 2, 60, "the alert reconsidered", interval=1)
        assert again
        assert runs_since(c.runs_before) == [] and cluster_state() == c.state
        assert requests.get(f"{NODES[c.primary]}/primary", timeout=2).status_code == 200
    finally:
        heal("ctl", c.primary)
    c.finish_job(c.primary)
    note("1 monitor-primary partition", f"no failover; receiver: {first[-1]['reason']}")


def test_02_partition_between_the_pair_makes_no_second_primary(case):
    c = case()
    done_before = c.job_on(c.primary)["segments_done"]
    watch = VipWatch()
    watch.start()
    cut(c.primary, c.standby)
    try:
        time.sleep(25)   # far past every alert's `for` (2 s and 5 s)
        watch.finish()
        # keepalived cannot tell the cut from a dead peer: without the track file both nodes held the
        # VIP, and clients sent to the standby waited for a primary it could not reach (no 200 for
        # 43.6 s of 45). Only the cluster state's primary may hold it.
        held = [nodes for _, nodes in watch.holders]
        assert len(held) >= 10, f"too few samples of the VIP's holders: {held}"
        assert all(nodes == [c.primary] for nodes in held), f"VIP holders during the cut: {held}"
        # The promise for a cut: at most 8 s without a 200 (it was 43.6 s of 45 with both holding it).
        assert watch.last_ok and watch.gap <= 8, f"{watch.gap:.1f} s without a 200 from /primary through the VIP"
        assert cluster_state() == c.state
        assert runs_since(c.runs_before, "failover.yml") == []
        assert requests.get(f"{NODES[c.primary]}/primary", timeout=2).status_code == 200
        status = requests.get(f"{NODES[c.standby]}/primary", timeout=2).status_code
        assert status != 200
        # The primary keeps working while cut off from its standby.
        done = c.job_on(c.primary)["segments_done"]
        assert done > done_before
        decided = [f"{d['alert']} {d['node']}: {d['action']}" for d in decisions_since(c.t0)
                   if d["alert_status"] == "firing"]
    finally:
        heal(c.primary, c.standby)
    c.finish_job(c.primary)
    rejoins = runs_since(c.runs_before, "rejoin.yml")
    note("2 pair partition", f"no failover, one primary, the VIP on it alone (longest without a 200 through "
                             f"the VIP: {watch.gap:.1f} s); receiver decisions {sorted(set(decided))}; "
                             f"rejoins {[r['result'] for r in rejoins]}")


def test_03_flapping_ready_does_not_fail_over(case):
    c = case()
    flaps = 6
    for _ in range(flaps):
        cut("ctl", c.primary)
        time.sleep(0.8)
        heal("ctl", c.primary)
        time.sleep(4)
    time.sleep(5)
    # The monitor did see the primary fail, repeatedly, yet never long enough for TTSNodeDown.
    seen = prometheus_value(f'min_over_time(probe_success{{job="tts_ready",node="{c.primary}"}}[60s])')
    assert seen == 0.0, "the probe never failed: the fault was not injected"
    assert [d for d in decisions_since(c.t0, "TTSNodeDown", c.primary) if d["alert_status"] == "firing"] == []
    assert runs_since(c.runs_before) == [] and cluster_state() == c.state
    c.finish_job(c.primary)
    note("3 flapping /ready", f"{flaps} outages of 0.8 s seen by the probe; TTSNodeDown never fired; no failover")


def test_04_webhook_storm_gives_exactly_one_failover(case):
    c = case(needs_failover=True)
    token = alert_token()
    body = json.dumps(webhook("TTSNodeDown", c.primary))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    stored = receiver("/health")["notifications"]
    on(c.primary, APP_KILLED)

    def post(_):
        return requests.post(f"{RECEIVER}/alerts", data=body, headers=headers, timeout=30).status_code
    started = time.time()
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(post, range(1000)))
    took = time.time() - started
    try:
        assert codes.count(200) == 1000, {code: codes.count(code) for code in set(codes)}
        assert receiver("/health")["notifications"] >= stored + 1000
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
        c.finish_job(c.standby)
        # Every stored notification has been looked at; still exactly one failover.
        wait(lambda: receiver("/health")["unprocessed"] == 0, 120, "the storm processed", interval=1)
        assert len(runs_since(c.runs_before, "failover.yml")) == 1
        assert cluster_state()["epoch"] == c.state["epoch"] + 1
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        on(c.primary, APP_BACK)
    follow_rejoin(c.primary, runs_before)
    note("4 webhook storm", f"1000 identical firing TTSNodeDown posted by 50 clients in {took:.1f} s, all "
                            f"stored (200); exactly 1 failover; {c.recomputed(c.standby)} segment recomputed")


def test_08_paused_old_primary_is_fenced_when_it_resumes(case):
    c = case(needs_failover=True)
    podman("pause", PREFIX + c.primary, check=True)
    # What the paused primary's worker had committed: the job's chunks of its lease generation (the job
    # goes on under a newer one on a free worker of the pool once the lease lapses).
    paused = job_segments(c.job)
    paused_gen = max(gen for *_, gen in paused)
    old_epoch_segments = [s for s in paused if s[2] == paused_gen]
    try:
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        podman("unpause", PREFIX + c.primary, check=True)
    # Its processes resume with the belief they had; every answer from it must say fenced.
    answers = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            res = requests.get(f"{NODES[c.primary]}/ready", timeout=1)
            answers.append(res.json())
        except requests.RequestException:
            pass
        time.sleep(0.1)
    assert answers and all(a["fenced"] for a in answers), [a for a in answers if not a["fenced"]][:3]
    res = requests.post(f"{NODES[c.primary]}/api/jobs", json={"script": "Speaker 1: stale."}, timeout=5)
    assert res.status_code == 503, res.text
    c.finish_job(c.standby)
    # Nothing written by the paused worker's lease after the failover (the job went on under a newer one).
    assert [s for s in job_segments(c.job) if s[2] == paused_gen] == old_epoch_segments
    follow_rejoin(c.primary, runs_before)
    note("8 paused old primary resumed", f"{len(answers)} /ready answers after resume, all fenced; job POST 503; "
                                         f"no segment of the old epoch after the failover; rejoined by the receiver")


def test_09_redis_killed_on_the_primary_fails_over_to_the_replica(case):
    c = case(needs_failover=True)
    faulted_at = int(time.time())
    on(c.primary, REDIS_KILLED)
    try:
        code, body = wait(lambda: (r := requests.get(f"{NODES[c.primary]}/ready", timeout=2)).status_code == 503
                          and (r.status_code, r.json()), 30, "the primary not ready")
        assert body["checks"]["redis"] is False, body
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
        # failover.yml stopped the old primary's app for certain: no restart by systemd undid it.
        restarts = on(c.primary, f"journalctl -u tts-worker -u tts-web -u tts-api --since @{faulted_at} | "
                                 "grep -c 'Scheduled restart job' || true").strip()
        assert restarts == "0", f"systemd restarted the old primary's app {restarts} times after the failover's stop"
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        on(c.primary, REDIS_BACK)
    c.finish_job(c.standby)
    assert c.recomputed(c.standby) <= 1
    # The job list of the session survived in the replica.
    assert c.job in [j["id"] for j in c.session.get(f"{VIP}/api/jobs", timeout=3).json()["jobs"]]
    follow_rejoin(c.primary, runs_before)
    note("9 Redis killed on the primary", f"primary not ready ({body['reason']}); failover to {c.standby}; "
                                          f"{c.recomputed(c.standby)} recomputed; rejoined")


def test_06_receiver_killed_mid_failover_finishes_it_after_its_restart(case):
    c = case(needs_failover=True)
    on(c.primary, APP_KILLED)
    try:
        killed = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby, finished=False), 60,
                      "failover.yml started", interval=0.1)
        # Half-way: the old primary fenced (epoch bumped), Redis, nginx and the VIP not switched yet.
        wait(lambda: cluster_state()["epoch"] > c.state["epoch"], 30, "the epoch bumped", interval=0.05)
        # The receiver and the playbook it runs, at once (kill -9 of the unit's whole cgroup); systemd
        # restarts it.
        on("ctl", "systemctl kill --signal=SIGKILL tts-receiver")
        wait(lambda: receiver("/health"), 30, "the receiver back", interval=0.5)
        again = wait(lambda: [r for r in runs_since(c.runs_before, "failover.yml")
                              if r["id"] != killed["id"] and r["result"] != "running"], 120,
                     "the failover finished after the restart", interval=0.5)
        assert [r["result"] for r in receiver_runs() if r["id"] == killed["id"]] == ["interrupted"]
        assert len(again) == 1 and again[0]["result"] == "succeeded", again
        assert again[0]["alert"] == "ReceiverRestarted" and "interrupted" in again[0]["reason"], again[0]
        assert cluster_state()["primary"] == c.standby
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        on(c.primary, APP_BACK)
    c.finish_job(c.standby)
    follow_rejoin(c.primary, runs_before)
    note("6 receiver killed mid-failover", f"run #{killed['id']} marked interrupted; after the restart: "
                                           f"{again[0]['reason']}; one primary; job finished")


def test_10a_storage_lost_by_the_primary_only_fails_over_and_the_job_resumes(case):
    c = case(needs_failover=True)
    cut(c.primary, "nas")
    t_fault = time.time()
    try:
        # Not ready at once; fenced once its last read of the cluster state is TTS_STATE_MAX_AGE old.
        code, body = wait(lambda: (r := requests.get(f"{NODES[c.primary]}/ready", timeout=3)).status_code == 503
                          and r.json()["fenced"] and (r.status_code, r.json()), 60, "the primary fenced")
        assert body["checks"]["storage"] is False, body
        served = wait(lambda: (r := requests.get(f"{VIP}/primary", timeout=1)).status_code == 200
                      and r.json()["node"] == c.standby and time.time(), 120, "the standby serving", interval=0.1)
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
        c.finish_job(c.standby)
        state = cluster_state()
        assert state["primary"] == c.standby
    finally:
        heal(c.primary, "nas")
    note("10a storage lost by the primary", f"primary fenced itself ({body['reason']}); failover to "
                                            f"{c.standby}, /primary 200 through the VIP {served - t_fault:.1f} s after "
                                            f"the cut; job finished there, {c.recomputed(c.standby)} recomputed")
    recover_by_hand(c, state)


def test_10b_storage_lost_by_both_nodes_pauses_jobs_without_a_failover(case):
    c = case()
    cut(c.primary, "nas")
    cut(c.standby, "nas")
    try:
        code, body = wait(lambda: (r := requests.get(f"{NODES[c.primary]}/ready", timeout=3)).status_code == 503
                          and (r.status_code, r.json()), 60, "the primary not ready")
        assert body["checks"]["storage"] is False and "storage" in body["reason"], body
        escalated = wait(lambda: [d for d in decisions_since(c.t0, "TTSNodeDown", c.primary)
                                  if d["action"] == "escalate"], 90, "the receiver's decision", interval=1)
        assert "would not help" in escalated[0]["reason"], escalated
        paused = c.job_on(c.primary)
        time.sleep(10)
        later = c.job_on(c.primary)
        # Paused where the NAS is gone, not failed; a worker that still reaches it (the worker host, in a
        # pool) may go on with it meanwhile.
        assert paused["status"] in ("running", "queued") and later["status"] in ("running", "queued", "done"), later
        assert later["segments_done"] == paused["segments_done"] or later["node"] not in (c.primary, c.standby), \
            (paused, later)
        assert runs_since(c.runs_before, "failover.yml") == [] and cluster_state() == c.state
        told = [e for e in operators_log_since(c.t0) if "escalation" in json.dumps(e)]
        assert told, "the operators were not told"
        decided = sorted({f"{d['alert']} {d['node']}: {d['action']}" for d in decisions_since(c.t0)
                          if d["alert_status"] == "firing"})
    finally:
        heal(c.primary, "nas")
        heal(c.standby, "nas")
    c.finish_job(c.primary)
    note("10b storage lost by both nodes", f"/ready: {body['reason']}; decisions {decided}; job at "
                                           f"{paused['segments_done']} segments, 10 s later {later['segments_done']} "
                                           f"(on {later['node']}); finished after the NAS returned")


def test_11_storage_full_gives_a_clear_error_no_corrupt_segment_and_recovers(case):
    c = case()
    on("nas", "dd if=/dev/zero of=/export/filler bs=1M 2>/dev/null || true")     # the NAS's last byte
    try:
        job = wait(lambda: (j := c.job_on(c.primary))["error"] and j, 60, "an error on the job", interval=0.5)
        assert "full" in job["error"] and job["status"] in ("running", "queued"), job
        code, body = wait(lambda: (r := requests.get(f"{NODES[c.primary]}/ready", timeout=3)).status_code == 503
                          and (r.status_code, r.json()), 30, "the primary not ready")
        assert body["checks"]["storage"] is False, body
        stuck = c.job_on(c.primary)["segments_done"]
        time.sleep(8)
        assert c.job_on(c.primary)["segments_done"] == stuck
        assert runs_since(c.runs_before, "failover.yml") == []
    finally:
        on("nas", "rm -f /export/filler")
    done = c.finish_job(c.primary)
    assert done["error"] in ("", None), done
    # Every segment on storage is a whole WAV file (commits are write-then-link: no torn segment).
    frames = on(c.primary, "python3 -c 'import glob, wave; print(*[wave.open(f).getnframes() for f in "
                           f"sorted(glob.glob(\"/mnt/nas/tts/jobs/{c.job}/segments/*.wav\"))])'").split()
    assert len(frames) == TURNS and all(int(n) > 0 for n in frames), frames
    note("11 storage full", f"job error {job['error']!r}; /ready: {body['reason']}; paused at {stuck} segments; "
                            f"finished when space returned, every segment a whole WAV")


def operators_log_since(t):
    lines = on("ctl", "cat /var/log/tts-operators.log 2>/dev/null || true").splitlines()
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("received_at", 0) >= t:
            out.append(entry)
    return out


# ---- faults the first matrix did not inject: a NAS or a clock that misbehaves, a node's own parts ----

def test_14_damaged_segment_on_storage_is_generated_again_without_a_failover(case):
    c = case()
    seg_dir = f"{SHARED}/jobs/{c.job}/segments"
    victim = on("nas", f"ls {seg_dir} | grep '^00001[.].*wav$' | head -1").strip()
    on("nas", f"truncate -s 300 {seg_dir}/{victim}")          # a NAS that lost data: the header stays
    stayed = wait_done_in_role(c)
    aside = on("nas", f"ls {seg_dir} | grep -c damaged || true").strip()
    assert int(aside) >= 1, "the damaged segment was not moved aside"
    assert runs_since(c.runs_before) == [] and not decisions_since(c.t0, "TTSNodeDown")
    assert cluster_state() == c.state
    note("14 damaged segment on storage", f"segment {victim} truncated on the NAS; moved aside and generated "
                                          f"again, job done, no failover, pair in role in {stayed} samples")


def wait_done_in_role(c, timeout=240):
    """Wait for the case's job to finish on the same primary, checking the pair stays in role."""
    samples = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert pair_in_role(), "the pair left its roles"
        samples += 1
        if c.session.get(f"{VIP}/api/jobs/{c.job}", timeout=3).json()["status"] in ("done", "failed"):
            break
        time.sleep(1)
    c.finish_job(c.primary)
    return samples


def test_15_io_error_from_the_mount_on_the_primary_fences_it_and_fails_no_job(case):
    """Not a timeout: the sshfs process dies and every access answers ENOTCONN at once."""
    c = case(needs_failover=True)
    on(c.primary, "pkill -9 -f '^/sbin/mount.fuse.sshfs'")      # the FUSE daemon (its comm is cut short)
    statuses = []
    try:
        code, body = wait(lambda: (r := requests.get(f"{NODES[c.primary]}/ready", timeout=3)).status_code == 503
                          and r.json()["fenced"] and (r.status_code, r.json()), 60, "the primary fenced")
        assert body["checks"]["storage"] is False, body

        def failed_over():
            statuses.append(c.session.get(f"{VIP}/api/jobs/{c.job}", timeout=3).json().get("status"))
            return new_run(c.runs_before, "failover.yml", c.standby)
        run = wait(failed_over, 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
        c.finish_job(c.standby)
        state = cluster_state()
    finally:
        # A new mount is not seen by services already running (their mount namespaces, ProtectSystem,
        # are copies with private propagation in these containers): remount, then restart them.
        on(c.primary, "umount -l /mnt/nas 2>/dev/null; mount /mnt/nas; "
                      "systemctl restart tts-worker tts-web tts-api tts-deadman 2>/dev/null || true")
    assert "failed" not in statuses, "an I/O error ended the job"
    note("15 I/O error (sshfs killed) on the primary", f"primary fenced ({body['reason'][:90]}); failover to "
                                                      f"{c.standby}; job never failed, finished there, "
                                                      f"{c.recomputed(c.standby)} recomputed")
    recover_by_hand(c, state)


def test_16_blackbox_exporter_stopped_alerts_the_operators_and_fails_nothing_over(case):
    c = case()
    on("ctl", "systemctl stop prometheus-blackbox-exporter")
    try:
        alerts = wait(lambda: firing("TTSProbeMissing"), 90, "TTSProbeMissing firing", interval=2)
        told = wait(lambda: [e for e in operators_log_since(c.t0) if "TTSProbeMissing" in json.dumps(e)], 60,
                    "the operators told", interval=2)
        nodes = sorted({a["labels"]["node"] for a in alerts})
    finally:
        on("ctl", "systemctl start prometheus-blackbox-exporter")
    c.finish_job(c.primary)
    assert runs_since(c.runs_before) == [] and not decisions_since(c.t0, "TTSNodeDown")
    wait(lambda: not firing("TTSProbeMissing"), 120, "TTSProbeMissing resolved", interval=2)
    note("16 blackbox exporter stopped", f"TTSProbeMissing fired for {nodes}, operators told ({len(told)} "
                                         "notifications), no failover, resolved after the restart")


def test_17_switchover_killed_mid_run_frees_the_lock_at_once_and_the_pair_recovers(case):
    c = case(needs_failover=True)
    podman("exec", "-d", PREFIX + "ctl", "bash", "-c",
           operator_command("switchover.yml", c.standby) + " > /tmp/switchover-killed.log 2>&1",
           check=True)
    # Kill it while the primary's worker finishes its segment (the stop step in progress): the
    # worker stays stopped, the lock would have been held for its TTL. Watched and killed from ctl in
    # one command (the receiver's key reaches the nodes), so that the kill lands within milliseconds of
    # the stop beginning, not after the stop ended and the playbook went on to promote.
    epoch_before = cluster_state()["epoch"]
    watch = ("until [ \"$(systemctl is-active tts-worker)\" = deactivating ]; do sleep 0.02; done")
    try:
        on("ctl", f"timeout 90 runuser -u tts-receiver -- ssh -o StrictHostKeyChecking=yes -o UpdateHostKeys=no "
                  f"-o LogLevel=ERROR -i /var/lib/tts-receiver/.ssh/id_ed25519 {DEPLOY_USER}@{ADDRESS[c.primary]} '{watch}' && "
                  # Only the ansible-playbook processes (main and workers), not the shells around them.
                  "pkill -9 -f '^/opt/tts-receiver/venv/bin/python[0-9.]* /opt/tts-receiver/venv/bin/ansible-playbook "
                  ".*switchover[.]yml'", timeout=120)
    except AssertionError as exc:   # say what the switchover did instead
        raise AssertionError(f"{exc}; switchover.yml said: {on('ctl', 'tail -c 3000 /tmp/switchover-killed.log')}; "
                             f"the job: {c.job_on(c.primary)}") from None
    killed_at = time.time()
    assert cluster_state()["epoch"] == epoch_before, "switchover.yml promoted before the kill landed"
    wait(lambda: on("nas", f"test -e {SHARED}/cluster/lock && echo held || echo free").strip() == "free", 20,
         "the lock released by its keeper")
    freed = time.time() - killed_at
    try:
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby, finished=False), 120,
                   "the receiver acting on the primary's stopped worker", interval=0.5)
    except AssertionError as exc:   # say what the receiver decided instead
        raise AssertionError(f"{exc}; the receiver decided: "
                             f"{[(d['alert'], d['node'], d['action'], d['reason']) for d in decisions_since(c.t0)]}; "
                             f"{c.primary} /ready: {requests.get(f'{NODES[c.primary]}/ready', timeout=10).text}") from None
    acted = run["started_at"] - killed_at
    wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover to end", interval=0.5)
    c.finish_job(c.standby)
    state = cluster_state()
    note("17 switchover killed mid-run", f"lock released {freed:.1f} s after the kill (TTL 30 s, was 300); "
                                         f"receiver failed over {acted:.1f} s after it; job finished on "
                                         f"{c.standby}, {c.recomputed(c.standby)} recomputed")
    recover_by_hand(c, state)



def test_19_a_standbys_dead_nas_client_heals_by_itself_and_the_next_fault_finds_a_standby(case):
    """The standby's sshfs dies (ENOTCONN): it stayed without redundancy until a person came, and the
    primary's death next took the service down. Its healer (tts-nas-heal) mounts it again and restarts
    its services onto the live mount (the receiver's rejoin heals it too); then the primary is killed,
    and the healed standby takes over and finishes the job. Runs before case 7, whose failed failover
    bars another in its epoch (the receiver's rule), and skips in such an epoch rather than wait for it."""
    epoch = cluster_state()["epoch"]
    if any(r["playbook"] == "failover.yml" and r["result"] == "failed" and r.get("epoch_before") == epoch
           for r in receiver_runs()):
        pytest.skip(f"a failover already failed in epoch {epoch}: the receiver fails over no more in it")
    c = case(needs_failover=True)
    on(c.standby, "pkill -9 -f '^/sbin/mount.fuse.sshfs'")
    t_fault = time.time()
    wait(lambda: requests.get(f"{NODES[c.standby]}/ready", timeout=3).status_code == 503, 60, "the standby unready")
    wait(lambda: requests.get(f"{NODES[c.standby]}/standby", timeout=3).status_code == 200, 120,
         "the standby healed and in its role again", interval=1)
    healed = time.time() - t_fault
    said = on(c.standby, "journalctl -t tts-nas-heal --no-pager -n 30")
    assert "mounted again" in said or new_run(c.runs_before, "rejoin.yml", c.standby, finished=False), said
    c.finish_job(c.primary)                    # the job in flight went on on the primary meanwhile
    wait(lambda: not any(r["result"] == "running" for r in receiver_runs()), 150, "the receiver idle", interval=1)
    job = start_job(c.session, TURNS)          # the second fault hits this one
    runs_before = {r["id"] for r in receiver_runs()}
    on(c.primary, APP_KILLED)
    try:
        run = wait(lambda: new_run(runs_before, "failover.yml", c.standby), 120, "the failover", interval=0.5)
        assert run["result"] == "succeeded", run
        done = wait_job_done(c.session, job, TURNS)
        assert done["node"] != c.primary, done
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        on(c.primary, APP_BACK)
    follow_rejoin(c.primary, runs_before)
    note("19 standby's NAS client killed, then the primary", f"the standby healed and in role {healed:.0f} s after "
                                                             f"its sshfs died; the primary killed next: failover to "
                                                             f"{c.standby}, job finished there")


def test_07_standby_lost_during_the_failover_stops_reports_and_never_loops(case):
    c = case(needs_failover=True)
    on(c.primary, APP_KILLED)
    try:
        wait(lambda: new_run(c.runs_before, "failover.yml", c.standby, finished=False), 60,
             "failover.yml started", interval=0.05)
        podman("kill", PREFIX + c.standby, check=True)
        run = wait(lambda: new_run(c.runs_before, "failover.yml", c.standby), 120, "the failover to end")
        assert run["result"] == "failed", run
        # Later notifications of the same outage: escalations, never another run.
        escalated = wait(lambda: [d for d in decisions_since(run["ended_at"]) if d["action"] == "escalate"], 90,
                         "an escalation", interval=1)
        time.sleep(35)      # one more repeat interval of the alerts
        assert len(runs_since(c.runs_before, "failover.yml")) == 1
        told = [e for e in operators_log_since(c.t0) if "escalation" in json.dumps(e) or "run_failed" in json.dumps(e)]
        assert told, "the operators were not told"
        state = cluster_state()
    finally:
        podman("start", PREFIX + c.standby)
        on(c.primary, APP_BACK)
    note("7 standby lost during the failover", f"failover.yml failed; then: {escalated[0]['reason']}; "
                                               f"{len(told)} notification(s) to the operators; state epoch "
                                               f"{state['epoch']} primary {state['primary']}")
    recover_by_hand(c, state)


def recover_by_hand(c, state):
    """What the README runbook tells an operator after an escalation: both hosts back, then
    switchover.yml (or rejoin.yml) by hand so that one node is primary and the other follows it."""
    wait(lambda: all(requests.get(f"{url}/health", timeout=2).status_code == 200 for url in NODES.values()), 120,
         "both apps up")
    if not holds_within(pair_in_role, 60):
        operator_playbook("rejoin.yml", state["standby"])
    wait(pair_in_role, 120, "the pair in role after the operators' step", interval=1)
    c.finish_job(cluster_state()["primary"])


def deadman(node):
    res = requests.get(f"http://{ADDRESS[node]}:9097/status", timeout=3)
    return res.status_code, res.json()


def test_13_ctl_lost_the_pair_keeps_serving_and_its_watchdog_goes_silent(case):
    c = case()
    wait(lambda: all(deadman(node)[1]["watchdog"] == "arriving" for node in NODES), 90,
         "the Watchdog arriving on both nodes", interval=2)
    podman("kill", PREFIX + "ctl", check=True)
    lost_at = time.time()
    try:
        c.finish_job(c.primary)                                   # through the VIP, without ctl
        second = start_job(c.session, 2, before_fault=0)
        wait_job_done(c.session, second, 2)
        assert pair_in_role()
        silent = {node: wait(lambda n=node: (s := deadman(n))[0] == 503 and s[1], 120,
                             f"{node}'s dead-man's switch to go off", interval=2) for node in NODES}
        took = time.time() - lost_at
        assert all("Failing over by hand" in body["reason"] for body in silent.values()), silent
    finally:
        podman("start", PREFIX + "ctl", check=True)
    wait(lambda: receiver("/health"), 180, "the receiver back", interval=2)
    wait(lambda: all(deadman(node)[0] == 200 for node in NODES), 120, "the Watchdog back", interval=2)
    wait(lambda: prometheus_value('up{job="tts_receiver"}') == 1.0, 120, "Prometheus scraping again", interval=2)
    note("13 ctl lost", f"pair kept serving (job finished, a new one done, both in role); both nodes' "
                        f"dead-man's switch went off {took:.0f} s after the loss; all back after ctl restarted")


# What one client on the LAN (run inside the NAS container: an address of its own, so that the job
# owner's requests from this machine are not the abuser's) sends at the pair: bad scripts, a cookieless
# poller, and 32 slow readers of its own job's FLAC. Prints what it was answered, as JSON.
ABUSER = r"""
import base64, json, ssl, sys, threading, time, urllib.error, urllib.request
VIP = sys.argv[1]
# A user with a login (tts_access: basic), as any abuser of the service would have.
LOGIN = {"Authorization": "Basic " + base64.b64encode(sys.argv[2].encode()).decode()}
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def ask(method, path, body=None, cookie=None, ctype="application/json"):
    req = urllib.request.Request(VIP + path, data=body, method=method, headers=LOGIN)
    if body is not None: req.add_header("Content-Type", ctype)
    if cookie: req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as res:
            return res.status, res.read(), res.headers.get("Set-Cookie")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), None
out = {"bad": [], "poller": {}, "readers": []}
for raw in (b'{"script": "Speaker 1: \\ud800"}', b'{"script": "Speaker 1: \\u0007 bell"}',
            b'{"script": "Speaker 1: \\ud800\\ud800"}'):
    status, body, _ = ask("POST", "/api/jobs", raw)
    out["bad"].append([status, json.loads(body).get("error", "")[:80]])
status, body, cookie = ask("POST", "/api/jobs", json.dumps({"script": "Speaker 1: My own job, to download slowly."}).encode())
assert status == 202, (status, body)
cookie = cookie.split(";")[0]; job = json.loads(body)["id"]
deadline = time.time() + 120
while json.loads(ask("GET", f"/api/jobs/{job}", cookie=cookie)[1]).get("status") != "done":
    assert time.time() < deadline, "the abuser's own job did not finish"; time.sleep(0.5)
for _ in range(3000):
    status = ask("GET", "/api/jobs")[0]
    out["poller"][status] = out["poller"].get(status, 0) + 1
time.sleep(12)   # nginx's request allowance for this address refills (20 a second, a burst of 200)
stop = threading.Event()
def reader():
    req = urllib.request.Request(f"{VIP}/api/jobs/{job}/audio?format=flac", headers={"Cookie": cookie, **LOGIN})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as res:
            out["readers"].append(res.status)
            while not stop.wait(1.0) and res.read(1024): pass
    except urllib.error.HTTPError as exc:
        out["readers"].append(exc.code)
threads = [threading.Thread(target=reader, daemon=True) for _ in range(32)]
for t in threads: t.start()
time.sleep(20); stop.set()
print(json.dumps(out))
"""


def test_18_abusers_cost_only_themselves_while_a_job_runs(case):
    """Bad scripts, a cookieless poller (3000 requests) and 32 slow readers from one LAN client while
    a job runs: no failover, the job done, the abusers refused or slowed, Redis barely touched; how
    long the primary's /ready took meanwhile is printed."""
    c = case()
    keys_before = int(redis_cli(c.primary, "DBSIZE"))
    latencies, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            started = time.monotonic()
            try:
                requests.get(f"{NODES[c.primary]}/ready", timeout=2)
                latencies.append(time.monotonic() - started)
            except requests.RequestException:
                latencies.append(2.0)
            stop.wait(0.3)
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        out = subprocess.run(["podman", "exec", "-i", PREFIX + "nas", "python3", "-", VIP, f"{LAB_USER}:{LAB_PASSWORD}"],
                             input=ABUSER, capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        prober.join(5)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert [status for status, _ in got["bad"]] == [400, 400, 400], got["bad"]
    assert all("line 1" in why for _, why in got["bad"]), got["bad"]
    assert set(got["poller"]) <= {"200", "429"} and got["poller"].get("429", 0) > 0, got["poller"]
    # A short job's FLAC fits the sockets' buffers: nginx may finish each download at once, so the
    # readers are served or refused (the per-address limit on slow readers: tests/integration/test_front.py).
    assert set(got["readers"]) <= {200, 429} and got["readers"].count(200) > 0, got["readers"]
    c.finish_job(c.primary)
    assert {r["id"] for r in receiver_runs()} == c.runs_before, "a run started: the abuse cost a failover"
    assert pair_in_role()
    keys_after = int(redis_cli(c.primary, "DBSIZE"))
    assert keys_after - keys_before <= 12, (keys_before, keys_after)
    # /ready's time under this load is reported, not asserted (timing belongs to benchmarks; on a busy
    # 2-core machine the TLS handshakes alone compete): what must hold is above, no failover.
    note("18 abusers (bad scripts, poller, slow readers)",
         f"bad scripts 400 at the door; poller {got['poller']}; readers {got['readers'].count(200)} served, "
         f"{got['readers'].count(429)} refused; Redis keys {keys_before} -> {keys_after}; /ready max "
         f"{max(latencies):.3f} s; no failover; the job done on {c.primary}")


@pytest.fixture(scope="module", autouse=True)
def matrix():
    yield
    print("\nFault matrix (this run):")
    for fault, observed in MATRIX:
        print(f"  {fault:32s} {observed}")



def test_20_redis_emptied_mid_job_the_same_session_still_lists_and_downloads_every_job(case):
    """Redis emptied on the primary (as one restarted without its files) while a job runs and another
    waits: their owner found no jobs and 404 for each, for good. The pair rebuilds Redis from shared
    storage, sessions included; no failover (it would not help)."""
    c = case()
    queued = c.session.post(f"{VIP}/api/jobs", json={"script": script(2)}, timeout=10).json()["id"]
    mine = {c.job, queued}
    redis_cli(c.primary, "FLUSHALL")
    t_fault = time.time()
    wait(lambda: {j["id"] for j in c.session.get(f"{VIP}/api/jobs", timeout=3).json()["jobs"]} >= mine, 90,
         "the session's jobs listed again", interval=0.5)
    listed = time.time() - t_fault
    c.finish_job(c.primary)
    wait_job_done(c.session, queued, 2)
    for job_id in mine:
        assert c.session.get(f"{VIP}/api/jobs/{job_id}/audio", timeout=10).status_code == 200
    assert runs_since(c.runs_before, "failover.yml") == []
    note("20 Redis emptied mid-job", f"the owner's session listed both jobs again {listed:.1f} s after the FLUSHALL; "
                                     f"both finished and download; no failover")
