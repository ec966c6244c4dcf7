"""No secret in any output. Molecule's converge and idempotence run with --diff (molecule.yml:
every template a fresh pair gets, then the serving pair compared again), and Ansible writes what they
print to .lab/molecule-ansible.log (ANSIBLE_LOG_PATH there; `make molecule` starts it empty). No value
of the Vault file, nothing derived from it and no private key the deploy handled may appear in it.
Runs first in verify: later suites run playbooks of their own."""
import hashlib

from lab import LAB, ROOT

LOG = ROOT / ".lab" / "molecule-ansible.log"


def _secrets():
    """name -> value: the Vault file's values (decrypted with the lab's vault password) and that
    password, the nodes' dead-man tokens and the drills' password derived from the alert token
    (playbooks/group_vars/all.yml), the body lines of every private key under .lab (the lab's SSH key,
    the CA's, the certificates')."""
    found = {name: str(value) for name, value in LAB.secrets().items()}
    for node in LAB.nodes:
        found[f"dead-man token of {node}"] = hashlib.sha256(
            f"{found['tts_alert_token']}:deadman:{node}".encode()).hexdigest()
    found["the drills' password"] = hashlib.sha256(f"{found['tts_alert_token']}:drill".encode()).hexdigest()
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
