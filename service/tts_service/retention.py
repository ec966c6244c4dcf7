"""Retention: finished jobs older than TTS retention are removed from shared storage and Redis
(`tts-retention`, run daily by a timer on both TTS nodes; only the primary acts).

A job is removed only if it has a final marker on storage (done, failed, cancelled) written more than
`days` ago; a queued or running job is never touched, whatever its age. The node checks that it is the
unfenced primary (a fresh read of the cluster state) before it starts and again before each job, so a
fenced node or a standby removes nothing. A job's folder is first renamed to `jobs/.trash-<id>-<hex>`
(one atomic step: from then on nobody sees the job), then deleted; a trash folder left by an
interrupted run is deleted by the next one.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field

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
    sentence: str = ""


def purge(rt: Runtime, days: float, now: float | None = None) -> RetentionReport:
    """Remove finished jobs whose final marker is older than `days`; returns what was done and why."""
    report = RetentionReport()
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    try:
        epoch = rt.node.assert_primary().epoch
    except Fenced as exc:
        report.sentence = f"removed nothing: this node is not the unfenced primary ({exc})"
        return report
    files = rt.files
    for job_id in files.list_ids():
        try:
            markers = files.markers(job_id)
            final = next((m for m in FINAL if m in markers), None)
            if final is None:
                report.kept_active += 1
                continue
            finished_at = float(markers[final].get("at", 0) or 0)
            if not finished_at or finished_at > cutoff:
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
    _empty_trash(rt)
    report.sentence = (f"removed {len(report.removed)} jobs finished more than {days:g} days ago; kept "
                       f"{report.kept_recent} finished more recently and {report.kept_active} not finished"
                       + (f"; {len(report.skipped)} could not be read" if report.skipped else ""))
    return report


def _remove(rt: Runtime, job_id: str) -> None:
    """Storage first (renamed away in one step), then Redis (a cache: reconcile never recreates a job
    whose folder is gone)."""
    folder = rt.files.dir(job_id)
    trash = folder.with_name(f"{TRASH_PREFIX}{job_id}-{secrets.token_hex(4)}")
    rt.storage.call(os.rename, folder, trash)
    session = rt.store.get(job_id) or {}
    pipe = rt.redis.pipeline()
    pipe.delete(k("job", job_id))
    pipe.srem(k("active"), job_id)
    pipe.lrem(k("queue"), 0, job_id)
    pipe.delete(k("lease", job_id))
    if session.get("session"):
        pipe.zrem(k("sessjobs", session["session"]), job_id)
    pipe.execute()
    rt.storage.call(shutil.rmtree, trash, timeout=max(rt.storage.timeout, 60.0))


def _empty_trash(rt: Runtime) -> None:
    for name in rt.storage.listdir(rt.files.jobs_dir):
        if name.startswith(TRASH_PREFIX):
            try:
                rt.storage.call(shutil.rmtree, rt.files.jobs_dir / name, timeout=max(rt.storage.timeout, 60.0))
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
