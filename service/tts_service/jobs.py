"""Job and session state in Redis (a cache of shared storage, shared by every process of the pair).

Keys (prefix tts:):
    session:<sid>        exists while the session lives (sid = sha256 of the cookie token)
    sessjobs:<sid>       sorted set of the session's job ids by creation time
    job:<id>             hash: the job as the API shows it, plus session and timestamps
    queue                list of job ids waiting for a worker
    active               set of job ids not finished (queued or running): the worker's scan list
    lease:<id>           the running worker's lease: JSON {node, epoch, token}, expires by itself
                         (the fencing token is the lease's generation on shared storage: jobfiles.py)
    workers              hash: worker (host) -> JSON {ts, state, job, pace}, each worker's last word
    served:<sid>         when a worker last started one of the session's jobs (a day): the queue's turn
    stats                hash of monotonic counters (submitted, done, failed, cancelled, ...)
    rebuilt              set by each rebuild from shared storage: gone means Redis lost its data
Nothing here is the only copy of anything: shared storage (jobfiles.py) is the truth.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time

import redis

from .statuses import FINAL

PREFIX = "tts:"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Take the lease if it is free, if its holder leased it in an older epoch and ARGV[5] says a promotion
# voids those (one worker at a time, the primary's: the replicated lease of a dead primary survives the
# promotion with its expiry, and skew between the nodes' clocks can stretch it; in a pool the holder may
# be a live worker carrying its job on through the failover, and the lease's expiry decides), or if it
# is this node's own (one worker per node, which asks only while it runs no job: a lease in its name is
# a dead incarnation's).
_ACQUIRE = """
local current = redis.call('get', KEYS[1])
if current then
  local ok, held = pcall(cjson.decode, current)
  if ok and type(held) == 'table' and held['node'] ~= ARGV[4]
     and (ARGV[5] ~= '1' or (tonumber(held['epoch']) and tonumber(held['epoch']) >= tonumber(ARGV[2]))) then
    return 0
  end
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
# Renew and re-tag: the holder, carrying its job on through a failover, records the new epoch (a lease
# of an older epoch is taken by the first worker that asks, as a dead primary's would be).
_RETAG = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_UPDATE = """
if redis.call('exists', KEYS[1]) == 1 then
  return redis.call('hset', KEYS[1], unpack(ARGV))
end
return -1
"""
_COUNT = """
if redis.call('exists', KEYS[1]) == 1 then
  return redis.call('hincrby', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def k(*parts: str) -> str:
    return PREFIX + ":".join(parts)


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                health_check_interval=10, decode_responses=True)


class Sessions:
    def __init__(self, r: redis.Redis, ttl_s: int):
        self.r = r
        self.ttl_s = ttl_s

    def lookup(self, token: str | None) -> str | None:
        """The session id for a cookie token, or None if it is unknown (expired, forged, absent)."""
        if not token or len(token) > 128:
            return None
        sid = session_id(token)
        if self.r.exists(k("session", sid)):
            return sid
        if not self.r.exists(k("rebuilt")):
            # Redis lost its data and the rebuild from shared storage has not run yet (JobStore.
            # lost_its_data): the cookie's session is one the rebuild is about to bring back, and a new
            # one in its place would replace the caller's cookie, cutting its owner off from every job
            # it had. Kept (the id is the hash of a secret only its holder has), without writing
            # anything: a read leaves no state, and a write path makes the session (api._start_session).
            return sid
        return None

    def create(self, token: str | None = None) -> tuple[str, str]:
        """A new session (or the one a keyed submit's token names: created if Redis has lost it)."""
        token = token or secrets.token_urlsafe(32)
        sid = session_id(token)
        self.r.set(k("session", sid), str(time.time()), ex=self.ttl_s, nx=True)
        return token, sid

    def touch(self, sid: str) -> None:
        self.r.expire(k("session", sid), self.ttl_s)

    def ensure(self, sid: str) -> None:
        """Recreate a session that Redis lost (used when rebuilding from shared storage)."""
        self.r.set(k("session", sid), str(time.time()), ex=self.ttl_s, nx=True)


def public_job(h: dict) -> dict:
    """The job as docs/contracts.md shows it."""
    return {
        "id": h.get("id"),
        "status": h.get("status", "queued"),
        "segments_done": int(h.get("segments_done", 0) or 0),
        "segments_total": int(h.get("segments_total", 0) or 0),
        "duration_s": round(float(h.get("duration_s", 0) or 0), 3),
        "error": h.get("error") or None,
        "node": h.get("node") or None,
        "created_at": float(h.get("created_at", 0) or 0),
        "duration_estimate_s": round(float(h.get("duration_estimate_s", 0) or 0), 1),
        "seed": int(h.get("seed", 0) or 0),
        "note": h.get("note") or None,
        "title": h.get("title") or None,
    }


def claim_order(jobs: dict[str, dict], served: dict[str, float] | None = None) -> list[str]:
    """The order workers claim unfinished jobs in: interrupted jobs first (claimed before, or with work
    done: a failure must not send them to the back), oldest first; then queued jobs, sessions in turn:
    a session's k-th waiting job goes after every other session's (k-1)-th, counting the jobs it has
    running, so one session's burst does not hold every worker. Among equals, the session a worker
    served least recently (`served`: session -> when one of its jobs last started) goes first, then the
    oldest job."""
    served = served or {}
    running = {}
    for job in jobs.values():
        if job["interrupted"]:
            running[job["session"]] = running.get(job["session"], 0) + 1
    first, waiting, seen = [], [], {}
    for job_id, job in sorted(jobs.items(), key=lambda item: (item[1]["created_at"], item[0])):
        if job["interrupted"]:
            first.append((job["created_at"], job_id))
            continue
        rank = running.get(job["session"], 0) + seen.get(job["session"], 0)
        seen[job["session"]] = seen.get(job["session"], 0) + 1
        waiting.append((rank, served.get(job["session"], 0.0), job["created_at"], job_id))
    return [job_id for *_, job_id in sorted(first)] + [job_id for *_, job_id in sorted(waiting)]


class JobStore:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._acquire = r.register_script(_ACQUIRE)
        self._update = r.register_script(_UPDATE)
        self._count = r.register_script(_COUNT)
        self._retag = r.register_script(_RETAG)

    # ---- records ----

    def lost_its_data(self) -> bool:
        """Whether Redis was emptied since the last rebuild (restarted without its files, flushed): the
        `rebuilt` key every rebuild leaves is gone. (A submit meanwhile recreates other keys, the
        counters among them, so nothing else tells; after an upgrade the first cycle rebuilds once.)"""
        return not self.r.exists(k("rebuilt"))

    def mark_rebuilt(self) -> None:
        self.r.set(k("rebuilt"), str(time.time()))

    def add(self, job_id: str, sid: str, segments_total: int, created_at: float, enqueue: bool = True,
            seed: int = 0, duration_estimate_s: float = 0.0, client: str = "", title: str = "") -> None:
        pipe = self.r.pipeline()
        pipe.hset(k("job", job_id), mapping={
            "id": job_id, "session": sid, "status": "queued", "segments_done": 0,
            "segments_total": segments_total, "duration_s": 0, "error": "", "node": "",
            "created_at": created_at, "updated_at": time.time(), "seed": seed,
            "duration_estimate_s": duration_estimate_s, "client": client, "title": title,
        })
        pipe.zadd(k("sessjobs", sid), {job_id: created_at})
        pipe.sadd(k("active"), job_id)
        if enqueue:
            pipe.lpush(k("queue"), job_id)
        pipe.execute()

    def get(self, job_id: str) -> dict | None:
        h = self.r.hgetall(k("job", job_id))
        return h or None

    def update(self, job_id: str, **fields: object) -> None:
        """Change fields of a job Redis knows; a job it lost stays lost (no partial record without its
        session, which the API would answer 404 for) until reconcile recreates it whole from storage."""
        fields["updated_at"] = time.time()
        args = [str(x) for key, v in fields.items() for x in (key, "" if v is None else v)]
        self._update(keys=[k("job", job_id)], args=args)

    def finish(self, job_id: str, status: str, **fields: object) -> None:
        """Record a final status (done/failed/cancelled), once: counters move only on the first call."""
        pipe = self.r.pipeline()
        pipe.hget(k("job", job_id), "status")
        previous = pipe.execute()[0]
        fields["status"] = status
        self.update(job_id, **fields)
        pipe = self.r.pipeline()
        pipe.srem(k("active"), job_id)
        pipe.lrem(k("queue"), 0, job_id)
        if previous != status:
            pipe.hincrby(k("stats"), status, 1)
        pipe.execute()

    def session_jobs(self, sid: str, limit: int = 200) -> list[dict]:
        ids = self.r.zrevrange(k("sessjobs", sid), 0, limit - 1)
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hgetall(k("job", job_id))
        return [h for h in pipe.execute() if h]

    def count_attempt(self, job_id: str) -> None:
        """One more synthesis of a segment of this job (attempts - segments = segments recomputed)."""
        self._count(keys=[k("job", job_id)], args=["attempts", 1])

    def claimable(self) -> list[str]:
        """Active jobs not finished, in the order a worker tries to lease them (claim_order)."""
        return self.queue_view()[0]

    def activate(self, job_id: str) -> None:
        """Put a job (back) on the worker's scan list."""
        self.r.sadd(k("active"), job_id)

    def active_ids(self) -> list[str]:
        return sorted(self.r.smembers(k("active")))

    def queue_view(self) -> tuple[list[str], dict[str, dict]]:
        """Every unfinished job in the order a worker claims them (claim_order: interrupted jobs first,
        then sessions in turn; the `queue` list only wakes workers), with its status, audio estimate,
        audio done (seconds), session and node: what the claims and the queue's positions and estimates
        are made of. Two round trips (the jobs, then their sessions' turns)."""
        ids = self.active_ids()
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hmget(k("job", job_id), "status", "duration_estimate_s", "duration_s", "created_at",
                       "segments_done", "claimed_at", "session", "node")
        jobs = {}
        for job_id, (status, estimate, done, created, segments, claimed, sid, node) in zip(ids, pipe.execute(), strict=True):
            if status in FINAL:
                continue
            jobs[job_id] = {"status": status or "queued", "estimate_s": float(estimate or 0),
                            "done_s": float(done or 0), "created_at": float(created or 0), "session": sid or "",
                            "node": node or "",
                            "interrupted": status == "running" or int(segments or 0) > 0 or bool(claimed)}
        sessions = sorted({job["session"] for job in jobs.values() if job["session"]})
        served = (dict(zip(sessions, self.r.mget([k("served", sid) for sid in sessions]), strict=True))
                  if sessions else {})
        return claim_order(jobs, {sid: float(at) for sid, at in served.items() if at}), jobs

    def mark_served(self, sid: str) -> None:
        """A worker started one of the session's jobs now (the queue's turn moves on)."""
        if sid:
            self.r.set(k("served", sid), str(time.time()), ex=86400)

    def queue_depth(self) -> int:
        return int(self.r.llen(k("queue")))

    def pop_queue(self, timeout_s: float) -> str | None:
        item = self.r.brpop([k("queue")], timeout=max(1, int(timeout_s)))
        return item[1] if item else None

    def waiting(self, sid: str, client: str) -> dict[str, tuple[int, float]]:
        """Jobs not finished (queued or running) and their estimated seconds of audio, for the session
        and for the client address: what the queue caps count."""
        ids = self.active_ids()
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hmget(k("job", job_id), "session", "client", "status", "duration_estimate_s")
        found = {"session": (0, 0.0), "client": (0, 0.0)}
        for session, addr, status, estimate in pipe.execute():
            if status in FINAL:
                continue
            for scope, match in (("session", session == sid), ("client", bool(client) and addr == client)):
                if match:
                    jobs, seconds = found[scope]
                    found[scope] = (jobs + 1, seconds + float(estimate or 0))
        return found

    def count_submitted(self) -> None:
        self.r.hincrby(k("stats"), "submitted", 1)

    def stats(self) -> dict[str, int]:
        return {key: int(v) for key, v in self.r.hgetall(k("stats")).items()}

    def status_counts(self) -> dict[str, int]:
        ids = self.active_ids()
        counts = {s: 0 for s in ("queued", "running")}
        if ids:
            pipe = self.r.pipeline()
            for job_id in ids:
                pipe.hget(k("job", job_id), "status")
            for status in pipe.execute():
                if status in counts:
                    counts[status] += 1
        return counts

    # ---- the workers ----

    def now(self) -> float:
        """Redis's clock: every worker's word is timed by it and aged by it (no two hosts' clocks meet)."""
        seconds, micro = self.r.time()
        return seconds + micro / 1e6

    def register_worker(self, worker: str, info: dict) -> None:
        self.r.hset(k("workers"), worker, json.dumps({**info, "ts": self.now()}))

    def forget_worker(self, worker: str) -> None:
        self.r.hdel(k("workers"), worker)

    def workers(self, forget_s: float = 24 * 3600) -> dict[str, dict]:
        """Each worker's last word (younger than forget_s) with its age in seconds, `age_s`."""
        now, out = self.now(), {}
        for worker, raw in self.r.hgetall(k("workers")).items():
            try:
                info = json.loads(raw)
                age = now - float(info["ts"])
            except (ValueError, KeyError, TypeError):
                continue
            if age < forget_s:
                out[worker] = {**info, "age_s": max(0.0, age)}
        return out

    # ---- leases ----

    def acquire_lease(self, job_id: str, node: str, epoch: int, ttl_s: float, void_older: bool = True) -> str | None:
        """The lease for (node, epoch) if the job's lease is free, was taken in an older epoch (unless
        void_older is False: a pool), or is a dead incarnation's of this same node."""
        token = json.dumps({"node": node, "epoch": epoch, "token": secrets.token_hex(8)})
        ok = self._acquire(keys=[k("lease", job_id)], args=[token, epoch, int(ttl_s * 1000), node,
                                                            "1" if void_older else "0"])
        return token if ok else None

    def renew_lease(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[k("lease", job_id)], args=[token, int(ttl_s * 1000)]))

    def retag_lease(self, job_id: str, token: str, epoch: int, ttl_s: float) -> str | None:
        """The lease renewed under a new epoch (its holder carries the job on through a failover); None
        if it is not the holder's any more."""
        held = json.loads(token)
        new = json.dumps({**held, "epoch": epoch})
        return new if self._retag(keys=[k("lease", job_id)], args=[token, new, int(ttl_s * 1000)]) else None

    def release_lease(self, job_id: str, token: str) -> bool:
        return bool(self._release(keys=[k("lease", job_id)], args=[token]))

    def lease_holder(self, job_id: str) -> dict | None:
        raw = self.r.get(k("lease", job_id))
        return json.loads(raw) if raw else None

    # ---- rate limits ----

    def hit_rate_limit(self, scope: str, key: str, limit: int, window_s: int = 60) -> int:
        """Count one request; returns 0 if allowed, else seconds until the window resets."""
        if limit <= 0:
            return 0
        window = int(time.time() // window_s)
        name = k("ratelimit", scope, hashlib.sha256(key.encode()).hexdigest()[:32], str(window))
        pipe = self.r.pipeline()
        pipe.incr(name)
        pipe.expire(name, window_s * 2)
        count = pipe.execute()[0]
        if count > limit:
            return int(window_s - time.time() % window_s) + 1
        return 0
