"""`tts-drill run`, the drill's orchestrator, against a real pair (tts-a primary, tts-b standby), real
shared storage and a real receiver: the planned switchover drill end to end, and a preflight that
fails. Its hands on the hosts (Ansible) are the one part stood in for here, by LocalHands: the
switchover is the real `tts-cluster promote` under the drill's lock and `tts-drill verify` runs here
with the node's settings. The same drill through Ansible on containers: Molecule's test_30_drill."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from tts_service.cluster import Cluster
from tts_service.drill.run import Drill, Plan
from tts_service.receiver.app import create_app
from tts_service.receiver.settings import ReceiverSettings
from tts_service.storage import Storage
from werkzeug.serving import make_server

from tests.harness import cluster_cli, wait_for

SETTINGS = {"TTS_ENGINE_PACE": 0.1}
TURNS = 6


class LocalHands:
    """Stands in for the drill's Ansible on this machine (named as such: the hosts are Molecule's)."""

    def __init__(self, shared, nodes):
        self.shared, self.nodes, self.playbooks = shared, {n.name: n for n in nodes}, []

    def playbook(self, name, extra, timeout=900, lock_token=""):
        """switchover.yml's steps on these processes: the primary's worker stops after its chunk (SIGTERM)
        and hands the job back, the promotion under the drill's lock, the old worker back (fenced)."""
        self.playbooks.append((name, extra))
        assert name == "switchover.yml"
        state = json.loads(cluster_cli(self.shared, "status").stdout)
        old = self.nodes[state["primary"]]
        os.killpg(old.worker.pid, signal.SIGTERM)
        old.worker.wait(60)
        promoted = cluster_cli(self.shared, "--by", extra["switchover_by"], "promote", extra["tts_target"],
                               "--expect-epoch", str(state["epoch"]), "--lock-token", lock_token)
        old.start_worker()
        return promoted

    def command(self, host, argv, timeout=120):
        assert argv[:2] == ["/usr/local/bin/tts-drill", "verify"]
        out = subprocess.run([sys.executable, "-m", "tts_service.drill", "verify", argv[2]],
                             capture_output=True, text=True, timeout=timeout, env=self.nodes[host].env)
        return out.returncode, out.stdout


@pytest.fixture
def receiver_url(tmp_path, shared, pair):
    settings = ReceiverSettings(alert_token="t" * 32, db=tmp_path / "receiver.db", shared_dir=shared,
                                nodes={n.name: n.url for n in pair})
    app = create_app(runner=lambda playbook, extravars: (False, "not run in this test"), start=False,
                     settings=settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def plan(shared, pair, receiver_url, tmp_path, **kw) -> Plan:
    primary = pair[0]
    secrets = tmp_path / "secrets.yml"     # as ctl keeps them for the receiver: the drill reads /runs with it
    secrets.write_text(f"tts_alert_token: {'t' * 32}\n")
    return Plan.from_dict(dict({
        "mode": "switchover", "shared_dir": str(shared), "vip": primary.url, "receiver": receiver_url,
        "extra_vars": [f"@{secrets}"],
        "nodes": {n.name: n.url for n in pair}, "project": str(tmp_path), "inventory": "unused",
        "turns": TURNS, "canary_timeout_s": 120, "rejoin_timeout_s": 60, "lock_ttl_s": 6}, **kw))


def lock_holder(shared):
    return Cluster(Storage(shared), shared / "cluster").lock_holder()


def test_a_switchover_drill_moves_the_canary_to_the_standby_and_reports_it(shared, pair, receiver_url, tmp_path):
    hands = LocalHands(shared, pair)
    rep = Drill(plan(shared, pair, receiver_url, tmp_path), ansible=hands, workdir=tmp_path).run()

    assert rep["result"] == "succeeded", rep
    assert rep["failed_step"] is None and rep["mode"] == "switchover"
    assert (rep["before"]["primary"], rep["after"]["primary"]) == ("tts-a", "tts-b")
    assert rep["after"]["epoch"] == rep["before"]["epoch"] + 1
    canary = rep["canary"]
    assert canary["job"]["status"] == "done" and canary["job"]["node"] == "tts-b"
    assert canary["verify"]["ok"] and canary["segments_recomputed"] == 0
    # The switchover ran under the drill's lock, which is released at the end.
    assert [name for name, _ in hands.playbooks] == ["switchover.yml"]
    assert hands.playbooks[0][1]["switchover_by"] == "drill.yml"
    assert lock_holder(shared) is None
    # Published on shared storage, JSON and Markdown.
    assert json.loads((shared / "drills" / f"{rep['id']}.json").read_text())["result"] == "succeeded"
    assert "SUCCEEDED" in (shared / "drills" / f"{rep['id']}.md").read_text()


def test_a_drill_with_the_standby_down_fails_at_preflight_and_changes_nothing(shared, pair, receiver_url,
                                                                              tmp_path):
    pair[1].stop()
    before = json.loads(cluster_cli(shared, "status").stdout)
    hands = LocalHands(shared, pair)
    rep = Drill(plan(shared, pair, receiver_url, tmp_path), ansible=hands, workdir=tmp_path).run()

    assert rep["result"] == "failed"
    assert rep["failed_step"] == "Preflight - the standby is ready and its replica in sync", rep
    assert hands.playbooks == [] and rep["canary"]["job_id"] in ("", None)
    assert json.loads(cluster_cli(shared, "status").stdout) == before
    assert lock_holder(shared) is None


def test_a_host_lost_drill_is_refused_without_the_inventorys_permission(shared, pair, receiver_url, tmp_path):
    rep = Drill(plan(shared, pair, receiver_url, tmp_path, mode="host-lost"), ansible=LocalHands(shared, pair),
                workdir=tmp_path).run()
    assert rep["result"] == "failed" and rep["failed_step"] == "Check the request"
    assert "drill_allow_host_kill" in rep["error"]
    wait_for(lambda: lock_holder(shared) is None, 5, what="no lock taken")
