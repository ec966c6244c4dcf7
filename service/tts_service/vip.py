"""Whether this node may hold the entry VIP: the rule vip-manager applies for Patroni, here through a
file keepalived tracks.

keepalived's VRRP cannot tell a dead peer from a cut link: during a cut between the two nodes both
would hold the VIP, and clients sent to the standby wait for a primary it cannot reach. So only the
node that the cluster state names as primary may hold it: the worker writes `0` into the track file
(`TTS_VIP_TRACK_FILE`, keepalived's `track_file` with weight 0) while the state it last read names this
node primary, `1` otherwise; keepalived watches the file (inotify) and puts the VRRP instance into
FAULT, dropping the VIP, the moment it says `1`. What the file says follows the store, never the
node's own health (the track scripts in keepalived.conf see to that).

A belief that is no longer fresh (no successful read of the state for TTS_STATE_MAX_AGE, 5 s) says `1`:
such a node is fenced and serves no one, and a primary that was paused (or cut off) while the pair failed
over must not take the VIP back when it resumes with a higher VRRP priority before it can read the new
epoch. The cost: with the shared storage lost by both nodes nobody holds the VIP (nothing could be served
or written then anyway). One failed read alone changes nothing. A missing file counts as 0 for
keepalived: never delete it by hand (write 1 into it).
"""
from __future__ import annotations

import os
from pathlib import Path

MAY_HOLD = "0"       # keepalived track_file, weight 0: 0 is healthy ...
MAY_NOT_HOLD = "1"   # ... and anything else puts the instance into FAULT


def track_value(primary: str | None, node: str) -> str:
    return MAY_HOLD if primary is not None and primary == node else MAY_NOT_HOLD


def sync_track_file(path: Path, value: str) -> bool:
    """Make the track file say `value`; True if it had to be written. Written only when it says
    something else (keepalived re-reads it on every write), whole (temp file, then rename: keepalived
    never reads half a value)."""
    try:
        if path.read_text().strip() == value:
            return False
    except (OSError, UnicodeDecodeError):   # missing, or made root-only by keepalived: replace it
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(value + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True
