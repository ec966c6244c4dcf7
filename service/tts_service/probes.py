"""Health endpoints for probes and proxies: /health, /ready, /peer/<node>/ready, /primary, /standby
(/metrics is metrics.py's).

/ready answers "is this node fit for its role?" (docs/contracts.md): 200 for a healthy primary and for a
healthy standby, 503 otherwise, always with the JSON that says why.
"""
from __future__ import annotations

import socket
import time

import redis
from flask import Blueprint, current_app, jsonify

from . import __version__, heartbeat
from .jobfiles import STORAGE_FORMAT
from .node import ask_ready
from .runtime import Runtime
from .storage import StorageUnavailable

bp = Blueprint("probes", __name__)


def _rt() -> Runtime:
    return current_app.extensions["tts"]


def redis_fits_role(info: dict, role: str, topology: str, require_link: bool = True) -> tuple[bool, str]:
    """In a pair, the primary's Redis must be a master and the standby's a replica with a live link.
    For promotion (/standby) the link may be down: the primary being gone is why we promote."""
    redis_role = info.get("role")
    if role == "primary" and redis_role != "master":
        return False, "local Redis is a replica, but this node is the primary"
    if topology == "pair" and role == "standby":
        if redis_role != "slave":
            return False, "local Redis is a master, but this node is the standby (rejoin it)"
        if require_link and info.get("master_link_status") != "up":
            return False, f"local Redis has no live link to the primary's ({info.get('master_host')})"
    return True, "ok"


def redis_refuses_writes(rt: Runtime) -> str | None:
    """Why the local Redis master refuses writes (full at maxmemory with noeviction, a failed save with
    stop-writes-on-bgsave-error), or None: one small write tells, whatever the cause. A node whose
    Redis takes no writes could accept jobs but never run them: it says so instead."""
    try:
        rt.redis.set(f"tts:probe:{rt.settings.node}", "1", px=60000)
    except redis.ResponseError as exc:
        return f"local Redis refuses writes: {exc}"
    return None


