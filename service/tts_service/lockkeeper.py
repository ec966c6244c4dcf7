"""Holding the cluster lock for as long as something runs, and not a moment longer.

The lock on shared storage has a short TTL (tts_lock_ttl_s, 30 s), so that a holder that died keeps
nobody out for long. Whoever holds it for longer renews it: `LockKeeper` renews it from a thread every
TTL/3 (at most every 2 s) and releases it when told. `run_locked` is `tts-cluster run-locked`: take the
lock, run a command (a playbook) with the lock's token in TTS_LOCK_TOKEN, renew while it runs, release
when it has ended, and with it whatever it started (a playbook's workers outlive a killed
ansible-playbook: they are stopped first). The command is told to stop (SIGTERM) when this process gets
SIGTERM or SIGHUP, when it dies, even by SIGKILL, and when it runs past --max-seconds. The playbooks hand
the token to `tts-cluster promote --lock-token` (roles/tts_cluster: tts_cluster_lock_token), so the
receiver and drills stay out for exactly the command's run.

    python -m tts_service.lockkeeper PARENT_PID COMMAND [ARG...]
        what `with_parent` puts in front of a command: SIGTERM to it when PARENT_PID dies (Linux
        PR_SET_PDEATHSIG), then exec COMMAND. A shim, not a preexec_fn: safe from a threaded parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from .cluster import Cluster, ClusterError
from .storage import StorageUnavailable

TOKEN_ENV = "TTS_LOCK_TOKEN"
HOLDER_ENV = "TTS_LOCK_HOLDER"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# A playbook's leftovers get this long after SIGTERM before SIGKILL.
LEFTOVER_GRACE_S = 10.0


class LockKeeper:
    """The cluster lock held by `holder`, renewed by a thread (start()) until release(). `lost` is set
    when a renewal found the lock no longer held with this token (expired, broken by someone else):
    whoever uses the token then is refused by the cluster (promote checks it), never let through."""

    def __init__(self, cluster: Cluster, holder: str, ttl_s: float):
        self.cluster, self.holder, self.ttl_s = cluster, holder, ttl_s
        self.token: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, start: bool = True) -> str:
        """Take the lock (LockHeld when someone holds it); start renewing it unless start=False."""
        self.token = self.cluster.acquire_lock(self.holder, self.ttl_s)
        if start:
            self.start()
        return self.token

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="lock-keeper", daemon=True)
        self._thread.start()

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
        """Stop renewing, then release the lock. True when it is free now; if not, its TTL ends it
        (nobody renews it any more). A renewal whose storage call was abandoned (the NAS slow past the
        storage timeout) can still land after this: the lock is then back until its TTL (stated in
        docs/design.md: it costs time, never safety)."""
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


def with_parent(argv: list[str]) -> list[str]:
    """argv, run so that it is told to stop (SIGTERM) when this process dies (see the module's doc)."""
    return [sys.executable, "-m", "tts_service.lockkeeper", str(os.getpid()), *argv]


def _children() -> list[int]:
    """This process's children now (orphaned descendants come here: PR_SET_CHILD_SUBREAPER), not counting
    SSH connection masters (ControlPersist), which act on nothing by themselves and serve the next run."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if not (cmdline.startswith(b"ssh: ") and b"[mux]" in cmdline):
            found.append(int(entry))
    return found


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _end_leftovers() -> int:
    """Stop what the command left running (a killed playbook's workers and their commands): SIGTERM,
    SIGKILL after LEFTOVER_GRACE_S; return when none is left. How many there were."""
    deadline, told = time.monotonic() + LEFTOVER_GRACE_S, set()
    while True:
        _reap()
        left = _children()
        if not left:
            return len(told)
        for pid in left:
            try:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                elif pid not in told:
                    os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            told.add(pid)
        time.sleep(0.1)


def run_locked(cluster: Cluster, holder: str, ttl_s: float, argv: list[str],
               max_s: float = 3600.0) -> tuple[int, str]:
    """Run argv under the cluster lock. Returns (exit status, what happened, for the caller to print):
    the command's status; 128 + N when it ended by signal N; 124 when it ran past max_s and was stopped.
    ClusterError (LockHeld...) when the lock cannot be taken: the command does not run."""
    if cluster.read() is None:
        raise ClusterError(f"no cluster state at {cluster.state_path}: run this from a host that mounts the "
                           "shared storage (ctl), on a pair that was deployed")
    stop: list[int] = []              # a signal that came before the command started
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is None:
            stop.append(signum)
        elif child.poll() is None:
            child.send_signal(signal.SIGTERM)

    # SIGINT is not passed on: a terminal's Ctrl-C reaches the command itself (one process group), and
    # a second one would end ansible-playbook before it stops its workers. This process waits for it.
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGTERM, forward), (signal.SIGHUP, forward), (signal.SIGINT, signal.SIG_IGN))}
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    keeper = LockKeeper(cluster, holder, ttl_s)
    timed_out = False
    try:
        token = keeper.acquire(start=False)
        if stop:
            return 128 + stop[0], f"ended by signal {stop[0]} before {argv[0]} started; the cluster lock released"
        child = subprocess.Popen(with_parent(argv), env={**os.environ, TOKEN_ENV: token, HOLDER_ENV: holder})
        if stop:
            child.send_signal(signal.SIGTERM)
        keeper.start()
        try:
            rc = child.wait(max_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            child.terminate()
            try:
                rc = child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                rc = child.wait()
    finally:
        if child is not None and child.poll() is None:   # this process is being torn down: stop the command
            child.terminate()
            child.wait()
        leftovers = _end_leftovers() if child is not None else 0
        released = keeper.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = 124 if timed_out else (128 - rc if rc < 0 else rc)
    said = (f"{argv[0]} ran past {max_s:g} s and was stopped" if timed_out
            else f"{argv[0]} exited {rc}" if rc >= 0 else f"{argv[0]} ended by signal {-rc}")
    if leftovers:
        said += f"; {leftovers} process(es) it left running stopped"
    said += "; the cluster lock released" if released else "; the cluster lock expires within its TTL"
    if keeper.lost.is_set():
        said += " (it was lost during the run: its token was refused from then on)"
    return status, said


def _exec_with_parent(args: list[str]) -> int:
    parent, argv = int(args[0]), args[1:]
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # run_locked ignores SIGINT; the command takes its own
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:        # the parent died before the line above: nobody keeps the lock
        return 128 + signal.SIGTERM
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(_exec_with_parent(sys.argv[1:]))
