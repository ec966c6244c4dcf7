"""Is this host's clock synchronised? What the kernel says (adjtimex, read only: no privilege, no
daemon asked), as `timedatectl`'s NTPSynchronized does: whichever NTP daemon disciplines the clock
(chrony here, the time_sync role) clears the kernel's "unsynchronised" flag while it does.

The pair's safety does not rest on it (its decisions compare shared storage's own timestamps, never
two hosts' clocks: docs/design.md), but the cluster lock's expiry, the alerts' and the journal's times
do; /metrics exports it and TTSClockNotSynchronised tells the operators.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

TIME_ERROR = 5        # ntp_adjtime's answer while the clock is not synchronised
STA_UNSYNC = 0x0040   # status: the clock is not synchronised
STA_NANO = 0x2000     # status: offset and maxerror in nanoseconds (maxerror stays in microseconds)


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux, glibc), modes 0: read only."""
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
                ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
                ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11)]


@dataclass(frozen=True)
class Clock:
    synchronised: bool
    max_error_s: float     # the kernel's bound on the clock's error (16 s: it knows nothing)
    why: str


def judge(answer: int, status: int, maxerror_us: int) -> Clock:
    """What one ntp_adjtime() answer means (pure: the tests give it every case)."""
    error = maxerror_us / 1e6
    if answer < 0:
        return Clock(False, error, "the kernel's clock state could not be read")
    if answer == TIME_ERROR or status & STA_UNSYNC:
        return Clock(False, error, f"the kernel says the clock is not synchronised (no NTP daemon disciplines it; "
                                   f"maximum error {error:g} s)")
    return Clock(True, error, f"synchronised (maximum error {error:g} s)")


_LIBC = None


def ask() -> tuple[int, _Timex]:
    """ntp_adjtime(2) with modes 0: (its answer, the kernel's struct timex)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    return _LIBC.ntp_adjtime(ctypes.byref(tx)), tx


def read() -> Clock:
    """The kernel's answer, judged; OSError when it could not be asked (not the same as unsynchronised)."""
    answer, tx = ask()
    if answer < 0:
        raise OSError(ctypes.get_errno(), "ntp_adjtime failed")
    return judge(answer, tx.status, tx.maxerror)


def metric_families(node: str | None = None):
    """tts_clock_synchronised and tts_clock_max_error_seconds for /metrics (the pair's and ctl's
    receiver's); nothing when the kernel could not be asked. `node`: the label, where the scrape's
    own is not enough."""
    from prometheus_client.core import GaugeMetricFamily
    try:
        now = read()
    except OSError:
        return
    labels = ["node"] if node else []
    for name, what, value in (("tts_clock_synchronised", "1 if the kernel says this host's clock is synchronised",
                               1.0 if now.synchronised else 0.0),
                              ("tts_clock_max_error_seconds", "The kernel's bound on this clock's error",
                               now.max_error_s)):
        g = GaugeMetricFamily(name, what, labels=labels)
        g.add_metric([node] if node else [], value)
        yield g
