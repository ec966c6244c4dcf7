"""The job runner: one process per node (`tts-worker`), one job at a time.

Each cycle it reads the cluster state. Fenced (standby, or unsure) -> it does nothing. Primary ->
after a promotion or on start it rebuilds Redis from shared storage, then claims the oldest active
job whose lease it can take (a job is taken from another node only once that node's lease expired),
and runs it from the first missing segment:

    for each segment not on storage: synthesise -> pace -> fence check (fresh read) -> commit
    all present: assemble audio.wav once -> `done` marker -> Redis

A lease-keeper thread renews the lease every lease/3 and re-reads the cluster state; if either
fails, the job is abandoned at once (within one lease period), never committed by a fenced node.

Nothing a job contains can stop the worker: any failure inside one job (a damaged segment file, an
engine error, an exception nobody foresaw) is charged to that job as a failed attempt on shared
storage (jobs/<id>/failures/), the job waits `failure_backoff_s` and is tried again, and after
TTS_JOB_MAX_ATTEMPTS attempts it ends `failed` with a sentence naming what failed. A segment that
cannot be read is moved aside and generated again. Only an input error fails a job at once.
SIGTERM (systemctl stop, a planned switchover) lets the segment in hand finish and commit, then
releases the lease so the job resumes elsewhere at once; SIGKILL loses that one segment.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import redis

from . import audio, heartbeat
from .config import Settings
from .engines import EngineError, EngineInputError
from .jobs import FINAL
from .node import Fenced
from .recovery import reconcile
from .runtime import Runtime
from .storage import StorageFull, StorageUnavailable

log = logging.getLogger("tts.worker")


class Abandon(Exception):
    """Stop working on this job now (lost lease, fenced, shutting down); leave it to be resumed."""


class Attempt(Exception):
    """This attempt at the job failed for a reason that another attempt may not meet (a transient
    engine error after its retry): charged to the job, which is handed back."""


class JobRun:
    """One claimed job: the lease, its keeper thread and the abort flag."""

    def __init__(self, worker: "Worker", job_id: str, token: str, epoch: int):
        self.worker = worker
        self.job_id = job_id
        self.token = token
        self.epoch = epoch
        self.abort_reason: str | None = None
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> "JobRun":
        self._keeper.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._keeper.join(timeout=5)
        try:
            self.worker.rt.store.release_lease(self.job_id, self.token)
        except redis.RedisError:
            pass  # it expires by itself

    def _keep(self) -> None:
        rt = self.worker.rt
        interval = rt.settings.lease_s / 3
        while not self._stop.wait(interval):
            try:
                if not rt.store.renew_lease(self.job_id, self.token, rt.settings.lease_s):
                    self.abort_reason = "lost the job's lease"
            except redis.RedisError as exc:
                self.abort_reason = f"cannot renew the lease: {exc}"
            belief = rt.node.belief(fresh=True)
            if belief.fenced or belief.epoch != self.epoch:
                self.abort_reason = f"fenced: {belief.why_fenced()}"

    def check(self) -> None:
        if self.abort_reason:
            raise Abandon(self.abort_reason)

    def sleep(self, seconds: float) -> None:
        """Sleep (pacing) but wake up at once to abandon the job."""
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.05, left))


class Worker:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.settings: Settings = rt.settings
        self.stopping = threading.Event()
        self.histogram = heartbeat.Histogram()
        self.state = "starting"
        self.current_job: str | None = None
        self.engine_loaded = False
        self.engine_error: str | None = None
        self.reconciled_epoch: int | None = None
        self.last_reconcile = 0.0
        self.last_sentence = ""
        self.confirmed_final: set[str] = set()   # jobs whose final marker reconcile saw on storage
        self.backoff: dict[str, float] = {}   # job id -> monotonic time before which it is not claimed
        self.progress: dict[str, int] = {}    # job id -> whole segments when last looked at
        self.failed_in_a_row: list[str] = []  # jobs whose attempts failed since the last success
        self._hb_path = heartbeat.heartbeat_path(self.settings.run_dir, self.settings.node)

    # ---- lifecycle ----

    def run_forever(self) -> None:
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        self._load_engine()
        while not self.stopping.is_set():
            try:
                sentence = self.cycle()
            except (redis.RedisError, StorageUnavailable) as exc:
                sentence = f"waiting: {exc}"
                self.state = sentence
                self.stopping.wait(1.0)
            except Exception as exc:  # a bug must not take the node down: log it, go on
                log.exception("cycle failed")
                sentence = f"cycle failed ({type(exc).__name__}: {exc}); going on"
                self.stopping.wait(1.0)
            if sentence != self.last_sentence:   # say what changed, as Patroni does, not every cycle
                log.info("%s", sentence)
                self.last_sentence = sentence
        self._write_heartbeat()

    def _load_engine(self) -> None:
        self.state = "loading engine"
        try:
            self.rt.engine.load()
            self.engine_loaded = True
        except Exception as exc:  # a broken model must show up in /ready, not kill the node
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to load")

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            self._write_heartbeat()
            self.stopping.wait(1.0)

    def _write_heartbeat(self) -> None:
        try:
            heartbeat.write(self._hb_path, {
                "ts": time.time(), "pid": os.getpid(), "node": self.settings.node,
                "engine": self.rt.engine.name, "engine_loaded": self.engine_loaded,
                "engine_error": self.engine_error, "state": self.state, "job": self.current_job,
                "synthesis_seconds": self.histogram.to_dict(), "gpu_utilisation": heartbeat.gpu_utilisation(),
                "stopping": self.stopping.is_set(),
            })
        except OSError as exc:
            log.warning("cannot write heartbeat: %s", exc)

    # ---- one cycle ----

    def cycle(self) -> str:
        """Do one step of work; returns a sentence saying what was done and why."""
        belief = self.rt.node.belief(fresh=True)
        if not self.engine_loaded:
            self.state = "idle: the engine is not loaded"
            self.stopping.wait(1.0)
            return self.state
        if belief.fenced:
            self.state = f"idle: fenced because {belief.why_fenced()}"
            self.stopping.wait(0.5)
            return self.state
        if (self.reconciled_epoch != belief.epoch
                or time.monotonic() - self.last_reconcile > self.settings.reconcile_interval_s):
            report = reconcile(self.rt.store, self.rt.files, self.rt.sessions, self.rt.engine.sample_rate,
                               self.confirmed_final)
            self.reconciled_epoch = belief.epoch
            self.last_reconcile = time.monotonic()
            if report.recreated or report.finalised or report.requeued:
                log.info("%s", report.sentence())
        claimed = self.claim(belief.epoch)
        if claimed is None:
            self.state = "idle: primary with no claimable job"
            self.rt.store.pop_queue(1.0)  # wakes up as soon as a job is submitted
            return self.state
        job_id, token = claimed
        return self.run_job(job_id, token, belief.epoch)

    def claim(self, epoch: int) -> tuple[str, str] | None:
        """The first claimable job (interrupted ones first, then the oldest queued) whose lease this
        worker can take; a lease of an older epoch is void. Jobs that just failed wait their backoff."""
        store = self.rt.store
        now = time.monotonic()
        self.backoff = {j: t for j, t in self.backoff.items() if t > now}
        for job_id in store.claimable():
            if job_id in self.backoff:
                continue
            token = store.acquire_lease(job_id, self.settings.node, epoch, self.settings.lease_s)
            if token:
                return job_id, token
        return None

    # ---- running a job ----

    def run_job(self, job_id: str, token: str, epoch: int) -> str:
        self.current_job = job_id
        self.state = f"running {job_id}"
        try:
            with JobRun(self, job_id, token, epoch) as run:
                return self._run(run)
        except Abandon as exc:
            log.warning("job %s abandoned: %s", job_id, exc)
            return f"abandoned {job_id} because {exc}"
        except Fenced as exc:
            log.warning("job %s not committed: fenced: %s", job_id, exc)
            return f"stopped {job_id} because this node is fenced: {exc}"
        except StorageFull as exc:
            self._note_error(job_id, "shared storage is full; the job continues when space returns")
            self.stopping.wait(2.0)
            return f"paused {job_id} because {exc}"
        except StorageUnavailable as exc:
            if self._storage_full():   # a NAS reached over sftp reports a full disk as a failed write
                self._note_error(job_id, "shared storage is full; the job continues when space returns")
            elif self.rt.storage.answers():   # the mount works: this job's files are bad, not the NAS
                return self._charge(job_id, epoch, Attempt(f"its files on shared storage failed: {exc}"))
            else:
                self._note_error(job_id, "shared storage is unreachable; the job continues when it returns")
            self.stopping.wait(2.0)
            return f"paused {job_id} because {exc}"
        except redis.RedisError:
            raise   # the node's Redis, not the job: run_forever waits for it
        except Exception as exc:  # anything else is charged to this job, never to the worker
            log.exception("job %s: attempt failed", job_id)
            return self._charge(job_id, epoch, exc)
        finally:
            self.current_job = None

    def _charge(self, job_id: str, epoch: int, exc: Exception) -> str:
        """A failed attempt at the job: durable count on storage (only by the primary of this epoch);
        `failed` after max_attempts without progress. The same failure on several jobs in a row is
        the node's, not theirs: the engine is marked unfit (/ready 503) and the pair fails over."""
        what = str(exc) if isinstance(exc, Attempt) else f"{type(exc).__name__}: {exc}"
        self.backoff[job_id] = time.monotonic() + self.settings.failure_backoff_s
        self.failed_in_a_row.append(job_id)
        if len(self.failed_in_a_row) >= 3 and len(set(self.failed_in_a_row)) >= 2:
            self.engine_loaded = False
            self.engine_error = (f"attempts failed on {len(set(self.failed_in_a_row))} different jobs in a row "
                                 f"(the last: {what}): this node is unfit to run jobs")
            log.error("%s", self.engine_error)
        try:
            self.rt.node.assert_primary(epoch)
        except Fenced as fenced:
            return f"attempt at {job_id} failed ({what}); not recorded: fenced: {fenced}"
        try:
            failures = self.rt.files.record_failure(job_id, self.settings.node, epoch, what,
                                                    progress=self.progress.get(job_id, 0))
        except (StorageUnavailable, OSError) as store_exc:
            self._note_error(job_id, f"an attempt failed ({what}); it could not be recorded: {store_exc}")
            return f"attempt at {job_id} failed ({what}); not recorded: {store_exc}"
        limit = self.settings.job_max_attempts
        if failures >= limit:
            try:
                return self._fail(job_id, epoch, f"gave up after {failures} failed attempts; the last: {what}")
            except Fenced as fenced:
                return f"attempt at {job_id} failed ({what}); not marking it failed: fenced: {fenced}"
        self._note_error(job_id, f"attempt {failures} of {limit} failed ({what}); trying again")
        try:
            self.rt.store.update(job_id, status="queued")
        except redis.RedisError:
            pass
        return f"attempt {failures} of {limit} at {job_id} failed ({what}); it goes back to the queue"

    def _storage_full(self) -> bool:
        try:
            return self.rt.storage.free_bytes() < self.settings.storage_min_free_bytes
        except (StorageUnavailable, OSError):
            return False

    def _note_error(self, job_id: str, message: str) -> None:
        try:
            self.rt.store.update(job_id, error=message)
        except redis.RedisError:
            pass

    def _run(self, run: JobRun) -> str:
        rt, job_id, epoch = self.rt, run.job_id, run.epoch
        request = rt.files.request(job_id)
        markers = rt.files.markers(job_id)
        final = next((m for m in FINAL if m in markers), None)
        if final:
            rt.store.finish(job_id, final)
            return f"job {job_id} was already {final} on shared storage; nothing to run"
        segments = request["segments"]
        total = len(segments)
        existing, duration = self._sound_segments(run, total)
        self.progress[job_id] = len(existing)
        rt.store.update(job_id, status="running", node=self.settings.node, segments_total=total,
                        segments_done=len(existing), duration_s=round(duration, 3), error="",
                        claimed_at=time.time(), epoch=epoch)
        synthesised = 0
        # Generate what is missing; then check every segment whole once more before assembling (one
        # damaged on storage meanwhile is moved aside and generated again, here, in a second pass).
        for _pass in (1, 2):
            for seg in segments:
                index = int(seg["index"])
                if index in existing:
                    continue
                outcome = self._segment(run, seg, index)
                if isinstance(outcome, str):
                    return outcome
                synthesised += 1
                existing[index] = True
                self.progress[job_id] = len(existing)
                self.failed_in_a_row.clear()
                duration += outcome
                rt.store.update(job_id, segments_done=len(existing), duration_s=round(duration, 3))
            existing, duration = self._sound_segments(run, total)
            if len(existing) == total:
                break
        else:
            raise Attempt(f"segments {sorted(set(range(total)) - set(existing))[:5]} keep turning up damaged "
                          "on shared storage")
        run.check()
        rt.node.assert_primary(epoch)
        final_duration = rt.files.assemble(job_id, total, rt.engine.sample_rate)
        rt.files.mark(job_id, "done", node=self.settings.node, epoch=epoch, duration_s=final_duration)
        rt.store.finish(job_id, "done", node=self.settings.node, segments_done=total,
                        duration_s=round(final_duration, 3))
        self.failed_in_a_row.clear()
        self.progress.pop(job_id, None)
        return (f"finished {job_id}: {synthesised} segments synthesised here, "
                f"{total - synthesised} found on shared storage")

    def _sound_segments(self, run: JobRun, total: int) -> tuple[dict, float]:
        """The job's whole segments; damaged ones are moved aside (a write: fresh primary check first)."""
        rt = self.rt
        existing, damaged, duration = rt.files.sound_segments(run.job_id, total, rt.engine.sample_rate)
        if damaged:
            rt.node.assert_primary(run.epoch)
            for seg, why in damaged.items():
                log.warning("job %s: segment %s is damaged (%s); moved aside, generating it again",
                            run.job_id, seg.name, why)
                rt.files.quarantine_segment(run.job_id, seg)
        return dict(existing), duration

    def _segment(self, run: JobRun, seg: dict, index: int) -> float | str:
        """Synthesise and commit one segment: its seconds of audio, or a sentence if the job ended."""
        rt, job_id, epoch = self.rt, run.job_id, run.epoch
        run.check()
        if self.stopping.is_set():  # SIGTERM: the segment in hand was finished; start no new one
            raise Abandon(f"the worker is shutting down; segment {index} and later are left to resume")
        if "cancelled" in rt.files.markers(job_id):
            rt.store.finish(job_id, "cancelled", node=self.settings.node)
            return f"job {job_id} was cancelled; stopped before segment {index}"
        started = time.monotonic()
        try:
            samples = self._synthesize(run, seg["text"], seg["voice"])
        except EngineInputError as exc:
            return self._fail(job_id, epoch, f"segment {index + 1}: {exc}")
        seconds = len(samples) / rt.engine.sample_rate
        run.sleep(self.settings.engine_pace * seconds - (time.monotonic() - started))
        self.histogram.observe(time.monotonic() - started)
        wav = audio.encode_wav(samples, rt.engine.sample_rate)
        run.check()
        rt.node.assert_primary(epoch)            # fresh read of the state right before commit
        rt.files.commit_segment(job_id, index, epoch, wav)
        return seconds

    def _synthesize(self, run: JobRun, text: str, voice: str):
        """One segment; a transient engine error is retried once after Engine.recover()."""
        engine = self.rt.engine
        for attempt in (1, 2):
            self.rt.store.count_attempt(run.job_id)
            try:
                return engine.synthesize(text, voice)
            except EngineInputError:
                raise
            except EngineError as exc:
                log.warning("job %s: engine error (attempt %d): %s", run.job_id, attempt, exc)
                try:
                    engine.recover()
                except Exception:
                    log.exception("engine recover() failed")
                run.check()   # fenced or lost the lease meanwhile: abandon, charge nothing
                if attempt == 2:
                    raise Attempt(f"the engine failed twice on one segment: {exc}") from exc
        raise AssertionError("unreachable")

    def _fail(self, job_id: str, epoch: int, error: str) -> str:
        """The durable `failed` marker, written only after a fresh primary check (as a segment is)."""
        self.rt.node.assert_primary(epoch)
        self.rt.files.mark(job_id, "failed", node=self.settings.node, error=error)
        self.rt.store.finish(job_id, "failed", error=error, node=self.settings.node)
        self.progress.pop(job_id, None)   # a finished job's entry, as after `done`
        return f"job {job_id} failed: {error}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TTS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    settings = Settings()
    worker = Worker(Runtime.build(settings))

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current step", signum)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker for node %s, engine %s, pace %s", settings.node, settings.engine, settings.engine_pace)
    worker.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
