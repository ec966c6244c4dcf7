"""`tts-cluster`: the only tool that changes the cluster state on shared storage.

    tts-cluster status                              print state.json (exit 3 if none exists)
    tts-cluster init NODE [--standby OTHER]         first state, epoch 1, only when none exists
    tts-cluster promote NODE --expect-epoch N [--lock-token T]
                                                    compare-and-swap: epoch N -> N+1, NODE primary
    tts-cluster confirm-fenced NODE --epoch N [--lock-token T]
                                                    record that NODE, the standby (old primary) of
                                                    epoch N, had its units stopped after N was written
    tts-cluster lock --holder WHO [--ttl S]         take the shared lock, print its token
    tts-cluster unlock TOKEN                        release it
    tts-cluster holds TOKEN                         exit 0 if the lock is held with TOKEN now, 1 if not
    tts-cluster run-locked --holder WHO [--ttl S] [--max-seconds M] -- COMMAND [ARG...]
                                                    take the lock, run COMMAND with its token in
                                                    TTS_LOCK_TOKEN, renew it every S/3 while COMMAND
                                                    runs, release it once COMMAND (and whatever it
                                                    left running) ended; exits with COMMAND's status
                                                    (lockkeeper.py)

Exit codes: 0 done; 1 refused (wrong epoch, state exists, lock held); 2 storage unreachable or bad
arguments; 3 no state yet; run-locked: COMMAND's own (128 + N when a signal N ended it, 124 when it
ran past --max-seconds), 127 when it cannot be started. Output is JSON on stdout, the reason on stderr.
The shared folder comes from --shared-dir or TTS_SHARED_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .cluster import MAX_LOCK_TTL_S, STORAGE_FORMAT, Cluster, ClusterError
from .config import storage_timeout_from_env
from .lockkeeper import run_locked
from .storage import Storage, StorageUnavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tts-cluster", description="Read or change the TTS cluster state.")
    parser.add_argument("--shared-dir", default=os.environ.get("TTS_SHARED_DIR", "/mnt/nas/tts"))
    parser.add_argument("--timeout", type=float, default=storage_timeout_from_env())
    parser.add_argument("--by", default=os.environ.get("TTS_CLUSTER_ACTOR", "tts-cluster"),
                        help="who makes the change (recorded as updated_by)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    init = sub.add_parser("init")
    init.add_argument("node")
    init.add_argument("--standby")
    promote = sub.add_parser("promote")
    promote.add_argument("node")
    promote.add_argument("--expect-epoch", type=int, required=True)
    promote.add_argument("--lock-token", help="promote under a lock already taken with `tts-cluster lock`")
    confirm = sub.add_parser("confirm-fenced")
    confirm.add_argument("node")
    confirm.add_argument("--epoch", type=int, required=True)
    confirm.add_argument("--lock-token")
    lock = sub.add_parser("lock")
    lock.add_argument("--holder", required=True)
    lock.add_argument("--ttl", type=float, default=300.0)
    unlock = sub.add_parser("unlock")
    unlock.add_argument("token")
    holds = sub.add_parser("holds")
    holds.add_argument("token")
    locked = sub.add_parser("run-locked")
    locked.add_argument("--holder", required=True)
    locked.add_argument("--ttl", type=float, default=30.0)
    locked.add_argument("--max-seconds", type=float, default=3600.0,
                        help="stop COMMAND (SIGTERM, exit 124) if it runs longer: a hung run keeps nobody out for ever")
    locked.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shared = Path(args.shared_dir)
    storage = Storage(shared, timeout=args.timeout, threads=2)
    cluster = Cluster(storage, shared / "cluster")
    try:
        if args.command == "status":
            state = cluster.read()
            if state is None:
                print(f"no cluster state at {cluster.state_path}", file=sys.stderr)
                return 3
            _print(state.to_dict())
        elif args.command == "init":
            _print(cluster.init(args.node, args.standby, args.by).to_dict())
        elif args.command == "promote":
            _print(cluster.promote(args.node, args.expect_epoch, args.by, lock_token=args.lock_token,
                                   understands=STORAGE_FORMAT).to_dict())
        elif args.command == "confirm-fenced":
            _print(cluster.confirm_fenced(args.node, args.epoch, args.by, lock_token=args.lock_token).to_dict())
        elif args.command == "lock":
            if not 0 < args.ttl <= MAX_LOCK_TTL_S:
                raise ClusterError(f"--ttl must be between 0 and {MAX_LOCK_TTL_S:g} s (hold it longer "
                                   "with run-locked)")
            _print({"token": cluster.acquire_lock(args.holder, args.ttl)})
        elif args.command == "unlock":
            if not cluster.release_lock(args.token):
                print("that lock is not held (expired or taken by someone else)", file=sys.stderr)
                return 1
            _print({"released": True})
        elif args.command == "holds":
            held = cluster.holds_lock(args.token)
            _print({"held": held, "holder": cluster.lock_holder()})
            return 0 if held else 1
        elif args.command == "run-locked":
            return _run_locked(cluster, args)
    except ClusterError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except (StorageUnavailable, OSError) as exc:
        print(f"storage unavailable: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_locked(cluster: Cluster, args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("run-locked needs a command: tts-cluster run-locked --holder WHO -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    if not 0 < args.ttl <= MAX_LOCK_TTL_S:
        raise ClusterError(f"--ttl must be between 0 and {MAX_LOCK_TTL_S:g} s")
    status, said = run_locked(cluster, args.holder, args.ttl, cmd, args.max_seconds)
    print(f"tts-cluster run-locked: {said}", file=sys.stderr)
    return status


def _print(data: dict) -> None:
    print(json.dumps(data))


if __name__ == "__main__":
    sys.exit(main())
