"""/ready says the node is unfit as soon as a renewal of its mark and read of the cluster state fails,
not only once the belief it still holds has aged out (TTS_STATE_MAX_AGE, 5 s): a primary that lost the
NAS answered 200 for 5 s after the cut, and clients waited that long for the failover to start."""
import time

from tts_service.storage import StorageUnavailable


def test_a_failed_renewal_makes_ready_fail_at_once(rt, api, monkeypatch):
    body = api.get("/ready").get_json()
    assert body["checks"]["state"], body

    def cut(node):
        raise StorageUnavailable("shared storage did not answer within 0.8 s")
    app_node = api.application.extensions["tts"].node
    monkeypatch.setattr(app_node.cluster, "touch_alive", cut)
    time.sleep(rt.settings.state_cache_s + 0.05)
    body = api.get("/ready").get_json()
    assert app_node.belief().fresh                               # the belief it holds is still young
    assert not body["checks"]["state"], body
    assert "the last renewal of this node's mark failed: shared storage did not answer within 0.8 s" in body["reason"]
