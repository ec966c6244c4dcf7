"""One job's run on a worker (`JobRun`): its lease and the lease keeper thread, then the work itself,
through one code path for every engine (engines/base.py):

    plan: the job's segments grouped into parts (espeak: a turn each; VibeVoice: as much of the
          dialogue as fits the model's context), a seed, each part's fingerprint (Worker._plan)
    scan: the usable chunks on storage; a stateful engine's resume point = the last chunk's
          checkpoint (its part's latents + the newest state), checked against the fingerprint
    for each part to do: stream chunks -> pace -> fence check (fresh read) -> commit state,
          checkpoint, audio (the commit point) -> drop the older state
    all whole: assemble audio.wav once -> `done` marker -> Redis

The lease keeper renews the lease every lease/3 and re-reads the cluster state; if either fails, the
job is abandoned at once (within one lease period), never committed by a fenced node. The node's loop
(claiming, the engine, the heartbeat, the VIP, charging failed attempts) is worker.py's `Worker`.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import closing
from typing import TYPE_CHECKING

import redis

from . import audio
from .engines import EngineError, EngineInputError
from .jobfiles import Superseded, encode_npz, segment_name
from .jobplan import ChunkInfo, JobPlan, Scan
from .jobs import FINAL
from .journal import fields
from .node import Fenced
from .storage import StorageUnavailable

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("tts.worker")
DOWNLOAD_FORMATS = [fmt for fmt in audio.DOWNLOADS if fmt != "wav"]


# A stateful stream's first chunk may take this many chunk deadlines: it carries the prompt's prefill, a
# resume's replay of the committed chunks and, on a GPU, the compilation of a new cache size.
FIRST_CHUNK_ALLOWANCE = 5


class Abandon(Exception):
    """Stop working on this job now (lost lease, fenced, shutting down); leave it to be resumed."""


class Attempt(Exception):
    """This attempt at the job failed for a reason that another attempt may not meet (a transient
    engine error after its retry): charged to the job, which is handed back."""


class EngineFault(Attempt):
    """A failed attempt that is the engine's doing, not the job's (it failed twice on one chunk, or
    raised something unforeseen): besides the job, it counts toward the node's unfitness."""


class _Ended(Exception):
    """The job ended while it ran (cancelled): the message is the cycle's sentence."""


class _Rescan(Exception):
    """What is on storage is not what this run expected: scan again before going on."""


