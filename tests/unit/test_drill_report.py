"""The drill report: result, failed step, timeline relative to the fault, and the metrics the receiver
exports from the latest reports."""
import json
from datetime import UTC

from tts_service.drill import report

BEFORE = {"primary": "tts-a", "standby": "tts-b", "epoch": 4}
AFTER = {"primary": "tts-b", "standby": "tts-a", "epoch": 5}
WATCH = {"job_id": "a" * 32, "vip_lost_at": 100.5, "vip_target_at": 104.0, "job_on_target_at": 108.0,
         "job_done_at": 130.0, "job": {"status": "done", "node": "tts-b", "segments_done": 12}, "error": ""}
VERIFY = {"ok": True, "reason": "fine", "recomputed": 1}
RECEIVER = {
    "decisions": [
        {"id": 7, "action": "failover", "target": "tts-b", "decided_at": 102.0, "received_at": 101.5,
         "alert": "TTSNodeDown", "reason": "failing over to tts-b because the primary tts-a is down"},
        {"id": 3, "action": "failover", "target": "tts-b", "decided_at": 50.0, "received_at": 49.0,
         "alert": "TTSNodeDown", "reason": "an older failover"},
    ],
    "runs": [{"decision_id": 7, "playbook": "failover.yml", "started_at": 102.1, "ended_at": 110.0,
              "result": "succeeded"}],
}


def kill_meta(**extra):
    return {"id": "20261125T100000Z", "mode": "kill", "started_at": 90.0, "ended_at": 140.0, "fault_at": 100.0,
            "before": BEFORE, "after": AFTER, **extra}


def test_a_kill_drill_takes_its_timeline_from_the_receiver_decision_after_the_fault():
    rep = report.build(kill_meta(), WATCH, VERIFY, RECEIVER)
    assert rep["result"] == "succeeded" and rep["failed_step"] is None
    t = rep["timeline_s"]
    assert (t["fault"], t["vip_lost"], t["alert_fired"], t["receiver_decision"]) == (0.0, 0.5, 1.5, 2.0)
    assert (t["playbook_start"], t["playbook_end"], t["first_200_via_vip"]) == (2.1, 10.0, 4.0)
    assert (t["job_running_again"], t["job_finished"]) == (8.0, 30.0)
    assert rep["rto_s"] == 4.0 and rep["canary"]["segments_recomputed"] == 1
    assert rep["receiver"]["reason"].startswith("failing over to tts-b")


def test_a_kill_drill_without_a_receiver_failover_fails():
    rep = report.build(kill_meta(), WATCH, VERIFY, {"decisions": [], "runs": []})
    assert rep["result"] == "failed" and "receiver did not fail over" in rep["error"] and rep["rto_s"] is None
    assert rep["failed_step"] == "the receiver's failover"


def test_a_failed_step_is_named_and_wins_over_everything_else():
    rep = report.build(kill_meta(failed_step="Preflight - the standby is ready and its replica in sync",
                                 error="Status code was -1", fault_at=None, after=BEFORE), {}, None, None)
    assert rep["result"] == "failed"
    assert rep["failed_step"] == "Preflight - the standby is ready and its replica in sync"
    assert "Status code was -1" in rep["error"]
    md = report.markdown(rep)
    assert "FAILED" in md and "Preflight - the standby is ready" in md


def test_bad_canary_audio_fails_the_drill_at_the_verification():
    rep = report.build(kill_meta(), WATCH, {"ok": False, "reason": "segments [3] are missing"}, RECEIVER)
    assert rep["result"] == "failed" and rep["failed_step"] == "verify the canary"
    assert "segments [3] are missing" in rep["error"]


def test_a_switchover_drill_uses_its_own_playbook_times_and_needs_the_new_primary():
    meta = {"id": "x", "mode": "switchover", "fault_at": 100.0, "playbook_started_at": 100.0,
            "playbook_ended_at": 112.0, "before": BEFORE, "after": AFTER}
    rep = report.build(meta, WATCH, VERIFY, None)
    assert rep["result"] == "succeeded" and rep["timeline_s"]["playbook_end"] == 12.0
    rep = report.build({**meta, "after": BEFORE}, WATCH, VERIFY, None)
    assert rep["result"] == "failed" and "cluster state says tts-a" in rep["error"]


