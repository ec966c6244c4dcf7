"""The cluster state on shared storage: who is primary, in which epoch, and the lock that guards it.

    <shared>/cluster/state.json  {"epoch": 7, "primary": "tts-a", "standby": "tts-b",
                                  "updated_at": "...", "updated_by": "failover.yml"}
    <shared>/cluster/lock        {"holder": "...", "token": "...", "expires_at": <unix time>}
    <shared>/cluster/alive/<node>  rewritten by <node> before each read of state.json: its mtime, in
                                 the NAS's own clock, bounds when that node's belief can expire

state.json is only ever replaced atomically (temp + rename), and only while holding the lock.
The lock is a file created with O_EXCL (atomic across NFS/sshfs clients); it carries an expiry so a
holder that died does not block the cluster forever. `tts-cluster` (cluster_cli.py) is the only
writer; playbooks, the receiver and drills call it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .storage import Storage, StorageUnavailable, link_new, nas_now, unlink_quietly

NODE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")

# The layout of jobs/ this code writes (/ready shows it; cluster/format records the newest any primary
# wrote): 1 = a segment per turn; 2 = segments are chunks of a part's stream, with .ckpt/.state beside
# them for stateful engines, and jobs/<id>/log; 3 = each grant of a job's lease has a generation
# (jobs/<id>/leases/), in the chunks' names beside the epoch (format 2's code does not see those chunks).
# Here, not in jobfiles.py, so that tts-cluster starts without numpy (it is on a failover's critical path).
STORAGE_FORMAT = 3


# The longest TTL anything takes the lock with (tts-cluster lock --ttl is capped to it).
MAX_LOCK_TTL_S = 300.0
# An unreadable lock file (damaged: locks are written whole since they are link()ed into place) is
# held by nobody once it is this old, for acquirers and for the receiver alike.
UNREADABLE_LOCK_HELD_S = 60.0


def _held_with(info: dict | None, token: str) -> bool:
    return info is not None and info.get("token") == token and info.get("expires_at", 0) > time.time()


class ClusterError(RuntimeError):
    """A cluster operation was refused (wrong epoch, state exists, lock held...)."""


class LockHeld(ClusterError):
    pass


def validate_node(name: str) -> str:
    if not isinstance(name, str) or not NODE_RE.match(name):
        raise ClusterError(f"{name!r} is not a valid node name (lowercase letters, digits, '.', '-')")
    return name


@dataclass(frozen=True)
class ClusterState:
    epoch: int
    primary: str
    standby: str | None
    updated_at: str = ""
    updated_by: str = ""
    # Fencing confirmed (tts-cluster confirm-fenced): `fenced_node` had no process left running from
    # before `fenced_epoch` was written (its units were stopped and seen inactive after the change).
    fenced_node: str | None = None
    fenced_epoch: int = 0
    fenced_by: str = ""

    def fencing_confirmed(self, node: str | None) -> bool:
        """Whether `node` is confirmed fenced in this very epoch (a confirmation of an older epoch
        says nothing about beliefs read since)."""
        return node is not None and self.fenced_node == node and self.fenced_epoch == self.epoch

    @classmethod
    def from_dict(cls, data: dict) -> ClusterState:
        try:
            epoch = int(data["epoch"])
            primary = validate_node(data["primary"])
        except (KeyError, TypeError, ValueError, ClusterError) as exc:
            raise ClusterError(f"cluster state is malformed: {exc}") from exc
        standby = data.get("standby")
        fenced = data.get("fenced")
        fenced_node, fenced_epoch, fenced_by = None, 0, ""
        if isinstance(fenced, dict):   # a malformed confirmation is no confirmation (the safe reading)
            try:
                fenced_node, fenced_epoch = validate_node(fenced["node"]), int(fenced["epoch"])
                fenced_by = str(fenced.get("by", ""))
            except (KeyError, TypeError, ValueError, ClusterError):
                fenced_node, fenced_epoch = None, 0
        return cls(epoch, primary, standby if standby else None,
                   str(data.get("updated_at", "")), str(data.get("updated_by", "")),
                   fenced_node, fenced_epoch, fenced_by)

    def to_dict(self) -> dict:
        out = {"epoch": self.epoch, "primary": self.primary, "standby": self.standby,
               "updated_at": self.updated_at, "updated_by": self.updated_by}
        if self.fenced_node:
            out["fenced"] = {"node": self.fenced_node, "epoch": self.fenced_epoch, "by": self.fenced_by}
        return out


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    def __init__(self, storage: Storage, cluster_dir: Path):
        self.storage = storage
        self.dir = Path(cluster_dir)
        self.state_path = self.dir / "state.json"
        self.lock_path = self.dir / "lock"
        # The newest storage format any primary has written (STORAGE_FORMAT): a node whose
        # code knows only an older one must not become primary over it.
        self.format_path = self.dir / "format"
        self.alive_dir = self.dir / "alive"

    # ---- reading ----

    def read(self, timeout: float | None = None) -> ClusterState | None:
        """The current state, None if none was ever written. StorageUnavailable if unreadable."""
        try:
            data = self.storage.read_json(self.state_path, timeout=timeout)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{self.state_path} is not valid JSON: {exc}") from exc
        return ClusterState.from_dict(data)

    # ---- renewals, timed by the NAS's clock ----

    def touch_alive(self, node: str, timeout: float | None = None) -> None:
        """Leave this renewal's mark: rewrite alive/<node>, so that its mtime (set by the NAS) is at
        least the moment this node starts reading the state. StorageUnavailable if it cannot."""
        self.storage.call(_touch, self.alive_dir / validate_node(node), timeout=timeout)

    def silent_for(self, node: str) -> float | None:
        """Seconds, by the NAS's clock, since `node` last touched alive/<node>, rounded down (a
        lower bound); None if it never did. Compares two NAS timestamps, never two hosts' clocks."""
        return self.storage.call(_silent_for, self.alive_dir / validate_node(node), self.dir)

    # ---- the lock ----

    def acquire_lock(self, holder: str, ttl_s: float = 60.0) -> str:
        """Take the cluster lock; returns a token for release. LockHeld if someone else holds it."""
        self.storage.makedirs(self.dir)
        token = secrets.token_hex(16)
        body = json.dumps({"holder": holder, "token": token, "expires_at": time.time() + ttl_s,
                           "taken_at": _now_iso(), "ttl_s": ttl_s}).encode()
        if self.storage.call(_create_exclusive, self.lock_path, body):
            return token
        current = self._lock_file()
        if current is None:  # released in between: one more try
            if self.storage.call(_create_exclusive, self.lock_path, body):
                return token
            raise LockHeld("the cluster lock was taken by someone else just now")
        info, age_s = current
        if info is None:
            # Unreadable (damaged): held until the file itself is older than UNREADABLE_LOCK_HELD_S.
            if age_s < UNREADABLE_LOCK_HELD_S:
                raise LockHeld(f"the cluster lock file is unreadable and {age_s:.0f} s old: treated as held "
                               f"until it is {UNREADABLE_LOCK_HELD_S:.0f} s old")
        elif info.get("expires_at", 0) > time.time():
            raise LockHeld(f"the cluster lock is held by {info.get('holder')!r} "
                           f"until {datetime.fromtimestamp(info['expires_at'], UTC):%H:%M:%S}Z")
        # Expired (or unreadable and old): break exactly that lock, then try once more.
        self.storage.call(_break_lock, self.lock_path, info.get("token") if info else None)
        if self.storage.call(_create_exclusive, self.lock_path, body):
            return token
        raise LockHeld("the cluster lock was taken by someone else while breaking an expired one")

    def renew_lock(self, token: str, ttl_s: float) -> bool:
        """Push the expiry of the lock `token` holds to now + ttl_s; False if it does not hold it.
        The holder's own file is replaced (temp + rename); nobody else writes a held, unexpired lock."""
        info = self.lock_info()
        if not _held_with(info, token):
            return False
        info = {**info, "expires_at": time.time() + ttl_s, "ttl_s": ttl_s, "renewed_at": _now_iso()}
        self.storage.write_replace(self.lock_path, json.dumps(info).encode())
        return True

    def holds_lock(self, token: str) -> bool:
        """Whether the lock is held with `token` now (taken with it, not expired)."""
        return _held_with(self.lock_info(), token)

    def _lock_file(self) -> tuple[dict | None, float] | None:
        """(content or None if unreadable, age of the file in seconds by the NAS's clock); None if absent."""
        try:
            return self.storage.call(_read_lock, self.lock_path, self.dir)
        except FileNotFoundError:
            return None

    def release_lock(self, token: str) -> bool:
        info = self.lock_info()
        if info is None or info.get("token") != token:
            return False
        self.storage.call(_break_lock, self.lock_path, token)
        return True

    def lock_holder(self) -> str | None:
        """Who holds the lock now, None if it is free. An unreadable lock file is held (by an unknown
        holder) until it is older than the longest TTL a lock is taken with."""
        current = self._lock_file()
        if current is None:
            return None
        info, age_s = current
        if info is None:
            return (f"an unknown holder (unreadable lock file, {age_s:.0f} s old)"
                    if age_s < UNREADABLE_LOCK_HELD_S else None)
        return str(info.get("holder")) if info.get("expires_at", 0) > time.time() else None

    def lock_info(self) -> dict | None:
        try:
            return self.storage.read_json(self.lock_path)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"holder": "? (unreadable lock file)", "token": None, "expires_at": 0}

    @contextmanager
    def locked(self, holder: str, ttl_s: float = 60.0) -> Iterator[str]:
        token = self.acquire_lock(holder, ttl_s)
        try:
            yield token
        finally:
            try:
                self.release_lock(token)
            except StorageUnavailable:
                pass  # it expires by itself

    # ---- changing the state (only under the lock) ----

    def init(self, primary: str, standby: str | None, by: str) -> ClusterState:
        validate_node(primary)
        if standby is not None:
            validate_node(standby)
            if standby == primary:
                raise ClusterError("the standby must differ from the primary")
        with self.locked(f"init by {by}"):
            if self.read() is not None:
                raise ClusterError(f"cluster state already exists at {self.state_path}; refusing to re-init")
            state = ClusterState(1, primary, standby, _now_iso(), by)
            self._write(state)
            return state

    @contextmanager
    def _held(self, token: str) -> Iterator[str]:
        """Use a lock the caller already holds (a switchover or drill holds it for its whole run)."""
        info = self.lock_info()
        if info is None or info.get("token") != token or info.get("expires_at", 0) <= time.time():
            raise LockHeld("the given lock token does not hold the cluster lock (expired or taken over)")
        yield token

    def storage_format(self) -> int:
        """The newest storage format recorded on shared storage (0: none recorded yet)."""
        try:
            return int(self.storage.read_json(self.format_path).get("storage_format", 0))
        except FileNotFoundError:
            return 0
        except (ValueError, AttributeError, TypeError):
            return 0

    def record_format(self, fmt: int, node: str) -> bool:
        """Record that `node` writes storage format `fmt`, if that is newer than what is recorded."""
        if fmt <= self.storage_format():
            return False
        self.storage.makedirs(self.dir)
        self.storage.write_replace(self.format_path, json.dumps(
            {"storage_format": fmt, "by": node, "at": _now_iso()}).encode())
        return True

    def promote(self, node: str, expect_epoch: int, by: str, lock_token: str | None = None,
                understands: int | None = None) -> ClusterState:
        """Compare-and-swap: make `node` primary of epoch expect_epoch+1, only if the epoch is expect_epoch.
        Takes the lock for the change, or uses the one `lock_token` already holds. `understands`: the
        newest storage format the node's code knows (tts-cluster runs on the node being promoted): a
        node behind the recorded format is refused, with a sentence."""
        validate_node(node)
        if understands is not None and (recorded := self.storage_format()) > understands:
            raise ClusterError(f"shared storage holds format {recorded}, newer than {node}'s code understands "
                               f"({understands}): upgrade {node} before it can be primary")
        with (self._held(lock_token) if lock_token else self.locked(f"promote {node} by {by}")):
            current = self.read()
            if current is None:
                raise ClusterError("no cluster state exists; run `tts-cluster init` first")
            if current.epoch != expect_epoch:
                raise ClusterError(f"epoch is {current.epoch}, not {expect_epoch}: someone changed the "
                                   f"cluster in between (primary is {current.primary})")
            if node == current.primary:
                standby = current.standby
            elif node == current.standby or current.standby is None:
                standby = current.primary
            else:
                raise ClusterError(f"{node} is neither the primary ({current.primary}) nor the standby "
                                   f"({current.standby})")
            state = ClusterState(current.epoch + 1, node, standby, _now_iso(), by)
            self._write(state)
            return state

    def confirm_fenced(self, node: str, epoch: int, by: str, lock_token: str | None = None) -> ClusterState:
        """Record that `node`, the standby of `epoch`, was confirmed fenced (its units stopped after
        `epoch` was written): the primary of `epoch` need not wait for its belief to expire."""
        validate_node(node)
        with (self._held(lock_token) if lock_token else self.locked(f"confirm-fenced {node} by {by}")):
            current = self.read()
            if current is None or current.epoch != epoch:
                raise ClusterError(f"epoch is {current.epoch if current else None}, not {epoch}: the "
                                   f"confirmation is for an epoch that has passed")
            if node != current.standby:
                raise ClusterError(f"{node} is not the standby of epoch {epoch} (primary {current.primary}, "
                                   f"standby {current.standby}): only an old primary is confirmed fenced")
            state = ClusterState(current.epoch, current.primary, current.standby, current.updated_at,
                                 current.updated_by, node, epoch, f"{by} at {_now_iso()}")
            self._write(state)
            return state

    def _write(self, state: ClusterState) -> None:
        self.storage.makedirs(self.dir)
        self.storage.write_replace(self.state_path, json.dumps(state.to_dict(), indent=1).encode())


