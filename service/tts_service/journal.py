"""Log lines with structured journal fields: TTS_NODE on every line, TTS_JOB / TTS_EPOCH / TTS_EVENT
on the lines that tell a job's or a failover's story (claimed, chunk committed, fenced, resumed,
decision, playbook run). `tts-logs` on ctl reads them from every host's journal (journal role).

A line gets its fields from `extra=fields(job=..., epoch=..., event=...)`. Under systemd (the unit's
stderr is the journal: JOURNAL_STREAM) records go to journald over its native protocol, so the fields
are searchable (`journalctl TTS_JOB=<id>`); elsewhere (tests, `make serve`) they are plain lines.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import sys

SOCKET = "/run/systemd/journal/socket"
PLAIN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# journald's own limit on a datagram is larger; a log line over this many bytes is cut to fit.
MAX_MESSAGE = 48 * 1024

# logging level -> syslog priority
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def fields(**values: object) -> dict:
    """`extra=` for a log call: fields(job=job_id, epoch=3, event="claimed") -> TTS_JOB, TTS_EPOCH, ..."""
    return {"tts": {k: v for k, v in values.items() if v is not None}}


def encode(entry: dict[str, str]) -> bytes:
    """journald's native protocol: KEY=value lines; a value with a newline as KEY, length, bytes."""
    out = bytearray()
    for key, value in entry.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry with the TTS_* fields of its `extra=fields(...)`."""

    def __init__(self, identifier: str, node: str, path: str = SOCKET):
        super().__init__()
        self.identifier, self.node, self.path = identifier, node, path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dropped = 0   # lines journald had no room for

    def entry(self, record: logging.LogRecord) -> dict[str, str]:
        message = self.format(record).encode("utf-8", "replace")[:MAX_MESSAGE].decode("utf-8", "ignore")
        entry = {"MESSAGE": message,
                 "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                 "SYSLOG_IDENTIFIER": self.identifier,
                 "LOGGER": record.name,
                 "TTS_NODE": self.node}
        for key, value in (getattr(record, "tts", None) or {}).items():
            entry[f"TTS_{key.upper()}"] = str(value)
        return entry

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Never waits: a journald that cannot keep up loses this line, the caller (a failover
            # decision, a chunk commit) is not held up by it.
            self.sock.sendto(encode(self.entry(record)), socket.MSG_DONTWAIT, self.path)
        except BlockingIOError:
            self.dropped += 1
        except Exception:   # a log line never takes the service down
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def send(identifier: str, node: str, message: str, path: str = SOCKET, **values: object) -> bool:
    """One entry straight to journald, whatever this process's stderr is (the drill's steps run under
    ansible, not a unit). False, and nothing else, when journald is not there."""
    if not os.path.exists(path):
        return False
    handler = JournalHandler(identifier, node, path)
    try:
        record = logging.LogRecord("tts", logging.INFO, __file__, 0, message, None, None)
        record.tts = {k: v for k, v in values.items() if v is not None}
        handler.sock.sendto(encode(handler.entry(record)), socket.MSG_DONTWAIT, path)
        return True
    except OSError:
        return False
    finally:
        handler.close()


def under_journald() -> bool:
    """True when this process's stderr is the journal (systemd sets JOURNAL_STREAM) and journald listens."""
    return bool(os.environ.get("JOURNAL_STREAM")) and os.path.exists(SOCKET)


def setup(identifier: str, node: str, level: str | int = "INFO") -> logging.Handler:
    """The root logger's one handler: the journal with fields under systemd, stderr otherwise."""
    if under_journald():
        handler: logging.Handler = JournalHandler(identifier, node)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
