"""Whether this node may hold the entry VIP: the rule vip-manager applies for Patroni, here through a
file keepalived tracks.

keepalived's VRRP cannot tell a dead peer from a cut link: during a cut between the two nodes both
would hold the VIP, and clients sent to the standby wait for a primary it cannot reach. So only the
node that the cluster state names as primary may hold it: the worker writes `0` into the track file
(`TTS_VIP_TRACK_FILE`, keepalived's `track_file` with weight 0) while the state it last read names this
node primary, `1` otherwise; keepalived watches the file (inotify) and puts the VRRP instance into
FAULT, dropping the VIP, the moment it says `1`. What the file says follows the store, never the
node's own health (the track scripts in keepalived.conf see to that).

A state that cannot be read leaves the file as it is: a primary that loses the shared storage keeps
the VIP until it is failed over and fenced (the fence writes `1` and stops keepalived), and a standby
that cannot read the state does not start claiming it.
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
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return True
