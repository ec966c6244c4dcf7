"""GET /metrics: what Prometheus scrapes from a node, collected at scrape time from the node's belief,
Redis, the worker's heartbeat, the clock and shared storage. The alert rules read these names
(roles/monitoring/templates/tts-rules.yml.j2); the probes (/ready, /primary, /standby) are probes.py's.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from . import clock, heartbeat
from .runtime import Runtime
from .statuses import FINAL

bp = Blueprint("metrics", __name__)


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """A gauge with one sample."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauges(name: str, documentation: str, label: str, samples: dict[str, float]) -> GaugeMetricFamily:
    """A gauge with one sample per value of `label`."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in samples.items():
        family.add_metric([key], value)
    return family


def counters(name: str, documentation: str, samples: dict[str, float], label: str | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label] if label else None)
    for key, value in samples.items():
        family.add_metric([key] if label else [], value)
    return family


def holds_address(address: str) -> bool | None:
    """Whether `address` is on one of this host's interfaces (`ip -o addr`), or None if that cannot be
    told: the VIP's holders, counted by the TTSVipNotSingle alert."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=2, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return any(f" {address}/" in line for line in out.stdout.splitlines())


class NodeCollector:
    """Collects at scrape time; each part below is one source, and a source that does not answer
    leaves its series out (the alerts on absent series see it)."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        # One read of the belief and of the heartbeat per scrape: the storage wait below is the belief's
        # renewal in flight as the scrape began.
        self._belief = self.rt.node.belief()
        self._hb = self._heartbeat()
        yield from self.belief()
        yield from self.jobs()
        yield from self.pool()
        yield from self.redis()
        yield from self.worker()
        yield from self.storage()
        yield from self.synthesis()

    def belief(self) -> Iterator[Metric]:
        """The node's belief (TTSNodeNotInRole) and whether it holds the VIP (TTSVipNotSingle)."""
        rt, node, belief = self.rt, self.rt.settings.node, self._belief
        yield gauge("tts_node_is_primary", "1 if this node believes it is the unfenced primary",
                    0.0 if belief.fenced else 1.0, {"node": node})
        yield gauge("tts_cluster_epoch", "Cluster epoch this node last read", belief.epoch, {"node": node})
        held = holds_address(rt.settings.vip) if rt.settings.vip else None
        if held is not None:
            yield gauge("tts_vip_held", "1 if the entry VIP is on one of this host's interfaces",
                        1.0 if held else 0.0, {"node": node})

    def jobs(self) -> Iterator[Metric]:
        store = self.rt.store
        try:
            counts, depth, stats = store.status_counts(), store.queue_depth(), store.stats()
        except redis.RedisError:
            return
        yield gauges("tts_jobs", "Jobs not yet finished, by status", "status", counts)
        yield counters("tts_jobs_finished", "Jobs finished, by final status",
                       {status: stats.get(status, 0) for status in FINAL}, label="status")
        yield counters("tts_jobs_submitted", "Jobs accepted", {"": stats.get("submitted", 0)})
        yield gauge("tts_queue_depth", "Job ids waiting in the queue", depth)

    def pool(self) -> Iterator[Metric]:
        """TTSWorkerDown: each pool worker's last word in the jobs' Redis."""
        settings = self.rt.settings
        if not settings.worker_pool:
            return
        try:
            workers = self.rt.store.workers(settings.worker_forget_s)
        except redis.RedisError:
            return
        yield gauges("tts_worker_last_seen_seconds", "Seconds since each pool worker last spoke in Redis (a "
                     "drained worker is gone from it)", "worker",
                     {worker: round(info["age_s"], 1) for worker, info in sorted(workers.items())})
        yield gauge("tts_workers_taking_jobs", "Pool workers that spoke in the last 10 s and take jobs",
                    sum(1 for info in workers.values() if info.get("takes_jobs") and info["age_s"] < 10))

    def redis(self) -> Iterator[Metric]:
        """The local Redis: memory (TTSRedisMemoryHigh, long before noeviction refuses every write),
        role and replication (TTSReplicationLag)."""
        client = self.rt.redis
        try:
            info = client.info("replication")
        except redis.RedisError:
            info = None
        try:
            memory = client.info("memory")
        except redis.RedisError:
            memory = None
        if memory is not None:
            yield gauge("tts_redis_used_memory_bytes", "Memory the local Redis uses", float(memory.get("used_memory", 0)))
            yield gauge("tts_redis_maxmemory_bytes", "The local Redis's maxmemory (0: none)",
                        float(memory.get("maxmemory", 0)))
        if info is None:
            return
        master = info.get("role") == "master"
        yield gauge("tts_redis_is_master", "1 if the local Redis is a master", 1.0 if master else 0.0)
        if master:
            yield gauge("tts_redis_connected_replicas", "Replicas connected to the local Redis",
                        int(info.get("connected_slaves", 0)))
            lag = max((int(info["master_repl_offset"]) - int(v.get("offset", 0))
                       for key, v in info.items() if key.startswith("slave") and isinstance(v, dict)), default=0)
            yield gauge("tts_redis_replication_lag_bytes", "Replication offset behind, worst replica", lag)
        else:
            yield gauge("tts_redis_master_link_up", "1 if the local replica's link to its master is up",
                        1.0 if info.get("master_link_status") == "up" else 0.0)

    def worker(self) -> Iterator[Metric]:
        """The worker's heartbeat (engine loaded, alive), the clock (TTSClockNotSynchronised), the pacing."""
        settings, hb = self.rt.settings, self._hb
        yield gauge("tts_engine_loaded", "1 if the worker has its engine loaded",
                    1.0 if hb and hb.get("engine_loaded") else 0.0, {"engine": settings.engine})
        yield gauge("tts_worker_up", "1 if the worker heartbeat is fresh", 1.0 if hb else 0.0)
        yield from clock.metric_families(settings.node)
        yield gauge("tts_engine_pace", "Seconds of wall time per second of audio (0 = off)", settings.engine_pace)

    def storage(self) -> Iterator[Metric]:
        """TTSStorageLow: shared storage's free space (absent while the mount does not answer)."""
        rt = self.rt
        space = rt.space.ask(rt.node.wait_s)
        yield gauge("tts_storage_wait_seconds", "How long shared storage took to answer its last free-space read, "
                    "or has been taking for the one in flight",
                    max(space.took_s, space.running_s, self._belief.pending_s), {"node": rt.settings.node})
        if space.answered and space.error is None and space.running_s <= rt.settings.storage_stall_s:
            free, size = space.value
            yield gauge("tts_storage_free_bytes", "Free space on shared storage", float(free))
            yield gauge("tts_storage_size_bytes", "Size of shared storage", float(size))

    def synthesis(self) -> Iterator[Metric]:
        """The worker's time per segment (TTSLatencyHigh) and the GPU's use (TTSGpuStalled)."""
        hb = self._hb
        if not hb:
            return
        h = hb["synthesis_seconds"]
        cumulative, buckets = 0, []
        # counts has one more entry than buckets, the overflow, which +Inf (count) covers: zip stops at the
        # shorter on purpose (a heartbeat written with other buckets still reads).
        for bound, count in zip(h["buckets"], h["counts"], strict=False):
            cumulative += count
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", h["count"]))
        hist = HistogramMetricFamily("tts_segment_synthesis_seconds",
                                     "Wall time to synthesise one segment (pacing included)")
        hist.add_metric([], buckets, sum_value=h["sum"])
        yield hist
        if hb.get("gpu_utilisation") is not None:
            yield gauge("tts_gpu_utilisation_percent", "GPU 0 utilisation", hb["gpu_utilisation"])

    def _heartbeat(self) -> dict | None:
        settings = self.rt.settings
        hb, _ = heartbeat.read(heartbeat.heartbeat_path(settings.run_dir, settings.node))
        return hb


@bp.get("/metrics")
def metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(current_app.extensions["tts"]))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
