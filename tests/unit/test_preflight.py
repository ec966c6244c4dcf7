"""site.yml's preflight (roles/preflight) refuses, before any change, what would break a deploy
halfway: a setting an operator must give and did not (named), an OS the roles are not written for,
a node address no interface has, a storage uid another account holds, a short secret.

The role runs with ansible-playbook against this machine (connection local; it only reads). Each
refusal case changes one input of a set that passes here (the first test), so a refusal is the check's."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAY = """
- hosts: tts_nodes:control
  connection: local
  gather_facts: false
  any_errors_fatal: true
  roles:
    - role: tts    # as every play of site.yml: the shared defaults first
    - role: preflight
"""
# Everything the role requires, as an inventory gives it (secrets as Vault would): the rest is
# roles/tts's defaults (tts_pki_mode, tts_access set here to ask for no certificate or login).
GOOD = {
    "ansible_user": "deploy", "tts_node_address": "127.0.0.1",
    "tts_vip": "192.0.2.100", "tts_vrid": 51, "tts_vip_url": "https://192.0.2.100",
    "tts_pki_mode": "lab", "tts_access": "none", "tts_nas_type": "nfs", "tts_nas_server": "192.0.2.5",
    "tts_nas_export": "/srv/tts", "tts_storage_uid": 54321, "tts_engine": "espeak",
    "tts_redis_password": "r" * 24, "tts_alert_token": "a" * 24,
}


def preflight(tmp_path, drop=(), **override):
    values = {k: v for k, v in {**GOOD, **override}.items() if k not in drop}
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"tts_nodes": {"hosts": {"localhost": None}}, "control": {"hosts": {}}},
                 "vars": values}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_LOG_PATH", None)
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                          str(tmp_path / "play.yml")], capture_output=True, text=True, env=env, timeout=120)
    return res.returncode, res.stdout + res.stderr


def test_a_complete_inventory_on_debian_12_passes(tmp_path):
    code, out = preflight(tmp_path)
    assert code == 0, out[-3000:]


def named_missing(out: str) -> list[str]:
    """The settings the refusal names as missing (its own sentence, not the spec it prints after)."""
    found = re.search(r"missing required arguments: ([a-z0-9_, ]+)", out)
    return found.group(1).replace(" ", "").split(",") if found else []


@pytest.mark.parametrize("missing", ["tts_vip", "tts_storage_uid", "tts_redis_password", "ansible_user"])
def test_a_missing_required_setting_is_named(tmp_path, missing):
    code, out = preflight(tmp_path, drop=[missing])
    assert code != 0 and named_missing(out) == [missing], out[-3000:]


def test_a_missing_secret_is_named_but_no_secret_is_printed(tmp_path):
    code, out = preflight(tmp_path, drop=["tts_alert_token"])
    assert code != 0 and named_missing(out) == ["tts_alert_token"]
    assert GOOD["tts_redis_password"] not in out


def test_an_operating_system_the_roles_are_not_written_for_is_refused(tmp_path):
    code, out = preflight(tmp_path, preflight_distribution_major_version="11")
    assert code != 0 and "this deploy supports Debian 11 only" in out and "nothing was changed" in out, out[-3000:]


def test_a_node_address_no_interface_has_is_refused(tmp_path):
    code, out = preflight(tmp_path, tts_node_address="192.0.2.77")
    assert code != 0 and "no interface has the address 192.0.2.77" in out, out[-3000:]


def test_a_storage_uid_another_account_holds_is_refused(tmp_path):
    code, out = preflight(tmp_path, tts_storage_uid=0)
    assert code != 0 and "uid 0 (tts_storage_uid) belongs to root" in out, out[-3000:]


def test_an_account_of_the_service_with_another_uid_is_refused(tmp_path):
    """An earlier deploy's account (another uid than tts_storage_uid): usermod would fail halfway."""
    code, out = preflight(tmp_path, tts_user="root")
    assert code != 0 and "root exists with uid 0, not 54321 (tts_storage_uid)" in out, out[-3000:]


def test_a_short_secret_is_refused(tmp_path):
    code, out = preflight(tmp_path, tts_redis_password="Q7sh0rtX")
    assert code != 0 and "16 characters or more" in out and "Q7sh0rtX" not in out, out[-3000:]


def test_site_yml_runs_the_preflight_first_on_every_host_it_changes():
    plays = yaml.safe_load((ROOT / "playbooks/site.yml").read_text())
    first = plays[0]
    assert first["roles"] == [{"role": "tts"}, {"role": "preflight"}] and first["any_errors_fatal"] is True
    assert set(first["hosts"].split(":")) == {"tts_nodes", "tts_workers", "control"}


PLAYS_WITH_ROLES = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "playbooks").glob("*.yml"),
                                                            ROOT / "lab/certificates.yml"])


@pytest.mark.parametrize("playbook", PLAYS_WITH_ROLES)
def test_every_play_lists_the_shared_defaults_first(playbook):
    """roles/tts holds the values every play shares (the inventories keep only the site's): a
    play without it would run with those variables undefined."""
    plays = yaml.safe_load((ROOT / playbook).read_text())
    for play in plays:
        roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
        assert roles[:1] == ["tts"], f"{playbook}: play {play.get('name')!r} does not list tts first"
