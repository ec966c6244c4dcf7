"""Shared storage (the NAS mount): bounded-time access and atomic, no-overwrite commits.

Every call that touches the mount runs in a daemon thread and is abandoned after `timeout`
seconds, raising StorageUnavailable: on a hung NFS/sshfs mount a plain read blocks in the kernel,
and no node may hang with it. At most `threads` calls are in flight, so a mount that hangs every
call costs at most that many stuck threads; later calls time out waiting for a slot. Daemon threads
also let a process exit while one of them is still stuck in the kernel.

Two ways to write:
- write_replace(): temp file, fsync, rename over the old name (for files that are meant to change).
- commit_new():    temp file, fsync, link to the final name, which fails if the name exists. Nothing
                   committed this way is ever overwritten. On sshfs the loser of a race sometimes
                   gets EPERM instead of EEXIST, so a failed link is re-checked with stat.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


# errnos that mean "the mount failed", never an answer about the file asked for.
MOUNT_FAILED = frozenset({errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ETIMEDOUT,
                          errno.ECONNABORTED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EREMOTEIO, errno.ENXIO})


class StorageUnavailable(RuntimeError):
    """Shared storage did not answer in time or failed with an I/O error."""


class StorageFull(StorageUnavailable):
    """Shared storage has no space left (ENOSPC / EDQUOT)."""


def nas_now(directory: Path, keep_clock: bool = False) -> float:
    """Now, by the NAS's clock: the mtime of a file written just now in `directory`. Ages of files on
    shared storage are measured against this, never against this host's clock. keep_clock: also keep
    `.clock` there, so that a NAS with no room for a new file (when retention is needed most) is asked
    through it, written in place."""
    probe = Path(directory) / f".clock-{secrets.token_hex(6)}"
    clock = Path(directory) / ".clock"
    try:
        with open(probe, "wb"):
            pass
        if keep_clock and not os.path.exists(clock):   # kept for the day the NAS is full
            with open(clock, "wb") as fh:
                fh.write(b"c")
        return os.stat(probe).st_mtime
    except OSError as exc:
        if not keep_clock or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        with open(clock, "r+b") as fh:   # one byte over itself: no new block needed
            fh.write(b"c")
        return os.stat(clock).st_mtime
    finally:
        unlink_quietly(probe)


class Storage:
    def __init__(self, root: Path, timeout: float = 3.0, threads: int = 4):
        self.root = Path(root)
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(threads)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run fn(*args) against the mount; StorageUnavailable if it takes too long or fails with EIO."""
        limit = self.timeout if timeout is None else timeout
        too_slow = StorageUnavailable(f"shared storage at {self.root} did not answer within {limit:g} s")
        if not self._slots.acquire(timeout=limit):
            raise too_slow
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc
            finally:
                self._slots.release()
                finished.set()

        threading.Thread(target=run, name="storage-call", daemon=True).start()
        if not finished.wait(limit):
            raise too_slow
        if "error" not in outcome:
            return outcome["value"]
        try:
            raise outcome["error"]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"shared storage at {self.root} is full") from exc
            if exc.errno in MOUNT_FAILED:
                raise StorageUnavailable(f"shared storage at {self.root} failed: {exc.strerror}") from exc
            raise

    # ---- primitives (each one runs inside call()) ----

    def read_json(self, path: Path, timeout: float | None = None) -> Any:
        return self.call(_read_json, path, timeout=timeout)

    def read_bytes(self, path: Path) -> bytes:
        return self.call(Path.read_bytes, path)

    def mtime(self, path: Path) -> float:
        """When the NAS last saw path written (its clock, not the writer's)."""
        return self.call(os.stat, path).st_mtime

    def now(self, directory: Path) -> float:
        """Now by the NAS's clock (nas_now), answered even when the NAS is full."""
        return self.call(nas_now, directory, True)

    def exists(self, path: Path) -> bool:
        """True/False only when the mount answered; an I/O error is StorageUnavailable, never False."""
        return self.call(_exists, path)

    def listdir(self, path: Path) -> list[str]:
        return self.call(_listdir, path)

    def makedirs(self, path: Path) -> None:
        self.call(_makedirs, path)

    def write_replace(self, path: Path, data: bytes) -> None:
        self.call(_write_replace, path, data)

    def commit_new(self, path: Path, data: bytes) -> bool:
        """Write data to path only if path does not exist. True if we created it, False if it existed."""
        return self.call(_commit_new, path, data)

    def free_bytes(self) -> int:
        return self.call(_free_bytes, self.root)

    def usage(self) -> tuple[int, int]:
        """(free bytes available to us, total size) of the mount."""
        return self.call(_usage, self.root)

    def answers(self) -> bool:
        """Whether the mount itself answers now (to tell one bad file from a failed mount)."""
        try:
            self.call(os.listdir, self.root)
            return True
        except (StorageUnavailable, OSError):
            return False



