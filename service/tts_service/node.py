"""This node's belief about its role, read from the cluster state on shared storage; and fencing.

A node may write (accept jobs, commit segments) only while it is the primary of the newest epoch
it could read, and only if that read is recent (state_max_age_s). Anything else is `fenced`.
The worker asks `assert_primary(epoch)` right before every commit, with a fresh read.

Handover: a node that finds itself primary of a new epoch (> 1) does not act as primary at once. The
previous primary may not have read the new state yet, and may go on believing it is primary for up to
state_max_age_s after its last read. So the new primary waits until either that much time has passed
since it first saw its new epoch, or the previous primary (the new state's standby) answers /ready
saying it is fenced in an epoch at least as new. No two nodes ever report themselves unfenced
primaries at the same time; a planned switchover (the old primary alive) takes a moment, a failover
from a dead primary takes state_max_age_s + state_timeout_s more.

The margin, whole: the old primary timestamps its belief when its read *returns*, which can be up to
state_timeout_s after the state it read was current (a slow NAS). So its belief, read just before the
epoch changed, can live until (epoch change) + state_timeout_s + max_age_s. The new primary first
sees the new epoch after the change, and on top of those two it waits cache_s, the time the old
node's other processes may still serve a belief they cached. handover_wait() says this once.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

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
    handover_s: float = 0.0         # > 0: primary of a new epoch, waiting this much longer for the old one

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
        return not (self.role == "primary" and self.fresh and self.handover_s <= 0)

    def why_fenced(self) -> str:
        if self.state is None:
            return (f"no cluster state could be read ({self.error})" if self.error
                    else "no cluster state exists yet (run `tts-cluster init`)")
        if not self.fresh:
            return (f"the cluster state has not been readable for {self.age_s:.1f} s "
                    f"(limit {self.max_age_s:g} s): {self.error}")
        if self.role != "primary":
            return f"{self.state.primary} is the primary of epoch {self.state.epoch}"
        if self.handover_s > 0:
            return (f"taking over as primary of epoch {self.state.epoch}: {self.state.standby} may still act "
                    f"as primary for up to {self.handover_s:.1f} s (it has not confirmed it is fenced)")
        return "not fenced"


PeerFenced = Callable[[str, int], bool]


class NodeView:
    def __init__(self, node: str, cluster: Cluster, max_age_s: float = 5.0, cache_s: float = 0.5,
                 peer_fenced: PeerFenced | None = None, state_timeout_s: float = 0.0):
        self.node = node
        self.cluster = cluster
        self.max_age_s = max_age_s
        self.cache_s = cache_s
        self.state_timeout_s = state_timeout_s
        # Asks a peer whether it is fenced in an epoch >= the given one (see peer_fenced_by_http).
        self.peer_fenced = peer_fenced
        self._takeover: tuple[int, float] | None = None   # (epoch, monotonic time first seen as its primary)
        self._handed_over = 0                             # newest epoch whose handover is complete
        self._peer_asked_at = float("-inf")
        self._confirmed = False                           # the old primary said it is fenced
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
            handover = self._handover_left(self._state) if age <= self.max_age_s else 0.0
            return Belief(self.node, self._state, age, self._error, self.max_age_s, handover)

    def _handover_left(self, state: ClusterState | None) -> float:
        """Seconds this node must still wait before acting as primary of state's epoch (0: go)."""
        if state is None or state.primary != self.node or state.epoch <= max(1, self._handed_over):
            return 0.0
        now = time.monotonic()
        if self._takeover is None or self._takeover[0] != state.epoch:
            self._takeover, self._confirmed = (state.epoch, now), False
        if not self._confirmed and state.standby and self.peer_fenced and now - self._peer_asked_at >= self.cache_s:
            self._peer_asked_at = now
            self._confirmed = self.peer_fenced(state.standby, state.epoch)
        wait = self.cache_s if self._confirmed else self.handover_wait()
        left = self._takeover[1] + wait - now
        if left <= 0:
            self._handed_over = state.epoch
            return 0.0
        return left

    def handover_wait(self) -> float:
        """How long a new primary waits, from first seeing its epoch, for an old primary that does
        not confirm it is fenced: its belief may have been read up to state_timeout_s before it was
        timestamped, lives max_age_s, and may be served from a cache_s cache. (Confirmed: cache_s.)"""
        return self.max_age_s + self.state_timeout_s + self.cache_s

    def assert_primary(self, epoch: int | None = None) -> Belief:
        """Read the state now; raise Fenced unless this node is the primary (of `epoch`, if given)."""
        belief = self.belief(fresh=True)
        if belief.fenced:
            raise Fenced(belief.why_fenced())
        if epoch is not None and belief.epoch != epoch:
            raise Fenced(f"the epoch moved from {epoch} to {belief.epoch}")
        return belief


def ask_ready(url: str, timeout: float) -> tuple[int | None, dict, str | None]:
    """GET <url>/ready of a peer: (HTTP status or None, JSON body or {}, error or None). A 503 is an
    answer (the body says why); only a peer that cannot be reached gives an error."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=timeout) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return None, {}, str(exc)[:200]
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}, None


def peer_fenced_by_http(peer_urls: dict[str, str], timeout: float = 0.5) -> PeerFenced:
    """A PeerFenced that asks the peer's /ready: fenced (or not primary) in an epoch >= ours."""
    def ask(peer: str, epoch: int) -> bool:
        url = peer_urls.get(peer)
        if not url:
            return False
        _status, body, _error = ask_ready(url, timeout)
        try:
            newer = int(body.get("epoch") or 0) >= epoch
        except (TypeError, ValueError):
            return False
        return newer and (body.get("fenced") is True or body.get("role") != "primary")
    return ask
