"""Structured journal lines (journal.py) over a real datagram socket in journald's native protocol, and
how tts-logs (logs_cli.py) puts a job's and a failover's story together from journal entries."""
import json
import logging
import socket
import struct
import time

import pytest
from tts_service import journal, logs_cli


def parse(datagram: bytes) -> dict[str, str]:
    """journald's native protocol, read the way journald reads it."""
    out, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        head = datagram[i:nl]
        if b"=" in head:
            key, value = head.split(b"=", 1)
            i = nl + 1
        else:
            key, size = head, struct.unpack("<Q", datagram[nl + 1:nl + 9])[0]
            value = datagram[nl + 9:nl + 9 + size]
            assert datagram[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        out[key.decode()] = value.decode()
    return out


@pytest.fixture
def journald(tmp_path):
    """A datagram socket standing where journald's would: what the handler sends arrives here."""
    path = str(tmp_path / "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_a_line_carries_its_job_epoch_event_and_node(journald):
    path, sock = journald
    handler = journal.JournalHandler("tts-worker", "tts-b", path)
    logger = logging.getLogger("test.journal")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.warning("job %s: chunk %d committed", "ab12", 7, extra=journal.fields(job="ab12", epoch=4, event="chunk"))
        logger.info("no fields")
    finally:
        logger.removeHandler(handler)
        handler.close()
    entry = parse(sock.recv(65536))
    assert entry == {"MESSAGE": "job ab12: chunk 7 committed", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "tts-worker",
                     "LOGGER": "test.journal", "TTS_NODE": "tts-b", "TTS_JOB": "ab12", "TTS_EPOCH": "4",
                     "TTS_EVENT": "chunk"}
    plain = parse(sock.recv(65536))
    assert "TTS_JOB" not in plain and plain["TTS_NODE"] == "tts-b" and plain["PRIORITY"] == "6"


def test_a_one_shot_entry_goes_to_journald_and_is_nothing_without_it(journald, tmp_path):
    path, sock = journald
    assert journal.send("tts-drill", "ctl", "drill 1 (switchover): succeeded", path=path, event="drill", epoch=7,
                        job=None)
    entry = parse(sock.recv(65536))
    assert (entry["SYSLOG_IDENTIFIER"], entry["TTS_EVENT"], entry["TTS_EPOCH"], entry["TTS_NODE"]) == \
        ("tts-drill", "drill", "7", "ctl") and "TTS_JOB" not in entry
    assert journal.send("tts-drill", "ctl", "nobody listens", path=str(tmp_path / "absent")) is False


def test_a_journald_that_cannot_keep_up_loses_lines_but_never_holds_the_caller(journald):
    path, _sock = journald                                 # bound, never read: its queue fills up
    handler = journal.JournalHandler("tts-receiver", "ctl", path)
    logger = logging.getLogger("test.journal.full")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for n in range(3000):
            logger.info("decision %d", n, extra=journal.fields(event="decision"))
        assert time.monotonic() - started < 5
        assert 0 < handler.dropped < 3000
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_multi_line_message_is_sent_with_its_length():
    entry = {"MESSAGE": "Traceback:\n  line 1\n", "TTS_JOB": "x"}
    assert parse(journal.encode(entry)) == entry


def test_without_journald_the_lines_go_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = journal.setup("tts-worker", "tts-a", "INFO")
    try:
        assert isinstance(handler, logging.StreamHandler) and not journal.under_journald()
        logging.getLogger("tts.test").info("hello", extra=journal.fields(job="j1"))
        assert "hello" in capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)


def entry(t, message, **fields):
    return {"__REALTIME_TIMESTAMP": str(int(t * 1e6)), "MESSAGE": message, "SYSLOG_IDENTIFIER": "tts-worker",
            **{f"TTS_{k.upper()}": str(v) for k, v in fields.items()}}


class Journal:
    """Entries filtered as journalctl filters them: every FIELD=value, a field given twice is either
    value; since/until in seconds; last=N the newest N."""
    def __init__(self, entries):
        self.entries = entries

    def __call__(self, matches, since=None, until=None, last=None):
        wanted = {}
        for match in matches:
            key, value = match.split("=", 1)
            wanted.setdefault(key, set()).add(value)
        found = [e for e in self.entries if all(e.get(k) in v for k, v in wanted.items())
                 and (since is None or logs_cli.at(e) >= int(since)) and (until is None or logs_cli.at(e) < int(until) + 1)]
        found.sort(key=logs_cli.at)
        return found[::-1][:last] if last else found


JOB = "0123456789abcdef0123456789abcdef"
T = 1_800_000_000.0
LINES = [
    entry(T + 0.0, f"job {JOB}: accepted", job=JOB, epoch=3, event="accepted", node="tts-a"),
    entry(T + 1.0, f"job {JOB}: claimed at epoch 3", job=JOB, epoch=3, event="claimed", node="tts-a"),
    entry(T + 11.0, f"job {JOB}: chunk 0 committed", job=JOB, epoch=3, event="chunk", node="tts-a"),
    entry(T + 14.0, "TTSNodeDown tts-a firing: failing over to tts-b because ...", epoch=3, event="decision",
          action="failover", node="ctl"),
    entry(T + 15.0, "failover.yml #4 started for tts-b", epoch=3, event="playbook", node="ctl"),
    entry(T + 21.0, f"job {JOB}: claimed at epoch 4", job=JOB, epoch=4, event="claimed", node="tts-b"),
    entry(T + 20.0, "worker for node tts-b", node="tts-b"),                        # no event: not shown
    entry(T + 40.0, f"job {JOB}: finished", job=JOB, epoch=4, event="done", node="tts-b"),
    entry(T + 400.0, "TTSNodeDown tts-b firing: not now", epoch=4, event="decision", action="none", node="ctl"),
    entry(T + 30.0, "job ffff: claimed", job="f" * 32, epoch=4, event="claimed", node="tts-b"),  # another job
]


def test_a_jobs_story_is_both_nodes_and_what_the_receiver_did_meanwhile_in_time_order():
    lines = logs_cli.job_story(JOB, read=Journal(LINES))
    assert [line.split()[1] for line in lines] == ["tts-a", "tts-a", "tts-a", "ctl", "ctl", "tts-b", "tts-b"]
    assert "failing over to tts-b" in lines[3] and "epoch 4" in lines[5] and lines[-1].endswith("finished")
    assert not any("ffff" in line or "not now" in line for line in lines)


def test_the_failover_story_is_the_window_around_the_last_failover_decision():
    lines = logs_cli.failover_story(read=Journal(LINES))
    assert lines[0].split()[1] == "tts-a" and any("failing over" in line for line in lines)
    assert any("job ffff: claimed" in line for line in lines)        # every TTS event of the window
    assert not any("not now" in line for line in lines)              # 386 s later: outside it


def test_nothing_to_tell_is_said_and_a_bad_job_id_is_refused(capsys):
    assert logs_cli.job_story(JOB, read=Journal([])) == []
    assert logs_cli.main(["job", "../etc/passwd"]) == 2
    assert "not a job id" in capsys.readouterr().err


def test_journalctl_json_is_read_including_binary_values(tmp_path):
    fake = tmp_path / "journalctl"
    rows = [entry(T, "hello", event="x"), {**entry(T + 1, "", event="y"), "MESSAGE": list(b"caf\xc3\xa9")}]
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{json.dumps(r)}'\n" for r in rows))
    fake.chmod(0o755)
    entries = logs_cli.journal(["TTS_EVENT=x"], journalctl=str(fake))
    assert [logs_cli.text(e["MESSAGE"]) for e in entries] == ["hello", "café"]
    assert logs_cli.text(["twice", "over"]) == "twice | over"       # a field the entry has twice
