"""Host keys are checked wherever this repository's SSH runs: the controller (ansible.cfg, Molecule),
the receiver on ctl (the lab inventory leaves it its own known_hosts), the NAS mount (sshfs)."""
import configparser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_ansible_checks_host_keys():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    assert cfg.getboolean("defaults", "host_key_checking")
    ssh_args = cfg.get("ssh_connection", "ssh_args")
    assert "StrictHostKeyChecking=yes" in ssh_args and "/dev/null" not in ssh_args, ssh_args
    assert "UpdateHostKeys=no" in ssh_args      # ssh never rewrites a pinned file by itself


def test_molecule_checks_the_lab_hosts_keys_against_the_pinned_ones():
    molecule = yaml.safe_load((ROOT / "molecule/default/molecule.yml").read_text())
    options = molecule["provisioner"]["config_options"]
    assert options["defaults"]["host_key_checking"] is True
    ssh_args = options["ssh_connection"]["ssh_args"]
    assert "StrictHostKeyChecking=yes" in ssh_args and "/dev/null" not in ssh_args, ssh_args
    assert molecule["provisioner"]["env"]["TTS_LAB_KNOWN_HOSTS"].endswith("/.lab/mol-known_hosts")
    containers = (ROOT / "lab/containers.yml").read_text()
    assert "ssh_host_" in containers and "lab_known_hosts" in containers


def test_the_nas_mount_checks_the_nas_host_key():
    defaults = yaml.safe_load((ROOT / "roles/nas/defaults/main.yml").read_text())
    options = defaults["nas_sshfs_option_list"]
    assert "StrictHostKeyChecking=yes" in options and "StrictHostKeyChecking=accept-new" not in options
    assert "UserKnownHostsFile={{ nas_sshfs_known_hosts }}" in options
