"""The drill's plan is written by the failover_drill role at deploy time from the inventory (nothing
translates it at run time): rendered here from the lab inventory as site.yml renders it on ctl, it is a
plan `tts-drill run` accepts, with the inventory's values."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tts_service.drill.run import Plan

ROOT = Path(__file__).resolve().parents[2]
PLAY = """
- hosts: ctl
  connection: local
  gather_facts: false
  vars:
    ansible_become: false
    tts_alert_token: "{{ 'a' * 24 }}"
  roles:
    - role: tts
  tasks:
    - name: Render the plan as the role does
      ansible.builtin.template:
        src: "{{ root }}/roles/failover_drill/templates/drill-plan.json.j2"
        dest: "{{ out }}"
        mode: "0600"
      vars:
        failover_drill_mode: switchover
        failover_drill_turns: 12
        failover_drill_cooldown_s: 60
        failover_drill_canary_timeout_s: 600
        failover_drill_rejoin_timeout_s: 180
        failover_drill_project: /opt/tts-receiver/ansible
"""


def test_the_role_writes_a_plan_tts_drill_accepts_with_the_inventorys_values(tmp_path):
    play, out = tmp_path / "play.yml", tmp_path / "plan.json"
    play.write_text(PLAY)
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(ROOT / "inventory/lab"),
                          str(play), "-e", f"out={out}", "-e", f"root={ROOT}"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                                           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_NOCOLOR": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    plan = Plan.from_dict(json.loads(out.read_text()))
    assert plan.nodes == {"tts-a": "http://10.89.60.11:8000", "tts-b": "http://10.89.60.12:8000"}
    assert plan.receiver == "http://10.89.60.10:9095" and plan.vip == "https://10.89.60.100"
    assert plan.shared_dir == Path("/mnt/nas/tts") and plan.inventory == "/opt/tts-receiver/ansible/inventory"
    assert plan.login_file == "/etc/tts-receiver/drill-login"           # the lab wants basic auth
    assert plan.allow_host_kill and plan.host_kill_cmd == ["/usr/local/bin/tts-lab-host", "kill"]
    assert plan.rejoin_timeout_s == 180.0 and plan.lock_ttl_s == 30.0  # espeak: no engine start to add
    assert "tts_alert_token" not in out.read_text() and "a" * 24 not in out.read_text()
