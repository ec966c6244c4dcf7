"""The drill report: one JSON document and a short Markdown page per drill (drills/<id>.json, .md on
shared storage), built from what `tts-drill run` gathered (run.py): its own notes (mode, nodes, when the fault was
injected, the failed step), the canary watcher's observation, the receiver's history, and the
canary's verification on storage. Also the metrics the receiver exports from the latest reports."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

# The figure this project was asked to beat: the source design's standby took over 22 s after an
# out-of-memory crash of the primary, and the job in flight lost all its progress.
REFERENCE_RTO_S = 22.0

STAGES = (
    ("fault", "fault injected"),
    ("vip_lost", "first failed /primary through the VIP"),
    ("alert_fired", "alert reached the receiver"),
    ("receiver_decision", "receiver decided to fail over"),
    ("playbook_start", "playbook started"),
    ("epoch_bumped", "epoch bumped on shared storage"),
    ("playbook_end", "playbook ended"),
    ("first_200_via_vip", "first 200 from the new primary through the VIP"),
    ("job_running_again", "canary running on the new primary"),
    ("job_finished", "canary finished"),
)


def _after(t: float | None, t0: float | None) -> float | None:
    return None if t is None or t0 is None else round(t - t0, 2)


def _unix(iso: str | None) -> float | None:
    """An ISO time as written in the cluster state (…Z) as a unix time; None if absent or unreadable."""
    try:
        return datetime.strptime(str(iso), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def receiver_events(receiver: dict, target: str, since: float) -> dict:
    """From GET /runs: the first failover decision for `target` made after `since`, its alert and run."""
    decisions = sorted((d for d in receiver.get("decisions", [])
                        if d.get("action") == "failover" and d.get("target") == target
                        and d.get("decided_at", 0) >= since), key=lambda d: d["decided_at"])
    if not decisions:
        return {}
    decision = decisions[0]
    run = next((r for r in receiver.get("runs", []) if r.get("decision_id") == decision["id"]), {})
    return {"alert": decision.get("alert"), "alert_fired": decision.get("received_at"),
            "receiver_decision": decision["decided_at"], "reason": decision.get("reason"),
            "playbook": run.get("playbook"), "playbook_start": run.get("started_at"),
            "playbook_end": run.get("ended_at"), "playbook_result": run.get("result")}


def build(meta: dict, watch: dict | None, verify: dict | None, receiver: dict | None) -> dict:
    watch, verify, receiver = watch or {}, verify or {}, receiver or {}
    mode, fault_at = meta.get("mode"), meta.get("fault_at")
    target = (meta.get("before") or {}).get("standby")
    events = receiver_events(receiver, target, fault_at) if (mode != "switchover" and fault_at) else {}
    if mode == "switchover":
        events = {"playbook": "switchover (drill.yml)", "playbook_start": meta.get("playbook_started_at"),
                  "playbook_end": meta.get("playbook_ended_at"),
                  "playbook_result": "succeeded" if meta.get("playbook_ended_at") else None}
    absolute = {
        "fault": fault_at, "vip_lost": watch.get("vip_lost_at"), "alert_fired": events.get("alert_fired"),
        "receiver_decision": events.get("receiver_decision"), "playbook_start": events.get("playbook_start"),
        "playbook_end": events.get("playbook_end"),
        "epoch_bumped": _unix((meta.get("after") or {}).get("changed_at"))
        if (meta.get("after") or {}).get("epoch") != (meta.get("before") or {}).get("epoch") else None,
        "first_200_via_vip": watch.get("vip_target_at"),
        "job_running_again": watch.get("job_on_target_at"), "job_finished": watch.get("job_done_at"),
    }
    timeline = {key: _after(absolute[key], fault_at) for key, _ in STAGES}
    failures = []   # (step, what went wrong), the first one names the failed step
    if meta.get("failed_step"):
        failures.append((meta["failed_step"], f"step '{meta['failed_step']}' failed: {meta.get('error') or ''}"))
    if watch.get("error"):
        failures.append(("watch the canary", f"canary: {watch['error']}"))
    if not failures and not verify.get("ok"):
        failures.append(("verify the canary", f"canary audio: {verify.get('reason') or 'not verified'}"))
    if not failures and mode != "switchover" and events.get("playbook_result") != "succeeded":
        failures.append(("the receiver's failover", "the receiver did not fail over to the standby"))
    after = meta.get("after") or {}
    if not failures and after.get("primary") != target:
        failures.append(("check the new primary",
                         f"{target} was to be the primary, the cluster state says {after.get('primary')}"))
    ok = not failures
    return {
        "id": meta.get("id"), "mode": mode, "result": "succeeded" if ok else "failed",
        "failed_step": failures[0][0] if failures else None,
        "error": "; ".join(text.strip() for _, text in failures) or None,
        "started_at": meta.get("started_at"), "ended_at": meta.get("ended_at") or time.time(),
        "before": meta.get("before"), "after": after,
        "rto_s": timeline["first_200_via_vip"] if ok else None,
        # Seconds without a 200 from a primary through the VIP (the planned switchover's measure).
        "unserved_s": (round(absolute["first_200_via_vip"] - absolute["vip_lost"], 2)
                       if ok and absolute["first_200_via_vip"] and absolute["vip_lost"] else None),
        "timeline_s": timeline, "timeline_at": absolute,
        "receiver": ({k: events.get(k) for k in ("alert", "reason", "playbook", "playbook_result")}
                     if mode != "switchover" and events else None),
        "canary": {"job_id": watch.get("job_id"), "job": watch.get("job"),
                   "segments_recomputed": verify.get("recomputed"), "verify": verify or None},
        "lab_settings": meta.get("settings"),
        "reference": {"rto_s": REFERENCE_RTO_S,
                      "what": "source design: standby took over >22 s after an OOM crash; the job in flight lost all progress"},
    }


def markdown(report: dict) -> str:
    before, after = report.get("before") or {}, report.get("after") or {}
    lines = [
        f"# Failover drill {report['id']}: {report['result'].upper()}",
        "",
        f"- Mode: **{report['mode']}**",
        f"- Before: primary {before.get('primary')}, standby {before.get('standby')}, epoch {before.get('epoch')}",
        f"- After: primary {after.get('primary')}, standby {after.get('standby')}, epoch {after.get('epoch')}",
    ]
    if report["result"] == "succeeded":
        lines.append(f"- RTO (fault to first 200 from the new primary through the VIP): **{report['rto_s']} s** "
                     f"(reference: {REFERENCE_RTO_S:.0f} s and the job lost); no 200 through the VIP for "
                     f"{report.get('unserved_s')} s")
    else:
        lines.append(f"- Failed step: **{report.get('failed_step')}**: {report.get('error')}")
    canary = report.get("canary") or {}
    lines.append(f"- Canary job {canary.get('job_id')}: {(canary.get('job') or {}).get('status')}, "
                 f"{canary.get('segments_recomputed')} segment(s) generated twice")
    if report.get("receiver"):
        lines.append(f"- Receiver: {report['receiver'].get('reason')}")
    if report.get("lab_settings"):
        lines.append(f"- Settings: {json.dumps(report['lab_settings'], sort_keys=True)}")
    lines += ["", "| stage | seconds after the fault |", "|---|---|"]
    for key, label in STAGES:
        value = report["timeline_s"].get(key)
        lines.append(f"| {label} | {'—' if value is None else f'{value:.2f}'} |")
    return "\n".join(lines) + "\n"


def write(report: dict, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    js, md = directory / f"{report['id']}.json", directory / f"{report['id']}.md"
    js.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    md.write_text(markdown(report))
    return js, md


def load_reports(drills_dir: Path, limit: int = 200) -> list[dict]:
    """The newest reports first (ids are UTC timestamps, so names sort by time)."""
    reports = []
    try:
        names = sorted((p for p in Path(drills_dir).glob("*.json")), reverse=True)[:limit]
    except OSError:
        return []
    for path in names:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return reports


def metrics(reports: list[dict]) -> dict[str, float]:
    """What Prometheus sees: tts_drill_last_success (1/0), tts_drill_last_timestamp_seconds,
    tts_drill_last_rto_seconds (last successful), tts_drill_last_success_timestamp_seconds,
    tts_drill_last_segments_recomputed."""
    if not reports:
        return {}
    last = reports[0]
    out = {"tts_drill_last_success": 1.0 if last.get("result") == "succeeded" else 0.0,
           "tts_drill_last_timestamp_seconds": float(last.get("ended_at") or 0)}
    good = next((r for r in reports if r.get("result") == "succeeded"), None)
    if good:
        out["tts_drill_last_success_timestamp_seconds"] = float(good.get("ended_at") or 0)
        if good.get("rto_s") is not None:
            out["tts_drill_last_rto_seconds"] = float(good["rto_s"])
        recomputed = (good.get("canary") or {}).get("segments_recomputed")
        if recomputed is not None:
            out["tts_drill_last_segments_recomputed"] = float(recomputed)
    return out
