"""Settings, read once from the environment (the deploy role writes them to an env file).

Every setting has a `TTS_` environment variable; the names match the inventory variables of the
same name (`tts_engine_pace` <-> `TTS_ENGINE_PACE`).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


# Seconds a call to shared storage may take before it counts as failed (TTS_STORAGE_TIMEOUT): one
# default for the app, the receiver and tts-cluster.
STORAGE_TIMEOUT_S = 3.0


def storage_timeout_from_env() -> float:
    return _float("TTS_STORAGE_TIMEOUT", STORAGE_TIMEOUT_S)


def parse_node_urls(raw: str, variable: str, schemes: tuple[str, ...] = ("http://", "https://")) -> dict[str, str]:
    """"tts-a=http://10.89.60.11:8000,tts-b=http://..." -> {node: base URL}; bad entries are errors
    (which never show the entry: a Redis URL holds a password)."""
    from .cluster import NODE_RE
    urls = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, url = item.partition("=")
        if not NODE_RE.match(name) or not url.startswith(schemes):
            raise ValueError(f"{variable} entry {len(urls) + 1} is not NODE={schemes[0]}ADDRESS:PORT")
        urls[name] = url.rstrip("/")
    return urls


@dataclass(frozen=True)
class Settings:
    # Who this node is: an inventory host name (tts-a, tts-b).
    node: str = field(default_factory=lambda: _env("TTS_NODE", socket.gethostname()))
    # Redis this node talks to (its local one: writable on the primary, a replica on the standby).
    redis_url: str = field(default_factory=lambda: _env("TTS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    # The NAS mount: cluster/, jobs/, drills/ live below it.
    shared_dir: Path = field(default_factory=lambda: Path(_env("TTS_SHARED_DIR", "/mnt/nas/tts")))
    # Node-local folder for the worker's heartbeat (read by the app's /ready and /metrics).
    run_dir: Path = field(default_factory=lambda: Path(_env("TTS_RUN_DIR", "/run/tts")))
    engine: str = field(default_factory=lambda: _env("TTS_ENGINE", "espeak"))
    vibevoice_model_dir: str = field(default_factory=lambda: _env("TTS_VIBEVOICE_MODEL_DIR", ""))
    vibevoice_diffusion_steps: int = field(default_factory=lambda: _int("TTS_VIBEVOICE_DIFFUSION_STEPS", 10))
    vibevoice_guidance_scale: float = field(default_factory=lambda: _float("TTS_VIBEVOICE_GUIDANCE_SCALE", 1.3))
    # Generation path of the dialogue stream (engines/vibevoice_stream.py): "fast" (torch.compile, CUDA
    # graphs), "reference" (eager), "auto" (compiled on a GPU, eager on the CPU). Part of a checkpoint's
    # fingerprint: a job resumes only on the path it was started with (else its part restarts).
    vibevoice_path: str = field(default_factory=lambda: _env("TTS_VIBEVOICE_PATH", "auto"))
    # The weights' dtype: "" = bfloat16 on a GPU, float32 on the CPU; bfloat16 on the CPU runs what a GPU
    # runs (the lab and tests use it to meet bf16's rounding where it will run).
    vibevoice_dtype: str = field(default_factory=lambda: _env("TTS_VIBEVOICE_DTYPE", ""))
    # A dialogue stream is committed to shared storage in chunks of this many seconds of audio, each
    # with its checkpoint (a failover recomputes at most one chunk). 10 s = 75 VibeVoice tokens.
    chunk_seconds: float = field(default_factory=lambda: _float("TTS_CHUNK_SECONDS", 10.0))
    # Seconds of wall time per second of audio (0 = as fast as the engine goes). Lab setting.
    engine_pace: float = field(default_factory=lambda: _float("TTS_ENGINE_PACE", 0.0))
    max_script_chars: int = field(default_factory=lambda: _int("TTS_MAX_SCRIPT_CHARS", 200_000))
    # A speaker turn longer than this is split at sentence boundaries.
    max_segment_chars: int = field(default_factory=lambda: _int("TTS_MAX_SEGMENT_CHARS", 400))
    # Job lease in Redis: a job is claimable by another worker only after this much silence.
    lease_s: float = field(default_factory=lambda: _float("TTS_LEASE_SECONDS", 6.0))
    # Every access to shared storage gives up after this long (a hung NAS must not hang us).
    storage_timeout_s: float = field(default_factory=storage_timeout_from_env)
    # The small reads on the request path (cluster state, free space for /ready) give up sooner, so
    # that /ready answers "storage unavailable" within a probe's timeout instead of timing out itself.
    state_timeout_s: float = field(default_factory=lambda: _float("TTS_STATE_TIMEOUT", 0.8))
    # A renewal (or free-space read) that has not come back after this long makes the node unfit: the
    # NAS is gone for it. One that comes back later than the request path's timeout is only slow, and a
    # slow NAS is everyone's: failing over onto it helps nobody.
    storage_stall_s: float = field(default_factory=lambda: _float("TTS_STORAGE_STALL", 1.5))
    # A node that has not read the cluster state for this long is fenced.
    state_max_age_s: float = field(default_factory=lambda: _float("TTS_STATE_MAX_AGE", 5.0))
    # Each process re-reads the cluster state at most this often (a belief is served from this cache
    # in between); also how long a new primary waits after its old primary said it is fenced.
    state_cache_s: float = field(default_factory=lambda: _float("TTS_STATE_CACHE", 0.25))
    # Below this much free space on shared storage the node is not ready and jobs wait.
    storage_min_free_bytes: int = field(default_factory=lambda: _int("TTS_STORAGE_MIN_FREE_BYTES", 1_000_000))
    session_ttl_s: int = field(default_factory=lambda: _int("TTS_SESSION_TTL", 30 * 24 * 3600))
    # Submissions per minute, per session and per client address (429 beyond).
    rate_limit_per_session: int = field(default_factory=lambda: _int("TTS_RATE_LIMIT_SESSION", 30))
    rate_limit_per_client: int = field(default_factory=lambda: _int("TTS_RATE_LIMIT_CLIENT", 120))
    # What one session and one client address may have waiting or running at once: jobs, and seconds
    # of audio (estimated from the text). Beyond: 429 with a sentence. One user cannot queue a day of
    # GPU time in a minute.
    queue_jobs_per_session: int = field(default_factory=lambda: _int("TTS_QUEUE_JOBS_SESSION", 10))
    queue_jobs_per_client: int = field(default_factory=lambda: _int("TTS_QUEUE_JOBS_CLIENT", 30))
    queue_audio_s_per_session: float = field(default_factory=lambda: _float("TTS_QUEUE_AUDIO_SESSION", 4 * 3600))
    queue_audio_s_per_client: float = field(default_factory=lambda: _float("TTS_QUEUE_AUDIO_CLIENT", 12 * 3600))
    # Voice clips one client address may upload an hour (the session's limit is MAX_CLIPS_PER_SESSION).
    uploads_per_client_hour: int = field(default_factory=lambda: _int("TTS_UPLOADS_CLIENT_HOUR", 20))
    # "pair": each node has its own Redis, the standby's a replica of the primary's (the deploy);
    # "shared": both nodes talk to one Redis (make serve, the tests).
    redis_topology: str = field(default_factory=lambda: _env("TTS_REDIS_TOPOLOGY", "shared"))
    # 1: this host's worker runs jobs whatever the host's role (the standby, a host of the tts_workers
    # group), each job fenced by its own lease generation on shared storage (jobfiles.py); the API,
    # Redis's primary and the cluster state stay active/standby. 0: only the primary's worker runs jobs.
    worker_pool: bool = field(default_factory=lambda: _int("TTS_WORKER_POOL", 0) == 1)
    # Each pair node's Redis, "tts-a=redis://:PASSWORD@10.89.60.11:6379/0,tts-b=...": a pool worker
    # talks to the one of the cluster state's primary (it follows a failover). Empty: redis_url.
    redis_urls: str = field(default_factory=lambda: _env("TTS_REDIS_URLS", ""))
    # A pool worker beside the primary leaves a new job this long to the primary's worker (an idle pair
    # runs a lone job where the drills and the operators expect it; the others take what it cannot).
    pool_defer_s: float = field(default_factory=lambda: _float("TTS_POOL_DEFER", 2.0))
    # A worker is shown (and alerted on: TTSWorkerDown) while its last word in Redis is younger than
    # this; a worker host retired without a drain is forgotten after it.
    worker_forget_s: float = field(default_factory=lambda: _float("TTS_WORKER_FORGET", 24 * 3600.0))
    # The pair's apps, "tts-a=http://10.89.60.11:8000,tts-b=...": the only targets of /peer/<node>/ready.
    peers: str = field(default_factory=lambda: _env("TTS_PEERS", ""))
    # Seconds between the belief reads a web process makes by itself (0: only when asked). The users'
    # listener keeps its belief like this: the probes keep tts-web's fresh, but a listener that only
    # users ask would otherwise meet a new epoch (or its own restart) at a user's request, and make it
    # wait out the handover to the new primary (answered 503 meanwhile).
    keep_belief_s: float = field(default_factory=lambda: _float("TTS_KEEP_BELIEF", 0.0))
    # The users' listener of this node (tts-api, "ADDRESS:PORT"): /ready fails while it accepts no
    # connections (a node whose users cannot reach it is not fit to be primary). Empty: not checked.
    api_address: str = field(default_factory=lambda: _env("TTS_API_ADDRESS", ""))
    # The entry VIP: /metrics says whether this host holds it (tts_vip_held). Empty: not exported.
    vip: str = field(default_factory=lambda: _env("TTS_VIP", ""))
    # The file keepalived tracks to let only the cluster state's primary hold the VIP (vip.py): the
    # worker keeps it saying 0 on the primary, 1 elsewhere. Empty: no such file (no VIP, make serve).
    vip_track_file: str = field(default_factory=lambda: _env("TTS_VIP_TRACK_FILE", ""))
    # Proxies in front of the app whose X-Forwarded-For is trusted (1 behind the node's nginx).
    trusted_proxies: int = field(default_factory=lambda: _int("TTS_TRUSTED_PROXIES", 0))
    # How often the worker rescans shared storage for jobs Redis does not know about.
    reconcile_interval_s: float = field(default_factory=lambda: _float("TTS_RECONCILE_INTERVAL", 15.0))

    # A chunk whose engine call takes longer than FACTOR x the median of recent chunks (at least MIN_S)
    # means the engine hangs: the job's lease is left to lapse and the job goes to another attempt
    # (resumed from its last checkpoint); the second hang within an hour makes the node unfit.
    chunk_deadline_factor: float = field(default_factory=lambda: _float("TTS_CHUNK_DEADLINE_FACTOR", 10.0))
    chunk_deadline_min_s: float = field(default_factory=lambda: _float("TTS_CHUNK_DEADLINE_MIN_S", 120.0))

    # A job whose attempts fail this many times (recorded on shared storage) ends `failed`.
    job_max_attempts: int = field(default_factory=lambda: _int("TTS_JOB_MAX_ATTEMPTS", 3))
    # After a failed attempt a job is not claimed again for this long (other jobs go first).
    failure_backoff_s: float = field(default_factory=lambda: _float("TTS_FAILURE_BACKOFF", 5.0))
    # The witness probe (/peer/<node>/ready) gives up after this long: shorter than the receiver's
    # own timeout for asking the witness, so "could not ask" and "asked: not ready" stay apart.
    witness_timeout_s: float = field(default_factory=lambda: _float("TTS_WITNESS_TIMEOUT", 1.0))

    def peer_urls(self) -> dict[str, str]:
        return parse_node_urls(self.peers, "TTS_PEERS")

    def redis_url_of(self, node: str | None) -> str:
        """The Redis a pool worker talks to while `node` is the primary (redis_url if none is listed)."""
        return parse_node_urls(self.redis_urls, "TTS_REDIS_URLS", ("redis://", "rediss://")).get(node or "",
                                                                                                  self.redis_url)

    @property
    def jobs_dir(self) -> Path:
        return self.shared_dir / "jobs"

    @property
    def cluster_dir(self) -> Path:
        return self.shared_dir / "cluster"

    def public(self) -> dict:
        """Settings safe to show in /ready and drill reports (no URLs with passwords)."""
        return {"engine": self.engine, "engine_pace": self.engine_pace, "lease_s": self.lease_s}
