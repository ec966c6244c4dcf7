"""Builds the objects the app and the worker share, from Settings: one place to wire things up."""
from __future__ import annotations

from dataclasses import dataclass

import redis

from .cluster import Cluster
from .config import Settings
from .engines import Engine, create_engine
from .jobfiles import JobFiles
from .jobs import JobStore, Sessions, connect
from .node import NodeView, peer_fenced_by_http
from .storage import Lookout, Storage
from .voices import VoiceClips


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    state_storage: Storage     # the same mount with the short timeout of the request path
    cluster: Cluster
    node: NodeView
    redis: redis.Redis
    files: JobFiles
    store: JobStore
    sessions: Sessions
    engine: Engine
    voices: VoiceClips         # reference clips users uploaded
    space: Lookout             # (free, size) of the mount, read in the background for /ready and /metrics

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        storage = Storage(settings.shared_dir, timeout=settings.storage_timeout_s)
        state_storage = Storage(settings.shared_dir, timeout=settings.state_timeout_s)
        cluster = Cluster(state_storage, settings.cluster_dir)
        r = connect(settings.redis_url)
        files = JobFiles(storage, settings.jobs_dir)
        return cls(
            settings=settings,
            storage=storage,
            state_storage=state_storage,
            cluster=cluster,
            node=NodeView(settings.node, cluster, max_age_s=settings.state_max_age_s,
                          cache_s=settings.state_cache_s, state_timeout_s=settings.state_timeout_s,
                          round_timeout_s=settings.storage_timeout_s,
                          peer_fenced=peer_fenced_by_http({n: u for n, u in settings.peer_urls().items()
                                                           if n != settings.node})),
            redis=r,
            files=files,
            store=JobStore(r),
            sessions=Sessions(r, settings.session_ttl_s),
            engine=create_engine(settings),
            voices=VoiceClips(storage, settings.shared_dir / "voices"),
            space=Lookout(lambda: storage.usage(), every_s=settings.state_cache_s, name="free-space"),
        )
