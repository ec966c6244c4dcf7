"""tts-drill: failover drills.

    tts-drill run --plan '{"mode": "switchover", ...}'     the whole drill, on the controller (drill.yml)
    tts-drill verify JOB_ID --env-file /etc/tts/tts.env     check a finished canary (on a TTS node)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import report, run, verify


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
    r = sub.add_parser("run", help="run one drill and write its report on shared storage")
    r.add_argument("--plan", required=True, help="the drill's settings as JSON (drill.yml passes the inventory's)")
    v = sub.add_parser("verify", help="check the finished canary's segments and audio (on a TTS node)")
    v.add_argument("job_id")
    v.add_argument("--env-file", help="the app's environment file (KEY=value lines), e.g. /etc/tts/tts.env")
    args = parser.parse_args(argv)

    if args.command == "verify":
        try:
            if args.env_file:
                os.environ.update(read_env_file(Path(args.env_file)))
            verdict = verify.verify(args.job_id).to_dict()
        except Exception as exc:
            verdict = {"job_id": args.job_id, "ok": False, "reason": f"could not verify: {exc}"}
        print(json.dumps(verdict))
        return 0
    try:
        plan = run.Plan.from_dict(json.loads(args.plan))
    except (ValueError, TypeError, KeyError) as exc:
        print(f"tts-drill: a bad plan: {exc}", file=sys.stderr)
        return 2
    rep = run.Drill(plan).run()
    print(report.markdown(rep))
    return 0 if rep["result"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
