"""Each node exports whether it holds the entry VIP (tts_vip_held), read from its interfaces: the
TTSVipNotSingle alert counts the holders (two: clients split between the primary and a node that
cannot serve them; none: nobody gets in)."""
from dataclasses import replace

import pytest


@pytest.mark.parametrize("vip, held", [("127.0.0.1", 1.0), ("192.0.2.77", 0.0)])
def test_the_node_says_whether_the_vip_is_on_its_interfaces(rt, vip, held):
    from tts_service.app import create_app
    metrics = create_app(replace(rt.settings, vip=vip)).test_client().get("/metrics").get_data(as_text=True)
    assert f'tts_vip_held{{node="tts-a"}} {held}' in metrics, [m for m in metrics.splitlines() if "vip" in m]


def test_without_a_vip_setting_nothing_is_claimed(api):
    assert "tts_vip_held" not in api.get("/metrics").get_data(as_text=True)
