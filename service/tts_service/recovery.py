"""Rebuild Redis from shared storage: after a promotion (the replica may have lost its last writes),
on worker start, and periodically. Shared storage decides; Redis follows.

A job on storage that Redis does not know is recreated (and queued unless it has a final marker);
a job whose storage marker says cancelled/done/failed is never run again, whatever Redis says.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .jobfiles import JobFiles
from .jobs import FINAL, JobStore, Sessions, k
from .storage import StorageUnavailable

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    scanned: int = 0
    recreated: list[str] = field(default_factory=list)
    finalised: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        return (f"reconciled {self.scanned} jobs from shared storage: {len(self.recreated)} recreated in Redis, "
                f"{len(self.finalised)} finalised from markers, {len(self.requeued)} made active again")


def job_from_storage(files: JobFiles, job_id: str) -> dict | None:
    """The job's Redis hash as shared storage says it should be; None if no request was ever accepted."""
    try:
        request = files.request(job_id)
    except FileNotFoundError:
        return None
    markers = files.markers(job_id)
    segs = files.segments(job_id)
    total = len(request["segments"])
    done = sum(1 for i in segs if i < total)
    status = next((m for m in FINAL if m in markers), "queued")
    if status == "done":
        duration = float(markers["done"].get("duration_s", 0) or 0)
    else:
        duration = files.segments_duration(job_id, {i: s for i, s in segs.items() if i < total})
    error = ""
    if status == "failed":
        error = str(markers["failed"].get("error", "failed"))
    return {
        "id": job_id, "session": request["session"], "status": status, "segments_done": done,
        "segments_total": total, "duration_s": round(duration, 3), "error": error,
        "node": markers.get(status, {}).get("node", "") if status in markers else "",
        "created_at": request["created_at"],
    }


def reconcile(store: JobStore, files: JobFiles, sessions: Sessions) -> ReconcileReport:
    report = ReconcileReport()
    active = set(store.active_ids())
    for job_id in files.list_ids():
        report.scanned += 1
        cached = store.get(job_id)
        if cached and cached.get("status") in FINAL:
            continue
        try:
            truth = job_from_storage(files, job_id)
        except (StorageUnavailable, ValueError, KeyError) as exc:
            log.warning("job %s: cannot read it from shared storage: %s", job_id, exc)
            continue
        if truth is None:
            continue  # a folder without request.json: a submission that never completed
        if not cached or not cached.get("session"):  # lost, or only a partial hash re-created by updates
            sessions.ensure(truth["session"])
            store.add(job_id, truth["session"], truth["segments_total"], truth["created_at"],
                      enqueue=truth["status"] not in FINAL)
            store.update(job_id, segments_done=truth["segments_done"], duration_s=truth["duration_s"])
            if truth["status"] in FINAL:
                store.finish(job_id, truth["status"], error=truth["error"], duration_s=truth["duration_s"])
            report.recreated.append(job_id)
        elif truth["status"] in FINAL:
            store.finish(job_id, truth["status"], error=truth["error"],
                         segments_done=truth["segments_done"], duration_s=truth["duration_s"])
            report.finalised.append(job_id)
        elif job_id not in active:
            store.r.sadd(k("active"), job_id)
            report.requeued.append(job_id)
    # Active ids whose request is gone from storage were never durable: drop them.
    for job_id in store.active_ids():
        try:
            if not files.storage.exists(files.dir(job_id) / "request.json"):
                store.finish(job_id, "failed", error="the job's request is missing from shared storage")
        except StorageUnavailable:
            break
    return report
