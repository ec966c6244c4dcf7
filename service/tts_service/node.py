"""This node's belief about its role, read from the cluster state on shared storage; and fencing.

A node may write (accept jobs, commit segments) only while it is the primary of the newest epoch
it could read, and only if that read is recent (state_max_age_s). Anything else is `fenced`.
The worker asks `assert_primary(epoch)` right before every commit, with a fresh read.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .cluster import Cluster, ClusterError, ClusterState
from .storage import StorageUnavailable


class Fenced(RuntimeError):
    """This node must not write: not the primary of the newest epoch, or unsure."""


@dataclass(frozen=True)
class Belief:
    node: str
    state: ClusterState | None      # the last state read successfully
    age_s: float                    # seconds since that read (inf if never)
    error: str | None               # why the last read failed, if it did
    max_age_s: float

    @property
    def role(self) -> str:
        if self.state is not None and self.state.primary == self.node:
            return "primary"
        return "standby"

    @property
    def epoch(self) -> int:
        return self.state.epoch if self.state else 0

    @property
    def member(self) -> bool:
        return self.state is not None and self.node in (self.state.primary, self.state.standby)

    @property
    def fresh(self) -> bool:
        return self.age_s <= self.max_age_s

    @property
    def fenced(self) -> bool:
        return not (self.role == "primary" and self.fresh)

    def why_fenced(self) -> str:
        if self.state is None:
            return (f"no cluster state could be read ({self.error})" if self.error
                    else "no cluster state exists yet (run `tts-cluster init`)")
        if not self.fresh:
            return (f"the cluster state has not been readable for {self.age_s:.1f} s "
                    f"(limit {self.max_age_s:g} s): {self.error}")
        if self.role != "primary":
            return f"{self.state.primary} is the primary of epoch {self.state.epoch}"
        return "not fenced"


class NodeView:
    def __init__(self, node: str, cluster: Cluster, max_age_s: float = 5.0, cache_s: float = 0.5):
        self.node = node
        self.cluster = cluster
        self.max_age_s = max_age_s
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._state: ClusterState | None = None
        self._read_at = float("-inf")    # monotonic time of the last successful read
        self._tried_at = float("-inf")   # monotonic time of the last attempt
        self._error: str | None = None

    def belief(self, fresh: bool = False) -> Belief:
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._tried_at >= self.cache_s:
                self._tried_at = now
                try:
                    state = self.cluster.read()
                    if state is None:
                        self._state = None
                        self._error = None
                    elif self._state is None or state.epoch >= self._state.epoch:
                        self._state = state
                        self._error = None
                    else:
                        # An older epoch than one already seen: a stale read; never go backwards.
                        self._error = f"read epoch {state.epoch} after having seen {self._state.epoch}"
                    if self._error is None:
                        self._read_at = time.monotonic()
                except (StorageUnavailable, ClusterError, OSError) as exc:
                    self._error = str(exc)
            age = time.monotonic() - self._read_at
            return Belief(self.node, self._state, age, self._error, self.max_age_s)

    def assert_primary(self, epoch: int | None = None) -> Belief:
        """Read the state now; raise Fenced unless this node is the primary (of `epoch`, if given)."""
        belief = self.belief(fresh=True)
        if belief.fenced:
            raise Fenced(belief.why_fenced())
        if epoch is not None and belief.epoch != epoch:
            raise Fenced(f"the epoch moved from {epoch} to {belief.epoch}")
        return belief