def _create_exclusive(path: Path, body: bytes) -> bool:
    """Create path with body, whole or not at all: the body is written and fsynced under a temporary
    name first, then link()ed into place, which refuses an existing name. (O_EXCL + write would leave
    an empty file visible for a moment: a concurrent acquirer read it as corrupt and broke it.)"""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        return link_new(tmp, path)
    finally:
        unlink_quietly(tmp)


def _touch(path: Path) -> None:
    """Leave a mark at path: 16 bytes written over the old ones in place (no truncation, so a full
    NAS needs no new block; the write makes the NAS set the mtime). Anything else in the way (a
    folder, a `cluster/alive` that is a file) is moved aside first, so that a damaged mark never keeps
    a healthy node from renewing its belief."""
    body = secrets.token_hex(8).encode()
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            os.makedirs(path.parent, exist_ok=True)
            continue
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            _move_aside(path if not path.parent.is_file() else path.parent)
            continue
        try:
            os.pwrite(fd, body, 0)
        finally:
            os.close(fd)
        return
    raise OSError(f"could not leave a mark at {path}")


def _move_aside(path: Path) -> None:
    os.rename(path, path.with_name(f".damaged-{path.name}-{secrets.token_hex(4)}"))


def _silent_for(path: Path, directory: Path) -> float | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    # ctime too: a mark put back with an old mtime (cp -p, rsync -a, a restore) must not look old;
    # on NFS ctime is the server's change time. (sshfs reports no real ctime; its mtime is the write's.)
    touched = max(st.st_mtime, st.st_ctime)
    now = nas_now(directory)
    # sshfs (SFTP v3) gives whole seconds: both stamps may be up to 1 s earlier than the truth.
    grain = 1.0 if float(touched).is_integer() and float(now).is_integer() else 0.01
    return max(0.0, now - touched - grain)


def _read_lock(path: Path, directory: Path) -> tuple[dict | None, float]:
    """The lock's content (None if unreadable) and its age, both clocks the NAS's: the lock file's mtime
    against a probe file's mtime written just now (never this host's clock against the NAS's)."""
    with open(path, "rb") as fh:
        raw = fh.read()
        mtime = os.fstat(fh.fileno()).st_mtime
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if isinstance(info, dict) and info.get("token"):
        return info, 0.0          # readable: its own expiry decides; no age needed (and nothing written)
    return None, nas_now(directory) - mtime


def _break_lock(path: Path, expected_token: str | None) -> None:
    """Remove the lock, but only the one we looked at: rename it aside first, then check its token.
    If someone replaced it in between, put theirs back (link refuses to overwrite a newer one)."""
    aside = path.with_name(f"lock.broken-{secrets.token_hex(6)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        with open(aside, "rb") as fh:
            token = json.loads(fh.read() or b"{}").get("token")
    except (OSError, ValueError):
        token = None
    if token != expected_token:  # (expected None: we looked at an unreadable lock; a valid one is not it)
        try:
            os.link(aside, path)
        except OSError:
            pass
    try:
        os.unlink(aside)
    except OSError:
        pass