def users_listener_down(address: str, timeout: float = 0.3) -> str | None:
    """Why the users' listener (tts-api) takes no connections, or None. A TCP connect, not a request:
    the kernel accepts while the process listens, however busy its threads are with users, so a flood
    of users can never make this node look down."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return f"the users' listener (tts-api at {address}) takes no connections: {exc}"
    return None


def readiness(rt: Runtime, for_promotion: bool = False) -> tuple[bool, dict]:
    settings = rt.settings
    stall = settings.storage_stall_s
    asked = time.monotonic()
    rt.space.poke()                      # beside the renewal: /ready waits for both at once
    belief = rt.node.belief()
    space = rt.space.ask(max(0.0, rt.node.wait_s - (time.monotonic() - asked)))   # one wait for both
    # Since the NAS last answered this process anything (a renewal or a free-space read).
    heard_s = min(belief.silent_s, space.silent_s(time.monotonic()))
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    checks["state"] = belief.fresh and belief.state is not None and belief.error is None
    if not checks["state"]:
        # Unfit as soon as a renewal fails, not only once the belief it still holds ages out (the
        # fencing itself keeps using the belief's age: that bound is what makes it safe).
        reasons.append(belief.why_fenced() if not belief.fresh or belief.state is None
                       else f"the last renewal of this node's mark failed: {belief.error}")
    elif min(belief.pending_s, heard_s) > stall:
        # ... or stops coming back, while the mount answers nothing else either: a NAS cut off from this
        # node. One that comes back late (while other calls are answered) is slow, not gone.
        checks["state"] = False
        reasons.append(f"shared storage has not answered this node's renewal for {belief.pending_s:.1f} s "
                       f"(limit {stall:g} s)")
    elif not belief.member:
        reasons.append(f"{settings.node} is not a member of the cluster ({belief.state.primary}, "
                       f"{belief.state.standby})")
        checks["state"] = False

    checks["storage"] = False
    if min(space.running_s, heard_s) > stall:
        reasons.append(f"shared storage has not said how much space is free for {space.running_s:.1f} s "
                       f"(limit {stall:g} s)")
    elif isinstance(space.error, (StorageUnavailable, OSError)):
        reasons.append(f"shared storage is unavailable: {space.error}")
    elif space.error is not None:
        reasons.append(f"the free-space read of shared storage failed: {type(space.error).__name__}: {space.error}")
    elif not space.answered:
        reasons.append("shared storage has not said how much space is free yet")
    elif space.value[0] < settings.storage_min_free_bytes:
        reasons.append(f"shared storage has only {space.value[0]} bytes free")
    else:
        checks["storage"] = True

    try:
        info = rt.redis.info("replication")
        ok, why = redis_fits_role(info, belief.role, settings.redis_topology, require_link=not for_promotion)
        if ok and info.get("role") == "master":
            why = redis_refuses_writes(rt)
            ok = why is None
        checks["redis"] = ok
        if not ok:
            reasons.append(why)
    except redis.RedisError as exc:
        checks["redis"] = False
        reasons.append(f"Redis is unreachable: {exc}")

    if settings.api_address:
        why = users_listener_down(settings.api_address)
        checks["api"] = why is None
        if why:
            reasons.append(why)

    hb, why = heartbeat.read(heartbeat.heartbeat_path(settings.run_dir, settings.node))
    # A stopping worker (SIGTERM: it finishes its chunk and hands its job back) keeps a primary serving:
    # a planned switchover promotes the standby right after, and jobs accepted meanwhile wait on
    # storage. A standby whose worker stops is not fit for promotion. A worker that stays stopped is
    # seen anyway once its heartbeat is stale.
    checks["worker"] = hb is not None and (belief.role == "primary" or not hb.get("stopping"))
    if hb is None:
        reasons.append(why)
    checks["engine"] = bool(hb and hb.get("engine_loaded"))
    if hb is not None and not checks["engine"]:
        reasons.append(f"the {settings.engine} engine is not loaded: {hb.get('engine_error') or 'loading'}")

    ready = all(checks.values())
    if ready:
        reason = (f"healthy primary of epoch {belief.epoch}" if belief.role == "primary"
                  else f"healthy standby following {belief.state.primary} in epoch {belief.epoch}")
    else:
        reason = "; ".join(reasons)
    body = {
        "node": settings.node, "role": belief.role, "epoch": belief.epoch, "fenced": belief.fenced,
        "checks": checks, "reason": reason, "engine": settings.engine,
        "engine_pace": settings.engine_pace, "state_age_s": round(belief.age_s, 3) if belief.fresh else None,
        "storage_waiting_s": round(max(belief.pending_s, space.running_s), 3),
        "version": __version__, "storage_format": STORAGE_FORMAT,
    }
    return ready, body


@bp.get("/health")
def health():
    return jsonify({"status": "ok", "node": _rt().settings.node})


@bp.get("/ready")
def ready():
    ok, body = readiness(_rt())
    return jsonify(body), 200 if ok else 503


@bp.get("/peer/<node>/ready")
def peer_ready(node: str):
    """Witness probe: this node asks a peer's /ready itself (the receiver asks the standby about the
    primary, over a path that avoids the monitor's). Only configured peers can be named."""
    url = _rt().settings.peer_urls().get(node)
    if url is None:
        return jsonify({"error": f"{node[:64]!r} is not a configured peer"}), 404
    status, body, error = ask_ready(url, timeout=_rt().settings.witness_timeout_s)
    if error is not None:
        return jsonify({"node": node, "ready": False, "status": None, "error": error})
    return jsonify({"node": node, "ready": status == 200, "status": status,
                    "checks": body.get("checks"), "reason": body.get("reason")})


@bp.get("/primary")
def primary():
    ok, body = readiness(_rt())
    ok = ok and body["role"] == "primary" and not body["fenced"]
    return jsonify(body), 200 if ok else 503


@bp.get("/standby")
def standby():
    """A healthy standby, fit to be promoted (its replica link may be down: the primary may be gone)."""
    ok, body = readiness(_rt(), for_promotion=True)
    ok = ok and body["role"] == "standby"
    return jsonify(body), 200 if ok else 503
