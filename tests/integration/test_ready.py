"""/ready says the node is unfit as soon as a renewal of its mark and read of the cluster state fails,
not only once the belief it still holds has aged out (TTS_STATE_MAX_AGE, 5 s): a primary that lost the
NAS answered 200 for 5 s after the cut, and clients waited that long for the failover to start."""
import threading
import time

from tts_service.storage import StorageUnavailable


def test_a_failed_renewal_makes_ready_fail_at_once(rt, api, monkeypatch):
    body = api.get("/ready").get_json()
    assert body["checks"]["state"], body

    def cut(node, timeout=None):
        raise StorageUnavailable("shared storage did not answer within 0.8 s")
    app_node = api.application.extensions["tts"].node
    monkeypatch.setattr(app_node.cluster, "touch_alive", cut)
    time.sleep(rt.settings.state_cache_s + 0.05)
    body = api.get("/ready").get_json()
    assert app_node.belief().fresh                               # the belief it holds is still young
    assert not body["checks"]["state"], body
    assert "the last renewal of this node's mark failed: shared storage did not answer within 0.8 s" in body["reason"]


def _timed_ready(api):
    started = time.monotonic()
    body = api.get("/ready").get_json()
    return body, time.monotonic() - started


def test_a_slow_nas_leaves_ready_quick_and_the_node_fit(rt, api, monkeypatch):
    """Shared storage that answers, slowly (a NAS whose traffic is squeezed: a renewal takes 2 s, past the
    request path's 0.8 s and the stall limit, while other calls keep coming back): /ready answers within
    the blackbox probe's 0.7 s and the node stays fit.
    Failing it would fail the pair over onto the same NAS, which helps nobody. (Before: /ready waited
    0.8 s for each of its reads and then said "unavailable".)"""
    app_rt = api.application.extensions["tts"]
    body = _timed_ready(api)[0]
    assert body["checks"]["state"] and body["checks"]["storage"], body
    real_touch, real_usage = app_rt.cluster.touch_alive, app_rt.storage.usage

    def slowly(real, seconds):
        def call(*args, **kwargs):
            time.sleep(seconds)
            return real(*args, **kwargs)
        return call
    # A renewal takes longer than the stall limit, while the free-space reads keep coming back: slow.
    monkeypatch.setattr(app_rt.cluster, "touch_alive", slowly(real_touch, 2.0))
    monkeypatch.setattr(app_rt.storage, "usage", slowly(real_usage, 0.6))
    seen = []
    until = time.monotonic() + 4
    while time.monotonic() < until:
        seen.append(_timed_ready(api))
        time.sleep(0.2)
    assert max(took for _body, took in seen) < 0.7, [round(took, 2) for _b, took in seen]
    unfit = [body["reason"] for body, _took in seen if not (body["checks"]["state"] and body["checks"]["storage"])]
    assert not unfit, unfit
    # ... and says the NAS is slow, for TTSLatencyHigh
    line = next(line for line in api.get("/metrics").get_data(as_text=True).splitlines()
                if line.startswith('tts_storage_wait_seconds{node="tts-a"}'))
    assert float(line.split()[-1]) >= 1.0, line


def test_a_nas_that_stops_answering_makes_ready_fail_within_the_stall_limit(rt, api, monkeypatch):
    """A renewal that does not come back while the mount answers nothing else either (a NAS cut off from
    this node: every call hangs) makes the node unfit once it has run TTS_STORAGE_STALL (1.5 s), with
    /ready itself still answering at once."""
    app_rt = api.application.extensions["tts"]
    assert _timed_ready(api)[0]["checks"]["state"]
    cut = threading.Event()

    def hangs(*args, **kwargs):
        cut.wait(30)
    monkeypatch.setattr(app_rt.cluster, "touch_alive", hangs)     # every call hangs: the renewal ...
    monkeypatch.setattr(app_rt.storage, "usage", hangs)           # ... and the free-space read
    time.sleep(app_rt.settings.state_cache_s + 0.05)
    started = time.monotonic()
    while True:
        body, took = _timed_ready(api)
        assert took < 0.7, took
        if not body["checks"]["state"]:
            break
        assert time.monotonic() - started < app_rt.settings.storage_stall_s + 1, body
        time.sleep(0.1)
    assert time.monotonic() - started >= app_rt.settings.storage_stall_s - 0.3
    assert "shared storage has not answered this node's renewal for" in body["reason"], body
    cut.set()
