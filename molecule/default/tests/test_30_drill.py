"""Failover drills on the converged pair, after the failover suite (same `molecule verify`): a drill
as ctl's timer runs it (`tts-drill-run`, as the receiver's user) succeeds and is reported on shared
storage and in Prometheus; a drill made to fail (the standby stopped first) gives a failed report
naming the step, the TTSDrillFailed alert, and leaves the primary serving. Runs against the lab too:
    TTS_TEST_INVENTORY=inventory/lab/hosts.yml .venv/bin/pytest -s molecule/default/tests/test_30_drill.py
"""
import json

import requests

from lab import NODES, PREFIX, SHARED, VIP, cluster_state, firing, on, podman, prometheus_value, wait, wait_pair_settled

DRILLS = f"{SHARED}/drills"


def reports():
    return sorted(n[:-5] for n in on("nas", f"ls {DRILLS}").split() if n.endswith(".json"))


def drill(mode="switchover"):
    """One drill as the timer runs it; returns (exit status, output, the new report)."""
    before = set(reports())
    out = podman("exec", PREFIX + "ctl", "/usr/local/bin/tts-drill-run", mode, timeout=900)
    new = sorted(set(reports()) - before)
    assert len(new) == 1, f"expected one new report, got {new}: {out.stdout[-3000:]}"
    report = json.loads(on("nas", f"cat {DRILLS}/{new[0]}.json"))
    markdown = on("nas", f"cat {DRILLS}/{new[0]}.md")
    return out.returncode, out.stdout + out.stderr, report, markdown


def test_a_scheduled_switchover_drill_succeeds_and_is_reported():
    wait_pair_settled(quiet_s=65)
    state = cluster_state()
    rc, output, report, markdown = drill("switchover")
    assert rc == 0, output[-3000:]
    assert report["result"] == "succeeded" and report["mode"] == "switchover", report
    assert report["before"]["primary"] == state["primary"] and report["after"]["primary"] == state["standby"]
    assert cluster_state()["primary"] == state["standby"]
    canary = report["canary"]
    # Every worker takes jobs (the pool): the canary went on on a free one, not on the old primary.
    assert canary["job"]["status"] == "done" and canary["job"]["node"] != state["primary"]
    assert canary["segments_recomputed"] == 0 and canary["verify"]["ok"]
    assert report["rto_s"] is not None and report["rto_s"] > 0
    assert report["lab_settings"]["engine_pace"] == 1.0          # lab pacing is in every report
    assert "SUCCEEDED" in markdown and "RTO" in markdown
    # The old primary is the standby again, and the receiver did nothing (the drill held the lock).
    assert requests.get(f"{NODES[state['primary']]}/standby", timeout=2).status_code == 200
    assert wait(lambda: prometheus_value("tts_drill_last_success") == 1.0, 60, "tts_drill_last_success 1")
    print(f"\nswitchover drill: RTO {report['rto_s']} s, timeline {report['timeline_s']}")


def test_a_drill_with_the_standby_stopped_fails_alerts_and_leaves_the_primary_serving():
    wait_pair_settled(quiet_s=65)
    state = cluster_state()
    standby = state["standby"]
    on(standby, "systemctl stop tts-web tts-worker")
    try:
        rc, output, report, markdown = drill("switchover")
        assert rc != 0
        assert report["result"] == "failed"
        assert report["failed_step"] == "Preflight - the standby is ready and its replica in sync", report
        assert "Failed step" in markdown
        # Nothing was switched: the primary keeps serving through the VIP.
        assert cluster_state() == state
        primary = requests.get(f"{VIP}/primary", timeout=3)
        assert primary.status_code == 200 and primary.json()["node"] == state["primary"]
        assert wait(lambda: firing("TTSDrillFailed"), 90, "TTSDrillFailed firing in Alertmanager")
    finally:
        on(standby, "systemctl start tts-worker tts-web")
    wait(lambda: requests.get(f"{NODES[standby]}/standby", timeout=2).status_code == 200, 90, "the standby back")
