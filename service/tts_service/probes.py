"""Health endpoints for probes and proxies: /health, /ready, /primary, /standby, /metrics.

/ready answers "is this node fit for its role?" (docs/contracts.md): 200 for a healthy primary and for a
healthy standby, 503 otherwise, always with the JSON that says why.
"""
from __future__ import annotations

import socket
import subprocess
import time

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import __version__, clock, heartbeat
from .jobfiles import STORAGE_FORMAT
from .node import ask_ready
from .runtime import Runtime
from .statuses import FINAL
from .storage import StorageUnavailable

bp = Blueprint("probes", __name__)


def _rt() -> Runtime:
    return current_app.extensions["tts"]


def redis_fits_role(info: dict, role: str, topology: str, require_link: bool = True) -> tuple[bool, str]:
    """In a pair, the primary's Redis must be a master and the standby's a replica with a live link.
    For promotion (/standby) the link may be down: the primary being gone is why we promote."""
    redis_role = info.get("role")
    if role == "primary" and redis_role != "master":
        return False, "local Redis is a replica, but this node is the primary"
    if topology == "pair" and role == "standby":
        if redis_role != "slave":
            return False, "local Redis is a master, but this node is the standby (rejoin it)"
        if require_link and info.get("master_link_status") != "up":
            return False, f"local Redis has no live link to the primary's ({info.get('master_host')})"
    return True, "ok"


def redis_refuses_writes(rt: Runtime) -> str | None:
    """Why the local Redis master refuses writes (full at maxmemory with noeviction, a failed save with
    stop-writes-on-bgsave-error), or None: one small write tells, whatever the cause. A node whose
    Redis takes no writes could accept jobs but never run them: it says so instead."""
    try:
        rt.redis.set(f"tts:probe:{rt.settings.node}", "1", px=60000)
    except redis.ResponseError as exc:
        return f"local Redis refuses writes: {exc}"
    return None


def users_listener_down(address: str, timeout: float = 0.3) -> str | None:
    """Why the users' listener (tts-api) takes no connections, or None. A TCP connect, not a request:
    the kernel accepts while the process listens, however busy its threads are with users, so a flood
    of users can never make this node look down."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return f"the users' listener (tts-api at {address}) takes no connections: {exc}"
    return None


def readiness(rt: Runtime, for_promotion: bool = False) -> tuple[bool, dict]:
    settings = rt.settings
    stall = settings.storage_stall_s
    asked = time.monotonic()
    rt.space.poke()                      # beside the renewal: /ready waits for both at once
    belief = rt.node.belief()
    space = rt.space.ask(max(0.0, rt.node.wait_s - (time.monotonic() - asked)))   # one wait for both
    # Since the NAS last answered this process anything (a renewal or a free-space read).
    heard_s = min(belief.silent_s, space.silent_s(time.monotonic()))
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    checks["state"] = belief.fresh and belief.state is not None and belief.error is None
    if not checks["state"]:
        # Unfit as soon as a renewal fails, not only once the belief it still holds ages out (the
        # fencing itself keeps using the belief's age: that bound is what makes it safe).
        reasons.append(belief.why_fenced() if not belief.fresh or belief.state is None
                       else f"the last renewal of this node's mark failed: {belief.error}")
    elif min(belief.pending_s, heard_s) > stall:
        # ... or stops coming back, while the mount answers nothing else either: a NAS cut off from this
        # node. One that comes back late (while other calls are answered) is slow, not gone.
        checks["state"] = False
        reasons.append(f"shared storage has not answered this node's renewal for {belief.pending_s:.1f} s "
                       f"(limit {stall:g} s)")
    elif not belief.member:
        reasons.append(f"{settings.node} is not a member of the cluster ({belief.state.primary}, "
                       f"{belief.state.standby})")
        checks["state"] = False

    checks["storage"] = False
    if min(space.running_s, heard_s) > stall:
        reasons.append(f"shared storage has not said how much space is free for {space.running_s:.1f} s "
                       f"(limit {stall:g} s)")
    elif isinstance(space.error, (StorageUnavailable, OSError)):
        reasons.append(f"shared storage is unavailable: {space.error}")
    elif space.error is not None:
        reasons.append(f"the free-space read of shared storage failed: {type(space.error).__name__}: {space.error}")
    elif not space.answered:
        reasons.append("shared storage has not said how much space is free yet")
    elif space.value[0] < settings.storage_min_free_bytes:
        reasons.append(f"shared storage has only {space.value[0]} bytes free")
    else:
        checks["storage"] = True

    try:
        info = rt.redis.info("replication")
        ok, why = redis_fits_role(info, belief.role, settings.redis_topology, require_link=not for_promotion)
        if ok and info.get("role") == "master":
            why = redis_refuses_writes(rt)
            ok = why is None
        checks["redis"] = ok
        if not ok:
            reasons.append(why)
    except redis.RedisError as exc:
        checks["redis"] = False
        reasons.append(f"Redis is unreachable: {exc}")

    if settings.api_address:
        why = users_listener_down(settings.api_address)
        checks["api"] = why is None
        if why:
            reasons.append(why)

    hb, why = heartbeat.read(heartbeat.heartbeat_path(settings.run_dir, settings.node))
    # A stopping worker (SIGTERM: it finishes its chunk and hands its job back) keeps a primary serving:
    # a planned switchover promotes the standby right after, and jobs accepted meanwhile wait on
    # storage. A standby whose worker stops is not fit for promotion. A worker that stays stopped is
    # seen anyway once its heartbeat is stale.
    checks["worker"] = hb is not None and (belief.role == "primary" or not hb.get("stopping"))
    if hb is None:
        reasons.append(why)
    checks["engine"] = bool(hb and hb.get("engine_loaded"))
    if hb is not None and not checks["engine"]:
        reasons.append(f"the {settings.engine} engine is not loaded: {hb.get('engine_error') or 'loading'}")

    ready = all(checks.values())
    if ready:
        reason = (f"healthy primary of epoch {belief.epoch}" if belief.role == "primary"
                  else f"healthy standby following {belief.state.primary} in epoch {belief.epoch}")
    else:
        reason = "; ".join(reasons)
    body = {
        "node": settings.node, "role": belief.role, "epoch": belief.epoch, "fenced": belief.fenced,
        "checks": checks, "reason": reason, "engine": settings.engine,
        "engine_pace": settings.engine_pace, "state_age_s": round(belief.age_s, 3) if belief.fresh else None,
        "storage_waiting_s": round(max(belief.pending_s, space.running_s), 3),
        "version": __version__, "storage_format": STORAGE_FORMAT,
    }
    return ready, body


@bp.get("/health")
def health():
    return jsonify({"status": "ok", "node": _rt().settings.node})


@bp.get("/ready")
def ready():
    ok, body = readiness(_rt())
    return jsonify(body), 200 if ok else 503


@bp.get("/peer/<node>/ready")
def peer_ready(node: str):
    """Witness probe: this node asks a peer's /ready itself (the receiver asks the standby about the
    primary, over a path that avoids the monitor's). Only configured peers can be named."""
    url = _rt().settings.peer_urls().get(node)
    if url is None:
        return jsonify({"error": f"{node[:64]!r} is not a configured peer"}), 404
    status, body, error = ask_ready(url, timeout=_rt().settings.witness_timeout_s)
    if error is not None:
        return jsonify({"node": node, "ready": False, "status": None, "error": error})
    return jsonify({"node": node, "ready": status == 200, "status": status,
                    "checks": body.get("checks"), "reason": body.get("reason")})