class JobRun:
    """One claimed job: the lease, its keeper thread and the abort flag, and the work (`work()`)."""

    def __init__(self, worker: Worker, job_id: str, token: str, epoch: int, gen: int = 0):
        self.worker = worker
        self.job_id = job_id
        self.token = token
        self.epoch = epoch            # the epoch of the grant: in the names of the chunks this run writes
        self.gen = gen                # the grant's generation (the fencing token), beside the epoch
        self.lease_epoch = epoch      # the epoch the lease in Redis is tagged with (a pool worker re-tags it)
        self.abort_reason: str | None = None
        self.generated = 0        # chunks generated (committed or found identical) in this run
        self.waiting_since: float | None = None   # monotonic start of the engine call in progress
        self.deadline_s = 0.0                      # how long that call may take
        self.hangs_seen = 0                        # deadlines that call has passed
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name=f"lease-{job_id[:8]}", daemon=True)

    # What the run reads of its worker: the node's runtime, settings and the jobs' Redis (a pool worker's
    # follows the primary: Worker.route may change it while the job runs).
    @property
    def rt(self):
        return self.worker.rt

    @property
    def settings(self):
        return self.worker.rt.settings

    @property
    def store(self):
        return self.worker.store

    def __enter__(self) -> JobRun:
        self._keeper.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.worker.current_run = None   # the registry stops naming the job before its lease is released
        self._keeper.join(timeout=5)
        try:
            self.store.release_lease(self.job_id, self.token)
        except redis.RedisError:
            pass  # it expires by itself

    def _keep(self) -> None:
        interval = self.settings.lease_s / 3
        while not self._stop.wait(interval):
            try:
                self._keep_once()
            except Exception as exc:   # a bug must not end the renewals silently: the job is given up
                log.exception("job %s: the lease keeper failed", self.job_id)
                self.abort_reason = f"the lease keeper failed: {type(exc).__name__}: {exc}"

    def _keep_once(self) -> None:
        rt = self.rt
        if self._overdue():
            return            # the lease lapses: the job goes to another attempt
        belief = rt.node.belief(fresh=True)
        if rt.settings.worker_pool:
            self._keep_in_pool(belief)
            return
        try:
            if not self.store.renew_lease(self.job_id, self.token, rt.settings.lease_s):
                self.abort_reason = "lost the job's lease"
        except redis.RedisError as exc:
            self.abort_reason = f"cannot renew the lease: {exc}"
        if belief.fenced or belief.epoch != self.epoch:
            self.abort_reason = f"fenced: {belief.why_fenced()}"

    def _keep_in_pool(self, belief) -> None:
        """A pool worker keeps its job through a failover of the control plane: it follows the primary's
        Redis and re-tags its lease with the new epoch. It stops only when it cannot read the cluster
        state (it could not write anyway) or loses the lease; its writes are fenced by the generation."""
        rt = self.rt
        if not belief.fresh:
            self.abort_reason = f"cannot read the cluster state ({belief.error or 'too old'})"
            return
        try:   # superseded (a newer grant on storage): stop now, not at the next write
            rt.files.check_holder(self.job_id, self.gen)
        except Superseded as exc:
            self.abort_reason = str(exc)
            return
        except (StorageUnavailable, OSError):
            pass   # the next write's own check decides
        store = self.worker.route(belief)
        ttl = rt.settings.lease_s
        try:
            if belief.epoch > self.lease_epoch:
                token = store.retag_lease(self.job_id, self.token, belief.epoch, ttl)
            else:
                token = self.token if store.renew_lease(self.job_id, self.token, ttl) else None
            if not token:   # gone from Redis (expired while Redis was away, lost in its failover): take it back if free
                token = store.acquire_lease(self.job_id, rt.settings.node, belief.epoch, ttl, void_older=False)
            if token:
                self.token, self.lease_epoch = token, belief.epoch
            else:
                self.abort_reason = "lost the job's lease: another worker holds it"
        except redis.RedisError as exc:
            # The primary's Redis is away (its host died; the control plane fails over): the job goes on,
            # fenced on shared storage; the worker's next write to Redis, after its chunk is committed,
            # hands the job back, and the worker claims it again from the new primary's Redis.
            log.debug("job %s: lease not renewed: %s", self.job_id, exc)

    def _overdue(self) -> bool:
        """Whether the engine call in progress passed its deadline. The worker hears of a hang when the
        call passes its deadline, and once more if it is still stuck at three times the deadline (a call
        that never returns makes the node unfit, as two hangs do)."""
        since = self.waiting_since
        if since is None or self.deadline_s <= 0:
            return False
        took = time.monotonic() - since
        if (self.hangs_seen == 0 and took >= self.deadline_s) or (self.hangs_seen == 1 and took >= 3 * self.deadline_s):
            self.hangs_seen += 1
            self.abort_reason = (f"the engine has been on one chunk for {took:.0f} s (deadline {self.deadline_s:.0f} s): "
                                 f"it hangs; the job's lease is left to lapse")
            self.worker.engine_hung(self.job_id, took, self.deadline_s)
        return took >= self.deadline_s

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

    # ---- the work: plan, scan, generate, commit, assemble ----

    def work(self) -> str:
        rt, job_id, epoch = self.rt, self.job_id, self.epoch
        request = rt.files.request(job_id)
        markers = rt.files.markers(job_id)
        final = next((m for m in FINAL if m in markers), None)
        if final:
            self.store.finish(job_id, final)
            return f"job {job_id} was already {final} on shared storage; nothing to run"
        try:
            plan = self.worker._plan(request)
        except EngineInputError as exc:
            return self.worker._fail(job_id, epoch, str(exc), self.gen)
        engine_failures = 0
        # Scan, generate what is missing, scan again (a chunk damaged on storage meanwhile is moved
        # aside and generated again) until every chunk is whole; then assemble.
        for _round in range(4):
            scan = self._scan(plan)
            self.worker.progress[job_id] = scan.done
            claim = {"status": "running", "node": self.settings.node, "error": "", "claimed_at": time.time(),
                     "epoch": epoch, "generation": self.gen} if _round == 0 else {}   # when it started here, once
            self.worker._bookkeep(self.store.update, job_id, segments_done=scan.done,
                                  segments_total=scan.total_shown(plan), duration_s=round(scan.seconds, 3), **claim)
            if claim:
                log.info("job %s: claimed at epoch %d, lease generation %d; %d chunks already on shared storage",
                         job_id, epoch, self.gen, scan.done, extra=fields(job=job_id, epoch=epoch, event="claimed"))
            if scan.complete:
                try:
                    final_duration = self._assemble(scan)
                    break
                except audio.UnreadablePart as exc:   # that chunk is regenerated, not charged to the job
                    if not rt.storage.answers():
                        raise StorageUnavailable(str(exc)) from exc
                    seg = next((f for f in rt.files.segments(job_id).values() if f.name == exc.part.name), None)
                    if seg is not None:   # (gone meanwhile: the next scan finds what is there)
                        self._quarantine({seg: f"it could not be read while joining the audio ({exc})"})
                    continue
            if scan.sentence:
                self._log(scan.sentence, event="resumed")
            before = self.generated
            try:
                self._generate(plan, scan)
            except EngineInputError as exc:
                return self.worker._fail(job_id, epoch, str(exc), self.gen)
            except EngineError as exc:
                # Transient (out of GPU memory, a crashed subprocess): free what it left, go on from the
                # last committed chunk; two failures without a chunk in between hand the job back.
                engine_failures = 1 if self.generated > before else engine_failures + 1
                log.warning("job %s: engine error (%d in a row): %s", job_id, engine_failures, exc)
                try:
                    rt.engine.recover()
                except Exception:
                    log.exception("engine recover() failed")
                self.check()   # fenced or lost the lease meanwhile: abandon, charge nothing
                if engine_failures >= 2:
                    raise EngineFault(f"the engine failed twice on one chunk: {exc}") from exc
            except _Rescan as again:
                log.warning("job %s: %s; scanning again", job_id, again)
            except _Ended as ended:
                return str(ended)
        else:
            raise Attempt("chunks keep turning up damaged on shared storage")
        for fmt in DOWNLOAD_FORMATS:   # each download a finished file nginx sends, there when the job is done
            try:
                rt.files.encode_download(job_id, fmt)
            except (StorageUnavailable, OSError, RuntimeError) as exc:
                log.warning("job %s: %s download not prepared (the first request makes it): %s", job_id, fmt, exc)
        self.worker._fence(self)
        rt.files.mark(job_id, "done", node=self.settings.node, epoch=epoch, generation=self.gen,
                      duration_s=final_duration, segments=scan.total)
        self.store.finish(job_id, "done", node=self.settings.node, segments_done=scan.total,
                        segments_total=scan.total, duration_s=round(final_duration, 3))
        self.worker.failed_in_a_row.clear()
        self.worker.progress.pop(job_id, None)
        if rt.engine.stateful:
            try:   # checkpoints served their purpose: the audio is whole
                rt.files.drop_chunk_files(job_id, kinds=("state", "ckpt"))
            except (StorageUnavailable, OSError) as exc:
                log.warning("job %s: checkpoints not removed: %s", job_id, exc)
        sentence = (f"finished {job_id}: {self.generated} chunks generated here, "
                    f"{scan.total - min(self.generated, scan.total)} found on shared storage")
        log.info("job %s: %s", job_id, sentence, extra=fields(job=job_id, epoch=epoch, event="done"))
        return sentence

    def _assemble(self, scan: Scan) -> float:
        """audio.wav from every chunk (fresh primary check first); its duration in seconds."""
        self.worker._fence(self)
        return self.rt.files.assemble(self.job_id, scan.total, self.rt.engine.sample_rate)

    def _scan(self, plan: JobPlan) -> Scan:
        """What is on storage, and where generation goes on from. Damaged chunks (audio that is not
        whole, a checkpoint that cannot be read, a chunk of another run) are moved aside first."""
        rt, job_id = self.rt, self.job_id
        stateful = rt.engine.stateful
        sound, damaged, seconds = rt.files.sound_segments(job_id, None if stateful else len(plan.parts),
                                                          rt.engine.sample_rate)
        bad = dict(damaged)
        usable: dict[int, ChunkInfo] = {}
        for n, seg in sorted(sound.items()):
            if not stateful:
                usable[n] = ChunkInfo(n, seg, n, 0, True, plan.fingerprints[n])
                continue
            try:   # the whole checkpoint is read: a damaged array is found here, not at resume
                meta, arrays = rt.files.read_checkpoint(job_id, seg)
                usable[n] = ChunkInfo(n, seg, int(meta["part"]), int(meta["index"]), bool(meta["final"]),
                                      str(meta["fingerprint"]), float(meta.get("seconds", 0)), arrays)
            except (ValueError, KeyError, TypeError) as exc:
                bad[seg] = f"its checkpoint is unusable: {exc}"
        if not stateful:
            self._quarantine(bad)
            missing = [p for p in range(len(plan.parts)) if p not in usable]
            return Scan(usable, seconds, not missing, len(plan.parts), missing, 0, None, "", len(usable))
        # Stateful: chunks count from 0 without a gap, part after part.
        p = i = n = 0
        sentence = ""
        while n in usable and p < len(plan.parts):
            c = usable[n]
            if (c.part, c.index) != (p, i) or c.fingerprint != plan.fingerprints[p]:
                why = ("it was made with another model or setting" if (c.part, c.index) == (p, i)
                       else f"it is chunk {c.index + 1} of part {c.part + 1}, not chunk {i + 1} of part {p + 1}")
                sentence = f"part {p + 1} goes on from chunk {n} afresh: the chunk found there is unusable ({why})"
                for m in [m for m in usable if m >= n]:
                    bad[usable.pop(m).seg] = "not part of this run"
                break
            n += 1
            p, i = (p + 1, 0) if c.final else (p, i + 1)
        self._quarantine(bad)
        done_seconds = sum(usable[m].seconds for m in range(n))
        if p == len(plan.parts):
            return Scan(usable, done_seconds, True, n, [], n, None, "", n)
        resume, start, index = None, n, i
        if i > 0:
            state = rt.files.chunk_state(job_id, n - 1, (p, i - 1, plan.fingerprints[p]),
                                         follows=usable[n - 1].seg.name if usable[n - 1].seg else None)
            if state is not None:
                try:
                    resume = rt.engine.resume_from([usable[m].arrays for m in range(n - i, n)], state)
                except Exception as exc:   # a checkpoint that reads but does not fit: start the part over
                    log.warning("job %s: cannot resume from chunk %d: %s", job_id, n - 1, exc)
                    state = None
            if resume is None:
                sentence = (f"part {p + 1} restarts from its beginning (chunk {n - i}): no usable state was "
                            f"kept after chunk {n - 1}; whole chunks already on storage are kept")
                start, index = n - i, 0
            else:
                sentence = sentence or f"resuming part {p + 1} after chunk {n - 1} from its checkpoint"
        return Scan(usable, done_seconds, False, n, list(range(p, len(plan.parts))), start, resume, sentence, n,
                    first_index=index)

    def _quarantine(self, bad: dict) -> None:
        if not bad:
            return
        for seg, why in bad.items():
            self.worker._fence(self)   # a write: fresh check of the job's lease before each one
            log.warning("job %s: chunk %s is unusable (%s); moved aside, generating it again",
                        self.job_id, seg.name, why)
            self.rt.files.quarantine_chunk(self.job_id, seg)

    def _generate(self, plan: JobPlan, scan: Scan) -> None:
        """Stream the parts still to do and commit their chunks (self.generated counts them)."""
        rt = self.rt
        n = scan.start
        for p in scan.parts_todo:
            self._between_chunks(n)
            resume = scan.resume if p == scan.parts_todo[0] else None
            index = scan.first_index if p == scan.parts_todo[0] else 0
            if not rt.engine.stateful:
                n, index = p, 0
            started = time.monotonic()
            # Closed on the way out, whatever ends it: an engine's stream holds the engine (its lock)
            # until it is closed, and a stream left to the garbage collector would hold it past the job.
            with closing(rt.engine.stream(plan.parts[p], plan.seed, plan.clips, resume)) as stream:
                first = rt.engine.stateful     # a stream's first chunk carries its prompt's prefill (and replay)
                while (chunk := self._next_chunk(stream, p, first)) is not None:
                    first = False
                    self.worker._bookkeep(self.store.count_attempt, self.job_id)
                    self._commit(plan, n, p, index, chunk, scan, time.monotonic() - started)
                    self.generated += 1
                    n += 1
                    index += 1
                    if not chunk.final:
                        self._between_chunks(n)
                    started = time.monotonic()

    def _next_chunk(self, stream, p: int, first: bool = False):
        """The engine's next chunk (None at the end of the part), within the chunk deadline (a call past
        it is a hang: the lease keeper lets the lease lapse, and a chunk that comes after all is not
        committed). Whose fault a failure is decides what it costs: text the engine cannot take is the
        job's input (EngineInputError: the job fails at once); anything unforeseen the engine raises is
        the engine's (EngineFault: counts toward the node's unfitness)."""
        self.deadline_s = self.worker.chunk_deadline() * (FIRST_CHUNK_ALLOWANCE if first else 1)
        self.hangs_seen = 0
        started = self.waiting_since = time.monotonic()
        try:
            chunk = next(stream, None)
            self.waiting_since = None
            self.check()           # past the deadline (the lease lapsed) or fenced meanwhile: not ours now
            if chunk is not None:
                self.worker.chunk_times.append(time.monotonic() - started)
            return chunk
        except (EngineInputError, UnicodeError) as exc:
            what = exc if isinstance(exc, EngineInputError) else f"{type(exc).__name__}: {exc}"
            raise EngineInputError(f"{'part' if self.rt.engine.stateful else 'segment'} {p + 1}: {what}") from exc
        except EngineError:
            raise
        except Abandon:
            raise
        except Exception as exc:
            raise EngineFault(f"the engine failed ({type(exc).__name__}: {exc})") from exc
        finally:
            self.waiting_since = None

    def _between_chunks(self, n: int) -> None:
        self.check()
        if self.worker.stopping.is_set():  # SIGTERM: the chunk in hand was committed; start no new one
            raise Abandon(f"the worker is shutting down; chunk {n} and later are left to resume")
        markers = self.rt.files.markers(self.job_id)
        ended = next((m for m in ("done", "failed") if m in markers), None)
        if ended:   # ended by another worker meanwhile (a raced grant)
            self.worker._bookkeep(self.store.finish, self.job_id, ended)
            raise _Ended(f"job {self.job_id} ended elsewhere ({ended}); stopped before chunk {n}")
        if "cancelled" in markers:
            self.store.finish(self.job_id, "cancelled", node=self.settings.node)
            log.info("job %s: cancelled; stopped before chunk %d", self.job_id, n,
                     extra=fields(job=self.job_id, epoch=self.epoch, event="cancelled"))
            raise _Ended(f"job {self.job_id} was cancelled; stopped before chunk {n}")

    def _commit(self, plan: JobPlan, n: int, p: int, index: int, chunk, scan: Scan,
                took: float) -> None:
        """Pace, then commit chunk n (fresh primary check right before); a whole chunk of this same run
        already there (a part regenerated after damage) is kept as it is."""
        rt, job_id, epoch = self.rt, self.job_id, self.epoch
        rate = rt.engine.sample_rate
        seconds = len(chunk.samples) / rate
        self.sleep(self.settings.engine_pace * seconds - took)
        self.worker.histogram.observe(took)
        self.worker.paces.append((max(took, self.settings.engine_pace * seconds), seconds))
        fingerprint = plan.fingerprints[p]
        there = scan.usable.get(n)
        same = bool(there and there.seg is not None
                    and (there.part, there.index, there.final, there.fingerprint) == (p, index, chunk.final, fingerprint))
        stateful = rt.engine.stateful
        state = None
        if stateful and chunk.state is not None:
            # The chunk file the state follows: a resume takes only a state that follows the winning chunk.
            follows = there.seg.name if same else segment_name(n, epoch, self.gen)
            state = encode_npz({"chunk": n, "part": p, "index": index, "fingerprint": fingerprint,
                                "follows": follows}, chunk.state)
        if same:
            # A whole chunk of this same run is there (a part regenerated after damage): keep it, but
            # leave this run's state beside it so that a failover now resumes here, not at the start.
            if state is not None:
                self.worker._fence(self)
                rt.files.commit_state(job_id, n, epoch, state, self.gen)
        else:
            wav = audio.encode_wav(chunk.samples, rate)
            checkpoint = None
            if stateful:
                meta = {"part": p, "index": index, "final": chunk.final, "fingerprint": fingerprint,
                        "seconds": seconds, "why": chunk.why, "node": self.settings.node, **chunk.meta}
                checkpoint = encode_npz(meta, chunk.checkpoint)
            self.worker._fence(self)            # fresh read of the job's lease (and the cluster state) right before commit
            if not rt.files.commit_chunk(job_id, n, epoch, wav, checkpoint, state, self.gen):
                raise _Rescan(f"chunk {n} of epoch {epoch}, generation {self.gen} is on storage already, not as "
                              f"this run made it")
            log.info("job %s: chunk %d committed (%.1f s of audio, epoch %d)", job_id, n, seconds, epoch,
                     extra=fields(job=job_id, epoch=epoch, event="chunk"))
        if stateful and n > 1:
            try:   # the two newest states are kept (the newest chunk may yet turn up damaged); never a newer holder's
                self.worker._fence(self)
                rt.files.drop_chunk_files(job_id, below=n - 1, upto=(epoch, self.gen))
            except (StorageUnavailable, OSError) as exc:
                log.warning("job %s: older states not removed: %s", job_id, exc)
        if chunk.final and chunk.why and stateful:
            log.info("job %s: part %d ended (%s) after chunk %d", job_id, p + 1, chunk.why, n)
        counted = n < scan.done if stateful else (n in scan.usable and same)
        scan.usable[n] = ChunkInfo(n, there.seg if same else None, p, index, chunk.final, fingerprint, seconds)
        if not counted:
            scan.seconds += seconds
        scan.done = max(scan.done, n + 1) if stateful else len(scan.usable)
        self.worker.progress[job_id] = scan.done
        self.worker.failed_in_a_row.clear()
        last = chunk.final and p == len(plan.parts) - 1
        self.worker._bookkeep(self.store.update, job_id, segments_done=scan.done, duration_s=round(scan.seconds, 3),
                              segments_total=scan.done if last and stateful else scan.total_shown(plan, scan.done))

    def _log(self, sentence: str, event: str) -> None:
        """A sentence in the job's log (shown as its note, kept on storage) and the worker's. A write
        to shared storage: only by the unfenced primary, like any other."""
        log.info("job %s: %s", self.job_id, sentence, extra=fields(job=self.job_id, epoch=self.epoch, event=event))
        try:
            self.worker._fence_job(self.job_id, self.epoch, self.gen)
            self.rt.files.append_log(self.job_id, self.settings.node, sentence)
            self.store.update(self.job_id, note=sentence)
        except (Fenced, Superseded, StorageUnavailable, OSError, redis.RedisError) as exc:
            log.warning("job %s: log not written: %s", self.job_id, exc)
