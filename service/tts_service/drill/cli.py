"""tts-drill: failover drills.

    tts-drill run --plan-file /etc/tts-receiver/drill-plan.json [--mode M] [--turns N]
                                                            the whole drill, on the controller (tts-drill-run,
                                                            drill.yml); the plan the failover_drill role wrote
    tts-drill run --plan '{"mode": "switchover", ...}'     the same with the plan given inline
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
    given = r.add_mutually_exclusive_group(required=True)
    given.add_argument("--plan-file", type=Path, help="the drill's settings as JSON (the failover_drill role writes it)")
    given.add_argument("--plan", help="the drill's settings as JSON, inline")
    r.add_argument("--mode", choices=run.MODES, help="the plan's mode for this drill")
    r.add_argument("--turns", type=int, help="the canary job's turns for this drill")
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
        data = json.loads(args.plan_file.read_text() if args.plan_file else args.plan)
        data.update({key: value for key, value in (("mode", args.mode), ("turns", args.turns)) if value is not None})
        plan = run.Plan.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"tts-drill: a bad plan: {exc}", file=sys.stderr)
        return 2
    rep = run.Drill(plan).run()
    print(report.markdown(rep))
    return 0 if rep["result"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
