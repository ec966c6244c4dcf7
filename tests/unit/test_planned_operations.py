"""A planned operation (switchover.yml, upgrade.yml) stops everywhere when any node fails a step: a
standby that fails its fitness check or its upgrade would otherwise drop out of the play while the
primary went on and promoted it. (Ansible's default carries on with the hosts that did not fail.)
failover.yml and rejoin.yml are left as they are: there the old primary is expected to be dead."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("playbook", ["switchover.yml", "upgrade.yml"])
def test_a_planned_operation_stops_on_any_nodes_failure(playbook):
    plays = yaml.safe_load((ROOT / "playbooks" / playbook).read_text())
    for play in plays:
        if "tts_nodes" in str(play.get("hosts")):
            assert play.get("any_errors_fatal") is True, f"{playbook}: play {play['name']!r}"