@dataclass(frozen=True)
class Answer:
    """What a Lookout knows: its last call's outcome and how long the call in flight has run."""
    value: Any = None
    error: BaseException | None = None
    started: float = float("-inf")   # when the answered call began (-inf: none has answered yet)
    took_s: float = 0.0              # how long the answered call took
    running_s: float = 0.0           # how long the call in flight has been running (0: none is)

    @property
    def answered(self) -> bool:
        return self.started > float("-inf")

    def silent_s(self, now: float) -> float:
        """Seconds since the last call answered (inf: none has)."""
        return now - (self.started + self.took_s)


class Lookout:
    """One call to shared storage kept going in the background, for probes that must answer at once.

    ask() starts the call when none is in flight and the last one began at least `every_s` ago, waits
    up to `wait_s` for it, and answers with the last outcome and how long the call in flight has run.
    A slow mount is asked again only after it answered (calls never pile up behind it); one that hangs
    shows as a call running longer and longer, and as time since the last answer (`silent_s`). Slow
    and gone are told apart by those, not by a timeout on each call."""

    def __init__(self, fn: Callable[[], Any], every_s: float, clock: Callable[[], float] = time.monotonic,
                 name: str = "storage-lookout"):
        self._fn = fn
        self.every_s = every_s
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._running_since: float | None = None
        self._answer = Answer()

    def ask(self, wait_s: float) -> Answer:
        with self._cond:
            self._start_if_due()
            if self._running_since is not None and wait_s > 0:
                self._cond.wait_for(lambda: self._running_since is None, timeout=wait_s)
            running = 0.0 if self._running_since is None else max(0.0, self._clock() - self._running_since)
            return replace(self._answer, running_s=running)

    def poke(self) -> None:
        """Start the call if it is due, without waiting (to run it beside another)."""
        with self._cond:
            self._start_if_due()

    def _start_if_due(self) -> None:
        now = self._clock()
        if self._running_since is None and now - self._answer.started >= self.every_s:
            self._running_since = now
            threading.Thread(target=self._run, args=(now,), name=self._name, daemon=True).start()

    def _run(self, started: float) -> None:
        value, error = None, None
        try:
            value = self._fn()
        except BaseException as exc:   # handed to the asker
            error = exc
        with self._cond:
            self._answer = Answer(value, error, started, max(0.0, self._clock() - started))
            self._running_since = None
            self._cond.notify_all()


def _read_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def _exists(path: Path) -> bool:
    """Only "no such file" means missing (os.path.exists says False on EIO/ESTALE/ENOTCONN too)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _makedirs(path: Path) -> None:
    os.makedirs(path, exist_ok=True)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _usage(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _write_temp(directory: Path, data: bytes) -> Path:
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _write_replace(path: Path, data: bytes) -> None:
    tmp = _write_temp(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _commit_new(path: Path, data: bytes) -> bool:
    tmp = _write_temp(path.parent, data)
    try:
        return link_new(tmp, path)
    finally:
        unlink_quietly(tmp)


def link_new(tmp: Path, path: Path) -> bool:
    """Give the fsynced file tmp the name path unless path exists; True if we created it.
    On sshfs the loser of a link race sometimes gets EPERM instead of EEXIST: re-check with stat."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except PermissionError:
        if _exists(path):
            return False
        raise
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