def test_markdown_shows_rto_next_to_the_reference():
    md = report.markdown(report.build(kill_meta(), WATCH, VERIFY, RECEIVER))
    assert "**4.0 s**" in md and "reference: 22 s" in md
    assert "| receiver decided to fail over | 2.00 |" in md


def test_metrics_follow_the_newest_report_and_remember_the_last_success(tmp_path):
    ok = report.build(kill_meta(id="20261120T030000Z"), WATCH, VERIFY, RECEIVER)
    bad = report.build(kill_meta(id="20261125T030000Z", ended_at=500.0, failed_step="x", error="y"), {}, None, None)
    report.write(ok, tmp_path)
    report.write(bad, tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    reports = report.load_reports(tmp_path)
    assert [r["id"] for r in reports] == ["20261125T030000Z", "20261120T030000Z"]
    m = report.metrics(reports)
    assert m["tts_drill_last_success"] == 0.0 and m["tts_drill_last_timestamp_seconds"] == 500.0
    assert m["tts_drill_last_success_timestamp_seconds"] == 140.0 and m["tts_drill_last_rto_seconds"] == 4.0
    assert report.metrics([]) == {}
    assert json.loads((tmp_path / "20261120T030000Z.json").read_text())["result"] == "succeeded"


def test_every_unplanned_mode_reads_the_receiver_and_times_the_epoch_bump_and_the_unserved_gap():
    from datetime import datetime
    bumped = datetime.fromtimestamp(103.25, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for mode in ("kill", "redis-down", "host-lost"):
        rep = report.build(kill_meta(mode=mode, after={**AFTER, "changed_at": bumped}), WATCH, VERIFY, RECEIVER)
        assert rep["result"] == "succeeded" and rep["receiver"]["playbook"] == "failover.yml", mode
        assert rep["timeline_s"]["epoch_bumped"] == 3.25 and rep["unserved_s"] == 3.5
        assert "no 200 through the VIP for 3.5 s" in report.markdown(rep)
    # No epoch change: no bump time (the state's last change was an older one).
    rep = report.build(kill_meta(after={**BEFORE, "changed_at": bumped}), WATCH, VERIFY, RECEIVER)
    assert rep["timeline_s"]["epoch_bumped"] is None and rep["result"] == "failed"


def test_the_plan_from_drill_yml_gives_every_node_its_app_url_and_splits_the_power_commands():
    from tts_service.drill.run import Plan
    plan = Plan.from_dict({"mode": "host-lost", "shared_dir": "/mnt/nas/tts", "vip": "https://10.0.0.100",
                           "receiver": "http://10.0.0.10:9095", "node_addresses": {"tts-a": "10.0.0.11", "tts-b": "10.0.0.12"},
                           "app_port": 8000, "project": "/opt/p", "inventory": "/opt/p/inventory",
                           "host_kill_cmd": "/usr/local/bin/tts-lab-host kill", "host_start_cmd": ""})
    assert plan.nodes == {"tts-a": "http://10.0.0.11:8000", "tts-b": "http://10.0.0.12:8000"}
    assert plan.host_kill_cmd == ["/usr/local/bin/tts-lab-host", "kill"] and plan.host_start_cmd == []


def test_a_commands_result_is_read_from_ansible_runners_events_and_an_unreachable_host_is_minus_one():
    from tts_service.drill.run import command_result
    ok = [{"event": "playbook_on_start", "event_data": {}},
          {"event": "runner_on_ok", "event_data": {"host": "tts-b", "res": {"rc": 0, "stdout": '{"ok": true}'}}}]
    assert command_result(ok, "tts-b") == (0, '{"ok": true}')
    failed = [{"event": "runner_on_failed", "event_data": {"host": "tts-b", "res": {"rc": 3, "stdout": "x"}}}]
    assert command_result(failed, "tts-b") == (3, "x")
    lost = [{"event": "runner_on_unreachable", "event_data": {"host": "tts-b", "res": {"msg": "timeout"}}}]
    assert command_result(lost, "tts-b") == (-1, "")
    assert command_result(ok, "tts-a") == (-1, "")