@bp.get("/primary")
def primary():
    ok, body = readiness(_rt())
    ok = ok and body["role"] == "primary" and not body["fenced"]
    return jsonify(body), 200 if ok else 503


@bp.get("/standby")
def standby():
    """A healthy standby, fit to be promoted (its replica link may be down: the primary may be gone)."""
    ok, body = readiness(_rt(), for_promotion=True)
    ok = ok and body["role"] == "standby"
    return jsonify(body), 200 if ok else 503


def holds_address(address: str) -> bool | None:
    """Whether `address` is on one of this host's interfaces (`ip -o addr`), or None if that cannot be
    told: the VIP's holders, counted by the TTSVipNotSingle alert."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=2, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return any(f" {address}/" in line for line in out.stdout.splitlines())


class _Collector:
    """Collects at scrape time from Redis, the worker heartbeat and the node's belief."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def collect(self):
        rt = self.rt
        node = rt.settings.node
        belief = rt.node.belief()
        g = GaugeMetricFamily("tts_node_is_primary", "1 if this node believes it is the unfenced primary",
                              labels=["node"])
        g.add_metric([node], 0.0 if belief.fenced else 1.0)
        yield g
        g = GaugeMetricFamily("tts_cluster_epoch", "Cluster epoch this node last read", labels=["node"])
        g.add_metric([node], belief.epoch)
        yield g
        held = holds_address(rt.settings.vip) if rt.settings.vip else None
        if held is not None:
            g = GaugeMetricFamily("tts_vip_held", "1 if the entry VIP is on one of this host's interfaces",
                                  labels=["node"])
            g.add_metric([node], 1.0 if held else 0.0)
            yield g
        try:
            counts = rt.store.status_counts()
            depth = rt.store.queue_depth()
            stats = rt.store.stats()
        except redis.RedisError:
            counts, depth, stats = None, None, None
        if counts is not None:
            g = GaugeMetricFamily("tts_jobs", "Jobs not yet finished, by status", labels=["status"])
            for status, n in counts.items():
                g.add_metric([status], n)
            yield g
            c = CounterMetricFamily("tts_jobs_finished", "Jobs finished, by final status", labels=["status"])
            for status in FINAL:
                c.add_metric([status], stats.get(status, 0))
            yield c
            c = CounterMetricFamily("tts_jobs_submitted", "Jobs accepted")
            c.add_metric([], stats.get("submitted", 0))
            yield c
            g = GaugeMetricFamily("tts_queue_depth", "Job ids waiting in the queue")
            g.add_metric([], depth)
            yield g
        if rt.settings.worker_pool:   # TTSWorkerDown: each pool worker's last word in the jobs' Redis
            try:
                workers = rt.store.workers(rt.settings.worker_forget_s)
            except redis.RedisError:
                workers = None
            if workers is not None:
                g = GaugeMetricFamily("tts_worker_last_seen_seconds", "Seconds since each pool worker last "
                                      "spoke in Redis (a drained worker is gone from it)", labels=["worker"])
                for worker, info in sorted(workers.items()):
                    g.add_metric([worker], round(info["age_s"], 1))
                yield g
                g = GaugeMetricFamily("tts_workers_taking_jobs", "Pool workers that spoke in the last 10 s "
                                      "and take jobs")
                g.add_metric([], sum(1 for info in workers.values() if info.get("takes_jobs") and info["age_s"] < 10))
                yield g
        try:
            info = rt.redis.info("replication")
        except redis.RedisError:
            info = None
        try:   # TTSRedisMemoryHigh: long before noeviction refuses every write
            memory = rt.redis.info("memory")
            for name, field, what in (("tts_redis_used_memory_bytes", "used_memory", "Memory the local Redis uses"),
                                      ("tts_redis_maxmemory_bytes", "maxmemory", "The local Redis's maxmemory (0: none)")):
                g = GaugeMetricFamily(name, what)
                g.add_metric([], float(memory.get(field, 0)))
                yield g
        except redis.RedisError:
            pass
        if info is not None:
            g = GaugeMetricFamily("tts_redis_is_master", "1 if the local Redis is a master")
            g.add_metric([], 1.0 if info.get("role") == "master" else 0.0)
            yield g
            if info.get("role") == "master":
                g = GaugeMetricFamily("tts_redis_connected_replicas", "Replicas connected to the local Redis")
                g.add_metric([], int(info.get("connected_slaves", 0)))
                yield g
                lag = max((int(info["master_repl_offset"]) - int(v.get("offset", 0))
                           for k_, v in info.items() if k_.startswith("slave") and isinstance(v, dict)),
                          default=0)
                g = GaugeMetricFamily("tts_redis_replication_lag_bytes", "Replication offset behind, worst replica")
                g.add_metric([], lag)
                yield g
            else:
                g = GaugeMetricFamily("tts_redis_master_link_up", "1 if the local replica's link to its master is up")
                g.add_metric([], 1.0 if info.get("master_link_status") == "up" else 0.0)
                yield g
        hb, _ = heartbeat.read(heartbeat.heartbeat_path(rt.settings.run_dir, node))
        g = GaugeMetricFamily("tts_engine_loaded", "1 if the worker has its engine loaded", labels=["engine"])
        g.add_metric([rt.settings.engine], 1.0 if hb and hb.get("engine_loaded") else 0.0)
        yield g
        g = GaugeMetricFamily("tts_worker_up", "1 if the worker heartbeat is fresh")
        g.add_metric([], 1.0 if hb else 0.0)
        yield g
        yield from clock.metric_families(node)   # TTSClockNotSynchronised
        g = GaugeMetricFamily("tts_engine_pace", "Seconds of wall time per second of audio (0 = off)")
        g.add_metric([], rt.settings.engine_pace)
        yield g
        # TTSStorageLow: shared storage's free space (absent while the mount does not answer)
        space = rt.space.ask(rt.node.wait_s)
        g = GaugeMetricFamily("tts_storage_wait_seconds", "How long shared storage took to answer its last "
                              "free-space read, or has been taking for the one in flight", labels=["node"])
        g.add_metric([node], max(space.took_s, space.running_s, belief.pending_s))
        yield g
        if space.answered and space.error is None and space.running_s <= rt.settings.storage_stall_s:
            free, size = space.value
            g = GaugeMetricFamily("tts_storage_free_bytes", "Free space on shared storage")
            g.add_metric([], float(free))
            yield g
            g = GaugeMetricFamily("tts_storage_size_bytes", "Size of shared storage")
            g.add_metric([], float(size))
            yield g
        if hb:
            h = hb["synthesis_seconds"]
            cumulative, buckets = 0, []
            # The heartbeat writes both lists from one histogram: as long as each other.
            for bound, count in zip(h["buckets"], h["counts"], strict=True):
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", h["count"]))
            hist = HistogramMetricFamily("tts_segment_synthesis_seconds",
                                         "Wall time to synthesise one segment (pacing included)")
            hist.add_metric([], buckets, sum_value=h["sum"])
            yield hist
            if hb.get("gpu_utilisation") is not None:
                g = GaugeMetricFamily("tts_gpu_utilisation_percent", "GPU 0 utilisation")
                g.add_metric([], hb["gpu_utilisation"])
                yield g


@bp.get("/metrics")
def metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(_rt()))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
