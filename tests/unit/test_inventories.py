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
