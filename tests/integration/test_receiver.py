"""The alert receiver against real parts: two TTS nodes (gunicorn + worker), the cluster state on a
real folder, sqlite, and ansible-runner running a real (local) playbook that promotes with
`tts-cluster promote --expect-epoch`, as failover.yml does first."""
import json
import os
import signal
import sys
import textwrap
import threading
import time

import pytest
from tts_service.receiver.controller import ansible_runner

from tests.harness import BIN, Node, cluster_cli, node_env, wait_for

TOKEN = "test-alert-token-0123456789"


def notification(name="TTSNodeDown", node="tts-a", status="firing"):
    return {"version": "4", "status": status, "receiver": "failover", "groupKey": f"{{}}:{{alertname=\"{name}\"}}",
            "alerts": [{"status": status, "labels": {"alertname": name, "node": node, "severity": "critical"},
                        "annotations": {"summary": "x"}, "fingerprint": "abc"}]}


@pytest.fixture
def project(tmp_path, shared):
    """A playbook project like the one on ctl, with a failover.yml that does the promotion step."""
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "ansible.cfg").write_text("[defaults]\ngathering = explicit\n")
    (proj / "inventory.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                                        f"      ansible_python_interpreter: {sys.executable}\n")
    (proj / "failover.yml").write_text(textwrap.dedent(f"""\
        - name: Promote the standby (the first step of the real failover.yml)
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Bump the epoch with compare-and-swap
              ansible.builtin.command:
                argv: [{BIN}/tts-cluster, --shared-dir, {shared}, --by, failover.yml, promote,
                       "{{{{ tts_target }}}}", --expect-epoch, "{{{{ tts_expect_epoch }}}}"]
        """))
    (proj / "rejoin.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks: []\n")
    return proj


@pytest.fixture
def pair(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    ports = {}
    nodes = {}
    for name in ("tts-a", "tts-b"):
        n = Node(name, {}, tmp_path / "logs")
        ports[name] = n.port
        nodes[name] = n
    peers = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in ports.items())
    for name, n in nodes.items():
        n.env = node_env(name, redis_url, shared, tmp_path / f"run-{name}", TTS_PEERS=peers)
        n.start()
    for n in nodes.values():
        wait_for(lambda n=n: n.ready()[0] == 200, 20, what=f"{n.name} ready")
    yield nodes, peers
    for n in nodes.values():
        n.stop()


@pytest.fixture
def receiver(tmp_path, shared, project, pair, monkeypatch):
    nodes, peers = pair
    monkeypatch.setenv("TTS_ALERT_TOKEN", TOKEN)
    monkeypatch.setenv("TTS_RECEIVER_DB", str(tmp_path / "receiver.db"))
    monkeypatch.setenv("TTS_SHARED_DIR", str(shared))
    monkeypatch.setenv("TTS_RECEIVER_NODES", peers)
    monkeypatch.setenv("TTS_FAILOVER_COOLDOWN", "300")
    from tts_service.receiver.app import create_app

    runner = ansible_runner(str(project), str(project / "inventory.yml"), str(tmp_path / "runner"))

    def make(start=True):
        return create_app(runner=runner, start=start)
    return make


def post(client, body, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/alerts", data=json.dumps(body), headers=headers, content_type="application/json")


def runs(client):
    return client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()


def test_the_history_is_for_the_holders_of_the_token(receiver):
    """/runs shows every decision with its alert's text: not for anyone on the network."""
    c = receiver(start=False).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token-x"}, {"Authorization": TOKEN}):
        res = c.get("/runs", headers=headers)
        assert res.status_code == 401 and "token" in res.get_json()["error"]
    assert "decisions" in runs(c)


def decisions_total(client):
    text = client.get("/metrics").get_data(as_text=True)
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tts_receiver_decisions_total{"))


def kill_node(node):
    for proc in (node.worker, node.web):
        os.killpg(proc.pid, signal.SIGKILL)


def state(shared):
    return json.loads((shared / "cluster" / "state.json").read_text())


def test_unauthenticated_wrong_token_and_malformed_webhooks_store_nothing(receiver):
    app = receiver()
    c = app.test_client()
    assert post(c, notification(), token=None).status_code == 401
    assert post(c, notification(), token="wrong-token-wrong-token").status_code == 401
    assert post(c, notification(), token=TOKEN + "x").status_code == 401
    for bad in ([], {"version": "3", "alerts": []}, {"version": "4"},
                {"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "TTSNodeDown",
                                                                          "node": "tts-a; rm -rf /"}}]},
                {"version": "4", "alerts": [{"status": "maybe", "labels": {"alertname": "X", "node": "tts-a"}}]}):
        res = post(c, bad)
        assert res.status_code == 400 and res.get_json()["error"]
    res = c.post("/alerts", data="{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert res.status_code == 400
    assert c.get("/health").get_json()["notifications"] == 0
    assert runs(c)["decisions"] == []


def test_primary_really_down_fails_over_once_through_ansible_runner(receiver, pair, shared):
    nodes, _ = pair
    app = receiver()
    c = app.test_client()
    kill_node(nodes["tts-a"])
    assert post(c, notification()).status_code == 200
    controller = app.extensions["tts_receiver"]
    wait_for(lambda: runs(c)["runs"] and runs(c)["runs"][0]["result"] != "running", 60, what="run finished")
    run = runs(c)["runs"][0]
    assert (run["playbook"], run["target"], run["result"], run["epoch_before"]) == ("failover.yml", "tts-b",
                                                                                    "succeeded", 1)
    assert "failing over to tts-b" in run["reason"]
    assert (state(shared)["primary"], state(shared)["epoch"]) == ("tts-b", 2)
    # The same alert again (at-least-once delivery): decided again, nothing run again.
    assert post(c, notification()).status_code == 200
    wait_for(lambda: len(runs(c)["decisions"]) == 2, 10, what="second decision")
    assert len(runs(c)["runs"]) == 1
    assert "not the primary" in runs(c)["decisions"][0]["reason"] or "cooldown" in runs(c)["decisions"][0]["reason"]
    controller.stop()


def test_a_storm_of_duplicates_gives_exactly_one_failover(receiver, pair, shared):
    nodes, _ = pair
    app = receiver()
    kill_node(nodes["tts-a"])
    body = notification()
    codes = []

    def deliver():
        client = app.test_client()
        for _ in range(25):
            codes.append(post(client, body).status_code)
    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(200) == 200
    c = app.test_client()
    wait_for(lambda: decisions_total(c) == 200, 60, what="all 200 decided")
    assert c.get("/health").get_json() == {"status": "ok", "notifications": 200, "unprocessed": 0}
    app.extensions["tts_receiver"].wait_idle(60)
    assert len(runs(c)["runs"]) == 1 and runs(c)["runs"][0]["result"] == "succeeded"
    assert state(shared)["epoch"] == 2


def test_no_failover_while_the_standby_still_reaches_the_primary(receiver, shared):
    app = receiver()
    c = app.test_client()
    assert post(c, notification()).status_code == 200     # the monitor says down; tts-a is fine
    wait_for(lambda: runs(c)["decisions"], 10, what="decision")
    decision = runs(c)["decisions"][0]
    assert decision["action"] == "none" and "still reaches a ready primary" in decision["reason"]
    assert runs(c)["runs"] == [] and state(shared)["epoch"] == 1


def test_resolved_and_standby_alerts_never_start_anything(receiver, shared):
    app = receiver()
    c = app.test_client()
    post(c, notification(status="resolved"))
    post(c, notification(node="tts-b"))
    wait_for(lambda: len(runs(c)["decisions"]) == 2, 10, what="decisions")
    assert {d["action"] for d in runs(c)["decisions"]} == {"none"}
    assert runs(c)["runs"] == []


def test_notifications_stored_before_a_restart_are_acted_on_after_it(receiver, pair, shared, tmp_path):
    nodes, _ = pair
    down = receiver(start=False)                          # stores, but its loop never runs ("crashed")
    assert post(down.test_client(), notification()).status_code == 200
    kill_node(nodes["tts-a"])
    from tts_service.receiver.store import Store
    store = Store(tmp_path / "receiver.db")
    fake_running = store.start_run(store.add_decision(1, "TTSNodeDown", "tts-a", "firing", 1, "failover",
                                                      "tts-b", "left running by a crash"), "failover.yml", "tts-b", 99)
    app = receiver()                                      # the restart
    c = app.test_client()
    wait_for(lambda: any(r["playbook"] == "failover.yml" and r["epoch_before"] == 1 for r in runs(c)["runs"]),
             20, what="acted on after restart")
    interrupted = [r for r in runs(c)["runs"] if r["id"] == fake_running][0]
    assert interrupted["result"] == "interrupted" and "restarted" in interrupted["detail"]
    app.extensions["tts_receiver"].wait_idle(60)
    assert state(shared)["primary"] == "tts-b"


def test_a_failover_killed_after_it_fenced_is_finished_after_the_restart(receiver, pair, shared, tmp_path):
    """The receiver died half-way through failover.yml: the epoch was bumped (tts-b primary of epoch
    2) but nothing after it ran. The restarted receiver runs failover.yml once more to tts-b."""
    nodes, _ = pair
    kill_node(nodes["tts-a"])
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    from tts_service.receiver.store import Store
    store = Store(tmp_path / "receiver.db")
    killed = store.start_run(store.add_decision(None, "TTSNodeDown", "tts-a", "firing", 1, "failover", "tts-b",
                                                "the run the crash interrupted"), "failover.yml", "tts-b", 1)
    app = receiver()                                      # the restart
    c = app.test_client()
    app.extensions["tts_receiver"].wait_idle(60)
    by_id = {r["id"]: r for r in runs(c)["runs"]}
    assert by_id[killed]["result"] == "interrupted"
    finished = [r for r in by_id.values() if r["id"] != killed]
    assert len(finished) == 1 and finished[0]["epoch_before"] == 2 and finished[0]["result"] == "succeeded"
    assert "finishing the interrupted failover.yml" in finished[0]["reason"]
    assert state(shared)["primary"] == "tts-b" and state(shared)["epoch"] == 3
    # The alert that started it, repeated, now names the standby: nothing more happens.
    post(c, notification())
    wait_for(lambda: runs(c)["decisions"][0]["alert"] == "TTSNodeDown", 10, what="the repeat decided")
    assert runs(c)["decisions"][0]["action"] == "none" and len(runs(c)["runs"]) == 2


def test_metrics_count_decisions_and_runs(receiver):
    app = receiver()
    c = app.test_client()
    post(c, notification(status="resolved"))
    wait_for(lambda: runs(c)["decisions"], 10, what="decision")
    text = c.get("/metrics").get_data(as_text=True)
    assert 'tts_receiver_decisions_total{action="none"} 1.0' in text
    assert "tts_receiver_notifications_total 1.0" in text
    # ctl's own clock (the cluster lock's expiry is written there): TTSClockNotSynchronised covers it too
    from tts_service import clock
    assert f"tts_clock_synchronised {1.0 if clock.read().synchronised else 0.0}" in text


def test_metrics_show_the_latest_drill_report_from_shared_storage(receiver, shared):
    from tts_service.drill import report
    c = receiver(start=False).test_client()
    assert "tts_drill_last_success " not in c.get("/metrics").get_data(as_text=True)   # no drill yet
    meta = {"id": "20261101T030000Z", "mode": "switchover", "fault_at": 10.0, "playbook_started_at": 10.0,
            "playbook_ended_at": 20.0, "ended_at": 1000.0, "before": {"primary": "tts-a", "standby": "tts-b"},
            "after": {"primary": "tts-b", "standby": "tts-a"}}
    watch = {"job_id": "b" * 32, "vip_target_at": 15.5, "job_done_at": 40.0, "job": {"status": "done"}}
    report.write(report.build(meta, watch, {"ok": True, "recomputed": 0}, None), shared / "drills")
    text = c.get("/metrics").get_data(as_text=True)
    assert "tts_drill_last_success 1.0" in text and "tts_drill_last_rto_seconds 5.5" in text
    failed = {**meta, "id": "20261102T030000Z", "ended_at": 2000.0, "failed_step": "Preflight", "error": "no standby"}
    report.write(report.build(failed, {}, None, None), shared / "drills")
    text = c.get("/metrics").get_data(as_text=True)
    assert "tts_drill_last_success 0.0" in text and "tts_drill_last_success_timestamp_seconds 1000.0" in text
    assert "tts_drill_reports_readable 1.0" in text


def test_a_not_now_because_locked_is_decided_again_when_the_lock_is_released(receiver, pair, shared):
    """The receiver re-checks by itself; it does not wait for Alertmanager's repeat."""
    nodes, _ = pair
    token = json.loads(cluster_cli(shared, "lock", "--holder", "switchover.yml", "--ttl", "60").stdout)["token"]
    app = receiver()
    c = app.test_client()
    kill_node(nodes["tts-a"])
    assert post(c, notification()).status_code == 200            # one notification, never repeated
    wait_for(lambda: runs(c)["decisions"], 10, what="the first decision")
    first = runs(c)["decisions"][0]
    assert first["action"] == "none" and "lock is held by switchover.yml" in first["reason"]
    time.sleep(2)
    assert runs(c)["runs"] == [] and len(runs(c)["decisions"]) == 1   # "not now" again is not a new row
    assert cluster_cli(shared, "unlock", token).returncode == 0
    wait_for(lambda: runs(c)["runs"] and runs(c)["runs"][0]["result"] != "running", 60, what="the failover")
    assert runs(c)["runs"][0]["result"] == "succeeded" and state(shared)["primary"] == "tts-b"
    assert c.get("/health").get_json()["notifications"] == 1
    app.extensions["tts_receiver"].stop()


def test_a_standby_that_becomes_fit_is_failed_over_to_without_another_notification(receiver, pair, shared):
    """Two faults at once: the primary dies while the standby is unfit (healing). One notification:
    escalated once, then failed over by the receiver itself as soon as the standby says it is fit."""
    nodes, _ = pair
    app = receiver()
    c = app.test_client()
    controller = app.extensions["tts_receiver"]
    healed = threading.Event()
    real_get = controller.probe.get

    def healing_standby(url):
        if url.endswith("/standby") and not healed.is_set():
            return 503, {"reason": "shared storage is unavailable"}
        return real_get(url)
    controller.probe.get = healing_standby
    kill_node(nodes["tts-a"])
    assert post(c, notification()).status_code == 200
    wait_for(lambda: runs(c)["decisions"], 10, what="the first decision")
    first = runs(c)["decisions"][0]
    assert first["action"] == "escalate" and "is not ready" in first["reason"], first
    time.sleep(2)
    assert runs(c)["runs"] == [] and len(runs(c)["decisions"]) == 1   # the same answer: no new row
    healed.set()
    wait_for(lambda: runs(c)["runs"] and runs(c)["runs"][0]["result"] != "running", 60, what="the failover")
    assert runs(c)["runs"][0]["result"] == "succeeded" and state(shared)["primary"] == "tts-b"
    assert c.get("/health").get_json()["notifications"] == 1
    controller.stop()


def test_a_witness_that_does_not_answer_is_asked_twice_then_escalated_never_failed_over(receiver, pair, shared):
    nodes, _ = pair
    app = receiver()
    c = app.test_client()
    controller = app.extensions["tts_receiver"]
    asked = []

    def silent_witness(url):
        if "/peer/" in url:
            asked.append(url)
            return None, {}                                      # no answer within the receiver's timeout
        return real_get(url)

    real_get = controller.probe.get
    controller.probe.get = silent_witness
    kill_node(nodes["tts-a"])
    assert post(c, notification()).status_code == 200
    wait_for(lambda: runs(c)["decisions"], 10, what="the decision")
    decision = runs(c)["decisions"][0]
    assert decision["action"] == "escalate" and "asked twice" in decision["reason"], decision
    assert len(asked) == 2 and runs(c)["runs"] == [] and state(shared)["epoch"] == 1
    controller.stop()


def test_the_ssh_warmer_pings_the_nodes_with_the_projects_settings(tmp_path, project):
    """A real ad-hoc ping through ansible-runner (the project's ansible.cfg and inventory); its
    artifacts do not pile up."""
    from tts_service.receiver.controller import ssh_warmer
    inventory = project / "nodes.yml"
    inventory.write_text("tts_nodes:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         f"      ansible_python_interpreter: {sys.executable}\n")
    warm = ssh_warmer(str(project), str(inventory), str(tmp_path / "runner-warm"))
    assert warm() and warm() and warm()
    assert len(list((tmp_path / "runner-warm" / "artifacts").iterdir())) == 1
    inventory.write_text("tts_nodes:\n  hosts:\n    nowhere:\n      ansible_host: 127.0.0.1\n      ansible_port: 9\n"
                         "      ansible_ssh_timeout: 2\n")
    assert warm() is False


def test_the_receiver_keeps_connections_warm_only_between_playbooks(tmp_path, shared):
    from tts_service.cluster import Cluster
    from tts_service.receiver.controller import Controller, NodeProbe
    from tts_service.receiver.store import Store
    from tts_service.storage import Storage
    calls = []
    store = Store(tmp_path / "receiver.db")
    controller = Controller(store, Cluster(Storage(shared), shared / "cluster"), NodeProbe({}),
                            runner=lambda playbook, extravars: (True, ""), warm=lambda: calls.append(time.time()) or True,
                            warm_every_s=0.05).start()
    try:
        wait_for(lambda: len(calls) >= 3, 5, what="three warm-ups")
        run_id = store.start_run(0, "failover.yml", "tts-b", 1)
        time.sleep(0.1)
        during = len(calls)
        time.sleep(0.3)
        assert len(calls) == during, "warmed up while a playbook ran"
        store.end_run(run_id, "succeeded")
        wait_for(lambda: len(calls) > during, 5, what="warm-ups again after the run")
    finally:
        controller.stop()


class ScriptedProbe:
    """The nodes' answers, step by step: {"standby": status of /standby, "witness": the primary ready?}."""

    def __init__(self, steps):
        from tts_service.receiver.controller import NodeProbe
        self.steps, self.step = steps, 0
        self.inner = NodeProbe({"tts-a": "http://tts-a", "tts-b": "http://tts-b"})
        self.inner.get = self.get

    def get(self, url):
        now = self.steps[min(self.step, len(self.steps) - 1)]
        if url.endswith("/standby"):
            return now["standby"], {"checks": {"storage": now["standby"] == 200}}
        if now.get("primary_storage"):       # the primary answers, unfit for shared storage only
            return 200, {"ready": False, "checks": {"state": False, "storage": False, "redis": True},
                         "reason": "shared storage has not answered this node's renewal for 3.1 s"}
        return 200, {"ready": now["witness"], "checks": {}}

    def probes(self, cluster, alert):
        return self.inner.probes(cluster, alert)


def rechecked_controller(tmp_path, shared, steps):
    from tts_service.cluster import Cluster
    from tts_service.receiver.controller import Controller
    from tts_service.receiver.store import Store
    from tts_service.storage import Storage
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    ran = []
    probe = ScriptedProbe(steps)
    controller = Controller(Store(tmp_path / "receiver.db"), Cluster(Storage(shared), shared / "cluster"), probe,
                            runner=lambda playbook, extravars: ran.append(playbook) or (True, ""))
    return controller, probe, ran


def test_after_a_fault_both_nodes_shared_a_standby_fit_a_moment_before_the_primary_is_no_failover(tmp_path, shared):
    """The NAS stalled for both nodes: the primary is down and the standby unfit. On the way back the
    standby is fit one second while the primary is not yet: the receiver confirms once more before it
    fails over, and by then the primary is back."""
    from tts_service.receiver.decision import ESCALATE, NONE, Alert
    controller, probe, ran = rechecked_controller(tmp_path, shared, [
        {"standby": 503, "witness": False},      # both unfit
        {"standby": 200, "witness": False},      # the standby back first
        {"standby": 200, "witness": True},       # the primary back a second later
    ])
    alert = Alert("TTSNodeDown", "tts-a", "firing")
    assert controller.handle(1, alert).action == ESCALATE
    decisions = []
    for step in (1, 2):
        probe.step = step
        decisions.append(controller.recheck()[0])
    assert [x.action for x in decisions] == [NONE, NONE], decisions
    assert "confirming it once more" in decisions[0].reason and "partitioned" in decisions[1].reason
    assert ran == [] and controller.recheck() == []          # nothing pending any more


def test_a_standby_that_heals_while_the_primary_stays_down_is_failed_over_to_after_one_confirmation(
        tmp_path, shared, monkeypatch):
    """...and the confirmation is a recheck at least CONFIRM_S later: a webhook that wakes the loop at
    once does not confirm it early. The operators are told once, not at every escalation of a recheck."""
    import tts_service.receiver.controller as controller_mod
    from tts_service.receiver.decision import ESCALATE, FAILOVER, NONE, Alert
    monkeypatch.setattr(controller_mod, "CONFIRM_S", 0.3)
    controller, probe, ran = rechecked_controller(tmp_path, shared, [
        {"standby": None, "witness": False},     # restarting onto its healed mount: no answer
        {"standby": 503, "witness": False},
        {"standby": 200, "witness": False},
    ])
    told = []
    controller.notify = told.append
    alert = Alert("TTSNodeDown", "tts-a", "firing")
    assert controller.handle(1, alert).action == ESCALATE
    actions = []
    for step in (1, 2, 2):                       # the last one at once (a webhook woke the loop)
        probe.step = step
        actions.append(controller.recheck()[0].action)
    assert actions == [ESCALATE, NONE, NONE], actions
    probe.step = 1                               # unfit again for a moment: escalated, not said again
    assert controller.recheck()[0].action == ESCALATE
    probe.step = 2
    assert controller.recheck()[0].action == NONE
    time.sleep(0.35)
    assert controller.recheck()[0].action == FAILOVER
    assert controller.wait_idle(30) and ran == ["failover.yml"]
    assert [m["event"] for m in told] == ["escalation"], told


def test_after_a_nas_outage_both_nodes_shared_the_standby_waits_longer_for_a_primary_unfit_for_storage_only(
        tmp_path, shared, monkeypatch):
    """Their sshfs clients reconnect seconds apart after the NAS returns: while the primary answers, unfit
    for shared storage only, a failover a recheck comes to waits CONFIRM_STORAGE_S, and the primary is
    back before that. (A primary that does not answer, as in a double fault, waits CONFIRM_S only.)"""
    import tts_service.receiver.controller as controller_mod
    from tts_service.receiver.decision import ESCALATE, NONE, Alert
    monkeypatch.setattr(controller_mod, "CONFIRM_S", 0.1)
    monkeypatch.setattr(controller_mod, "CONFIRM_STORAGE_S", 1.0)
    controller, probe, ran = rechecked_controller(tmp_path, shared, [
        {"standby": 503, "primary_storage": True},
        {"standby": 200, "primary_storage": True},    # the standby reconnected first
        {"standby": 200, "witness": True},            # the primary a few seconds later
    ])
    assert controller.handle(1, Alert("TTSNodeDown", "tts-a", "firing")).action == ESCALATE
    probe.step = 1
    actions = []
    for _ in range(3):
        actions.append(controller.recheck()[0].action)
        time.sleep(0.2)
    assert actions == [NONE, NONE, NONE], actions      # past CONFIRM_S, within CONFIRM_STORAGE_S
    probe.step = 2
    assert controller.recheck()[0].action == NONE and ran == []
    assert controller.recheck() == []
