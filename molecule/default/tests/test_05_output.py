"""No secret in any output. Molecule's converge and idempotence run with --diff (molecule.yml:
every template a fresh pair gets, then the serving pair compared again), and Ansible writes what they
print to .lab/molecule-ansible.log (ANSIBLE_LOG_PATH there; `make molecule` starts it empty). No value
of the Vault file, nothing derived from it and no private key the deploy handled may appear in it.
Then `site.yml --check --diff` over the serving primary and ctl with every secret rotated: each file that holds
one would change, and neither value shows. Runs first in verify: later suites run playbooks of their
own."""
import hashlib
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from lab import LAB, ROOT, cluster_state

LOG = ROOT / ".lab" / "molecule-ansible.log"


def _with_derived(values):
    """The Vault values and what roles/tts derives from the webhook's token: each
    node's dead-man token and the drills' password."""
    found = dict(values)
    for node in LAB.nodes:
        found[f"dead-man token of {node}"] = hashlib.sha256(
            f"{values['tts_alert_token']}:deadman:{node}".encode()).hexdigest()
    found["the drills' password"] = hashlib.sha256(f"{values['tts_alert_token']}:drill".encode()).hexdigest()
    return found


def _secrets():
    """name -> value: the Vault file's values (decrypted with the lab's vault password) and that
    password, the nodes' dead-man tokens and the drills' password derived from the alert token
    (roles/tts/defaults/main.yml), the body lines of every private key under .lab (the lab's SSH key,
    the CA's, the certificates')."""
    found = _with_derived({name: str(value) for name, value in LAB.secrets().items()})
    found["the vault password"] = (ROOT / ".lab" / "vault-pass").read_text().strip()
    for key in [*(ROOT / ".lab").rglob("*.key"), ROOT / ".lab" / "ssh" / "id_ed25519"]:
        for n, line in enumerate(key.read_text().splitlines()):
            if line and not line.startswith("-----"):
                found[f"{key.relative_to(ROOT)} line {n}"] = line
    return found


def test_the_deploy_printed_its_diffs_and_no_secret():
    log = LOG.read_text(errors="replace")
    # The check means something only if the diffs were printed: a fresh pair's templates show in full.
    assert "+++ after" in log, f"{LOG} has no diff: converge did not run with --diff"
    secrets = _secrets()
    assert {"tts_redis_password", "tts_alert_token"} <= set(secrets) and any(".key line" in n for n in secrets)
    leaked = sorted(name for name, value in secrets.items() if len(value) >= 16 and value in log)
    assert not leaked, f"the deploy's output ({LOG}) shows: {', '.join(leaked)}"


# The tasks that write a secret: with every secret rotated, each of them would change something.
# (A title ending in "(" stands for every task it begins: the Redis one names the node's role.)
SECRET_WRITERS = ("Write the receiver's secrets (alert token; extra vars for its playbooks)",
                  "Give the dead-man's switch the Watchdog's token",
                  "Write each node's dead-man token for Alertmanager's Watchdog",
                  "Write the alert token for Alertmanager's webhook",
                  "Write the users who may use the page and the API (and the drills' canary)",
                  "Write the Redis configuration for this node's role (", "Write the service environment")


def test_a_check_diff_with_every_secret_rotated_shows_neither_value(tmp_path):
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("runs site.yml with Molecule's inventory")
    ephemeral = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") or Path(inventory).parent)
    old = {name: str(value) for name, value in LAB.secrets().items()}
    new = {name: f"rotated-{secrets.token_urlsafe(18)}" for name in old}
    rotated = tmp_path / "rotated.yml"
    rotated.write_text("".join(f"{name}: {value}\n" for name, value in new.items()))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "TTS_LAB_KEY": str(ROOT / ".lab/ssh/id_ed25519"), "TTS_LAB_KNOWN_HOSTS": str(ROOT / ".lab/mol-known_hosts"),
           "ANSIBLE_LOG_PATH": str(tmp_path / "ansible.log"), "ANSIBLE_FORCE_COLOR": "0"}
    # On the primary and ctl: every task that writes a secret runs there (the standby and the worker
    # host run the same tasks again), and the run takes a third less.
    here = LAB.groups["control"] + [cluster_state()["primary"]]
    run = subprocess.run(["ansible-playbook", "-i", str(Path(inventory).parent), str(ROOT / "playbooks/site.yml"),
                          "--check", "--diff", "--limit", ",".join(here),
                          "-e", f"@{ROOT / '.lab/molecule-secrets.yml'}", "-e", f"@{rotated}"],
                         capture_output=True, text=True, timeout=900, env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    changed = set()
    # "TASK [role : task name] ***...\nok: [...]\nchanged: [...]", handlers as "RUNNING HANDLER [...]"
    for block in re.split(r"\n(?:TASK|RUNNING HANDLER) \[", out)[1:]:
        title = block.split("] *", 1)[0].split(" : ", 1)[-1]
        if "\nchanged: " in block:
            changed |= {task for task in SECRET_WRITERS
                        if title == task or (task.endswith("(") and title.startswith(task))}
    assert changed == set(SECRET_WRITERS), f"not reported as changing: {sorted(set(SECRET_WRITERS) - changed)}"
    shown = sorted(f"{which} {name}" for which, values in (("old", _with_derived(old)), ("new", _with_derived(new)))
                   for name, value in values.items() if value in out)
    assert not shown, f"`site.yml --check --diff` printed: {', '.join(shown)}"
