"""Rebuild Redis from shared storage: after a promotion (the replica may have lost its last writes),
on worker start, and periodically. Shared storage decides; Redis follows.

A job on storage that Redis does not know is recreated (and queued unless it has a final marker);
a job whose storage marker says cancelled/done/failed is never run again, whatever Redis says; and a
final status that exists only in Redis never outranks storage: a job Redis calls finished without a
marker on storage is made active again. Each job is reconciled on its own: one that cannot be read
(a damaged file) is logged and skipped, never the end of the scan.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .jobfiles import JobFiles
from .jobs import FINAL, JobStore, Sessions
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


def job_from_storage(files: JobFiles, job_id: str, sample_rate: int | None = None) -> dict | None:
    """The job's Redis hash as shared storage says it should be; None if no request was ever accepted."""
    try:
        request = files.request(job_id)
    except FileNotFoundError:
        return None
    markers = files.markers(job_id)
    exact = bool(request.get("segments_exact", True))
    total = int(request.get("segments_total") or len(request["segments"]))
    status = next((m for m in FINAL if m in markers), "queued")
    if status == "done":
        total = int(markers["done"].get("segments", total) or total)
        done, duration = total, float(markers["done"].get("duration_s", 0) or 0)
    elif sample_rate:
        sound, _damaged, duration = files.sound_segments(job_id, total if exact else None, sample_rate)
        done = len(sound)
    else:   # the web app (no engine loaded): count the files, read no audio
        done, duration = sum(1 for i in files.segments(job_id) if not exact or i < total), 0.0
    if not exact and status != "done":
        total = max(total, done + 1)
    error = ""
    if status == "failed":
        error = str(markers["failed"].get("error", "failed"))
    return {
        "id": job_id, "session": request["session"], "status": status, "segments_done": done,
        "segments_total": total, "duration_s": round(duration, 3), "error": error,
        "node": markers.get(status, {}).get("node", "") if status in markers else "",
        "created_at": request["created_at"], "seed": int(request.get("seed", 0) or 0),
        "duration_estimate_s": float(request.get("duration_estimate_s", 0) or 0),
        "client": str(request.get("client", "")), "title": str(request.get("title", "")),
    }


def reconcile(store: JobStore, files: JobFiles, sessions: Sessions, sample_rate: int | None = None,
              confirmed_final: set[str] | None = None, voices=None) -> ReconcileReport:
    """confirmed_final: ids whose final marker was already seen on storage (markers never go away),
    kept by the caller between scans so that finished jobs cost nothing after the first scan.
    voices (VoiceClips; given once Redis lost its data): the sessions that uploaded voices are recreated
    too (not on every scan: an expired session would never expire)."""
    report = ReconcileReport()
    confirmed = confirmed_final if confirmed_final is not None else set()
    active = set(store.active_ids())
    if voices is not None:
        try:
            for sid in voices.sessions():
                sessions.ensure(sid)
        except OSError as exc:
            log.warning("sessions with uploaded voices not checked: %s", exc)
    for job_id in files.list_ids():
        report.scanned += 1
        if job_id in confirmed:
            continue
        try:
            _reconcile_one(store, files, sessions, job_id, active, report, sample_rate, confirmed)
        except StorageUnavailable as exc:
            if not files.storage.answers():
                raise   # the mount, not the job: the caller waits for it
            log.warning("job %s: cannot reconcile it: %s (the mount answers: this job's files are bad)",
                        job_id, exc)
        except Exception as exc:  # one damaged job must not stop the scan (or the worker)
            log.warning("job %s: cannot reconcile it from shared storage: %s: %s", job_id, type(exc).__name__, exc)
    # Active ids whose request is gone from storage were never durable: drop them.
    for job_id in store.active_ids():
        try:
            missing = not files.storage.exists(files.dir(job_id) / "request.json")  # an I/O error raises
        except StorageUnavailable:
            if not files.storage.answers():
                raise
            continue
        if missing:
            store.finish(job_id, "failed", error="the job's request is missing from shared storage")
    return report


def _reconcile_one(store: JobStore, files: JobFiles, sessions: Sessions, job_id: str, active: set[str],
                   report: ReconcileReport, sample_rate: int | None, confirmed: set[str]) -> None:
    cached = store.get(job_id)
    if cached and cached.get("status") in FINAL:
        if any(m in files.markers(job_id) for m in FINAL):
            confirmed.add(job_id)
            return
        if not files.storage.exists(files.dir(job_id) / "request.json"):
            return
        # Finished in Redis only (no marker on storage): storage decides, the job is not finished.
        log.warning("job %s is %s in Redis but has no marker on shared storage: running it again",
                    job_id, cached.get("status"))
        store.update(job_id, status="queued", error="")
        store.activate(job_id)
        report.requeued.append(job_id)
        return
    truth = job_from_storage(files, job_id, sample_rate)
    if truth is None:
        return  # a folder without request.json: a submission that never completed
    if not cached or not cached.get("session"):  # lost, or only a partial hash re-created by updates
        sessions.ensure(truth["session"])
        store.add(job_id, truth["session"], truth["segments_total"], truth["created_at"],
                  enqueue=truth["status"] not in FINAL, seed=truth["seed"],
                  duration_estimate_s=truth["duration_estimate_s"], client=truth["client"], title=truth["title"])
        store.update(job_id, segments_done=truth["segments_done"], duration_s=truth["duration_s"])
        if truth["status"] in FINAL:
            store.finish(job_id, truth["status"], error=truth["error"], duration_s=truth["duration_s"])
        report.recreated.append(job_id)
    elif truth["status"] in FINAL:
        store.finish(job_id, truth["status"], error=truth["error"],
                     segments_done=truth["segments_done"], duration_s=truth["duration_s"])
        report.finalised.append(job_id)
    elif job_id not in active:
        store.activate(job_id)
        report.requeued.append(job_id)
