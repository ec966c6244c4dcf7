"""Holding the cluster lock for as long as something runs, and not a moment longer.

The lock on shared storage has a short TTL (tts_lock_ttl_s, 30 s), so that a holder that died keeps
nobody out for long. Whoever holds it for longer renews it: `LockKeeper` renews it from a thread every
TTL/3 (at most every 2 s) and releases it when told. `run_locked` is `tts-cluster run-locked`: take the
lock, run a command (a playbook) with the lock's token in TTS_LOCK_TOKEN, renew while it runs, release
as soon as it ends, however it ends (exit, a signal to either process: the command is asked to stop with
SIGTERM when this process gets one or dies). The command's playbooks hand the token to `tts-cluster
promote --lock-token` (roles/tts_cluster: tts_cluster_lock_token), so the receiver and drills stay out
for exactly the command's run.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

from .cluster import Cluster, ClusterError
from .storage import StorageUnavailable

TOKEN_ENV = "TTS_LOCK_TOKEN"
HOLDER_ENV = "TTS_LOCK_HOLDER"
# Signals that end a run: passed on to the command, which ends, then the lock is released.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class LockKeeper:
    """The cluster lock held by `holder`, renewed by a thread until release(). `lost` is set when a
    renewal found the lock no longer held with this token (expired, broken by someone else): whoever
    uses the token then is refused by the cluster (promote checks it), never let through."""

    def __init__(self, cluster: Cluster, holder: str, ttl_s: float):
        self.cluster, self.holder, self.ttl_s = cluster, holder, ttl_s
        self.token: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str:
        """Take the lock (LockHeld when someone holds it) and start renewing it."""
        self.token = self.cluster.acquire_lock(self.holder, self.ttl_s)
        self._thread = threading.Thread(target=self._renew, name="lock-keeper", daemon=True)
        self._thread.start()
        return self.token

    def _renew(self) -> None:
        while not self._stop.wait(min(self.ttl_s / 3, 2.0)):
            try:
                if not self.cluster.renew_lock(self.token, self.ttl_s):
                    self.lost.set()
                    print(f"tts-cluster: the cluster lock of {self.holder} is no longer held (expired or broken); "
                          "anything that uses its token is refused now", file=sys.stderr)
                    return
            except (StorageUnavailable, OSError, ValueError) as exc:   # the next round tries again
                print(f"tts-cluster: could not renew the cluster lock: {exc}", file=sys.stderr)

    def release(self) -> bool:
        """Stop renewing (first: no renewal races the release), then release the lock. True when it is
        free now; if not, its TTL ends it (nobody renews it any more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        token, self.token = self.token, None
        if token is None:
            return True
        try:
            return self.cluster.release_lock(token) or self.cluster.lock_holder() is None
        except (ClusterError, StorageUnavailable, OSError):
            return False


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when this process dies, even by SIGKILL (Linux prctl), so
    that a command never goes on without the lock's keeper."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def run_locked(cluster: Cluster, holder: str, ttl_s: float, argv: list[str]) -> tuple[int, str]:
    """Run argv under the cluster lock. Returns (exit status, what happened, for the caller to print):
    the command's status; 128 + N when it ended by signal N. ClusterError (LockHeld...) when the lock
    cannot be taken: the command does not run."""
    if cluster.read() is None:
        raise ClusterError(f"no cluster state at {cluster.state_path}: run this from a host that mounts the "
                           "shared storage (ctl), on a pair that was deployed")
    keeper = LockKeeper(cluster, holder, ttl_s)
    token = keeper.acquire()
    child = None
    previous = {}
    try:
        def forward(signum, _frame):
            if child is not None and child.poll() is None:
                child.send_signal(signum)
        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        child = subprocess.Popen(argv, env={**os.environ, TOKEN_ENV: token, HOLDER_ENV: holder},
                                 preexec_fn=_stop_with_parent)
        rc = child.wait()
    finally:
        if child is not None and child.poll() is None:   # this process is being torn down: stop the command
            child.terminate()
            child.wait()
        released = keeper.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = 128 - rc if rc < 0 else rc
    said = (f"{argv[0]} exited {rc}" if rc >= 0 else f"{argv[0]} ended by signal {-rc}")
    said += "; the cluster lock released" if released else "; the cluster lock expires within its TTL"
    if keeper.lost.is_set():
        said += " (it was lost during the run: its token was refused from then on)"
    return status, said
