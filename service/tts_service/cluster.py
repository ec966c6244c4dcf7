"""The cluster state on shared storage: who is primary, in which epoch, and the lock that guards it.

    <shared>/cluster/state.json  {"epoch": 7, "primary": "tts-a", "standby": "tts-b",
                                  "updated_at": "...", "updated_by": "failover.yml"}
    <shared>/cluster/lock        {"holder": "...", "token": "...", "expires_at": <unix time>}

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .storage import Storage, StorageUnavailable

NODE_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


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

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterState":
        try:
            epoch = int(data["epoch"])
            primary = validate_node(data["primary"])
        except (KeyError, TypeError, ValueError, ClusterError) as exc:
            raise ClusterError(f"cluster state is malformed: {exc}") from exc
        standby = data.get("standby")
        return cls(epoch, primary, standby if standby else None,
                   str(data.get("updated_at", "")), str(data.get("updated_by", "")))

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "primary": self.primary, "standby": self.standby,
                "updated_at": self.updated_at, "updated_by": self.updated_by}


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    def __init__(self, storage: Storage, cluster_dir: Path):
        self.storage = storage
        self.dir = Path(cluster_dir)
        self.state_path = self.dir / "state.json"
        self.lock_path = self.dir / "lock"

    # ---- reading ----

    def read(self) -> ClusterState | None:
        """The current state, None if none was ever written. StorageUnavailable if unreadable."""
        try:
            data = self.storage.read_json(self.state_path)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{self.state_path} is not valid JSON: {exc}") from exc
        return ClusterState.from_dict(data)

    # ---- the lock ----

    def acquire_lock(self, holder: str, ttl_s: float = 60.0) -> str:
        """Take the cluster lock; returns a token for release. LockHeld if someone else holds it."""
        self.storage.makedirs(self.dir)
        token = secrets.token_hex(16)
        body = json.dumps({"holder": holder, "token": token, "expires_at": time.time() + ttl_s,
                           "taken_at": _now_iso()}).encode()
        if self.storage.call(_create_exclusive, self.lock_path, body):
            return token
        current = self.lock_info()
        if current is not None and current.get("expires_at", 0) > time.time():
            raise LockHeld(f"the cluster lock is held by {current.get('holder')!r} "
                           f"until {datetime.fromtimestamp(current['expires_at'], timezone.utc):%H:%M:%S}Z")
        if current is not None:  # expired (or corrupt): break exactly that lock, then try once more
            self.storage.call(_break_lock, self.lock_path, current.get("token"))
        if self.storage.call(_create_exclusive, self.lock_path, body):
            return token
        raise LockHeld("the cluster lock was taken by someone else while breaking an expired one")

    def release_lock(self, token: str) -> bool:
        info = self.lock_info()
        if info is None or info.get("token") != token:
            return False
        self.storage.call(_break_lock, self.lock_path, token)
        return True

    def lock_info(self) -> dict | None:
        try:
            return self.storage.read_json(self.lock_path)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"holder": "?", "token": None, "expires_at": 0}

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

    def promote(self, node: str, expect_epoch: int, by: str, lock_token: str | None = None) -> ClusterState:
        """Compare-and-swap: make `node` primary of epoch expect_epoch+1, only if the epoch is expect_epoch.
        Takes the lock for the change, or uses the one `lock_token` already holds."""
        validate_node(node)
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

    def _write(self, state: ClusterState) -> None:
        self.storage.makedirs(self.dir)
        self.storage.write_replace(self.state_path, json.dumps(state.to_dict(), indent=1).encode())


def _create_exclusive(path: Path, body: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except PermissionError:
        if os.path.exists(path):  # sshfs: a lost O_EXCL race can read as EPERM
            return False
        raise
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


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
    if expected_token is not None and token != expected_token:
        try:
            os.link(aside, path)
        except OSError:
            pass
    try:
        os.unlink(aside)
    except OSError:
        pass
