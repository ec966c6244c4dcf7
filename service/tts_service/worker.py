"""The job runner: one process per node (`tts-worker`), one job at a time. This is the node's loop;
one job's run (its lease, plan, scan, generate, commit, assemble) is jobrun.py's `JobRun`.

Each cycle it reads the cluster state. Fenced (standby, or unsure) -> it does nothing. Primary ->
after a promotion or on start it rebuilds Redis from shared storage, then claims the oldest active
job whose lease it can take (a job is taken from another node only once that node's lease expired),
and runs it (`JobRun.work`) from where shared storage says it got to. In a pool every GPU host's
worker claims from the primary's Redis (`route`), each job fenced by its lease generation.

Nothing a job contains can stop the worker: any failure inside one job (a damaged segment file, an
engine error, an exception nobody foresaw) is charged to that job as a failed attempt on shared
storage (jobs/<id>/failures/), the job waits `failure_backoff_s` and is tried again, and after
TTS_JOB_MAX_ATTEMPTS attempts it ends `failed` with a sentence naming what failed. A segment that
cannot be read is moved aside and generated again. Only an input error fails a job at once.
SIGTERM (systemctl stop, a planned switchover) lets the chunk in hand finish and commit, then
releases the lease so the job resumes elsewhere at once; SIGKILL loses that one chunk.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import redis

from . import heartbeat, journal, vip
from .config import Settings
from .engines import EngineInputError
from .jobfiles import STORAGE_FORMAT, Superseded
from .jobplan import JobPlan
from .jobrun import Abandon, Attempt, EngineFault, JobRun
from .jobs import JobStore, connect
from .journal import fields
from .node import Fenced
from .recovery import reconcile
from .runtime import Runtime
from .script import ScriptError, clean_text
from .storage import StorageFull, StorageUnavailable
from .voices import VOICE_ID_RE

log = logging.getLogger("tts.worker")
# Seconds between two syncs of keepalived's VIP track file with the cluster state (vip.py).
VIP_SYNC_S = 0.5


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
        self.chunk_times: deque[float] = deque(maxlen=50)   # seconds of recent engine calls per chunk
        self.paces: deque[tuple[float, float]] = deque(maxlen=50)   # (wall s, audio s) of recent chunks
        self.hangs: deque[float] = deque(maxlen=8)           # monotonic times the engine hung
        self._hb_path = heartbeat.heartbeat_path(self.settings.run_dir, self.settings.node)
        self.vip_error = ""   # why the VIP track file could not be written last time
        self.exited = threading.Event()      # the main loop has ended (the heartbeat speaks until then)
        self.format_recorded = False
        self._heartbeat_thread: threading.Thread | None = None
        self.current_run: JobRun | None = None
        self.store: JobStore = rt.store      # the jobs' Redis: this node's, or a pool worker's primary's
        self._format_seen = (0.0, 0)         # (monotonic time, the storage format recorded then)
        self._stores: dict[str, JobStore] = {}
        self._hb_lock = threading.Lock()

    # ---- lifecycle ----

    def run_forever(self) -> None:
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        if self.settings.vip_track_file:
            threading.Thread(target=self._vip_loop, name="vip", daemon=True).start()
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
        self.exited.set()
        if self._heartbeat_thread is not None:   # its last word must not land after the leaving one
            self._heartbeat_thread.join(timeout=5)
        self._write_heartbeat()
        self._register(leaving=True)

    def _load_engine(self) -> None:
        self.state = "loading engine (and compiling it, where it is compiled: /ready waits for both)"
        try:
            started = time.monotonic()
            self.rt.engine.load()
            self.engine_loaded = True
            warmed = getattr(self.rt.engine, "warmed_up", {})
            log.info("engine %s loaded in %.1f s%s", self.rt.engine.name, time.monotonic() - started,
                     f"; compiled for cache sizes {warmed['buckets']} in {warmed['seconds']} s"
                     if warmed.get("buckets") else "")
        except Exception as exc:  # a broken model must show up in /ready, not kill the node
            self.engine_error = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to load")

    def _heartbeat_loop(self) -> None:
        # Until the main loop ends, a drain's last chunk included (a silent worker is alerted on).
        while not self.exited.is_set():
            self._write_heartbeat()
            self._register()
            self.exited.wait(1.0)

    def _register(self, leaving: bool = False) -> None:
        """A pool worker's word in the jobs' Redis (every second): what it does, whether it takes jobs,
        its pace (the queue's estimates count it as a lane; TTSWorkerDown watches its age). A drained
        worker (SIGTERM) takes its word back: it is gone on purpose."""
        if not self.settings.worker_pool:
            return
        try:
            if leaving:
                self.store.forget_worker(self.settings.node)
                return
            belief = self.rt.node.belief()
            run = self.current_run   # a job given up (lease lost, the engine past its deadline) is not claimed as running
            self.store.register_worker(self.settings.node, {
                "state": self.state, "job": run.job_id if run is not None and not run.abort_reason else None,
                "pace": self.pace(),
                "engine": self.rt.engine.name, "takes_jobs": self.takes_jobs(belief)})
        except redis.RedisError as exc:
            log.debug("worker not registered: %s", exc)

    def _vip_loop(self) -> None:
        """Keep keepalived's track file saying whether the cluster state names this node primary
        (vip.py): within VIP_SYNC_S of a promotion the new primary may take the VIP, and a node that
        is not the primary never holds it, even while it cannot reach its peer."""
        path = Path(self.settings.vip_track_file)
        while not self.stopping.is_set():
            try:
                self.sync_vip(path)
            except Exception:  # a bug must not freeze the file for the life of the process: say it, go on
                log.exception("VIP track file sync failed")
            self.stopping.wait(VIP_SYNC_S)

    def sync_vip(self, path: Path) -> str | None:
        """One step of _vip_loop: what the track file says now (None: the state could not be read,
        or the file not written; it is left as it was)."""
        belief = self.rt.node.belief()
        if belief.state is None or (belief.error is not None and belief.fresh):
            return None   # nothing read yet, or one failed read: no change on a guess
        value = vip.track_value(belief.state.primary if belief.fresh else None, self.settings.node)
        try:
            if vip.sync_track_file(path, value):
                log.info("VIP track file %s now says %s: %s", path, value,
                         f"this node is the primary of epoch {belief.state.epoch}" if value == vip.MAY_HOLD
                         else f"{belief.state.primary} is the primary of epoch {belief.state.epoch}" if belief.fresh
                         else f"the cluster state was last read {belief.age_s:.1f} s ago ({belief.error})")
        except OSError as exc:
            if str(exc) != self.vip_error:   # once, not every half second (a first deploy makes the folder later)
                log.warning("cannot write the VIP track file %s: %s", path, exc)
            self.vip_error = str(exc)
            return None
        self.vip_error = ""
        return value

    def pace(self) -> float | None:
        """Wall seconds per second of audio over the recent chunks (None before the first): what the
        queue's estimated start and finish times are made of (api.py)."""
        audio = sum(seconds for _, seconds in self.paces)
        return round(sum(wall for wall, _ in self.paces) / audio, 3) if audio > 0 else None

    def _write_heartbeat(self) -> None:
        with self._hb_lock:     # the heartbeat thread and a job's lease keeper (engine_hung) both write it
            self._write_heartbeat_locked()

    def _write_heartbeat_locked(self) -> None:
        try:
            heartbeat.write(self._hb_path, {
                "ts": time.time(), "pid": os.getpid(), "node": self.settings.node,
                "engine": self.rt.engine.name, "engine_loaded": self.engine_loaded,
                "engine_error": self.engine_error, "state": self.state, "job": self.current_job,
                "synthesis_seconds": self.histogram.to_dict(), "gpu_utilisation": heartbeat.gpu_utilisation(),
                "stopping": self.stopping.is_set(), "pace": self.pace(),
            })
        except OSError as exc:
            log.warning("cannot write heartbeat: %s", exc)

    # ---- one cycle ----

    def route(self, belief) -> JobStore:
        """The Redis the jobs live in, for a pool worker the one of the primary the belief names (each
        connection made once); the node's own otherwise."""
        if not (self.settings.worker_pool and self.settings.redis_urls and belief.state is not None):
            return self.store
        url = self.settings.redis_url_of(belief.state.primary)
        if url not in self._stores:
            self._stores[url] = JobStore(connect(url))
        self.store = self._stores[url]
        return self.store

    def _recorded_format(self) -> int:
        """The storage format the primaries have recorded (read at most every 10 s)."""
        at, fmt = self._format_seen
        if time.monotonic() - at > 10 or fmt < STORAGE_FORMAT:
            fmt = self.rt.cluster.storage_format()
            self._format_seen = (time.monotonic(), fmt)
        return fmt

    def takes_jobs(self, belief) -> bool:
        """Whether this worker claims jobs now: its engine is loaded and it is the unfenced primary, or a
        pool worker that reads the cluster state."""
        return self.engine_loaded and (not belief.fenced or (self.settings.worker_pool and belief.fresh))

    def cycle(self) -> str:
        """Do one step of work; returns a sentence saying what was done and why."""
        belief = self.rt.node.belief(fresh=True)
        if not self.engine_loaded:
            self.state = "idle: the engine is not loaded"
            self.stopping.wait(1.0)
            return self.state
        if belief.fenced and not (self.settings.worker_pool and belief.fresh):
            self.state = f"idle: fenced because {belief.why_fenced()}"
            self.stopping.wait(0.5)
            return self.state
        self.route(belief)
        if belief.fenced:   # a pool worker beside the primary: it claims jobs, the primary keeps Redis whole
            recorded = self._recorded_format()
            if recorded < STORAGE_FORMAT:
                self.state = (f"idle: the primary writes storage format {recorded}, older than this worker's "
                              f"{STORAGE_FORMAT} (an upgrade in progress): no job is claimed until it is newer")
                self.stopping.wait(2.0)
                return self.state
            if self.store.lost_its_data():
                self.state = "idle: waiting for the primary to rebuild Redis from shared storage"
                self.stopping.wait(1.0)
                return self.state
            return self._claim_and_run(belief, "idle: pool worker with no claimable job",
                                       defer_s=self.settings.pool_defer_s)
        emptied = self.store.lost_its_data()
        if (emptied or self.reconciled_epoch != belief.epoch
                or time.monotonic() - self.last_reconcile > self.settings.reconcile_interval_s):
            if emptied:    # what this worker knew was finished is no longer in Redis either
                self.confirmed_final.clear()
            report = reconcile(self.store, self.rt.files, self.rt.sessions, self.rt.engine.sample_rate,
                               self.confirmed_final, voices=self.rt.voices if emptied else None)
            self.store.mark_rebuilt()
            if emptied:
                log.warning("Redis had lost its data: rebuilt from shared storage (%s)", report.sentence())
            if self.reconciled_epoch != belief.epoch or not self.format_recorded:
                self.format_recorded = self._record_format(belief.epoch)
            self.reconciled_epoch = belief.epoch
            self.last_reconcile = time.monotonic()
            if report.recreated or report.finalised or report.requeued:
                log.info("%s", report.sentence())
        return self._claim_and_run(belief, "idle: primary with no claimable job")

    def _claim_and_run(self, belief, idle: str, defer_s: float = 0.0) -> str:
        claimed = self.claim(belief.epoch, defer_s)
        if claimed is None:
            self.state = idle
            self.store.pop_queue(1.0)  # wakes up as soon as a job is submitted
            return self.state
        job_id, token, gen = claimed
        return self.run_job(job_id, token, belief.epoch, gen)

    def _record_format(self, epoch: int) -> bool:
        """As the new epoch's primary: record the storage format this code writes (an older node will
        then refuse to be promoted over it: `tts-cluster promote`; a pool's workers wait for it). False if
        it could not be written (tried again at the next reconcile)."""
        try:
            self.rt.node.assert_primary(epoch)
            if self.rt.cluster.record_format(STORAGE_FORMAT, self.settings.node):
                log.info("recorded storage format %d on shared storage", STORAGE_FORMAT)
            return True
        except (Fenced, StorageUnavailable, OSError) as exc:
            log.warning("storage format not recorded: %s", exc)
            return False

    def claim(self, epoch: int, defer_s: float = 0.0) -> tuple[str, str, int] | None:
        """The first claimable job (jobs.claim_order) whose lease this worker can take (a lease of an
        older epoch is void), with the lease's next generation granted on shared storage: (job, lease
        token, generation). Jobs that just failed wait their backoff; a new job younger than defer_s is
        left to the primary's worker."""
        store = self.store
        now = time.monotonic()
        self.backoff = {j: t for j, t in self.backoff.items() if t > now}
        order, jobs = store.queue_view()
        pool = self.settings.worker_pool
        # A job another live worker says it runs is its own (it carries it on through a failover, and takes
        # its lease back in the new primary's Redis): not asked for.
        running = ({info.get("job") for worker, info in store.workers(self.settings.worker_forget_s).items()
                    if worker != self.settings.node and info["age_s"] < self.settings.lease_s / 2}
                   if pool and order else set())
        for job_id in order:
            if job_id in self.backoff or job_id in running:
                continue
            if defer_s and not jobs[job_id]["interrupted"] and time.time() - jobs[job_id]["created_at"] < defer_s:
                continue
            if pool and jobs[job_id]["interrupted"] and self._just_granted_elsewhere(job_id):
                continue
            token = store.acquire_lease(job_id, self.settings.node, epoch, self.settings.lease_s, void_older=not pool)
            if not token:
                continue
            try:
                gen = self.rt.files.grant(job_id, self.settings.node, epoch)
            except BaseException:
                store.release_lease(job_id, token)
                raise
            if gen is None:   # granted in a newer epoch than this worker read: its belief is behind
                store.release_lease(job_id, token)
                continue
            if not jobs[job_id]["interrupted"]:
                self._bookkeep(store.mark_served, jobs[job_id]["session"])
            return job_id, token, gen
        return None

    def _just_granted_elsewhere(self, job_id: str) -> bool:
        """Whether another worker was granted the job less than a lease ago (on storage, which a Redis
        failover does not lose): its lease in Redis may have been lost with the old primary's newest
        writes (a claim a moment before a switchover), and it takes it back within lease/3. A holder that
        died that soon costs its job one lease of waiting."""
        try:
            newest = self.rt.files.newest_grant(job_id)
        except (StorageUnavailable, OSError):
            return not self.rt.storage.answers()   # one bad file of a job that answers: its run charges it
        info = newest[1] if newest is not None else None
        if not isinstance(info, dict) or info.get("worker") == self.settings.node:
            return False
        try:
            age = time.time() - float(info.get("at", 0))
        except (TypeError, ValueError):
            return False
        return 0 <= age < self.settings.lease_s   # a grant dated in the future (a clock ahead) is not trusted

    # ---- running a job ----

    def run_job(self, job_id: str, token: str, epoch: int, gen: int = 0) -> str:
        self.current_job = job_id
        self.state = f"running {job_id}"
        try:
            with JobRun(self, job_id, token, epoch, gen) as run:
                self.current_run = run
                return run.work()
        except (Abandon, Superseded) as exc:
            log.warning("job %s abandoned: %s", job_id, exc, extra=fields(job=job_id, epoch=epoch, event="abandoned"))
            return f"abandoned {job_id} because {exc}"
        except Fenced as exc:
            log.warning("job %s not committed: fenced: %s", job_id, exc,
                        extra=fields(job=job_id, epoch=epoch, event="fenced"))
            return f"stopped {job_id} because this node is fenced: {exc}"
        except StorageFull as exc:
            self._note_error(job_id, "shared storage is full; the job continues when space returns")
            self.stopping.wait(2.0)
            return f"paused {job_id} because {exc}"
        except StorageUnavailable as exc:
            if self._storage_full():   # a NAS reached over sftp reports a full disk as a failed write
                self._note_error(job_id, "shared storage is full; the job continues when space returns")
            elif self.rt.storage.answers():   # the mount works: this job's files are bad, not the NAS
                return self._charge(job_id, epoch, Attempt(f"its files on shared storage failed: {exc}"), gen)
            else:
                self._note_error(job_id, "shared storage is unreachable; the job continues when it returns")
            self.stopping.wait(2.0)
            return f"paused {job_id} because {exc}"
        except redis.RedisError:
            raise   # the node's Redis, not the job: run_forever waits for it
        except Exception as exc:  # anything else is charged to this job, never to the worker
            log.exception("job %s: attempt failed", job_id)
            return self._charge(job_id, epoch, exc, gen)
        finally:
            self.current_job = None
            self.current_run = None

    def chunk_deadline(self) -> float:
        """How long one chunk's engine call may take: FACTOR x the median of recent ones, at least MIN_S."""
        times = sorted(self.chunk_times)
        median = times[len(times) // 2] if times else 0.0
        return max(self.settings.chunk_deadline_min_s, self.settings.chunk_deadline_factor * median)

    def engine_hung(self, job_id: str, took: float, deadline: float) -> None:
        """The engine passed a chunk's deadline (called from the job's lease keeper): the job is left to
        another attempt; the second hang within an hour makes the node unfit (/ready 503: failed over)."""
        now = time.monotonic()
        self.hangs.append(now)
        recent = [t for t in self.hangs if now - t < 3600]
        log.error("job %s: the engine has been on one chunk for %.0f s (deadline %.0f s): it hangs (%d in the "
                  "last hour)", job_id, took, deadline, len(recent), extra=fields(job=job_id, event="engine_hung"))
        self._note_error(job_id, f"the engine hung on this job ({took:.0f} s on one chunk); it goes on from its "
                                 f"last checkpoint")
        if len(recent) >= 2:
            self.engine_loaded = False
            self.engine_error = (f"the engine hung {len(recent)} times in the last hour (the last: {took:.0f} s on "
                                 f"one chunk of job {job_id}, deadline {deadline:.0f} s): this node is unfit to run jobs")
            self._write_heartbeat()

    def _fence_job(self, job_id: str, epoch: int, gen: int) -> None:
        """Right before a write to the job's files: the job's lease generation is still this worker's
        newest on storage (Superseded if not), and, unless workers are pooled, this node is the unfenced
        primary of the epoch (Fenced if not). Fresh reads, both."""
        if not self.settings.worker_pool:
            self.rt.node.assert_primary(epoch)
        self.rt.files.check_holder(job_id, gen)

    def _fence(self, run: JobRun) -> None:
        run.check()
        try:
            self._fence_job(run.job_id, run.epoch, run.gen)
        except Superseded as exc:
            run.abort_reason = str(exc)
            raise Abandon(str(exc)) from None

    def _charge(self, job_id: str, epoch: int, exc: Exception, gen: int = 0) -> str:
        """A failed attempt at the job: durable count on storage (only by the primary of this epoch);
        `failed` after max_attempts without progress. Engine faults (EngineFault) on several jobs in a
        row are the node's if the engine also fails its self-check (a plain sentence): then it is
        marked unfit (/ready 503) and the pair fails over; if it speaks the sentence, they were those
        jobs'. Nothing else counts there: a job's own files or input never make the node unfit, and a
        committed chunk starts the count again."""
        what = str(exc) if isinstance(exc, Attempt) else f"{type(exc).__name__}: {exc}"
        self.backoff[job_id] = time.monotonic() + self.settings.failure_backoff_s
        if isinstance(exc, EngineFault):
            self.failed_in_a_row.append(job_id)
        if len(self.failed_in_a_row) >= 3 and len(set(self.failed_in_a_row)) >= 2:
            # The engine's, or these jobs'? A plain sentence tells: jobs crafted to make the engine
            # fail every time must not make the node (and then its peer) unfit.
            broken = self.rt.engine.self_check()
            jobs = len(set(self.failed_in_a_row))
            self.failed_in_a_row.clear()
            if broken is None:
                log.warning("attempts failed on %d different jobs in a row (the last: %s), but the engine speaks "
                            "a plain sentence: the failures are those jobs', not this node's", jobs, what)
            else:
                self.engine_loaded = False
                self.engine_error = (f"attempts failed on {jobs} different jobs in a row (the last: {what}) and "
                                     f"the engine fails its self-check ({broken}): this node is unfit to run jobs")
                log.error("%s", self.engine_error)
        try:
            self._fence_job(job_id, epoch, gen)
        except (Fenced, Superseded) as fenced:
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
                return self._fail(job_id, epoch, f"gave up after {failures} failed attempts; the last: {what}", gen)
            except (Fenced, Superseded) as fenced:
                return f"attempt at {job_id} failed ({what}); not marking it failed: fenced: {fenced}"
        self._note_error(job_id, f"attempt {failures} of {limit} failed ({what}); trying again")
        try:
            self.store.update(job_id, status="queued")
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
            self.store.update(job_id, error=message)
        except redis.RedisError:
            pass



    # ---- planning and scanning ----

    def _plan(self, request: dict) -> JobPlan:
        """The job's parts (engine.plan), seed, uploaded clips and each part's fingerprint."""
        clips = {}
        for voice in sorted(set(request.get("voices", {}).values())):
            if VOICE_ID_RE.match(voice):
                try:
                    clips[voice] = self.rt.voices.load(request["session"], voice)
                except (FileNotFoundError, ValueError, RuntimeError) as exc:   # gone, or not audio any more
                    raise EngineInputError(f"the uploaded voice {voice} is gone from shared storage or "
                                           f"damaged: {exc}") from exc
        for seg in request["segments"]:
            try:   # a job stored before its text was checked at the door is refused here, as its own fault
                clean_text(seg["text"])
            except ScriptError as exc:
                raise EngineInputError(f"segment {int(seg.get('index', 0)) + 1}: {exc}") from None
        engine = self.rt.engine
        options = tuple(sorted((k, v) for k, v in (request.get("generation") or {}).items()
                               if k in engine.generation_options))
        parts = [replace(p, options=options) for p in engine.plan(request["segments"], clips)]
        seed = int(request.get("seed", 0) or 0)
        return JobPlan(parts, [engine.fingerprint(p, seed, clips) for p in parts], seed, clips,
                       int(request.get("segments_total", 0) or 0), exact=not engine.stateful)



    # ---- generating ----





    def _bookkeep(self, call, *args, **kwargs) -> None:
        """Redis's copy of a job's progress. In a pool, the primary's Redis may be away (its host died):
        the job goes on, fenced on shared storage, and Redis learns the progress at the next chunk (or from
        the rebuild); outside a pool, a Redis error hands the job back as before."""
        try:
            call(*args, **kwargs)
        except redis.RedisError as exc:
            if not self.settings.worker_pool:
                raise
            log.warning("progress not recorded in Redis (the job goes on): %s", exc)


    def _fail(self, job_id: str, epoch: int, error: str, gen: int = 0) -> str:
        """The durable `failed` marker, written only after a fresh primary check (as a segment is)."""
        self._fence_job(job_id, epoch, gen)
        self.rt.files.mark(job_id, "failed", node=self.settings.node, error=error)
        self.store.finish(job_id, "failed", error=error, node=self.settings.node)
        self.progress.pop(job_id, None)   # a finished job's entry, as after `done`
        log.warning("job %s failed: %s", job_id, error, extra=fields(job=job_id, epoch=epoch, event="failed"))
        return f"job {job_id} failed: {error}"


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    journal.setup("tts-worker", settings.node, os.environ.get("TTS_LOG_LEVEL", "INFO"))
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
