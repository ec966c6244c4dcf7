"""`tts-logs` on ctl: one job's story, or the last failover's, from every host's journal in time order.

    tts-logs job <id>     the job's lines on both nodes (accepted, claimed, chunk, resumed, fenced,
                          done...) and what the receiver decided and ran while the job was open
    tts-logs failover     the last failover: the receiver's decision and playbook run, and every TTS
                          line of the nodes from 15 s before the decision to 60 s after

It reads ctl's own journal and the journals the nodes upload to it (`journalctl --merge` includes
/var/log/journal/remote, the journal role). Only lines with a TTS_EVENT field are shown: one per event
that matters, written with journal.fields() by the worker, the web app and the receiver.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from .jobfiles import BadJobId, check_job_id

STORY_EVENTS = ("decision", "playbook")      # the receiver's lines shown beside a job's
BEFORE_S, AFTER_S = 15, 60                   # the failover story's window around the decision


def journal(matches: list[str], since: float | None = None, until: float | None = None,
            last: int | None = None, journalctl: str = "journalctl") -> list[dict]:
    """Entries (journalctl -o json) matching every FIELD=value (one field given twice: either)."""
    argv = [journalctl, "--merge", "--no-pager", "--output=json"]
    if since is not None:
        argv.append(f"--since=@{int(since)}")
    if until is not None:
        argv.append(f"--until=@{int(until) + 1}")
    if last is not None:
        argv += ["--reverse", f"--lines={last}"]
    res = subprocess.run(argv + matches, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0 and not res.stdout:
        raise RuntimeError(f"journalctl failed: {res.stderr.strip()[-300:]}")
    entries = []
    for line in res.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def at(entry: dict) -> float:
    return int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6


def text(value: object) -> str:
    """journalctl -o json writes a binary value as a list of byte values, and a field the entry has
    more than once as a list of its values."""
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return bytes(value).decode("utf-8", "replace")
        return " | ".join(text(v) for v in value)
    return str(value or "")


def line(entry: dict) -> str:
    """One entry: time, host, program, epoch, event, message."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(at(entry))) + f".{int(at(entry) * 1000) % 1000:03d}"
    host = text(entry.get("TTS_NODE") or entry.get("_HOSTNAME") or "?")
    epoch = text(entry.get("TTS_EPOCH", "")) or "-"
    return (f"{stamp}  {host:<8} {text(entry.get('SYSLOG_IDENTIFIER', '')):<13} epoch {epoch:<3} "
            f"{text(entry.get('TTS_EVENT', '')):<9} {text(entry.get('MESSAGE', ''))}")


def story(entries: list[dict]) -> list[str]:
    """Events only, each once, in time order."""
    seen, out = set(), []
    for entry in sorted(entries, key=at):
        key = (entry.get("__CURSOR"), entry.get("__REALTIME_TIMESTAMP"), text(entry.get("MESSAGE")))
        if "TTS_EVENT" in entry and key not in seen:
            seen.add(key)
            out.append(line(entry))
    return out


def job_story(job_id: str, read=journal) -> list[str]:
    own = read([f"TTS_JOB={job_id}"])
    if not own:
        return []
    start, end = min(map(at, own)), max(map(at, own))
    meanwhile = read([f"TTS_EVENT={event}" for event in STORY_EVENTS], since=start - 5, until=end + 5)
    return story(own + meanwhile)


def failover_story(read=journal) -> list[str]:
    last = read(["TTS_EVENT=decision", "TTS_ACTION=failover"], last=1)
    if not last:
        return []
    t = at(last[0])
    return story(read([], since=t - BEFORE_S, until=t + AFTER_S))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-logs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    j = sub.add_parser("job", help="one job's story across both nodes and the receiver")
    j.add_argument("job_id")
    sub.add_parser("failover", help="the last failover's story")
    args = parser.parse_args(argv)
    try:
        if args.command == "job":
            check_job_id(args.job_id)
            lines = job_story(args.job_id)
            missing = f"no journal lines for job {args.job_id} (older than the journals keep, or never here)"
        else:
            lines = failover_story()
            missing = "no failover decision in the journals"
    except BadJobId as exc:
        print(f"tts-logs: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"tts-logs: {exc}", file=sys.stderr)
        return 1
    if not lines:
        print(f"tts-logs: {missing}", file=sys.stderr)
        return 1
    print("# times in UTC; host, program, epoch, event, message")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
