"""This node's belief about its role, read from the cluster state on shared storage; and fencing.

A node may write (accept jobs, commit segments) only while it is the primary of the newest epoch
it could read, and only if that read is recent (state_max_age_s). Anything else is `fenced`.
The worker asks `assert_primary(epoch)` right before every commit, with a fresh read.

A renewal is: note the time t0, rewrite cluster/alive/<node> (the NAS stamps its mtime, after t0),
read state.json. The belief it gives lives until t0 + max_age_s, so it expires before
mtime(alive/<node>) + max_age_s. A renewal whose mark could not be left gives no belief.

Handover: a node that finds itself primary of a new epoch (> 1) does not act as primary at once. The
previous primary (the new state's standby) may not have read the new state yet, and may go on
believing it is primary until its belief expires. So the new primary waits until the first of:
- the state records that the old primary was confirmed fenced in this epoch (failover.yml stopped
  its units and saw them inactive after the epoch changed: `tts-cluster confirm-fenced`);
- the old primary answers /ready saying it is fenced in an epoch at least as new (then cache_s, the
  time its other processes may still serve a belief they cached);
- the old primary's last mark is older, by the NAS's clock, than max_age_s + cache_s: whatever it
  believed has expired (a dead or cut-off node stops leaving marks; a live one does not);
- handover_wait() has passed since this node first saw its epoch: the bound that needs nothing from
  storage (the old belief may have been read up to state_timeout_s before it was timestamped).
No two nodes ever report themselves unfenced primaries at the same time.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .cluster import Cluster, ClusterError, ClusterState
from .httpjson import get_json
from .journal import fields
from .storage import Lookout, StorageUnavailable

log = logging.getLogger("tts.node")


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
    pending_s: float = 0.0          # how long the renewal in flight has run (0: none is)
    silent_s: float = 0.0           # how long since a renewal last came back (failed or not)

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
                    f"as primary for up to {self.handover_s:.1f} s (not confirmed fenced, its belief not yet "
                    f"expired)")
        return "not fenced"


PeerFenced = Callable[[str, int], bool]


class NodeView:
    def __init__(self, node: str, cluster: Cluster, max_age_s: float = 5.0, cache_s: float = 0.25,
                 peer_fenced: PeerFenced | None = None, state_timeout_s: float = 0.0,
                 round_timeout_s: float | None = None, wait_s: float = 0.25):
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
        self._silence_asked_at = float("-inf")
        self._expires_at = float("inf")                   # monotonic time the old primary's belief is known expired
        self.handover_reason = ""                         # why the last handover ended when it did
        self._lock = threading.Lock()
        self._state: ClusterState | None = None
        self._read_at = float("-inf")    # monotonic time the last successful renewal began
        self._applied = float("-inf")    # monotonic time the last renewal taken began
        self._answered_at = float("-inf")  # monotonic time a renewal last came back
        self._error: str | None = None
        # Background renewals: the NAS's own timeout for each call (round_timeout_s), never the
        # request path's, so that a slow NAS is seen as slow; probes wait for one at most wait_s.
        self.wait_s = wait_s
        self._rounds = Lookout(lambda: self._renew(round_timeout_s), every_s=cache_s,
                               clock=lambda: time.monotonic(), name=f"renewal-{node}")

    def belief(self, fresh: bool = False) -> Belief:
        """fresh: renew now and wait for it (before a write). Otherwise a renewal runs in the background
        at most every cache_s, and this waits for it at most wait_s: a probe answers at once whatever
        the NAS does, and the belief says how long the renewal in flight has run (`pending_s`)."""
        if fresh:
            with self._lock:
                self._apply(*self._renew(None))
                self._answered_at = max(self._answered_at, time.monotonic())
                return self._belief(0.0)
        answer = self._rounds.ask(self.wait_s)
        with self._lock:
            if answer.error is not None:   # not a storage error (those are in the value): say what
                self._apply(answer.started, None, f"{type(answer.error).__name__}: {answer.error}")
            elif answer.answered:
                self._apply(*answer.value)
            if answer.answered:
                self._answered_at = max(self._answered_at, answer.started + answer.took_s)
            return self._belief(answer.running_s)

    def _renew(self, timeout: float | None) -> tuple[float, ClusterState | None, str | None]:
        """One renewal: (when it began, the state read, why it failed). The mark first: its mtime is
        after the time the belief is timestamped with."""
        began = time.monotonic()
        try:
            self.cluster.touch_alive(self.node, timeout=timeout)
            return began, self.cluster.read(timeout=timeout), None
        except (StorageUnavailable, ClusterError, OSError) as exc:
            return began, None, str(exc) or type(exc).__name__

    def _apply(self, began: float, state: ClusterState | None, error: str | None) -> None:
        """Take a renewal's outcome unless a renewal begun later was taken already."""
        if began <= self._applied:
            return
        self._applied = began
        if error is not None:
            self._error = error
        elif state is None:
            self._state, self._error = None, None
        elif self._state is None or state.epoch >= self._state.epoch:
            self._state, self._error = state, None
        else:
            # An older epoch than one already seen: a stale read; never go backwards.
            self._error = f"read epoch {state.epoch} after having seen {self._state.epoch}"
        if self._error is None:
            self._read_at = began                # timestamped before the mark and the read

    def _belief(self, pending_s: float) -> Belief:
        age = time.monotonic() - self._read_at
        handover = self._handover_left(self._state) if age <= self.max_age_s else 0.0
        error = self._error if self._applied > float("-inf") else "the first read of the cluster state has not come back yet"
        return Belief(self.node, self._state, age, error, self.max_age_s, handover, pending_s,
                      time.monotonic() - self._answered_at)

    def _handover_left(self, state: ClusterState | None) -> float:
        """Seconds this node must still wait before acting as primary of state's epoch (0: go)."""
        if state is None or state.primary != self.node or state.epoch <= max(1, self._handed_over):
            return 0.0
        now = time.monotonic()
        if self._takeover is None or self._takeover[0] != state.epoch:
            self._takeover, self._confirmed, self._expires_at = (state.epoch, now), False, float("inf")
        if state.fencing_confirmed(state.standby):
            return self._handover_done(state, f"{state.standby} confirmed fenced ({state.fenced_by})")
        # Storage first (a few quick file operations); then the peer, which a lost host makes slow.
        if state.standby and now - self._silence_asked_at >= self.cache_s and self._expires_at == float("inf"):
            self._silence_asked_at = now
            self._expires_at = self._old_belief_expiry(state.standby)
            now = time.monotonic()
        if now >= self._expires_at:
            return self._handover_done(state, f"{state.standby}'s belief expired by the NAS's clock")
        if not self._confirmed and state.standby and self.peer_fenced and now - self._peer_asked_at >= self.cache_s:
            self._peer_asked_at = now
            self._confirmed = self.peer_fenced(state.standby, state.epoch)
            now = time.monotonic()
        if self._confirmed and now >= self._takeover[1] + self.cache_s:
            return self._handover_done(state, f"{state.standby} said it is fenced")
        if now >= self._takeover[1] + self.handover_wait():
            return self._handover_done(state, f"waited {self.handover_wait():g} s for {state.standby}'s "
                                              f"belief to expire")
        until = self._takeover[1] + (self.cache_s if self._confirmed else self.handover_wait())
        return min(until, self._expires_at) - now

    def _handover_done(self, state: ClusterState, why: str) -> float:
        self._handed_over = state.epoch
        self.handover_reason = why
        took = time.monotonic() - self._takeover[1] if self._takeover else 0.0
        log.info("acting as the primary of epoch %d after %.2f s because %s", state.epoch, took, why,
                 extra=fields(event="handover", epoch=state.epoch))
        return 0.0

    def _old_belief_expiry(self, old: str) -> float:
        """When (monotonic) the old primary's belief is certainly expired, by its last mark's age on the
        NAS's clock; inf if storage cannot say. Every belief it holds came from a renewal whose mark
        came after its timestamp, and so expires by mark + max_age_s (+ cache_s for cached copies).
        A renewal in flight now left its mark after this node saw the new epoch: it reads that epoch."""
        try:
            silent = self.cluster.silent_for(old)
        except (StorageUnavailable, ClusterError, OSError):
            return float("inf")
        if silent is None:
            return float("inf")
        # Anchored when the answer came back (after the NAS's "now" was taken), never before.
        return time.monotonic() + max(0.0, self.max_age_s + self.cache_s - silent)

    def handover_wait(self) -> float:
        """How long a new primary waits, from first seeing its epoch, for an old primary that does
        not confirm it is fenced: its belief may have been read up to state_timeout_s before it was
        timestamped, lives max_age_s, and may be served from a cache_s cache. (Confirmed: cache_s.)"""
        return self.max_age_s + self.state_timeout_s + self.cache_s

    def await_handover(self) -> Belief:
        """For a process that starts, acts once and exits (retention): a primary of a new epoch that finds
        its handover pending waits for it (at most handover_wait() and a second), then reads afresh."""
        deadline = time.monotonic() + self.handover_wait() + 1.0
        belief = self.belief(fresh=True)
        while belief.role == "primary" and belief.handover_s > 0 and time.monotonic() < deadline:
            time.sleep(min(belief.handover_s, 0.25))
            belief = self.belief(fresh=True)
        return belief

    def assert_primary(self, epoch: int | None = None) -> Belief:
        """Read the state now; raise Fenced unless this node is the primary (of `epoch`, if given).
        The read must succeed now: before a write, an older belief that is still fresh is not enough
        (its process may be the one that has not seen a new epoch its peers already answer with)."""
        belief = self.belief(fresh=True)
        if belief.fenced:
            raise Fenced(belief.why_fenced())
        if belief.error is not None:
            raise Fenced(f"the cluster state could not be read just now: {belief.error}")
        if epoch is not None and belief.epoch != epoch:
            raise Fenced(f"the epoch moved from {epoch} to {belief.epoch}")
        return belief


def ask_ready(url: str, timeout: float) -> tuple[int | None, dict, str | None]:
    """GET <url>/ready of a peer: (HTTP status or None, JSON body or {}, error or None). A 503 is an
    answer (the body says why); only a peer that cannot be reached gives an error."""
    return get_json(f"{url}/ready", timeout)


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
