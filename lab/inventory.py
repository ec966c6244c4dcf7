"""The lab, read from its inventory: the one description of a lab pair (host -> address, subnet,
container names) that the containers (lab/containers.yml reads the same inventory through Ansible),
the Molecule suites (molecule/default/tests/lab.py) and the benchmarks (bench/) share.

    lab = Lab.load("inventory/lab/hosts.yml")      # make lab's pair
    lab = Lab.load("molecule/default/inventory/hosts.yml")   # Molecule's pair (mol- containers)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
MOLECULE_INVENTORY = ROOT / "molecule" / "default" / "inventory" / "hosts.yml"


@dataclass(frozen=True)
class Lab:
    address: dict[str, str]      # inventory name -> address (ansible_host)
    groups: dict[str, list[str]]
    subnet: str                  # the first three octets (tts_lab_subnet)
    prefix: str                  # container name prefix (tts_lab_prefix): "" for the lab, "mol-"
    network: str                 # the podman network (tts_lab_network)

    @classmethod
    def load(cls, path: str | Path) -> "Lab":
        data = yaml.safe_load(Path(path).read_text())["all"]
        address: dict[str, str] = {}
        groups: dict[str, list[str]] = {}
        for group, body in (data.get("children") or {}).items():
            for host, hostvars in ((body or {}).get("hosts") or {}).items():
                address[host] = (hostvars or {})["ansible_host"]
                groups.setdefault(group, []).append(host)
        labvars = data.get("vars") or {}
        return cls(address, groups, str(labvars["tts_lab_subnet"]), labvars.get("tts_lab_prefix") or "",
                   labvars["tts_lab_network"])

    @classmethod
    def from_env(cls, default: Path = MOLECULE_INVENTORY) -> "Lab":
        """The pair TTS_TEST_INVENTORY names (a hosts.yml), Molecule's by default."""
        return cls.load(os.environ.get("TTS_TEST_INVENTORY") or default)

    @property
    def nodes(self) -> list[str]:
        return self.groups["tts_nodes"]

    @property
    def ctl(self) -> str:
        return self.address[self.groups["control"][0]]

    @property
    def vip(self) -> str:
        return f"https://{self.subnet}.100"      # tts_vip in inventory/lab/group_vars/all.yml

    def node_url(self, node: str, port: int = 8000) -> str:
        return f"http://{self.address[node]}:{port}"

    def container(self, host: str) -> str:
        return self.prefix + host
