"""Retention: finished jobs older than TTS retention are removed from shared storage and Redis
(`tts-retention`, run daily by a timer on both TTS nodes; only the primary acts).

A job is removed only if it has a final marker on storage (done, failed, cancelled) written more than
`days` ago; a queued or running job is never touched, whatever its age. The node checks that it is the
unfenced primary (a fresh read of the cluster state) before it starts and again before each job, so a
fenced node or a standby removes nothing. A job's folder is first renamed to `jobs/.trash-<id>-<hex>`
(one atomic step: from then on nobody sees the job), then deleted; a trash folder left by an
interrupted run is deleted by the next one.

Uploaded voice clips (`voices/<session>/`) go with their session: a session's folder is removed when
its session is gone from Redis (expired: TTS_SESSION_TTL), its newest clip is older than `days`, and no
unfinished job of that session is on storage (a job that resumes loads its clips again).
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .jobs import FINAL, k
from .node import Fenced
from .runtime import Runtime
from .storage import StorageUnavailable

log = logging.getLogger("tts.retention")
TRASH_PREFIX = ".trash-"


@dataclass
class RetentionReport:
    removed: list[str] = field(default_factory=list)
    kept_active: int = 0
    kept_recent: int = 0
    skipped: list[str] = field(default_factory=list)
    voices_removed: list[str] = field(default_factory=list)   # session ids whose clips were removed
    sentence: str = ""


def purge(rt: Runtime, days: float, now: float | None = None) -> RetentionReport:
    """Remove finished jobs whose final marker is older than `days`; returns what was done and why.
    Ages by the NAS's clock alone (a marker's mtime against a probe file's), never the clock of the
    host that wrote the marker: a node whose clock ran months behind cannot date audio into the past."""
    report = RetentionReport()
    rt.node.await_handover()     # a new process on a new epoch's primary: its handover first
    try:
        epoch = rt.node.assert_primary().epoch
    except Fenced as exc:
        report.sentence = f"removed nothing: this node is not the unfenced primary ({exc})"
        return report
    files = rt.files
    try:
        now = rt.storage.now(files.jobs_dir) if now is None else now
    except (StorageUnavailable, OSError) as exc:
        report.sentence = f"removed nothing: the NAS's clock could not be read ({exc})"
        return report
    cutoff = now - days * 86400
    active_sessions: set[str] = set()
    for job_id in files.list_ids():
        final = None   # unknown until read: an unreadable job keeps every voice clip this run
        try:
            markers = files.markers(job_id)
            final = next((m for m in FINAL if m in markers), None)
            if final is None:
                report.kept_active += 1
                active_sessions.add(str(files.request(job_id).get("session", "")))
                continue
            finished_at = rt.storage.mtime(files.dir(job_id) / "state" / final)
            if finished_at > cutoff:
                report.kept_recent += 1
                continue
            rt.node.assert_primary(epoch)        # fresh read right before the removal
            _remove(rt, job_id)
            report.removed.append(job_id)
        except Fenced as exc:
            report.sentence = (f"stopped after removing {len(report.removed)} jobs: this node was fenced "
                               f"meanwhile ({exc})")
            return report
        except (StorageUnavailable, OSError, ValueError) as exc:
            if not files.storage.answers():
                report.sentence = f"stopped after removing {len(report.removed)} jobs: shared storage failed ({exc})"
                return report
            log.warning("job %s: not removed: %s", job_id, exc)
            report.skipped.append(job_id)
            if final is None:   # a job not known to be finished, its session unknown: keep every clip
                active_sessions.add("*")
    _empty_trash(rt, rt.files.jobs_dir)
    try:
        _expire_voices(rt, epoch, cutoff, active_sessions, report)
    except Fenced as exc:
        log.warning("voice clips: stopped: this node was fenced meanwhile (%s)", exc)
    except (StorageUnavailable, OSError) as exc:
        log.warning("voice clips: not expired: %s", exc)
    report.sentence = (f"removed {len(report.removed)} jobs finished more than {days:g} days ago; kept "
                       f"{report.kept_recent} finished more recently and {report.kept_active} not finished"
                       + (f"; {len(report.skipped)} could not be read" if report.skipped else "")
                       + f"; removed the voice clips of {len(report.voices_removed)} expired sessions")
    return report


def _expire_voices(rt: Runtime, epoch: int, cutoff: float, active_sessions: set[str],
                   report: RetentionReport) -> None:
    """Remove voices/<sid>/ of sessions gone from Redis whose newest clip is older than the cutoff and
    that no unfinished job uses."""
    if "*" in active_sessions:
        return
    root = rt.voices.root
    for sid in rt.storage.listdir(root):
        if sid.startswith(TRASH_PREFIX) or sid in active_sessions or rt.redis.exists(k("session", sid)):
            continue
        try:
            clips = rt.voices.list(sid)
        except ValueError:          # not a session folder
            continue
        if clips and max(rt.storage.mtime(root / sid / f"{c['id']}.json") for c in clips) > cutoff:
            continue
        rt.node.assert_primary(epoch)        # fresh read right before the removal
        _delete(rt, _move_aside(rt, root / sid))
        report.voices_removed.append(sid)
    _empty_trash(rt, root)


def _remove(rt: Runtime, job_id: str) -> None:
    _delete(rt, forget(rt, job_id))


def forget(rt: Runtime, job_id: str) -> Path:
    """Storage first (renamed away in one step), then Redis (a cache: reconcile never recreates a job
    whose folder is gone). Returns the renamed folder, to delete."""
    trash = _move_aside(rt, rt.files.dir(job_id))
    session = rt.store.get(job_id) or {}
    pipe = rt.redis.pipeline()
    pipe.delete(k("job", job_id))
    pipe.srem(k("active"), job_id)
    pipe.lrem(k("queue"), 0, job_id)
    pipe.delete(k("lease", job_id))
    if session.get("session"):
        pipe.zrem(k("sessjobs", session["session"]), job_id)
    pipe.execute()
    return trash


def _move_aside(rt: Runtime, folder: Path) -> Path:
    """Rename folder to a trash name beside it, in one step: from then on nobody sees it."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{secrets.token_hex(4)}")
    rt.storage.call(os.rename, folder, trash)
    return trash


def delete_quietly(rt: Runtime, folder: Path) -> None:
    """_delete, for a background thread: a failure is logged (the retention run's trash emptying
    finishes the job)."""
    try:
        _delete(rt, folder)
    except (StorageUnavailable, OSError) as exc:
        log.warning("%s not deleted yet: %s", folder.name, exc)


def _delete(rt: Runtime, folder: Path) -> None:
    rt.storage.call(shutil.rmtree, folder, timeout=max(rt.storage.timeout, 60.0))


def _empty_trash(rt: Runtime, root: Path) -> None:
    """Delete what an interrupted run left moved aside under root."""
    for name in rt.storage.listdir(root):
        if name.startswith(TRASH_PREFIX):
            try:
                _delete(rt, root / name)
            except (StorageUnavailable, OSError) as exc:
                log.warning("trash %s not removed: %s", name, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-retention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, required=True, help="remove jobs finished more than this many days ago")
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error("--days must be positive")
    logging.basicConfig(level=os.environ.get("TTS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    report = purge(Runtime.build(Settings()), args.days)
    print(report.sentence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
