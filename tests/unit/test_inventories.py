"""Shared values live once: roles/tts/defaults/main.yml holds the repository's defaults, and an
inventory sets only what its site chooses. A value an inventory repeats from the defaults (or that both
inventories repeat from each other) is a value that will drift."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles/tts/defaults/main.yml").read_text())
LAB = yaml.safe_load((ROOT / "inventory/lab/group_vars/all.yml").read_text())
PRODUCTION = yaml.safe_load((ROOT / "inventory/production.example/group_vars/all/main.yml").read_text())
# Set in both on purpose: the connection (inventory business, read by the lab's tests too) and each
# host's address, which other hosts read through hostvars (they do not see role defaults).
CONNECTION = {"ansible_user", "ansible_become", "tts_node_address"}


def test_no_inventory_repeats_a_shared_default():
    for name, inventory in (("lab", LAB), ("production.example", PRODUCTION)):
        repeated = sorted(k for k, v in inventory.items() if k in DEFAULTS and DEFAULTS[k] == v)
        assert not repeated, f"inventory/{name} repeats roles/tts's defaults: {repeated}"


def test_the_two_inventories_share_no_value_that_belongs_in_the_defaults():
    same = sorted(k for k in set(LAB) & set(PRODUCTION) - CONNECTION if LAB[k] == PRODUCTION[k])
    assert not same, f"set alike in both inventories (a default for roles/tts): {same}"


def test_every_shared_default_is_documented_where_it_is_set():
    text = (ROOT / "roles/tts/defaults/main.yml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(text):
        name = line.split(":", 1)[0]
        if name in DEFAULTS and not (text[i - 1].startswith("#") or text[i - 1].split(":", 1)[0] in DEFAULTS):
            undocumented.append(name)
    assert not undocumented, f"defaults with no comment above them (or above their block): {undocumented}"


def test_the_lab_tools_read_the_values_ansible_resolves(tmp_path):
    """lab/inventory.py (the Molecule suites, the benchmarks, make lab's last line) reads ports, the VIP,
    the shared folder and the receiver's cooldown from the inventory and the roles' defaults, not from
    copies: each equals what Ansible itself resolves for the pair."""
    import json
    import os
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "lab"))
    from inventory import Lab

    names = ["tts_vip", "tts_app_port", "tts_api_port", "tts_redis_port", "tts_receiver_port",
             "tts_prometheus_port", "tts_alertmanager_port", "tts_shared_dir", "alert_receiver_cooldown",
             "failover_drill_cooldown_s"]
    # Molecule's pair as Molecule gives it to Ansible: its hosts, the lab's group_vars beside them.
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text((ROOT / "molecule/default/inventory/hosts.yml").read_text())
    (inventory / "group_vars").symlink_to(ROOT / "inventory/lab/group_vars")
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: ctl
  connection: local
  gather_facts: false
  vars_files:   # the two roles' defaults that are not the shared ones (nothing overrides them in the lab)
    - {ROOT}/roles/alert_receiver/defaults/main.yml
    - {ROOT}/roles/failover_drill/defaults/main.yml
  roles: [tts]
  tasks:
    - ansible.builtin.copy:
        dest: {tmp_path}/values.json
        content: "{{{{ dict(names | zip(query('ansible.builtin.vars', *names))) | to_json }}}}"
        mode: "0600"
      vars:
        names: {names}
""")
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(play)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                              "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_NOCOLOR": "1"})
    assert res.returncode == 0, res.stdout[-3000:]
    resolved = json.loads((tmp_path / "values.json").read_text())
    lab = Lab.load(ROOT / "molecule/default/inventory/hosts.yml")
    assert {name: str(lab.var(name)) for name in names} == {name: str(v) for name, v in resolved.items()}
