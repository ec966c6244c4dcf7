"""Whether the kernel says this host's clock is synchronised (tts_service/clock.py, exported on
/metrics as tts_clock_synchronised; TTSClockNotSynchronised fires on 0)."""
import ctypes

from tts_service import clock


def test_the_kernels_answer_is_read_from_the_right_fields():
    """The struct is laid out as the kernel's: its constant fields hold what Linux puts there (a
    misplaced field would read the status from somewhere else)."""
    answer, tx = clock.ask()
    assert ctypes.sizeof(clock._Timex) == 208           # struct timex on 64-bit Linux
    assert answer in range(0, 6), answer                 # TIME_OK .. TIME_ERROR
    assert tx.tolerance == 500 << 16, tx.tolerance       # MAXFREQ: 500 ppm, scaled by 2^16
    assert tx.tick == 10_000, tx.tick                    # microseconds per USER_HZ tick
    assert 0 <= tx.maxerror <= 16_000_000, tx.maxerror   # NTP_PHASE_LIMIT: 16 s when it knows nothing


def test_unsynchronised_when_the_kernel_says_so_either_way():
    assert clock.judge(0, 0, 25_000) == clock.Clock(True, 0.025, "synchronised (maximum error 0.025 s)")
    for answer, status in ((clock.TIME_ERROR, 0), (0, clock.STA_UNSYNC), (clock.TIME_ERROR, clock.STA_UNSYNC | clock.STA_NANO)):
        judged = clock.judge(answer, status, 16_000_000)
        assert not judged.synchronised and judged.max_error_s == 16.0
        assert "not synchronised" in judged.why
    assert not clock.judge(-1, 0, 0).synchronised


def test_a_kernel_that_cannot_be_asked_is_not_called_unsynchronised(monkeypatch):
    """read() raises (the gauge is left out, no alert claims "not synchronised") when ntp_adjtime fails."""
    monkeypatch.setattr(clock, "ask", lambda: (-1, clock._Timex()))
    try:
        clock.read()
    except OSError:
        pass
    else:
        raise AssertionError("read() judged a failed ntp_adjtime")
    assert list(clock.metric_families("tts-a")) == []


def test_the_node_exports_what_the_kernel_says(api):
    metrics = api.get("/metrics").get_data(as_text=True)
    value = 1.0 if clock.read().synchronised else 0.0
    assert f'tts_clock_synchronised{{node="tts-a"}} {value}' in metrics, \
        [m for m in metrics.splitlines() if "clock" in m]
    assert 'tts_clock_max_error_seconds{node="tts-a"}' in metrics
