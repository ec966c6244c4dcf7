"""tts-drill: the drill's helpers, called by playbooks/drill.yml.

    tts-drill watch --vip http://10.89.60.100 --target tts-b --out /tmp/d/watch.json [--turns 12]
    tts-drill verify JOB_ID --env-file /etc/tts/tts.env     (on a TTS node)
    tts-drill report --meta M --watch W --verify V --receiver R --out-dir D
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from .. import journal
from . import report, verify, watch


def _load(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        value = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile syntax, the subset our templates write: KEY=value, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip().strip('"')
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-drill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="submit the canary through the VIP and watch it to the end")
    w.add_argument("--vip", required=True)
    w.add_argument("--target", required=True, help="the node that should end up running the canary")
    w.add_argument("--out", required=True)
    w.add_argument("--turns", type=int, default=12)
    w.add_argument("--timeout", type=float, default=900)
    v = sub.add_parser("verify", help="check the finished canary's segments and audio (on a TTS node)")
    v.add_argument("job_id")
    v.add_argument("--env-file", help="the app's environment file (KEY=value lines), e.g. /etc/tts/tts.env")
    r = sub.add_parser("report", help="write drills/<id>.json and .md from what the drill gathered")
    r.add_argument("--meta", required=True)
    r.add_argument("--watch")
    r.add_argument("--verify")
    r.add_argument("--receiver")
    r.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)

    if args.command == "watch":
        obs = watch.Watcher(args.vip, args.target, Path(args.out), turns=args.turns, timeout=args.timeout).run()
        print(json.dumps({"job_id": obs.job_id, "error": obs.error}))
        return 0 if not obs.error else 1
    if args.command == "verify":
        try:
            if args.env_file:
                os.environ.update(read_env_file(Path(args.env_file)))
            verdict = verify.verify(args.job_id).to_dict()
        except Exception as exc:  # noqa: BLE001 - the verdict carries the reason to the report
            verdict = {"job_id": args.job_id, "ok": False, "reason": f"could not verify: {exc}"}
        print(json.dumps(verdict))
        return 0
    meta = _load(args.meta)
    if meta is None:
        print(f"tts-drill: cannot read {args.meta}", file=sys.stderr)
        return 2
    rep = report.build(meta, _load(args.watch), _load(args.verify), _load(args.receiver))
    js, md = report.write(rep, Path(args.out_dir))
    before = rep.get("before") or {}
    journal.send("tts-drill", socket.gethostname(),
                 f"drill {rep['id']} ({rep['mode']}): {rep['result']}"
                 + (f", RTO {rep['rto_s']:.1f} s" if rep.get("rto_s") is not None else "")
                 + (f"; {rep['error']}" if rep.get("error") else "") + f" (report {md})",
                 event="drill", epoch=before.get("epoch"), job=(rep.get("canary") or {}).get("job_id"),
                 result=rep["result"])
    print(json.dumps({"result": rep["result"], "json": str(js), "md": str(md), "rto_s": rep["rto_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
