"""The lab, read from its inventory: the one description of a lab pair (host -> address, subnet,
container names) that the containers (lab/containers.yml reads the same inventory through Ansible),
the Molecule suites (molecule/default/tests/lab.py) and the benchmarks (bench/) share.

    lab = Lab.load("inventory/lab/hosts.yml")      # make lab's pair
    lab = Lab.load("molecule/default/inventory/hosts.yml")   # Molecule's pair (mol- containers)
    lab.port("receiver"), lab.var("tts_shared_dir")  # the values the deploy used, as the roles see them

Values come as Ansible resolves them for the pair, for the simple cases the lab needs (no host facts,
no lookups): every role's defaults, then roles/tts's (the shared ones), then the lab's group_vars, then
the inventory's own vars; a "{{ name }}" inside is filled from the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
# The lab's shared settings (the lab and Molecule read the same group_vars).
LAB_GROUP_VARS = ROOT / "inventory" / "lab" / "group_vars" / "all.yml"
MOLECULE_INVENTORY = ROOT / "molecule" / "default" / "inventory" / "hosts.yml"
ROLES = ROOT / "roles"


def _layers(inventory_vars: dict) -> dict:
    """Every role's defaults (roles/tts last: the shared ones), the lab's group_vars, the inventory's vars."""
    merged: dict = {}
    for defaults in sorted(ROLES.glob("*/defaults/main.yml"), key=lambda p: p.parts[-3] == "tts"):
        merged.update(yaml.safe_load(defaults.read_text()) or {})
    merged.update(yaml.safe_load(LAB_GROUP_VARS.read_text()) or {})
    merged.update(inventory_vars)
    return merged


@dataclass(frozen=True)
class Lab:
    address: dict[str, str]      # inventory name -> address (ansible_host)
    groups: dict[str, list[str]]
    subnet: str                  # the first three octets (tts_lab_subnet)
    prefix: str                  # container name prefix (tts_lab_prefix): "" for the lab, "mol-"
    network: str                 # the podman network (tts_lab_network)
    values: dict                 # the variables as written (_layers), resolved by var()

    @classmethod
    def load(cls, path: str | Path) -> Lab:
        data = yaml.safe_load(Path(path).read_text())["all"]
        address: dict[str, str] = {}
        groups: dict[str, list[str]] = {}
        for group, body in (data.get("children") or {}).items():
            for host, hostvars in ((body or {}).get("hosts") or {}).items():
                address[host] = (hostvars or {})["ansible_host"]
                groups.setdefault(group, []).append(host)
        labvars = data.get("vars") or {}
        return cls(address, groups, str(labvars["tts_lab_subnet"]), labvars.get("tts_lab_prefix") or "",
                   labvars["tts_lab_network"], _layers(labvars))

    @classmethod
    def from_env(cls, default: Path = MOLECULE_INVENTORY) -> Lab:
        """The pair TTS_TEST_INVENTORY names (a hosts.yml), Molecule's by default."""
        return cls.load(os.environ.get("TTS_TEST_INVENTORY") or default)

    @property
    def nodes(self) -> list[str]:
        return self.groups["tts_nodes"]

    @property
    def workers(self) -> list[str]:
        """Every host that runs a worker: the pair, then the tts_workers group's."""
        return self.nodes + self.groups.get("tts_workers", [])

    @property
    def ctl(self) -> str:
        return self.address[self.groups["control"][0]]

    def var(self, name: str):
        """A variable as the deploy saw it: "{{ other }}" filled in from the same values (a few rounds)."""
        value = self.values[name]
        for _ in range(5):
            if not (isinstance(value, str) and "{{" in value):
                break
            value = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(self.values)
        return value

    def port(self, name: str) -> int:
        """tts_<name>_port: app, api, redis, receiver, deadman, prometheus, alertmanager, ..."""
        return int(self.var(f"tts_{name}_port"))

    @property
    def vip_address(self) -> str:
        return self.var("tts_vip")

    @property
    def vip(self) -> str:
        return f"https://{self.vip_address}"

    @property
    def shared_on_nas(self) -> str:
        """tts_shared_dir as the NAS holds it: inside the export, where the clients' mount point is."""
        inside = Path(self.var("tts_shared_dir")).relative_to(self.var("tts_nas_mount_point"))
        return str(Path(self.var("tts_nas_export")) / inside)

    def node_url(self, node: str, port: int | None = None) -> str:
        return f"http://{self.address[node]}:{port or self.port('app')}"

    def container(self, host: str) -> str:
        return self.prefix + host

    @staticmethod
    def settings() -> dict:
        """The lab's group_vars as written (templates unrendered): ansible_user, tts_access_users, ..."""
        return yaml.safe_load(LAB_GROUP_VARS.read_text())

    @property
    def secrets_file(self) -> Path:
        """The pair's Vault file (lab/secrets.sh): make lab's, or Molecule's for its mol- pair."""
        return ROOT / ".lab" / ("molecule-secrets.yml" if self.prefix else "secrets.yml")

    def secrets(self) -> dict:
        """The pair's secrets, decrypted with the lab's vault password file (ansible-vault view)."""
        view = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "view", str(self.secrets_file)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": str(ROOT / ".lab" / "vault-pass")})
        if view.returncode != 0:
            raise RuntimeError(f"cannot read {self.secrets_file}: {view.stderr.strip()[-300:]}")
        return yaml.safe_load(view.stdout)

    def log_in(self) -> tuple[str, str]:
        """Log this process's HTTP clients in at the VIP as the lab's user (tts_access: basic), the way
        curl -n and requests read credentials: a netrc file for the VIP's address (0600, in .lab/), named
        by NETRC. Returns (name, password) for clients that do not read netrc (a browser). Other addresses
        (the nodes' own ports) get no login."""
        users = self.settings()["tts_access_users"]
        name, password = users[0]["name"], self.secrets()["tts_access_password"]
        netrc = ROOT / ".lab" / f"{self.prefix}netrc"
        fd = os.open(netrc, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"machine {self.vip_address} login {name} password {password}\n")
        os.environ["NETRC"] = str(netrc)
        return name, password


if __name__ == "__main__":
    # make lab's last line: where the lab answers, read from its inventory.
    lab = Lab.load(LAB_INVENTORY)
    print(f"The TTS lab is up: {lab.vip}/  (its certificate is signed by the lab CA in .lab/ca.pem; "
          f"Prometheus http://{lab.ctl}:{lab.port('prometheus')}, Alertmanager http://{lab.ctl}:{lab.port('alertmanager')})")
